"""Numerical core of the linearized logistic model (float64, NumPy / torch).

Per subset S, with rows T_S (target train + the rows of S's sources),
m = |T_S|, ``z_j = b_j + g_j . v`` and ``loss(z) = log(1 + exp(-z))``::

    f(v)      = mean_{j in T_S} loss(z_j) + lam |v|^2
    grad f    = mean -sigmoid(-z_j) g_j + 2 lam v
    hess f    = mean sigmoid(z_j) sigmoid(-z_j) g_j g_j^T + 2 lam I

Exact solvers work on the rows; fast solvers on per-source sufficient
statistics at v = 0 (count, gradient sum, Hessian sum), so a subset costs
one d x d factorisation however many rows it has.
"""

from __future__ import annotations

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
            if f_new <= f + 1e-4 * t * slope or t < 1e-10:
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
    lies inside). ``lam`` is found by a safeguarded Newton iteration on
    ``1/|v(lam)| - 1/radius`` with ``dv/dlam = -H^-1 2 v``, bracketed.
    """
    if ridge > 0:
        v, _ = newton_l2(g, b, ridge, tol=tol, max_iter=max_iter)
        if np.linalg.norm(v) <= radius:
            return v
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


def summed_statistics(masks: np.ndarray, counts, grad_sums, hess_sums, base=None):
    """Statistics of each subset: sums over its sources (+ the ``base`` group).

    Parameters
    ----------
    masks : ndarray of shape (n_subsets, n_sources), bool
    counts, grad_sums, hess_sums : per-source statistics (ndarray or torch tensors)
    base : tuple of (count, grad_sum, hess_sum), optional
        Added to every subset (the target's train rows).

    Returns
    -------
    n : (n_subsets,), r : (n_subsets, proj_dim), h : (n_subsets, proj_dim, proj_dim)
        torch float64 tensors; the Hessian sums come from one GEMM over the
        flattened per-source Hessians.
    """
    counts, grad_sums, hess_sums = (torch.as_tensor(x, dtype=torch.float64) for x in (counts, grad_sums, hess_sums))
    w = torch.as_tensor(np.asarray(masks), dtype=torch.float64)
    d = grad_sums.shape[1]
    n = w @ counts
    r = w @ grad_sums
    h = (w @ hess_sums.reshape(len(counts), d * d)).reshape(-1, d, d)
    if base is not None:
        n += float(base[0])
        r += torch.as_tensor(base[1], dtype=torch.float64)
        h += torch.as_tensor(base[2], dtype=torch.float64)
    return n, r, h


def _system(n, r, h, ridge: float):
    """``A = h/n + 2 ridge I`` (in place of ``h``) and ``g = r/n``."""
    a = h.div_(n[:, None, None])
    a.diagonal(dim1=1, dim2=2).add_(2 * ridge)
    return a, r / n[:, None]


def fast_l2(n, r, h, lam: float) -> np.ndarray:
    """One Newton step from 0: ``v = -(h/n + 2 lam I)^-1 (r/n)``, batched.

    Takes the torch tensors of :func:`summed_statistics` (``h`` is overwritten).
    Returns an ndarray of shape (n_subsets, proj_dim).
    """
    a, g = _system(n, r, h, lam)
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        # Singular without regularisation (lam = 0 and fewer rows than dims): least squares.
        return -torch.linalg.lstsq(a, g[..., None]).solution[..., 0].numpy()
    return -torch.cholesky_solve(g[..., None], chol)[..., 0].numpy()


def fast_trust_region(n, r, h, radius, ridge: float = 0.0, max_iter: int = 50, rtol: float = 1e-10) -> np.ndarray:
    """Minimise the quadratic model ``g.v + v^T A v / 2`` over ``|v| <= radius`` (batched).

    ``A = h/n + 2 ridge I`` and ``g = r/n`` (torch tensors of
    :func:`summed_statistics`; ``h`` is overwritten). Moré-Sorensen: with
    ``v(mu) = -(A + mu I)^-1 g``, Newton steps on ``1/|v(mu)| - 1/radius``
    from ``mu = 0`` approach the root from below, one Cholesky each:
    ``mu += (|v| / |L^-1 v|)^2 (|v| - radius) / radius``. ``A`` is positive
    definite (a sum of outer products plus a ridge), so there is no hard case.
    As radius -> 0 the solution tends to ``-radius g / |g|``.

    Parameters
    ----------
    radius : float or array of shape (n_subsets,)

    Returns
    -------
    ndarray of shape (n_subsets, proj_dim)
    """
    a, g = _system(n, r, h, ridge)
    m, d = g.shape
    radius = torch.as_tensor(np.broadcast_to(np.asarray(radius, dtype=np.float64), (m,)).copy())
    eye = torch.eye(d, dtype=a.dtype)
    # Start below the root: |v(mu)| >= |g| / (lambda_max + mu), and Gershgorin bounds lambda_max.
    lam_max = a.abs().sum(2).max(1).values
    mu = torch.clamp(torch.linalg.vector_norm(g, dim=1) / radius - lam_max, min=0.0)
    v = torch.zeros_like(g)
    active = torch.linalg.vector_norm(g, dim=1) > 0
    for _ in range(max_iter):
        idx = torch.nonzero(active).flatten()
        if not len(idx):
            break
        shifted = a[idx] + mu[idx, None, None] * eye
        chol, info = torch.linalg.cholesky_ex(shifted)
        if bool((info != 0).any()):  # cannot happen for positive definite A; keep a clear failure
            raise FloatingPointError("trust-region system is not positive definite; raise [estimate].lam")
        vi = -torch.cholesky_solve(g[idx, :, None], chol)[..., 0]
        norm = torch.linalg.vector_norm(vi, dim=1)
        q = torch.linalg.solve_triangular(chol, vi[..., None], upper=False)[..., 0]
        qnorm = torch.linalg.vector_norm(q, dim=1)
        rad = radius[idx]
        inside = (mu[idx] == 0) & (norm <= rad)  # the Newton step itself fits: constraint inactive
        converged = inside | ((norm - rad).abs() <= rtol * rad)
        v[idx] = vi
        step = (norm / qnorm) ** 2 * (norm - rad) / rad
        mu[idx] = torch.where(converged, mu[idx], torch.clamp(mu[idx] + step, min=0.0))
        active[idx[converged]] = False
    # Land exactly on the sphere (the last Newton step leaves |v| within rtol of it).
    on_sphere = mu > 0
    v[on_sphere] *= (radius[on_sphere] / torch.linalg.vector_norm(v[on_sphere], dim=1))[:, None]
    return v.numpy()
