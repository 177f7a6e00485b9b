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
    Entries ``+-1 / sqrt(proj_dim)`` (the default: cheap to generate).
GaussianProjector
    Entries ``N(0, 1 / proj_dim)``.
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


def block_seed(seed: int, name: str, block: int) -> int:
    """Seed of one block of P: a hash of (projector seed, parameter name, block index)."""
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
    def _draw(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """A (rows, proj_dim) float32 block, unscaled (variance 1)."""

    def block(self, name: str, index: int, rows: int) -> torch.Tensor:
        """Block ``index`` of parameter ``name``: rows of P, shape (rows, proj_dim), scaled."""
        key = (name, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, name, index))
        block = (self._draw(rows, gen) / math.sqrt(self.proj_dim)).to(self.device)
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


class RademacherProjector(BlockwiseProjector):
    """Entries ``+-1 / sqrt(proj_dim)`` with equal probability."""

    kind = "rademacher"

    def _draw(self, rows, generator):
        bits = torch.randint(0, 2, (rows, self.proj_dim), generator=generator, dtype=torch.int8)
        return bits.float().mul_(2).sub_(1)


class GaussianProjector(BlockwiseProjector):
    """Entries ``N(0, 1 / proj_dim)``."""

    kind = "gaussian"

    def _draw(self, rows, generator):
        return torch.randn(rows, self.proj_dim, generator=generator)


class IdentityProjector(Projector):
    """No projection: the flattened gradient itself (proj_dim = n_params)."""

    kind = "identity"

    def __init__(self, param_shapes, proj_dim=None, seed=0, **_):
        super().__init__(param_shapes, 0, seed)
        self.proj_dim = self.n_params

    def project(self, grads):
        n = next(iter(grads.values())).shape[0]
        return torch.cat([grads[name].reshape(n, -1).float() for name in self.param_shapes], dim=1)


PROJECTORS: dict[str, type[Projector]] = {
    "rademacher": RademacherProjector,
    "gaussian": GaussianProjector,
    "identity": IdentityProjector,
}


def make_projector(kind: str, param_shapes, proj_dim: int, seed: int = 0, **kwargs) -> Projector:
    """Build a projector by name (see :data:`PROJECTORS`)."""
    return PROJECTORS[kind](param_shapes, proj_dim, seed, **kwargs)
