"""The residual surrogate: kernel ridge (additive or RBF) on the trust check's residuals, applied to every estimate."""

import json
import warnings

import numpy as np
import pytest

from gradselect.errors import ArtifactError
from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
from gradselect.estimate.surrogate import CorrectedEstimator, ResidualSurrogate
from gradselect.select import EnsembleSelector, ForwardSelector


def arrays(seed=0, n_sources=6):
    rng = np.random.default_rng(seed)
    n = 100 + 50 * n_sources
    g = rng.normal(size=(n, 6))
    b = rng.normal(1.0, 0.5, size=n)
    rows = {s: np.arange(100 + 50 * i, 150 + 50 * i) for i, s in enumerate("abcdefgh"[:n_sources])}
    return FeatureArrays(g, b, rows, np.arange(0, 50), np.arange(50, 100), param_norm=3.0)


SUBSETS = [list(c) for c in ("abcdef", "", "ab", "cd", "ef", "abc", "def", "ace", "bdf", "a", "f", "bcde")]


def interaction(masks):
    """A truth the first-order estimate cannot see: sources a and b together hurt."""
    m = np.asarray(masks, bool)
    return 0.2 * (m[:, 0] & m[:, 1])


def test_surrogate_fits_the_residuals_and_matches_sklearn():
    from sklearn.kernel_ridge import KernelRidge

    rng = np.random.default_rng(1)
    masks = np.unique(rng.random((30, 6)) < 0.5, axis=0)[:12]  # distinct subsets
    residuals = rng.normal(size=12)
    sur = ResidualSurrogate("rbf", alpha=1e-2).fit(masks, residuals)
    ref = KernelRidge(alpha=1e-2, kernel="rbf", gamma=1 / 6).fit(masks.astype(float), residuals - residuals.mean())
    new = rng.random((5, 6)) < 0.5
    assert np.allclose(sur.predict(new), residuals.mean() + ref.predict(new.astype(float)))
    # Near-interpolation at the fitted subsets (small ridge), the mean residual far from all of them.
    assert np.abs(sur.predict(masks) - residuals).max() < 0.1 * np.abs(residuals).max()
    far = ResidualSurrogate("rbf", alpha=1e-2, gamma=50.0).fit(masks, residuals)
    unseen = ~masks[:1]
    if not (masks == unseen).all(1).any():
        assert far.predict(unseen)[0] == pytest.approx(residuals.mean(), abs=1e-6)


def test_additive_kernel_is_ridge_on_centred_indicators_and_recovers_source_effects():
    rng = np.random.default_rng(4)
    masks = rng.random((12, 6)) < 0.5
    residuals = rng.normal(size=12)
    sur = ResidualSurrogate("additive", alpha=3.0).fit(masks, residuals)
    # The primal solution: one shrunk effect per source on the validated subsets' centred indicators.
    x = masks - masks.mean(0)
    coef = np.linalg.solve(x.T @ x + 3.0 * np.eye(6), x.T @ (residuals - residuals.mean()))
    new = rng.random((5, 6)) < 0.5
    assert np.allclose(sur.predict(new), residuals.mean() + (new - masks.mean(0)) @ coef)
    # Residuals that are per-source effects: a light ridge recovers them, on subsets it never saw too.
    masks = np.unique(rng.random((40, 6)) < 0.5, axis=0)
    effects = np.array([0.3, -0.2, 0.0, 0.1, 0.0, -0.1])
    light = ResidualSurrogate("additive", alpha=1e-6).fit(masks[:20], masks[:20] @ effects + 1.0)
    assert np.allclose(light.predict(masks[20:]), masks[20:] @ effects + 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="kernel"):
        ResidualSurrogate("linear")
    assert ResidualSurrogate().kernel == "additive" and ResidualSurrogate("rbf").alpha == 1e-2


@pytest.mark.parametrize("kernel", ["additive", "rbf"])
def test_held_out_corrections_never_see_the_subset_they_predict(kernel):
    rng = np.random.default_rng(2)
    masks = rng.random((10, 6)) < 0.5
    residuals = rng.normal(size=10)
    held = ResidualSurrogate.held_out(masks, residuals, kernel=kernel)
    wild = residuals.copy()
    wild[4] = 100.0
    again = ResidualSurrogate.held_out(masks, wild, kernel=kernel)
    assert again[4] == held[4] and not np.allclose(np.delete(again, 4), np.delete(held, 4))


@pytest.mark.parametrize("kernel", ["additive", "rbf"])
def test_json_round_trip_and_malformed_files(kernel):
    rng = np.random.default_rng(3)
    masks = rng.random((8, 4)) < 0.5
    names = ["a", "b", "c", "d"]
    sur = ResidualSurrogate(kernel).fit(masks, rng.normal(size=8))
    data = json.loads(json.dumps(sur.to_dict(names)))
    back = ResidualSurrogate.from_dict(data, names)
    probe = rng.random((6, 4)) < 0.5
    assert back.kernel == kernel and np.array_equal(back.predict(probe), sur.predict(probe))
    with pytest.raises(ArtifactError, match="kernel"):
        ResidualSurrogate.from_dict(data | {"kernel": "poly"}, names)
    with pytest.raises(ArtifactError, match="fitted on sources"):
        ResidualSurrogate.from_dict(data, ["a", "b", "c", "e"])
    with pytest.raises(ArtifactError, match="dual_coef"):
        ResidualSurrogate.from_dict(data | {"dual_coef": data["dual_coef"][:-1]}, names)
    with pytest.raises(ArtifactError, match="malformed"):
        ResidualSurrogate.from_dict({k: v for k, v in data.items() if k != "offset"}, names)
    with pytest.raises(ArtifactError, match="version"):
        ResidualSurrogate.from_dict(data | {"surrogate_version": 99}, names)


def test_corrected_estimator_learns_an_interaction_and_selectors_use_it():
    feats = arrays()
    est = SubsetEstimator(EstimateConfig()).fit(feats)
    masks = est.subset_masks(SUBSETS)
    true = est.estimate(masks) + interaction(masks)
    corrected = CorrectedEstimator(est, ResidualSurrogate("rbf").fit(masks, true - est.estimate(masks)))
    assert corrected.source_names_ == est.source_names_ and corrected.base_loss_ == est.base_loss_
    assert np.abs(corrected.estimate(SUBSETS) - true).max() < 0.02
    # Unvalidated subsets holding a and b are estimated worse than without the correction.
    probe = est.subset_masks([["a", "b", "d"], ["a", "c", "d"]])
    shift = corrected.estimate(probe) - est.estimate(probe)
    assert shift[0] > shift[1] + 0.05
    # Every selector runs on it unchanged; none keeps both a and b.
    for selector in (EnsembleSelector(n_subsets=64, seed=0), ForwardSelector()):
        chosen = selector.select(corrected).chosen
        assert not {"a", "b"} <= set(chosen)


def test_fit_surrogate_applies_it_only_when_it_orders_held_out_subsets_better():
    from gradselect.validate.calibration import calibrate_for_ranking
    from gradselect.validate.trust import fit_surrogate

    feats = arrays()
    cfg = EstimateConfig()
    est = SubsetEstimator(cfg).fit(feats)
    masks = est.subset_masks(SUBSETS)
    # A truth where the first-order model misjudges three sources' effects (sizes beyond its own spread):
    # the surrogate's held-out order beats the calibration's.
    true = est.estimate(masks) + 0.02 * masks[:, 5] - 0.015 * masks[:, 0] + 0.01 * masks[:, 2]
    calib = calibrate_for_ranking(feats, cfg, SUBSETS, true)
    out = fit_surrogate(feats, cfg, SUBSETS, true, calib["held_out_predictions"], mode="auto")
    assert out["apply"] and out["fitted"]["apply"] and out["kernel"] == out["fitted"]["kernel"] == "additive"
    rbf = fit_surrogate(feats, cfg, SUBSETS, true, calib["held_out_predictions"], mode="on", kernel="rbf")
    assert rbf["kernel"] == rbf["fitted"]["kernel"] == "rbf"
    assert out["loo"]["pairwise_accuracy"] > out["loo_calibrated"]["pairwise_accuracy"]
    assert out["fitted"]["estimator"] == cfg.model_dump(mode="json")
    # A truth the estimate already orders perfectly: nothing to gain, not applied (auto) unless asked.
    exact = est.estimate(masks)
    calib = calibrate_for_ranking(feats, cfg, SUBSETS, exact)
    assert not fit_surrogate(feats, cfg, SUBSETS, exact, calib["held_out_predictions"], mode="auto")["apply"]
    assert fit_surrogate(feats, cfg, SUBSETS, exact, calib["held_out_predictions"], mode="on")["apply"]
    assert not fit_surrogate(feats, cfg, SUBSETS, true, calib["held_out_predictions"], mode="off")["apply"]


def test_apply_surrogate_only_for_the_estimator_it_was_fitted_on(tmp_path):
    from gradselect.validate import apply_surrogate

    feats = arrays()
    est = SubsetEstimator(EstimateConfig()).fit(feats)
    masks = est.subset_masks(SUBSETS)
    sur = ResidualSurrogate().fit(masks, interaction(masks))
    entry = sur.to_dict(est.source_names_) | {"apply": True, "estimator": EstimateConfig().model_dump(mode="json")}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"mode": "trust_region", "residual_surrogate": entry}))
    assert isinstance(apply_surrogate(est, path), CorrectedEstimator)
    other = SubsetEstimator(EstimateConfig(mode="l2")).fit(feats)
    with pytest.warns(UserWarning, match="another estimator config"):
        assert apply_surrogate(other, path) is other
    path.write_text(json.dumps({"mode": "trust_region", "residual_surrogate": entry | {"apply": False}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_surrogate(est, path) is est
    assert apply_surrogate(est, tmp_path / "missing.json") is est
    # The measured gain error reaches the estimator it was measured on, corrected or not, and no other.
    path.write_text(json.dumps({"mode": "trust_region", "residual_surrogate": entry, "gain_rmse": 0.03}))
    assert apply_surrogate(SubsetEstimator(EstimateConfig()).fit(feats), path).gain_error_ == 0.03
    path.write_text(json.dumps({"mode": "trust_region", "residual_surrogate": entry | {"apply": False},
                                "gain_rmse": 0.03}))
    assert apply_surrogate(SubsetEstimator(EstimateConfig()).fit(feats), path).gain_error_ == 0.03
    with pytest.warns(UserWarning):
        other = SubsetEstimator(EstimateConfig(mode="l2")).fit(feats)
        path.write_text(json.dumps({"mode": "trust_region", "residual_surrogate": entry, "gain_rmse": 0.03}))
        assert apply_surrogate(other, path).gain_error_ is None


def test_gain_error_is_the_error_of_differences_to_the_target_alone():
    from gradselect.validate.trust import gain_error

    subsets = [["a"], [], ["a", "b"], ["b"]]
    true = np.array([0.5, 0.6, 0.4, 0.7])
    assert gain_error(true + 0.3, true, subsets) == pytest.approx(0.0)  # a shared level error cancels
    est = true.copy()
    est[2] += 0.1
    est[3] -= 0.1
    assert gain_error(est, true, subsets) == pytest.approx(np.sqrt((0 + 0.01 + 0.01) / 3))
    assert gain_error(est, true, [["a"], ["b"], ["a", "b"], ["c"]]) is None
    # A reference for the target alone (fitted on its truth): only the others' errors remain, against it.
    assert gain_error(est + [0, 0.5, 0, 0], true, subsets, reference=0.6) == pytest.approx(
        np.sqrt((0 + 0.01 + 0.01) / 3))


def test_gain_error_takes_the_truths_seed_noise_off():
    from gradselect.validate.trust import gain_error, seed_noise

    subsets = [[], ["a"], ["b"], ["a", "b"]]
    losses = [[1.0, 1.2], [0.8], [0.9], [0.7, 0.7]]  # seed variance: 0.02 (target alone) and 0 -> mean 0.01
    noise = seed_noise(subsets, losses)
    assert noise == pytest.approx([0.01 * (1 / 2 + 1 / 2), 0.01 * (1 + 1 / 2), 0.01 * (1 + 1 / 2), 0.01 * (1 / 2 + 1 / 2)])
    true = np.array([np.mean(x) for x in losses])
    est = true + np.array([0.0, 0.2, -0.2, 0.1])
    raw = gain_error(est, true, subsets)
    assert raw == pytest.approx(np.sqrt((0.04 + 0.04 + 0.01) / 3))
    assert gain_error(est, true, subsets, noise=noise) == pytest.approx(np.sqrt(0.03 - (0.015 + 0.015 + 0.01) / 3))
    # noise bigger than the error: no error left to allow for
    assert gain_error(true, true, subsets, noise=noise) == 0.0
    assert seed_noise(subsets, [[x] for x in true]) is None  # no repeats: nothing known of the seed noise
