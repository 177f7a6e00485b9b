"""Numerical core of the linearized logistic model (float64, NumPy / torch).

Per subset S, with rows T_S (target train + the rows of S's sources),
m = |T_S|, ``z_j = b_j + g_j . v`` and ``loss(z) = log(1 + exp(-z))``::

    f(v)      = mean_{j in T_S} loss(z_j) + lam |v|^2
    grad f    = mean -sigmoid(-z_j) g_j + 2 lam v
    hess f    = mean sigmoid(z_j) sigmoid(-z_j) g_j g_j^T + 2 lam I

Fast solvers work on per-source sufficient statistics at v = 0 (count,
gradient sum, Hessian sum), so a subset costs one d x d factorisation however
many rows it has (or a rank x rank one in the low-rank form). The exact solver
(:func:`refine_on_rows`) starts from the low-rank step and iterates on the rows,
many subsets at once; :func:`newton_l2` and :func:`trust_region_exact` solve one
subset by plain Newton (its fallback, and the independent check in the tests).
"""

from __future__ import annotations

import contextlib

import dataclasses

import numpy as np
import torch
from scipy.special import expit


def mean_logistic_loss(z: np.ndarray, axis=0) -> np.ndarray:
    """Mean of ``log(1 + exp(-z))`` along ``axis``, computed stably."""
    return np.logaddexp(0.0, -z).mean(axis=axis)


# -- exact: Newton on the rows -----------------------------------------------------------


def newton_l2(
    g: np.ndarray, b: np.ndarray, lam: float, *, v0: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 100
) -> tuple[np.ndarray, int]:
    """Minimise ``mean loss(b + g v) + lam |v|^2`` by Newton with backtracking.

    Parameters
    ----------
    g : ndarray of shape (n_rows, proj_dim)
    b : ndarray of shape (n_rows,)
    lam : float
        Must be > 0 unless the minimiser is known to be finite.
    v0 : ndarray of shape (proj_dim,), optional
        Warm start.
    tol : float
        Stop when ``max |grad f| < tol``.

    Returns
    -------
    v : ndarray of shape (proj_dim,)
    n_iter : int
    """
    d = g.shape[1]
    v = np.zeros(d) if v0 is None else v0.copy()
    inv_m = 1.0 / g.shape[0]

    def objective(v):
        return mean_logistic_loss(b + g @ v) + lam * v @ v

    f = objective(v)
    for it in range(1, max_iter + 1):
        z = b + g @ v
        p_neg = expit(-z)
        grad = -(g.T @ p_neg) * inv_m + 2 * lam * v
        if np.max(np.abs(grad)) < tol:
            return v, it - 1
        w = p_neg * (1 - p_neg) * inv_m
        hess = (g.T * w) @ g
        hess[np.diag_indices(d)] += 2 * lam
        step = np.linalg.solve(hess, -grad)
        t, slope = 1.0, grad @ step
        while True:  # Armijo backtracking; Newton steps are accepted at t = 1 near the optimum
            v_new = v + t * step
            f_new = objective(v_new)
            # Near the optimum f changes below its rounding error: accept what does not measurably rise.
            if f_new <= f + 1e-4 * t * slope or f_new - f <= 1e-15 * abs(f) or t < 1e-10:
                break
            t *= 0.5
        v, f = v_new, f_new
    return v, max_iter


def trust_region_exact(
    g: np.ndarray, b: np.ndarray, radius: float, *, ridge: float = 0.0, tol: float = 1e-10, max_iter: int = 100
) -> np.ndarray:
    """Minimise ``mean loss(b + g v) + ridge |v|^2`` subject to ``|v| <= radius``.

    By the KKT conditions the solution is the L2 solution for the multiplier
    ``lam >= ridge`` whose norm equals ``radius`` (or ``lam = ridge`` if that one
    lies inside). Newton on the KKT system in ``(v, lam)`` jointly, started from
    the one-step (fast) solution and its multiplier, usually converges in a few
    iterations; if it does not, a bracketed search on ``lam`` (safeguarded Newton
    on ``1/|v(lam)| - 1/radius``) finishes the job.
    """
    if ridge > 0:
        v, _ = newton_l2(g, b, ridge, tol=tol, max_iter=max_iter)
        if np.linalg.norm(v) <= radius:
            return v
    v = _kkt_newton(g, b, radius, ridge, tol=tol, max_iter=max_iter)
    if v is not None:
        return v
    return _trust_region_bracketed(g, b, radius, ridge=ridge, tol=tol, max_iter=max_iter)


def _kkt_newton(g, b, radius, ridge, *, tol, max_iter) -> np.ndarray | None:
    """Newton on ``grad f(v) + 2 lam v = 0, (|v|^2 - radius^2) / 2 = 0``; None if it fails."""
    m, d = g.shape
    p = expit(-b)
    grad0 = -(g.T @ p) / m
    hess0 = (g.T * (p * (1 - p) / m)) @ g
    hess0[np.diag_indices(d)] += 2 * ridge
    t = torch.from_numpy
    v = quadratic_trust_region(t(hess0[None].copy()), None, t(grad0[None]), radius)[0].numpy()
    vv = v @ v
    if vv == 0:
        return None
    lam = ridge + max(0.0, -(v @ (grad0 + hess0 @ v)) / vv) / 2  # (A + mu I) v = -grad0, A = hess0
    for _ in range(max_iter):
        p = expit(-(b + g @ v))
        f1 = -(g.T @ p) / m + 2 * lam * v
        f2 = (v @ v - radius**2) / 2
        if np.max(np.abs(f1)) < tol and abs(f2) <= 1e-12 * radius**2:
            return v * (radius / np.linalg.norm(v)) if lam >= ridge else None
        mat = (g.T * (p * (1 - p) / m)) @ g
        mat[np.diag_indices(d)] += 2 * lam
        try:
            chol = np.linalg.cholesky(mat)
        except np.linalg.LinAlgError:
            return None
        a, c = (_cho_solve(chol, x) for x in (f1, v))
        dlam = (f2 - v @ a) / (2 * (v @ c))
        v, lam = v - a - 2 * dlam * c, lam + dlam
        if not np.isfinite(lam) or lam < 0:
            return None
    return None


def _cho_solve(chol: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(chol.T, solve_triangular(chol, x, lower=True), lower=False)


def _trust_region_bracketed(g, b, radius, *, ridge, tol, max_iter) -> np.ndarray:
    """The fallback of :func:`trust_region_exact`: bracketed safeguarded Newton on ``lam``."""
    grad0 = -(g.T @ expit(-b)) / g.shape[0]
    # Strong convexity bounds the solution: |v(lam)| <= |grad f(0)| / (2 lam), so |v(hi)| <= radius.
    hi = max(ridge, np.linalg.norm(grad0) / (2 * radius))
    lo = max(ridge, hi * 1e-12)
    lam = hi
    v, _ = newton_l2(g, b, lam, tol=tol, max_iter=max_iter)
    for _ in range(200):
        norm = np.linalg.norm(v)
        if abs(norm - radius) <= 1e-12 * radius or norm == 0:
            break
        if norm > radius:
            lo = lam
        else:
            hi = lam
        # Newton on phi(lam) = 1/|v(lam)| - 1/radius, with dv/dlam = -H^-1 (2 v).
        p = expit(-(b + g @ v))
        hess = (g.T * (p * (1 - p) / g.shape[0])) @ g
        hess[np.diag_indices(g.shape[1])] += 2 * lam
        dv = np.linalg.solve(hess, -2 * v)
        dphi = -(v @ dv) / norm**3
        cand = lam - (1 / norm - 1 / radius) / dphi if dphi != 0 else np.nan
        lam = cand if lo < cand < hi else np.sqrt(lo * hi)
        v, _ = newton_l2(g, b, lam, v0=v, tol=tol, max_iter=max_iter)
    return v


# -- fast: one Newton step from v = 0 on summed statistics ----------------------------------


def source_statistics(g: np.ndarray, b: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group count, gradient sum and Hessian sum of the logistic loss at v = 0.

    Parameters
    ----------
    g : ndarray of shape (n_rows, proj_dim)
    b : ndarray of shape (n_rows,)
    groups : list of int arrays
        Row indices of each group (n_groups).

    Returns
    -------
    counts : ndarray of shape (n_groups,)
    grad_sums : ndarray of shape (n_groups, proj_dim)
        ``sum_j -sigmoid(-b_j) g_j``
    hess_sums : ndarray of shape (n_groups, proj_dim, proj_dim)
        ``sum_j sigmoid(b_j) sigmoid(-b_j) g_j g_j^T``
    """
    d = g.shape[1]
    counts = np.array([len(rows) for rows in groups], dtype=np.float64)
    grad_sums = np.zeros((len(groups), d))
    hess_sums = np.zeros((len(groups), d, d))
    for k, rows in enumerate(groups):
        gk, bk = g[rows], b[rows]
        p = expit(-bk)
        grad_sums[k] = -(gk.T @ p)
        hess_sums[k] = (gk.T * (p * (1 - p))) @ gk
    return counts, grad_sums, hess_sums


def lowrank_statistics(g: np.ndarray, b: np.ndarray, groups: list[np.ndarray], rank: int,
                       block_rows: int = 8192) -> "SufficientStatistics":
    """:meth:`SufficientStatistics.lowrank` of :func:`source_statistics`, without any per-group d x d matrix.

    Two passes over the rows, a block at a time (``g`` may be a float32 memmap; each block is
    cast to float64 on its own): the pooled Hessian (one d x d matrix) and its eigenbasis
    ``U``; then each group's rows rotated into ``U``, keeping the top ``rank`` x ``rank`` block
    and the diagonal of the rest. Memory: O(d^2 + n_groups (rank^2 + d)) instead of
    O(n_groups d^2), which is what lets n = 1,729 sources at d = 400 fit (the dense sums
    alone would take 2.2 GB).
    """
    d = g.shape[1]
    k = min(rank, d)

    def blocks(rows):
        for s in range(0, len(rows), block_rows):
            r = rows[s:s + block_rows]
            gb = np.asarray(g[r], dtype=np.float64)
            p = expit(-np.asarray(b[r], dtype=np.float64))
            yield gb, p

    pooled = np.zeros((d, d))
    for rows in groups:
        for gb, p in blocks(rows):
            pooled += (gb.T * (p * (1 - p))) @ gb
    _, vecs = np.linalg.eigh(pooled)
    basis = vecs[:, ::-1].copy()
    counts = np.array([len(rows) for rows in groups], dtype=np.float64)
    grads = np.zeros((len(groups), d))
    dense = np.zeros((len(groups), k, k))
    tail = np.zeros((len(groups), d - k))
    for j, rows in enumerate(groups):
        for gb, p in blocks(rows):
            z = gb @ basis  # [rows, d] in eigen-coordinates
            w = p * (1 - p)
            grads[j] -= z.T @ p
            dense[j] += (z[:, :k].T * w) @ z[:, :k]
            tail[j] += w @ (z[:, k:] ** 2)
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    return SufficientStatistics(t(counts), t(grads), t(dense), t(tail), t(basis))


@dataclasses.dataclass
class SufficientStatistics:
    """Per-source statistics at v = 0, in a basis where each subset's system is cheap.

    With ``basis=None`` these are the plain sums (``dense`` holds the full Hessian
    sums and there is no ``tail``): a subset costs one d x d factorisation. The
    low-rank form (:meth:`lowrank`) rotates into the eigenbasis of the pooled
    Hessian, keeps the Hessian dense in its top ``rank`` directions and only the
    diagonal in the rest, so a subset costs a ``rank`` x ``rank`` factorisation.

    Attributes
    ----------
    counts : tensor of shape (n_groups,)
    grads : tensor of shape (n_groups, proj_dim)
        Gradient sums, in ``basis`` coordinates when it is set.
    dense : tensor of shape (n_groups, k, k)
        Hessian sums restricted to the first k coordinates (k = proj_dim without a basis).
    tail : tensor of shape (n_groups, proj_dim - k), optional
        Diagonal of the Hessian sums in the remaining coordinates.
    basis : tensor of shape (proj_dim, proj_dim), optional
        Orthonormal; column i is coordinate i's direction.
    """

    counts: torch.Tensor
    grads: torch.Tensor
    dense: torch.Tensor
    tail: torch.Tensor | None = None
    basis: torch.Tensor | None = None

    @classmethod
    def plain(cls, counts, grad_sums, hess_sums) -> "SufficientStatistics":
        return cls(*(torch.as_tensor(x, dtype=torch.float64) for x in (counts, grad_sums, hess_sums)))

    @classmethod
    def lowrank(cls, counts, grad_sums, hess_sums, rank: int) -> "SufficientStatistics":
        """Rotate into the pooled Hessian's eigenbasis (descending); dense on the top ``rank``.

        From dense per-source Hessians, so O(n_sources d^2) memory: the reference that
        :func:`lowrank_statistics` (streamed, no per-source d x d) is tested against.
        """
        counts, grads, hess = (torch.as_tensor(x, dtype=torch.float64) for x in (counts, grad_sums, hess_sums))
        k = min(rank, grads.shape[1])
        _, vecs = torch.linalg.eigh(hess.sum(0))
        basis = vecs.flip(1)
        rotated = hess @ basis  # (n_groups, d, d): H_s U
        dense = basis[:, :k].T @ rotated[:, :, :k]
        tail = (rotated[:, :, k:] * basis[:, k:]).sum(1)
        return cls(counts, grads @ basis, dense, tail, basis)

    def to(self, device) -> "SufficientStatistics":
        """These statistics on ``device`` (a torch device or its name); every subset solve then runs there."""
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return SufficientStatistics(*(move(x) for x in (self.counts, self.grads, self.dense, self.tail, self.basis)))

    def __getitem__(self, rows) -> "SufficientStatistics":
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        return SufficientStatistics(self.counts[rows], self.grads[rows], self.dense[rows], pick(self.tail), self.basis)

    def summed(self, masks: np.ndarray, base: "SufficientStatistics | None" = None,
               base_copies: np.ndarray | None = None) -> "SufficientStatistics":
        """Statistics of each subset: sums over its sources (+ ``base``, one group added to all).

        ``masks`` has shape (n_subsets, n_sources); every sum is one GEMM over the
        flattened per-source arrays. ``base_copies`` (shape (n_subsets,)): how many times each
        subset counts the base group's rows (``[train] target_share``); once by default.
        """
        w = torch.as_tensor(np.asarray(masks), dtype=self.counts.dtype, device=self.counts.device)
        k = self.dense.shape[1]
        parts = [w @ self.counts, w @ self.grads, (w @ self.dense.reshape(len(self.counts), k * k)).reshape(len(w), k, k),
                 None if self.tail is None else w @ self.tail]
        if base is not None:
            c = None if base_copies is None else torch.as_tensor(np.asarray(base_copies), dtype=w.dtype, device=w.device)
            parts = [None if p is None else p + (q[0] if c is None else c.view(-1, *[1] * (p.dim() - 1)) * q[0])
                     for p, q in zip(parts, (base.counts, base.grads, base.dense, base.tail))]
        return SufficientStatistics(*parts, basis=self.basis)

    def system(self, ridge) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The quadratic model of each subset's mean loss: ``(A, tail, g)``.

        ``A = dense/n + 2 ridge I`` (in place of ``dense``), ``tail/n + 2 ridge`` and
        ``g = grads/n``. ``ridge`` is a float or a tensor of shape (n_subsets,).
        """
        n = self.counts
        ridge = torch.as_tensor(ridge, dtype=n.dtype, device=n.device).expand(n.shape)
        a = self.dense.div_(n[:, None, None])
        a.diagonal(dim1=1, dim2=2).add_(2 * ridge[:, None])
        tail = None if self.tail is None else self.tail / n[:, None] + 2 * ridge[:, None]
        return a, tail, self.grads / n[:, None]

    def to_parameters(self, v: torch.Tensor) -> np.ndarray:
        """Steps in basis coordinates -> projected-parameter coordinates, as ndarray (on the CPU)."""
        return (v if self.basis is None else v @ self.basis.T).cpu().numpy()


#: Batched systems no larger than this are solved on one torch thread (:func:`small_system_threads`).
SMALL_SYSTEM = 64


@contextlib.contextmanager
def small_system_threads(dim: int):
    """Run the enclosed batched solves of ``dim`` x ``dim`` systems on one torch thread when ``dim`` is small.

    Each such system (the low-rank solver's rank-32 blocks) is a few thousand flops, too little to
    share between threads: measured on a 2-core machine (benchmarks/README.md), two threads ran the
    low-rank ensemble at 1,600-3,900 subsets/s against 4,000-5,300 on one, with a second process
    busy, and erratically (4,000-12,500) when idle. On more cores the loss from one thread is
    bounded by the same small work: milliseconds per 10,000 subsets.
    """
    before = torch.get_num_threads()
    if dim > SMALL_SYSTEM or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quadratic_step(a, tail, g) -> torch.Tensor:
    """``v = -B^-1 g`` for ``B = blockdiag(A, diag(tail))``, batched.

    Singular ``A`` (no regularisation and fewer rows than dimensions) falls back to least squares.
    """
    k = a.shape[1]
    v = torch.empty_like(g)
    if k:
        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info != 0).any()):
            v[:, :k] = -torch.linalg.lstsq(a, g[:, :k, None]).solution[..., 0]
        else:
            v[:, :k] = -torch.cholesky_solve(g[:, :k, None], chol)[..., 0]
    if tail is not None:
        v[:, k:] = -g[:, k:] / tail
    return v


def quadratic_trust_region(a, tail, g, radius, max_iter: int = 50, rtol: float = 1e-10) -> torch.Tensor:
    """Minimise ``g.v + v^T B v / 2`` over ``|v| <= radius``, ``B = blockdiag(A, diag(tail))``, batched.

    Moré-Sorensen: with ``v(mu) = -(B + mu I)^-1 g``, Newton steps on
    ``1/|v(mu)| - 1/radius`` from below the root, one Cholesky of the dense
    block each: ``mu += (|v| / |L^-1 v|)^2 (|v| - radius) / radius``. ``B`` is
    positive definite (sums of outer products plus a ridge), so there is no
    hard case. As radius -> 0 the solution tends to ``-radius g / |g|``.

    Parameters
    ----------
    a : tensor of shape (n_subsets, k, k)
    tail : tensor of shape (n_subsets, proj_dim - k), optional
    g : tensor of shape (n_subsets, proj_dim)
    radius : float or array of shape (n_subsets,)

    Returns
    -------
    tensor of shape (n_subsets, proj_dim)
    """
    m, d = g.shape
    k = a.shape[1]
    radius = torch.as_tensor(np.broadcast_to(np.asarray(radius, dtype=np.float64), (m,)).copy(), dtype=g.dtype,
                             device=g.device)
    gnorm = torch.linalg.vector_norm(g, dim=1)
    diagonal = torch.cat([a.diagonal(dim1=1, dim2=2), tail if tail is not None else g[:, :0]], dim=1)
    mu = _diagonal_trust_region_multiplier(diagonal, g, radius)
    v = torch.zeros_like(g)
    active = gnorm > 0
    # Every iteration works on the whole batch (gathering the active rows costs more than
    # it saves: all subsets converge in a handful of iterations).
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        vi = torch.empty_like(g)
        qsq = torch.zeros(m, dtype=g.dtype, device=g.device)
        if k:
            chol = _shifted_cholesky(a, mu)
            # v = -L^-T L^-1 g and q = L^-1 v; two triangular solves each (cholesky_solve is slower).
            y = torch.linalg.solve_triangular(chol, g[:, :k, None], upper=False)
            vi[:, :k] = -torch.linalg.solve_triangular(chol.mT, y, upper=True)[..., 0]
            qsq += torch.linalg.solve_triangular(chol, vi[:, :k, None], upper=False)[..., 0].square().sum(1)
        if tail is not None:
            shifted_tail = tail + mu[:, None]
            vi[:, k:] = -g[:, k:] / shifted_tail
            qsq += (vi[:, k:].square() / shifted_tail).sum(1)
        norm = torch.linalg.vector_norm(vi, dim=1)
        inside = (mu == 0) & (norm <= radius)  # the Newton step itself fits: constraint inactive
        converged = inside | ((norm - radius).abs() <= rtol * radius)
        v = torch.where(active[:, None], vi, v)
        step = norm.square() / qsq.clamp(min=torch.finfo(g.dtype).tiny) * (norm - radius) / radius
        mu = torch.where(active & ~converged, torch.clamp(mu + step, min=0.0), mu)
        active &= ~converged
    # Land exactly on the sphere (the last Newton step leaves |v| within rtol of it).
    on_sphere = mu > 0
    v[on_sphere] *= (radius[on_sphere] / torch.linalg.vector_norm(v[on_sphere], dim=1))[:, None]
    return v


def _diagonal_trust_region_multiplier(diagonal, g, radius, n_iter: int = 30) -> torch.Tensor:
    """Multiplier ``mu >= 0`` with ``|(diag + mu)^-1 g| = radius``: the start of the exact iteration.

    The same Newton iteration on ``1/|v(mu)| - 1/radius`` as the full problem, at O(d)
    per step. ``1/|v(mu)|`` is concave and increasing, so Newton from any start lands
    at or below the root and then rises to it; a good start saves Cholesky factorisations
    (from the Gershgorin bound below the root they took ~5, from here ~2-3).
    """
    gnorm = torch.linalg.vector_norm(g, dim=1)
    lam_max = diagonal.max(1).values if diagonal.shape[1] else torch.zeros_like(gnorm)
    mu = torch.clamp(gnorm / radius - lam_max, min=0.0)
    for _ in range(n_iter):
        shifted = diagonal + mu[:, None]
        v = g / shifted
        norm = torch.linalg.vector_norm(v, dim=1)
        qsq = (v.square() / shifted).sum(1).clamp(min=torch.finfo(g.dtype).tiny)
        step = norm.square() / qsq * (norm - radius) / radius
        mu = torch.clamp(mu + step, min=0.0)
        # Only a start: once below the root (after the first step), stop when it barely moves.
        if bool((step.abs() <= 1e-8 * mu).all()):
            break
    return mu


# -- exact, batched: the one-step model refined on the rows ------------------------------


class RowBlocks:
    """Each source's rows (and a base group's, joined to every subset), for exact gradients.

    Parameters
    ----------
    g : ndarray of shape (n_rows, proj_dim)
    b : ndarray of shape (n_rows,)
    groups : list of int arrays
        Row indices of each source (n_sources).
    base : int array, optional
        Rows added to every subset (the target's train rows).
    """

    def __init__(self, g: np.ndarray, b: np.ndarray, groups: list[np.ndarray], base: np.ndarray | None = None):
        as_t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))  # noqa: E731
        self.blocks = [(as_t(g[rows]), as_t(b[rows])) for rows in groups]
        self.base = None if base is None or not len(base) else (as_t(g[base]), as_t(b[base]))

    def gradient_sums(self, masks: np.ndarray, v: torch.Tensor, base_copies: np.ndarray | None = None) -> torch.Tensor:
        """``sum_{j in T_S} -sigmoid(-(b_j + g_j . v_S)) g_j`` per subset, shape (n_subsets, proj_dim).

        One pair of GEMMs per source over the subsets that contain it, so no row is
        touched for a subset that does not hold it. (Float32 GEMMs here were only 1.7x
        faster at these block sizes and saved ~2% of a solve: not worth a second copy.)
        """
        out = torch.zeros_like(v)
        for s, (g, b) in enumerate(self.blocks):
            idx = torch.from_numpy(np.flatnonzero(masks[:, s]))
            if len(idx):
                out.index_add_(0, idx, torch.sigmoid(-(b[:, None] + g @ v[idx].T)).T @ g)
        if self.base is not None:
            g, b = self.base
            base = torch.sigmoid(-(b[:, None] + g @ v.T)).T @ g
            out += base if base_copies is None else torch.as_tensor(np.asarray(base_copies), dtype=v.dtype)[:, None] * base
        return -out


def refine_on_rows(
    rows: RowBlocks, masks: np.ndarray, stats: SufficientStatistics, *, ridge, radius: float | None = None,
    tol: float = 1e-10, max_iter: int = 100, history: int = 5, base_copies: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve each subset's problem exactly on its rows, many subsets at once.

    The problem is ``min mean loss(b + g v) + ridge |v|^2`` (``radius=None``) or the
    same subject to ``|v| <= radius``. Start: the one-step solution of the summed
    statistics ``stats`` (any basis; the low-rank form makes every step cheap).
    Iteration: a chord method on the optimality conditions — ``grad f(v) + mu v = 0``,
    and ``|v| = radius`` with the multiplier ``mu`` as a second unknown — whose
    Jacobian is replaced by the fixed model Hessian (+ the start's multiplier), so
    every step costs one exact gradient on the rows and no Hessian; Anderson mixing
    over the last ``history`` steps makes it converge in a few steps where the
    model Hessian is a poor stand-in for the Hessian at the solution.

    Parameters
    ----------
    rows : RowBlocks
    masks : bool ndarray of shape (n_subsets, n_sources)
    stats : SufficientStatistics
        ``summed`` statistics of these subsets (their model at v = 0).
    ridge : float or tensor of shape (n_subsets,)
    radius : float, optional
    tol : float
        Converged when ``max |grad f(v) + mu v| < tol`` (and ``| |v|^2 - radius^2 | / 2 <=
        1e-12 radius^2``).
    max_iter : int
        Iterations at most; a subset whose residual shrinks less than 10x in 10
        iterations is given up earlier.
    history : int
        Anderson memory (3-12 made no difference in our benchmarks).
    base_copies : ndarray of shape (n_subsets,), optional
        How many times each subset counts the base rows (as ``stats`` was summed).

    Returns
    -------
    v : ndarray of shape (n_subsets, proj_dim)
    converged : bool ndarray of shape (n_subsets,)
        Subsets that did not converge (or whose multiplier turned negative: the
        constraint does not bind) need another solver.
    """
    counts = stats.counts
    a, tail, g0 = stats.system(ridge)
    ridge = torch.as_tensor(ridge, dtype=g0.dtype).expand(counts.shape)
    k, m = a.shape[1], len(counts)
    if radius is None:
        w = quadratic_step(a, tail, g0)
        mu0 = torch.zeros(m, dtype=g0.dtype)
    else:
        w = quadratic_trust_region(a, tail, g0, radius)  # reads a, does not change it
        mu0 = _multiplier(a, tail, g0, w)
    chol = _shifted_cholesky(a, mu0)
    tail = None if tail is None else tail + mu0[:, None]

    def model_solve(x):  # (A + mu0 I)^-1 x, x in parameter coordinates
        y = x if stats.basis is None else x @ stats.basis
        out = torch.empty_like(y)
        out[:, :k] = torch.cholesky_solve(y[:, :k, None], chol)[..., 0]
        if tail is not None:
            out[:, k:] = y[:, k:] / tail
        return out if stats.basis is None else out @ stats.basis.T

    v = torch.as_tensor(stats.to_parameters(w))
    mu = mu0.clone()
    converged = torch.zeros(m, dtype=torch.bool)
    active = torch.ones(m, dtype=torch.bool)
    past_x, past_step = [], []
    checkpoint = None
    for it in range(max_iter):
        f1 = rows.gradient_sums(masks, v, base_copies) / counts[:, None] + (2 * ridge + mu)[:, None] * v
        residual = f1.abs().amax(1)
        done = residual < tol
        if radius is not None:
            f2 = (v.square().sum(1) - radius**2) / 2
            done &= f2.abs() <= 1e-12 * radius**2
        converged |= active & done
        active &= ~done & torch.isfinite(f1).all(1)
        if it % 10 == 0:  # a subset that gained < 10x in 10 steps goes to the fallback (weak ridge, long steps)
            if checkpoint is not None:
                active &= residual < 0.1 * checkpoint
            checkpoint = residual
        if not bool(active.any()):
            break
        step = -model_solve(f1)
        if radius is not None:  # the constraint's row of the chord system fixes the multiplier's step
            c = model_solve(v)
            dmu = (f2 + (v * step).sum(1)) / (v * c).sum(1)
            step = torch.cat([step - dmu[:, None] * c, dmu[:, None]], 1)
        x = torch.cat([v, mu[:, None]], 1) if radius is not None else v
        past_x, past_step = (past_x + [x])[-history - 1 :], (past_step + [step])[-history - 1 :]
        if len(past_x) > 1:  # Anderson: the combination of recent steps with the smallest step
            dx = torch.stack([b - a_ for a_, b in zip(past_x, past_x[1:])], 2)
            ds = torch.stack([b - a_ for a_, b in zip(past_step, past_step[1:])], 2)
            gamma = torch.linalg.lstsq(ds, step[..., None]).solution
            mixed = step - ((dx + ds) @ gamma)[..., 0]
            step = torch.where(torch.isfinite(mixed).all(1, keepdim=True), mixed, step)
        x = torch.where(active[:, None], x + step, x)
        v = x[:, : v.shape[1]].contiguous()
        if radius is not None:
            mu = x[:, -1].contiguous()
    if radius is not None:
        converged &= mu >= 0  # a negative multiplier: the solution lies inside the ball
        v = v * (radius / torch.linalg.vector_norm(v, dim=1).clamp(min=torch.finfo(v.dtype).tiny))[:, None]
    return v.numpy(), converged.numpy()


def _multiplier(a, tail, g, v) -> torch.Tensor:
    """``mu >= 0`` with ``(B + mu I) v = -g`` for trust-region solutions ``v`` of the model ``B``."""
    k = a.shape[1]
    bv = (a @ v[:, :k, None])[..., 0]
    if tail is not None:
        bv = torch.cat([bv, tail * v[:, k:]], 1)
    vv = v.square().sum(1).clamp(min=torch.finfo(v.dtype).tiny)
    return (-(v * (g + bv)).sum(1) / vv).clamp(min=0.0)


def _shifted_cholesky(a, mu) -> torch.Tensor:
    """Cholesky factors of ``A + mu I`` (batched); ``A`` is a sum of outer products plus a ridge."""
    shifted = a.clone()
    shifted.diagonal(dim1=1, dim2=2).add_(mu[:, None])
    chol, info = torch.linalg.cholesky_ex(shifted)
    if bool((info != 0).any()):  # cannot happen for positive definite A; keep a clear failure
        raise FloatingPointError("model Hessian is not positive definite; raise [estimate].lam")
    return chol
