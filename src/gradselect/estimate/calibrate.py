"""Calibrate the estimator's step (trust-region radius or L2 strength) on real fine-tunes.

The parameter is chosen on a log grid to minimise the mean relative error of
the estimates against the true losses of validated subsets; leave-one-out
(choose on all subsets but one, score the one left out) says how well that
choice generalises instead of fitting noise.
"""

from __future__ import annotations

import numpy as np

from gradselect.estimate.config import EstimateConfig
from gradselect.estimate.estimator import SubsetEstimator


def calibrate(arrays, config: EstimateConfig, subsets: list[list[str]], true_losses, projected_norms=None,
              n_grid: int = 25) -> dict:
    """Best radius (trust region) or lam (L2) for these validated subsets, with its leave-one-out error.

    Parameters
    ----------
    arrays : FeatureArrays
    config : EstimateConfig
        Its mode decides the parameter; the reference mode has none to calibrate.
    subsets : list of list of str
        Validated subsets (n_subsets).
    true_losses : array of shape (n_subsets,)
    projected_norms : sequence of float, optional
        Measured projected displacements of the real fine-tunes (reported, and
        centring the radius grid).
    """
    true = np.asarray(true_losses, dtype=float)
    if config.mode == "reference":
        return {"parameter": None, "note": "the reference mode has no calibrated parameter"}
    norms = [x for x in (projected_norms or []) if x]
    if config.mode == "trust_region":
        centre = float(np.median(norms)) if norms else config.radius_fraction * arrays.param_norm
        grid = centre * np.logspace(-2, 1, n_grid)
        key = "radius"
    else:
        grid = np.logspace(-6, 2, n_grid)
        key = "lam"
    errors = np.empty((len(grid), len(true)))
    for g, value in enumerate(grid):
        est = SubsetEstimator(config.model_copy(update={key: float(value)})).fit(arrays).estimate(subsets)
        errors[g] = np.abs(est - true) / true
    mean_err = errors.mean(1)
    best = int(np.argmin(mean_err))
    loo = []
    for i in range(len(true)):
        others = np.delete(errors, i, axis=1).mean(1)
        loo.append(errors[int(np.argmin(others)), i])
    return {
        "parameter": key,
        "value": float(grid[best]),
        "mean_relative_error": float(mean_err[best]),
        "loo_mean_relative_error": float(np.mean(loo)),
        "measured_projected_norm_median": float(np.median(norms)) if norms else None,
        "grid": [float(x) for x in grid],
        "grid_mean_relative_error": [float(x) for x in mean_err],
    }
