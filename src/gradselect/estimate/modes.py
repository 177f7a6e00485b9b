"""Step models: how a subset's linearized fine-tuning step is modelled, one class per mode.

A step model says three things, and the estimator, calibration, the trust check
and the CLI ask it for nothing else:

- **what to solve**: the L2 strength of each subset's logistic regression
  (:meth:`StepModel.ridge`), whether it is fitted with the meta-initialization's
  output values as offsets, and whether the step is bounded (:attr:`radius`);
- **which parameter calibration tunes** (:attr:`parameter`) and on which grid
  (:meth:`calibration_grid`);
- **how a step becomes a prediction** (:meth:`finish`: e.g. rescaled to a fixed norm)
  before the estimator scores it as ``b + g . v``.

Implementations
---------------
TrustRegionStep (``trust_region``)
    Minimise the linearized training loss subject to ``|v| <= radius``.
L2Step (``l2``)
    Minimise it plus ``lam * |v|^2``.
ReferenceStep (``reference``)
    The direction of the authors' released estimator: no offsets, sklearn's
    ``C = reference_c`` per row, the step rescaled to ``reference_fraction * |theta*|``,
    scored linearly like every mode here. Not their estimator in full: their code also
    fits an intercept on random labels, tunes the scale per task (0.02-0.5) and scores
    the lifted step with a real forward pass (our forward-pass steps are
    :mod:`gradselect.estimate.forward`).

To add a mode, subclass :class:`StepModel` (copy :class:`L2Step`), add its config
fields to :class:`~gradselect.estimate.config.EstimateConfig`, and register it in
:data:`STEP_MODELS`; the config, ``--mode``, calibration and the trust check find it
by name.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

#: EstimateConfig fields that only some modes read (the rest are read by every mode).
MODE_FIELDS = ("lam", "radius", "radius_fraction", "reference_c", "reference_fraction")


class StepModel(abc.ABC):
    """One estimator mode. Built from a fitted estimator's config and |theta*|.

    Parameters
    ----------
    config : EstimateConfig
    param_norm : float
        |theta*| over the differentiated parameters (scale of default step lengths).
    """

    name: ClassVar[str]
    #: The EstimateConfig field calibration tunes (None: nothing to calibrate).
    parameter: ClassVar[str | None] = None
    #: EstimateConfig fields this mode reads (of MODE_FIELDS); setting another one warns.
    reads: ClassVar[tuple[str, ...]] = ()
    #: Fit with the meta-initialization's output values as offsets (``b + g . v``).
    offsets: ClassVar[bool] = True

    def __init__(self, config, param_norm: float):
        self.config, self.param_norm = config, float(param_norm)

    @property
    def radius(self) -> float | None:
        """Bound on |v| (None: unbounded)."""
        return None

    @abc.abstractmethod
    def ridge(self, counts):
        """L2 strength of each subset's problem, given its training-row count(s)."""

    def finish(self, v: np.ndarray) -> np.ndarray:
        """The solved steps (n_subsets, proj_dim) as the steps to score."""
        return v

    def calibration_grid(self, measured_norms: list[float], n_grid: int) -> np.ndarray:
        """Values of :attr:`parameter` that calibration tries."""
        raise NotImplementedError(f"mode {self.name!r} has no calibrated parameter")


class TrustRegionStep(StepModel):
    """A step of fixed length: Adam-style fine-tuning moves a similar distance whatever the gradient size."""

    name = "trust_region"
    parameter = "radius"
    reads = ("radius", "radius_fraction")

    @property
    def radius(self) -> float:
        cfg = self.config
        return cfg.radius if cfg.radius is not None else cfg.radius_fraction * self.param_norm

    def ridge(self, counts):
        return self.config.lam * 1e-6  # only keeps the systems solvable

    def calibration_grid(self, measured_norms, n_grid):
        # Centred on the displacement real fine-tunes measured, else on the default radius.
        norms = [x for x in measured_norms if x]
        centre = float(np.median(norms)) if norms else self.config.radius_fraction * self.param_norm
        return centre * np.logspace(-2, 1, n_grid)


class L2Step(StepModel):
    """A step shrunk by an L2 penalty: its length follows the gradient's size."""

    name = "l2"
    parameter = "lam"
    reads = ("lam",)

    def ridge(self, counts):
        return self.config.lam

    def calibration_grid(self, measured_norms, n_grid):
        return np.logspace(-6, 2, n_grid)


class ReferenceStep(StepModel):
    """The authors' step direction (no offsets, sklearn's C, a fixed step norm), scored linearly; see the module
    docstring for what of their estimator it leaves out."""

    name = "reference"
    reads = ("reference_c", "reference_fraction")
    offsets = False

    def ridge(self, counts):
        # sklearn's C per row count: lam = 1 / (2 C n), a different lam for each subset.
        return 1.0 / (2.0 * self.config.reference_c * counts)

    def finish(self, v):
        target = self.config.reference_fraction * self.param_norm
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return np.where(norms > 0, v * (target / np.where(norms > 0, norms, 1)), 0.0)


STEP_MODELS: dict[str, type[StepModel]] = {cls.name: cls for cls in (TrustRegionStep, L2Step, ReferenceStep)}


def calibrated_modes() -> list[str]:
    """Names of the modes with a parameter to calibrate (the trust check tries each)."""
    return [name for name, cls in STEP_MODELS.items() if cls.parameter is not None]
