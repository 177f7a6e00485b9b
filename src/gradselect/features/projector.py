"""Random projections of per-example gradients, never materializing the whole matrix.

A projector maps gradients of the trainable parameters (n_params numbers per
example, split over named tensors) to ``proj_dim`` numbers:
``g = P^T grad``, with P of shape (n_params, proj_dim) and i.i.d. entries of
variance ``1 / proj_dim`` (so inner products are preserved in expectation).

P is cut into blocks: each parameter tensor's rows of P, in chunks of
:data:`BLOCK_ROWS` rows. Block ``k`` of parameter ``name`` is drawn from a
generator seeded by :func:`block_seed` ``(seed, name, k)`` (a hash of stable
names, not index arithmetic), so any process, rank or shard regenerates the
same matrix, whatever the order it visits parameters in. The working memory is
one block (``BLOCK_ROWS x proj_dim`` floats, 4 MiB at proj_dim=1024); blocks
are cached up to ``max_cache_mb`` and regenerated for every batch beyond it,
so the budget bounds memory without changing the matrix.

Implementations
---------------
RademacherProjector
    Entries ``+-1 / sqrt(proj_dim)`` (the default: cheap to generate, and generated on the
    gradients' device from a counter-based stream, the same bits on every device).
GaussianProjector
    Entries ``N(0, 1 / proj_dim)``, drawn by torch's CPU generator and copied to the device.
KroneckerProjector
    Per layer, ``P = (A kron B) R``: the weight gradient ``G`` (out x in) of each
    example is reduced to ``A^T G B`` (k x k) and mixed to ``proj_dim`` by ``R``.
    Because ``G = sum_t dy_t x_t^T`` for a linear layer, ``A^T G B = sum_t (A^T dy_t)
    (B^T x_t)^T`` is computed from the layer's output gradients and inputs without
    ever forming ``G`` (:meth:`KroneckerProjector.project_factors`; the structured
    projection of LoGra, which Bergson also uses): per-example memory is
    n_tokens x (out + in) instead of out x in. For full fine-tuning and large LoRA ranks.
IdentityProjector
    No projection (``proj_dim = n_params``); for tests and tiny models.
"""

from __future__ import annotations

import abc
import hashlib
import math
from typing import Mapping

import torch

#: Rows of P per generated block. Part of the matrix's definition: changing it
#: changes P (recorded in feature manifests).
BLOCK_ROWS = 1024


def block_seed(seed: int, name: str, block: int | str) -> int:
    """Seed of one block of P: a hash of (projector seed, parameter name, block index or factor name)."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{block}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class Projector(abc.ABC):
    """Projects a batch of per-example gradients to ``proj_dim`` dimensions."""

    kind: str

    def __init__(self, param_shapes: Mapping[str, tuple[int, ...]], proj_dim: int, seed: int = 0):
        self.param_shapes = {n: tuple(s) for n, s in param_shapes.items()}
        self.proj_dim = int(proj_dim)
        self.seed = int(seed)

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes.values())

    def lift(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """``P v``: a vector of the projected space taken back to the parameters.

        Since ``(P^T grad) . v = grad . (P v)``, a step ``v`` scored linearly on projected
        gradients is, to first order, the parameter step ``P v``; this gives it, so that it
        can be added to the parameters and scored by a real forward pass (the authors'
        estimator). Generic version: the gradient of ``project(x) . v`` in ``x`` (exact,
        since the projection is linear); subclasses compute it directly.

        Parameters
        ----------
        v : Tensor of shape (proj_dim,)

        Returns
        -------
        dict of str to Tensor of each parameter's shape, float32
        """
        v = self._check_lift(v)
        x = {n: torch.zeros((1, *s), dtype=torch.float32, device=v.device, requires_grad=True)
             for n, s in self.param_shapes.items()}
        with torch.enable_grad():
            value = self.project(x)[0].to(v.device) @ v
            grads = torch.autograd.grad(value, list(x.values()), allow_unused=True)
        return {n: (torch.zeros(s, device=v.device) if g is None else g[0])
                for (n, s), g in zip(self.param_shapes.items(), grads)}

    def _check_lift(self, v) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=torch.float32)
        if v.shape != (self.proj_dim,):
            raise ValueError(f"lift takes a vector of shape ({self.proj_dim},), got {tuple(v.shape)}")
        return v.to(getattr(self, "device", v.device))

    @abc.abstractmethod
    def project(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Project per-example gradients.

        Parameters
        ----------
        grads : mapping of str to Tensor of shape (n_examples, \\*param_shape)
            One entry per trainable parameter (all of them).

        Returns
        -------
        Tensor of shape (n_examples, proj_dim), float32
        """


class BlockwiseProjector(Projector):
    """Dense random P generated block by block from :func:`block_seed`.

    Parameters
    ----------
    param_shapes : mapping of str to tuple
        Trainable parameter names and shapes, in order.
    proj_dim : int
    seed : int
    max_cache_mb : float
        Keep generated blocks in memory up to this size; 0 regenerates always.
    device : torch.device or str
    """

    def __init__(
        self,
        param_shapes,
        proj_dim,
        seed=0,
        *,
        max_cache_mb: float = 1024.0,
        device="cpu",
    ):
        super().__init__(param_shapes, proj_dim, seed)
        if self.proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        self.max_cache_bytes = int(max_cache_mb * (1 << 20))
        self.device = torch.device(device)
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._cached_bytes = 0

    @abc.abstractmethod
    def _generate(self, seed: int, rows: int) -> torch.Tensor:
        """The block of seed ``seed``: shape (rows, proj_dim), float32, scaled, on ``self.device``."""

    def block(self, name: str, index: int, rows: int) -> torch.Tensor:
        """Block ``index`` of parameter ``name``: rows of P, shape (rows, proj_dim), scaled."""
        key = (name, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        block = self._generate(block_seed(self.seed, name, index), rows)
        size = block.numel() * block.element_size()
        if self._cached_bytes + size <= self.max_cache_bytes:
            self._cache[key] = block
            self._cached_bytes += size
        return block

    def project(self, grads):
        missing = set(self.param_shapes) - set(grads)
        assert not missing, f"gradients missing for {sorted(missing)[:3]}"
        n = next(iter(grads.values())).shape[0]
        out = torch.zeros(n, self.proj_dim, dtype=torch.float32, device=self.device)
        for name in self.param_shapes:
            flat = grads[name].reshape(n, -1).to(self.device, torch.float32)  # [n_examples, p_i]
            for index, start in enumerate(range(0, flat.shape[1], BLOCK_ROWS)):
                stop = min(flat.shape[1], start + BLOCK_ROWS)
                out.addmm_(flat[:, start:stop], self.block(name, index, stop - start))
        return out

    def lift(self, v):
        v = self._check_lift(v)
        out = {}
        for name, shape in self.param_shapes.items():
            p = math.prod(shape)
            flat = torch.cat([self.block(name, index, min(p, start + BLOCK_ROWS) - start) @ v
                              for index, start in enumerate(range(0, p, BLOCK_ROWS))])
            out[name] = flat.reshape(shape)
        return out

    def matrix(self) -> torch.Tensor:
        """The whole P, shape (n_params, proj_dim): for tests and reference code only."""
        parts = []
        for name, shape in self.param_shapes.items():
            p = math.prod(shape)
            for index, start in enumerate(range(0, p, BLOCK_ROWS)):
                parts.append(self.block(name, index, min(p, start + BLOCK_ROWS) - start))
        return torch.cat(parts, dim=0)

    def free_memory(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0


_GOLDEN = 0x9E3779B97F4A7C15
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _int64(c: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(key: int, n: int, device="cpu") -> torch.Tensor:
    """Words ``1..n`` of the SplitMix64 sequence seeded by ``key``, as int64 (the same bits as uint64).

    Counter-based: word ``w`` is a mix of ``key + w * golden``, so it is computed elementwise on any
    device, in any order, with the same bits everywhere (integer ops wrap alike on CPU and CUDA).
    """
    z = torch.arange(1, n + 1, dtype=torch.int64, device=device) * _int64(_GOLDEN) + _int64(key & ((1 << 64) - 1))
    z = (z ^ _shr(z, 30)) * _int64(_MIX[0])
    z = (z ^ _shr(z, 27)) * _int64(_MIX[1])
    return z ^ _shr(z, 31)


class RademacherProjector(BlockwiseProjector):
    """Entries ``+-1 / sqrt(proj_dim)`` with equal probability, generated on the projector's device.

    A block's entries are the bits of a counter-based stream (:func:`splitmix64` keyed by
    :func:`block_seed`), 64 entries per word: drawn where the gradients are (no host round trip),
    with the same matrix on every device."""

    kind = "rademacher"

    def _generate(self, seed, rows):
        n = rows * self.proj_dim
        words = splitmix64(seed, -(-n // 64), self.device)
        # Bit j of each word, low first: its 8 little-endian bytes (x86 and CUDA alike), 8 bits each.
        bits = (words.view(torch.uint8)[:, None] >> torch.arange(8, dtype=torch.uint8, device=self.device)) & 1
        block = bits.reshape(-1)[:n].reshape(rows, self.proj_dim).to(torch.float32)
        return block.mul_(2 / math.sqrt(self.proj_dim)).sub_(1 / math.sqrt(self.proj_dim))


class GaussianProjector(BlockwiseProjector):
    """Entries ``N(0, 1 / proj_dim)``."""

    kind = "gaussian"

    def _generate(self, seed, rows):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return (torch.randn(rows, self.proj_dim, generator=generator) / math.sqrt(self.proj_dim)).to(self.device)


class KroneckerProjector(Projector):
    """``P = (A kron B) R`` per parameter; see the module docstring.

    A parameter of shape (out, in) (any other shape is read as (shape[0], rest), and a
    vector as (1, n)) gets ``A`` (out x k_out) and ``B`` (in x k_in) with entries
    ``N(0, 1/k)``, or the identity on a side no larger than ``factor_dim`` (nothing to
    compress there), and ``R`` (k_out k_in x proj_dim) with entries ``N(0, 1/proj_dim)``;
    then ``E[P P^T] = I`` and inner products are preserved in expectation, as with a dense
    P. Every factor is drawn from :func:`block_seed` of (seed, parameter name, factor
    name), so processes and shards agree, and all are small enough to keep (a few MB for a
    135M model at ``factor_dim`` 16).

    Parameters
    ----------
    param_shapes : mapping of str to tuple
    proj_dim : int
    seed : int
    factor_dim : int
        k: each side of a layer is reduced to at most this many dimensions first.
    device : torch.device or str
    """

    kind = "kronecker"

    def __init__(self, param_shapes, proj_dim, seed=0, *, factor_dim: int = 16, device="cpu", **_):
        super().__init__(param_shapes, proj_dim, seed)
        if self.proj_dim < 1 or factor_dim < 1:
            raise ValueError(f"proj_dim and factor_dim must be >= 1, got {proj_dim}, {factor_dim}")
        self.factor_dim = int(factor_dim)
        self.device = torch.device(device)
        self._factors: dict[str, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]] = {}

    @staticmethod
    def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
        """How a parameter is read as a matrix: (out, in)."""
        if len(shape) == 1:
            return 1, shape[0]
        return shape[0], math.prod(shape[1:])

    def _side(self, name: str, side: str, n: int) -> torch.Tensor | None:
        if n <= self.factor_dim:
            return None  # identity
        gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, name, side))
        return (torch.randn(n, self.factor_dim, generator=gen) / math.sqrt(self.factor_dim)).to(self.device)

    def factors(self, name: str):
        """``(A or None, B or None, R)`` of one parameter; None stands for the identity."""
        if name not in self._factors:
            out, inp = self.matrix_shape(self.param_shapes[name])
            a, b = self._side(name, "A", out), self._side(name, "B", inp)
            k_out, k_in = (out if a is None else a.shape[1]), (inp if b is None else b.shape[1])
            gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, name, "R"))
            r = (torch.randn(k_out * k_in, self.proj_dim, generator=gen) / math.sqrt(self.proj_dim)).to(self.device)
            self._factors[name] = (a, b, r)
        return self._factors[name]

    def project(self, grads, factors=None):
        """Project per-example gradients, given whole (``grads``) or as linear-layer factors.

        Parameters
        ----------
        grads : mapping of str to Tensor of shape (n_examples, \\*param_shape)
        factors : mapping of str to (dy, x), optional
            Weights given as :meth:`project_factors` takes them instead of as gradients;
            together with ``grads`` they must cover every parameter.
        """
        factors = factors or {}
        missing = set(self.param_shapes) - set(grads) - set(factors)
        assert not missing, f"gradients missing for {sorted(missing)[:3]}"
        n = next(iter(grads.values())).shape[0] if grads else next(iter(factors.values()))[0].shape[0]
        out = torch.zeros(n, self.proj_dim, dtype=torch.float32, device=self.device)
        for name, (dy, x) in factors.items():
            out += self.project_factors(name, dy, x)
        for name in self.param_shapes:
            if name in factors:
                continue
            a, b, r = self.factors(name)
            g = grads[name].reshape(n, *self.matrix_shape(self.param_shapes[name])).to(self.device, torch.float32)
            if a is not None:
                g = torch.einsum("noi,ok->nki", g, a)  # [n_examples, k_out, in]
            if b is not None:
                g = g @ b  # [n_examples, k_out, k_in]
            out.addmm_(g.reshape(n, -1), r)
        return out

    def project_factors(self, name: str, dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Projection of a linear layer's per-example weight gradient ``sum_t dy_t x_t^T``, never formed.

        Parameters
        ----------
        name : str
            The weight parameter (shape (out, in)).
        dy : Tensor of shape (n_examples, n_tokens, out)
            Gradients of the output function w.r.t. the layer's outputs.
        x : Tensor of shape (n_examples, n_tokens, in)
            The layer's inputs.

        Returns
        -------
        Tensor of shape (n_examples, proj_dim), float32
        """
        a, b, r = self.factors(name)
        dy, x = dy.to(self.device, torch.float32), x.to(self.device, torch.float32)
        dy = dy if a is None else dy @ a  # [n_examples, n_tokens, k_out]
        x = x if b is None else x @ b  # [n_examples, n_tokens, k_in]
        z = torch.einsum("nto,nti->noi", dy, x)  # [n_examples, k_out, k_in] = A^T G B
        return z.reshape(z.shape[0], -1) @ r

    def matrix(self) -> torch.Tensor:
        """The whole P, shape (n_params, proj_dim): for tests and reference code only."""
        parts = []
        for name, shape in self.param_shapes.items():
            a, b, r = self.factors(name)
            out, inp = self.matrix_shape(shape)
            a = torch.eye(out, device=self.device) if a is None else a
            b = torch.eye(inp, device=self.device) if b is None else b
            parts.append(torch.kron(a, b) @ r)  # row o * in + i: the row-major flattening of G
        return torch.cat(parts, dim=0)

    def free_memory(self) -> None:
        self._factors.clear()


class IdentityProjector(Projector):
    """No projection: the flattened gradient itself (proj_dim = n_params)."""

    kind = "identity"

    def __init__(self, param_shapes, proj_dim=None, seed=0, **_):
        super().__init__(param_shapes, 0, seed)
        self.proj_dim = self.n_params

    def project(self, grads):
        n = next(iter(grads.values())).shape[0]
        return torch.cat([grads[name].reshape(n, -1).float() for name in self.param_shapes], dim=1)

    def lift(self, v):
        v = self._check_lift(v)
        out, start = {}, 0
        for name, shape in self.param_shapes.items():
            p = math.prod(shape)
            out[name] = v[start:start + p].reshape(shape).clone()
            start += p
        return out


PROJECTORS: dict[str, type[Projector]] = {
    "rademacher": RademacherProjector,
    "gaussian": GaussianProjector,
    "identity": IdentityProjector,
    "kronecker": KroneckerProjector,
}


def make_projector(kind: str, param_shapes, proj_dim: int, seed: int = 0, **kwargs) -> Projector:
    """Build a projector by name (see :data:`PROJECTORS`)."""
    return PROJECTORS[kind](param_shapes, proj_dim, seed, **kwargs)
