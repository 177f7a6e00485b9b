"""Calibration of the estimator's step on real fine-tunes, and the ``calibration.json`` artifact.

:func:`calibrate` chooses a step model's parameter (the trust-region radius, the
L2 lam: whatever :attr:`StepModel.parameter` names) on the model's own grid to
minimise the mean relative error of the estimates against the true losses of
validated subsets; leave-one-out (choose on all subsets but one, score the one
left out) says how well that choice generalises instead of fitting noise.

The artifact is written by :func:`write_calibration` (the trust check, beside the
feature store it was fitted on, stamped with that store's identity) and read by
:func:`apply_calibration`, which ignores it loudly for any other store.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from gradselect.estimate.config import EstimateConfig
from gradselect.estimate.estimator import SubsetEstimator
from gradselect.estimate.modes import STEP_MODELS
from gradselect.io import content_key, write_json_atomic

log = logging.getLogger(__name__)
CALIBRATION_VERSION = 1


def calibrate(arrays, config: EstimateConfig, subsets: list[list[str]], true_losses, projected_norms=None,
              n_grid: int = 25) -> dict:
    """Best value of the mode's parameter for these validated subsets, with its leave-one-out error.

    Parameters
    ----------
    arrays : FeatureArrays
    config : EstimateConfig
        Its mode decides the parameter (a mode without one returns ``parameter: None``).
    subsets : list of list of str
        Validated subsets (n_subsets).
    true_losses : array of shape (n_subsets,)
    projected_norms : sequence of float, optional
        Measured projected displacements of the real fine-tunes (reported, and
        centring the radius grid).
    """
    true = np.asarray(true_losses, dtype=float)
    key = STEP_MODELS[config.mode].parameter
    if key is None:
        return {"parameter": None, "note": f"the {config.mode} mode has no calibrated parameter"}
    norms = [x for x in (projected_norms or []) if x]
    grid = config.step_model(arrays.param_norm).calibration_grid(norms, n_grid)
    errors = np.empty((len(grid), len(true)))
    fitted = SubsetEstimator(config).fit(arrays)
    for g, value in enumerate(grid):
        est = fitted.with_config(config.model_copy(update={key: float(value)})).estimate(subsets)
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


def features_identity(manifest: dict) -> str:
    """What a calibration was fitted on: base model, theta*, data, projector and output function."""
    return content_key(manifest.get("model", {}).get("weights_sha256"), manifest.get("adapter", {}).get("sha256"),
                       manifest.get("dataset_fingerprint"), manifest.get("projector"), manifest.get("output_function"),
                       *(["skip_special_tokens"] if manifest.get("skip_special_tokens") else []))


def write_calibration(path: Path, chosen: dict, candidates: dict, *, manifest: dict, validation: Path,
                      surrogate: dict | None = None, gain_rmse: float | None = None) -> None:
    """The trust check's calibration, stamped with the identity of the features it was fitted on
    (with its residual surrogate, when one was fitted, and the measured RMS error of the estimated
    gain over the target alone, :func:`gradselect.validate.trust.gain_error`)."""
    write_json_atomic(Path(path), {
        "calibration_version": CALIBRATION_VERSION, "mode": chosen["mode"],
        **{k: chosen[k] for k in ("parameter", "value", "mean_relative_error", "loo_mean_relative_error")},
        **{k: chosen[k] for k in ("criterion", "level") if k in chosen},
        "candidates": candidates, "features": features_identity(manifest), "validation": str(validation),
        **({"residual_surrogate": surrogate} if surrogate else {}),
        **({"gain_rmse": float(gain_rmse)} if gain_rmse is not None else {}),
    })


def read_calibration(calibration_file: Path | None, manifest: dict | None = None) -> dict | None:
    """The trust check's calibration in ``calibration_file``, or None (absent, corrupt or fitted on other
    features than ``manifest``'s: the last two with a warning)."""
    if calibration_file is None or not Path(calibration_file).exists():
        return None
    try:
        calib = json.loads(Path(calibration_file).read_text())
    except (OSError, json.JSONDecodeError) as err:
        warnings.warn(f"{calibration_file} is corrupt ({err}); estimating without it", UserWarning, stacklevel=3)
        return None
    if manifest is not None and calib.get("features") != features_identity(manifest):
        warnings.warn(f"{calibration_file} was fitted on other features (another model, theta*, data or projector) "
                      "and is ignored; rerun gradselect validate on these features", UserWarning, stacklevel=3)
        return None
    return calib


def apply_calibration(estimate_config: EstimateConfig, calibration_file: Path | None, manifest: dict | None = None):
    """``estimate_config`` with the trust check's mode and step applied from ``calibration_file``.

    The trust check calibrates every step model and names the one with the lower
    leave-one-out error. A config that sets ``mode`` keeps it (with that mode's
    calibrated step); one that sets the step itself keeps its own. A calibration
    fitted on other features than ``manifest``'s is ignored with a warning.
    """
    calib = read_calibration(calibration_file, manifest)
    return estimate_config if calib is None else calibrated_config(estimate_config, calib, source=calibration_file)


def calibrated_config(estimate_config: EstimateConfig, calib: dict, *, source=None) -> EstimateConfig:
    """``estimate_config`` with the mode and step of a calibration (the dict of ``calibration.json``) applied;
    see :func:`apply_calibration`."""
    fields = estimate_config.model_fields_set
    if "mode" in fields:
        mode = estimate_config.mode
        entry = calib.get("candidates", {}).get(mode) or (calib if calib.get("mode") == mode else None)
    else:
        mode, entry = calib.get("mode"), calib
    key = (entry or {}).get("parameter")
    if mode not in STEP_MODELS or key != STEP_MODELS[mode].parameter or key is None:
        return estimate_config
    steps = {cls.parameter for cls in STEP_MODELS.values() if cls.parameter}
    if key in fields or steps & fields and mode != estimate_config.mode:
        log.info("config sets its own step; ignoring the calibration in %s", source)
        return estimate_config
    log.info("using calibrated mode %s, %s = %.4g from %s", mode, key, entry["value"], source)
    return estimate_config.model_copy(update={"mode": mode, key: entry["value"]})


def apply_surrogate(estimator, calibration_file: Path | None, manifest: dict | None = None):
    """``estimator`` corrected by the trust check's residual surrogate in ``calibration_file``
    (a :class:`~gradselect.estimate.surrogate.CorrectedEstimator`), or ``estimator`` itself.

    The surrogate is used when the trust check decided so (``apply``) and it was fitted on the
    residuals of this very estimator (same config); for another config it is skipped with a
    warning, since its residuals were another estimator's.
    For the same config, the estimator's ``gain_error_`` is set to the trust check's measured
    error of the estimated gain over the target alone (corrected or not).
    """
    from gradselect.estimate.surrogate import CorrectedEstimator, ResidualSurrogate

    calib = read_calibration(calibration_file, manifest)
    entry = (calib or {}).get("residual_surrogate")
    if not entry:
        return estimator
    same = entry.get("estimator") == estimator.config_.model_dump(mode="json")
    if same and calib.get("gain_rmse") is not None:
        # What the trust check measured of these very estimates: selection's evidence margin allows for it.
        estimator.gain_error_ = float(calib["gain_rmse"])
    if not entry.get("apply"):
        return estimator
    if not same:
        warnings.warn(f"{calibration_file}: the residual surrogate was fitted on another estimator config than this "
                      "one and is not used; rerun gradselect validate with this [estimate] section",
                      UserWarning, stacklevel=2)
        return estimator
    surrogate = ResidualSurrogate.from_dict(entry, estimator.source_names_, where=str(calibration_file))
    log.info("correcting estimates by the residual surrogate of %d validated subsets in %s",
             len(surrogate.masks_), calibration_file)
    return CorrectedEstimator(estimator, surrogate)


def ranking_candidates(arrays, config: EstimateConfig, n_grid: int = 25) -> list[EstimateConfig]:
    """The steps :func:`calibrate_for_ranking` chooses among: ``config`` first, then a grid per calibrated
    mode fixed in advance (from |theta*|, never from the truth)."""
    from gradselect.estimate.modes import calibrated_modes

    configs = [config]
    for mode in calibrated_modes():
        cfg = config.model_copy(update={"mode": mode})
        key = STEP_MODELS[mode].parameter
        configs += [cfg.model_copy(update={key: float(v)}) for v in cfg.step_model(arrays.param_norm).calibration_grid(
            [], n_grid)]
    return configs


def candidate_estimates(arrays, configs: list[EstimateConfig], subsets) -> tuple[np.ndarray, float]:
    """Estimates of ``subsets`` under each config, shape (n_configs, n_subsets), and the estimator's
    loss at theta*; one fit per set of statistics, not per step value."""
    estimates, base = [], None
    fitted = SubsetEstimator(configs[0]).fit(arrays)
    for cfg in configs:
        est = fitted.with_config(cfg)
        estimates.append(est.estimate(subsets))
        base = est.base_loss_
    return np.array(estimates), base


def calibrate_for_ranking(arrays, config: EstimateConfig, subsets: list[list[str]], true_losses,
                          n_grid: int = 25, *, one_se: bool = True, precomputed=None, n_boot: int = 1000) -> dict:
    """Choose the step model and its parameter by how well they *order* the validated subsets, then fit
    the level separately; every reported figure is leave-one-out.

    Selection uses only the order of the estimates, so the step is chosen by pairwise order
    accuracy (the share of subset pairs ordered as in truth), never traded for the level, and
    only when it beats the configured step by more than one standard error
    (:func:`~gradselect.validate.fidelity.one_se_choice`): with a few validated subsets the
    best of many candidates is often ahead by chance.
    The level, an affine map of the predicted change ``d_true ~ a + b d_est`` (two
    parameters, order-preserving for b > 0), is fitted after. The candidates are the
    configured step first, then a grid per calibrated mode fixed in advance (it depends on
    |theta*|, never on the truth), so the held-out subset influences neither.

    Returns
    -------
    dict
        ``mode``, ``parameter``, ``value`` (chosen on all subsets), ``level`` (``intercept``,
        ``slope`` of the affine map), ``in_sample_pairwise_accuracy``, and ``loo``: the figures
        of :func:`gradselect.validate.fidelity.score` for the held-out predictions (choice and
        level both fitted without the subset predicted), with ``loo_choices`` (how often each
        mode was chosen).

    ``precomputed``: ``(estimates, base)`` of :func:`candidate_estimates` for these subsets and the
    candidates of :func:`ranking_candidates` (benchmarks that calibrate on many draws of subsets
    estimate every candidate once); ``n_boot``: bootstrap draws of the held-out figures' intervals.
    """
    from gradselect.estimate.modes import calibrated_modes
    from gradselect.validate.fidelity import fit_level, one_se_choice, pairwise_accuracy, score

    true = np.asarray(true_losses, dtype=float)
    configs = ranking_candidates(arrays, config, n_grid)
    if precomputed is None:
        estimates, base = candidate_estimates(arrays, configs, subsets)
    else:
        estimates, base = precomputed
        estimates = np.asarray(estimates, dtype=float)
        if estimates.shape != (len(configs), len(true)):
            raise ValueError(f"precomputed estimates must have shape {(len(configs), len(true))}, "
                             f"got {estimates.shape}")
    # A step that saturates the functional (every estimate ~0) or estimates every subset alike orders
    # them by rounding noise: never a candidate (selection would refuse to rank on it).
    scale = max(abs(base), 1e-300)
    usable = (estimates.max(1) > 1e-6 * scale) & (np.ptp(estimates, axis=1) > 1e-9 * scale)
    usable[0] |= not usable.any()

    def choose(keep):
        # The configured step unless another orders the subsets better by more than the noise of so few
        # (one_se=False: the best, however slightly; for comparison in the benchmarks).
        return one_se_choice(estimates[:, keep], true[keep], usable=usable, n_boot=200 if one_se else 0)

    def level(c, keep):
        return fit_level(estimates[c, keep] - base, true[keep] - base)

    held_out, choices = np.empty(len(true)), []
    for i in range(len(true)):
        keep = np.arange(len(true)) != i
        c = choose(keep)
        a, b = level(c, keep)
        held_out[i] = base + a + b * (estimates[c, i] - base)
        choices.append(configs[c].mode)
    every = np.ones(len(true), dtype=bool)
    c = choose(every)
    a, b = level(c, every)
    chosen = configs[c]
    key = STEP_MODELS[chosen.mode].parameter
    value = getattr(chosen, key) if key else None
    if key == "radius" and value is None:
        value = chosen.step_model(arrays.param_norm).radius
    loo = score(held_out, true, base_estimated=base, n_boot=n_boot)
    loo["loo_choices"] = {m: choices.count(m) for m in sorted(set(choices))}
    per_mode = {}
    for mode in calibrated_modes():
        idx = [j for j, cfg in enumerate(configs) if cfg.mode == mode and j > 0 and usable[j]]
        marks = [pairwise_accuracy(estimates[j], true) for j in idx]
        j = idx[int(np.nanargmax(marks))] if idx and np.isfinite(marks).any() else None
        if j is not None:
            p = STEP_MODELS[mode].parameter
            per_mode[mode] = {"parameter": p, "value": float(getattr(configs[j], p)),
                              "in_sample_pairwise_accuracy": float(marks[idx.index(j)])}
    return {
        "per_mode": per_mode,
        "criterion": "pairwise_accuracy",
        "rule": "one standard error toward the configured step" if one_se else "best",
        "mode": chosen.mode, "parameter": key, "value": value,
        "level": {"intercept": a, "slope": b}, "in_sample_pairwise_accuracy": pairwise_accuracy(estimates[c], true),
        "loo": loo, "n_candidates": len(configs), "held_out_predictions": [float(x) for x in held_out],
        # What apply_calibration and the summaries read:
        "mean_relative_error": float(np.mean(np.abs(base + a + b * (estimates[c] - base) - true) / true)),
        "loo_mean_relative_error": loo["mean_relative_error"],
    }
