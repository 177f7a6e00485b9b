"""The trust check on a tiny model: real fine-tunes from theta*, metrics, calibration, caching."""

import json

import numpy as np
import pytest

from gradselect.cli import main
from gradselect.validate.calibration import calibrate
from gradselect.estimate import EstimateConfig, FeatureArrays
from gradselect.validate.trust import compare, validation_subsets
from gradselect.features import FeatureStore, output_values

from conftest import TINY_RUN_TOML

CONFIG = TINY_RUN_TOML


def test_validate_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG)
    assert main(["train", str(cfg), "-o", str(tmp_path / "meta"), "-q"]) == 0
    feats = tmp_path / "features"
    assert main(["featurize", str(cfg), "--adapter", str(tmp_path / "meta" / "adapter"), "-o", str(feats), "-q"]) == 0
    capsys.readouterr()

    # The forward-only output values at theta* are the stored ones.
    from gradselect.config import load_config
    from gradselect.data import load_taskset
    from gradselect.model import load_for_inference, load_model

    config = load_config(cfg)
    taskset = load_taskset(config.data)
    base, tok = load_model(config.model, device="cpu")
    model = load_for_inference(base, tmp_path / "meta" / "adapter", config.adapter)
    store = FeatureStore.open(feats)
    dev_b = output_values(model, tok, taskset.target_dev.examples, config.tokenize)
    assert np.allclose(dev_b, store.b[store.rows_of(split="dev")], rtol=1e-5, atol=1e-6)

    args = ["validate", str(cfg), "--adapter", str(tmp_path / "meta" / "adapter"), "--features", str(feats),
            "-o", str(tmp_path / "val"), "--start", "meta", "--k", "3", "--repeats", "1", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-order baseline" in out and "noise floor" in out
    assert "level-only calibration of trust_region radius" in out and "level-only calibration of l2 lam" in out
    assert "step for selection, chosen by pairwise order" in out and "held out" in out
    report = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert report["estimated_at"] == "meta" and "(dev loss at theta*: " in out
    # Beside the estimates' order: the number of sources alone, on the same subsets and truths.
    from gradselect.validate.fidelity import pairwise_accuracy

    sizes = [len(s["sources"]) for s in report["subsets"]]
    assert report["size_baseline"]["pairwise_accuracy"] == pytest.approx(
        pairwise_accuracy(sizes, [s["true_loss"] for s in report["subsets"]]))
    assert "baseline: the number of sources alone (fewer = lower loss) orders these subsets at Spearman" in out
    # Outputs name where the estimates were made ([run] estimate_at = "base": the untrained adapter).
    from gradselect.report import format_validation

    at_base = format_validation(report | {"estimated_at": "base", "start": "base"})
    assert "theta*" not in at_base.splitlines()[0]
    assert "estimates made at the base model's untrained adapter" in at_base
    assert "(dev loss at the base model's untrained adapter: " in at_base
    assert [s["sources"] for s in report["subsets"]][:2] == [["more", "legs", "noisy"], []]
    for s in report["subsets"]:
        assert s["true_loss"] > 0 and s["estimated_loss"] > 0 and s["displacement"]["projected_norm"] > 0
    assert (tmp_path / "val" / "validation.png").exists()
    calib = json.loads((tmp_path / "calibration.json").read_text())
    # Both step models tried; the step that orders the validated subsets best is named, with its level map.
    cands = calib["candidates"]
    assert cands["trust_region"]["parameter"] == "radius" and cands["l2"]["parameter"] == "lam"
    assert calib["criterion"] == "pairwise_accuracy" and set(calib["level"]) == {"intercept", "slope"}
    assert calib["mode"] == report["calibration"]["mode"] and calib["value"] == report["calibration"]["value"] > 0
    assert report["calibration"]["loo"]["n_subsets"] == 3
    assert len(list((tmp_path / "val" / "runs").iterdir())) == 4  # 3 subsets + 1 repeat
    # The trust check's own evidence: its best measured subset against the target alone, with its noise
    # (per-example dev losses, which average to each fine-tune's loss, and the repeated seed).
    truths = [json.loads(p.read_text()) for p in (tmp_path / "val" / "runs").glob("*/truth.json")]
    for t in truths:
        assert len(t["example_losses"]) == len(taskset.target_dev.examples)
        assert np.mean(t["example_losses"]) == pytest.approx(t["loss"])
        # The same per example in token cross-entropy: their mean is the token-weighted dev CE.
        assert len(t["example_token_ce"]) == len(taskset.target_dev.examples)
        assert np.mean(t["example_token_ce"]) == pytest.approx(t["token_ce"])
    # Every seed's token CE beside every seed's functional (a forward scorer in token CE is checked on them).
    for s in report["subsets"]:
        assert len(s["true_token_ces"]) == len(s["true_losses"]) and s["true_token_ces"][0] == s["true_token_ce"]
    in_ce = report["measured_choice_token_ce"]
    assert in_ce["gain"] == pytest.approx(in_ce["target_only_loss"] - in_ce["loss"])
    assert in_ce["dev_standard_error"] > 0
    # A truth cached before the per-example losses were kept gets them from its saved adapter, unchanged.
    from gradselect.validate.truth import measure_truth

    folder = next(p.parent for p in (tmp_path / "val" / "runs").glob("*/truth.json"))
    full = json.loads((folder / "truth.json").read_text())
    (folder / "truth.json").write_text(json.dumps({k: v for k, v in full.items()
                                                   if k not in ("example_losses", "example_token_ce")}))
    again = measure_truth(config, taskset, full["sources"], folder, train_config=None, device="cpu", progress=False)
    assert np.allclose(again["example_losses"], full["example_losses"], rtol=1e-5)
    assert np.allclose(again["example_token_ce"], full["example_token_ce"], rtol=1e-5)
    measured = report["measured_choice"]
    others = {tuple(x["sources"]): x["true_loss"] for x in report["subsets"] if x["sources"]}
    assert tuple(measured["sources"]) in others
    assert measured["gain"] == pytest.approx(measured["target_only_loss"] - measured["loss"])
    assert measured["dev_standard_error"] > 0 and measured["seed_sd"] is not None
    assert measured["margin"] == pytest.approx(measured["z"] * measured["standard_error"])
    assert f"best measured subset {', '.join(measured['sources'])}" in out
    assert "in token cross-entropy: best measured subset" in out

    # A larger k adds subsets and reuses the finished runs.
    before = {p.name: p.stat().st_mtime for p in (tmp_path / "val" / "runs").iterdir()}
    assert main(args[:-5] + ["--k", "4", "--repeats", "1", "-q"]) == 0
    after = {p.name: p.stat().st_mtime for p in (tmp_path / "val" / "runs").iterdir()}
    assert len(after) == 5 and all(after[n] == t for n, t in before.items())

    # Later estimates use the calibrated radius (now the k = 4 calibration).
    calib = json.loads((tmp_path / "calibration.json").read_text())
    capsys.readouterr()
    assert main(["select", "--features", str(feats), "--n-subsets", "10", "-q"]) == 0
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["params"]["estimator"]["mode"] == calib["mode"]
    assert saved["params"]["estimator"][calib["parameter"]] == calib["value"]

    # With the residual surrogate on, later estimates of the validated subsets come back near their
    # (seed-mean) truth, and selection says it used it.
    assert main(args[:-5] + ["--k", "4", "--repeats", "1", "--surrogate", "on", "-q"]) == 0
    out = capsys.readouterr().out
    assert "residual surrogate (on, kernel additive: used by selection)" in out
    report = json.loads((tmp_path / "val" / "validation.json").read_text())
    entry = json.loads((tmp_path / "calibration.json").read_text())["residual_surrogate"]
    assert entry["apply"] and len(entry["subsets"]) == 4 and report["surrogate"]["loo"]["n_subsets"] == 4
    from gradselect.estimate.surrogate import CorrectedEstimator
    from gradselect.select import fitted_estimator
    from gradselect.validate import apply_calibration

    from gradselect.validate import apply_surrogate

    estimate_config = apply_calibration(config.estimate, tmp_path / "calibration.json", store.manifest)
    corrected = apply_surrogate(fitted_estimator(estimate_config, config.select, feats),
                                tmp_path / "calibration.json", store.manifest)
    assert isinstance(corrected, CorrectedEstimator)
    validated = [s["sources"] for s in report["subsets"]]
    seed_mean = np.array([s["true_loss"] for s in report["subsets"]])
    again = [json.loads((p / "truth.json").read_text()) for p in (tmp_path / "val" / "runs").iterdir()]
    losses = [[x] for x in seed_mean]
    for r in again:  # the repeat's loss joins its subset's mean
        i = validated.index(r["sources"])
        if r["loss"] != report["subsets"][i]["true_loss"]:
            seed_mean[i] = (seed_mean[i] + r["loss"]) / 2
            losses[i].append(r["loss"])
    rel = np.abs(corrected.estimate(validated) - seed_mean) / seed_mean
    assert rel.max() < 0.02, rel
    # The trust check's measured error of the gain over the target alone, recomputed here from its
    # held-out predictions, is what selection's evidence margin allows for.
    from gradselect.validate.trust import gain_error, seed_noise

    held_out = np.array(report["surrogate"]["held_out_predictions"])
    reference = float(corrected.estimate([[]])[0])
    raw = gain_error(held_out, seed_mean, validated, reference=reference)
    assert report["gain_rmse_raw"] == pytest.approx(raw)
    # ... less the truth's own seed noise (one repeated subset here)
    measured = gain_error(held_out, seed_mean, validated, reference=reference, noise=seed_noise(validated, losses))
    assert measured <= raw
    assert json.loads((tmp_path / "calibration.json").read_text())["gain_rmse"] == pytest.approx(
        measured)
    assert corrected.gain_error_ == pytest.approx(measured)
    assert main(["select", "--features", str(feats), "--n-subsets", "10", "-q"]) == 0
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["params"]["residual_surrogate"] == {"validated_subsets": 4}
    if saved["chosen"] or saved["params"].get("no_source_helps"):
        ev = saved["params"]["evidence"]
        assert ev["measured_error"] == pytest.approx(measured)
        assert ev["margin"] == pytest.approx(1.96 * np.hypot(ev["dev_standard_error"], measured))
        assert ev["sufficient"] == bool(saved["chosen"])

    # From the base model (--start base, [run] validate_init): the truth a final fine-tune from the base
    # model gets, measured on the same subsets; nothing starts from theta*, no displacement is measured.
    capsys.readouterr()
    assert main(args[:-7] + ["--k", "3", "--repeats", "0", "--start", "base", "-o", str(tmp_path / "val-base"),
                             "-q"]) == 0
    out = capsys.readouterr().out
    assert "3 subsets fine-tuned from the base model" in out
    based = json.loads((tmp_path / "val-base" / "validation.json").read_text())
    assert based["start"] == "base" and all(s["displacement"] is None for s in based["subsets"])
    runs = [json.loads(p.read_text()) for p in (tmp_path / "val-base" / "runs").glob("*/truth.json")]
    assert len(runs) == 3 and all(r["init"] is None for r in runs)
    from_meta = {tuple(s["sources"]): s["true_loss"] for s in report["subsets"]}
    assert all(abs(from_meta[tuple(s["sources"])] - s["true_loss"]) > 1e-4 for s in based["subsets"])
    from gradselect.config import RunConfig

    # By default the trust check starts where the final fine-tunes start.
    assert RunConfig().run.validate_init == "auto" and RunConfig().run.trust_check_start() == "base"
    from_meta_finals = RunConfig.model_validate({"run": {"final_init": "meta"}})
    assert from_meta_finals.run.trust_check_start() == "meta"
    assert RunConfig.model_validate({"run": {"validate_init": "meta"}}).run.trust_check_start() == "meta"
    with pytest.raises(ValueError, match="validate_init"):
        RunConfig.model_validate({"run": {"validate_init": "theta"}})


def test_compare_and_calibrate_on_synthetic_truth():
    true = np.array([0.50, 0.45, 0.40, 0.47])
    m = compare(true * 1.01, true, base=0.52)
    assert abs(m["mean_relative_error"] - 0.01) < 1e-12 and m["spearman"] == 1.0 and m["kendall"] == 1.0
    assert m["zero_order_mean_relative_error"] > m["mean_relative_error"] and m["skill_of_change"] > 0.9
    subsets = validation_subsets(["a", "b", "c", "d"], 5, seed=0)
    assert subsets[:2] == [["a", "b", "c", "d"], []] and len(subsets) == 5
    assert len({tuple(s) for s in subsets}) == 5

    rng = np.random.default_rng(0)
    g = rng.normal(size=(300, 6))
    b = rng.normal(1.0, 0.5, size=300)
    arrays = FeatureArrays(g, b, {"a": np.arange(100, 200), "b": np.arange(200, 300)}, np.arange(0, 50),
                           np.arange(50, 100), param_norm=3.0)
    from gradselect.estimate import SubsetEstimator

    subsets = [["a"], ["b"], ["a", "b"], []]
    truth = SubsetEstimator(EstimateConfig(radius=0.7)).fit(arrays).estimate(subsets)
    result = calibrate(arrays, EstimateConfig(), subsets, truth, projected_norms=[0.7, 0.7, 0.7, 0.7])
    assert result["parameter"] == "radius" and abs(result["value"] - 0.7) / 0.7 < 0.2
    assert result["mean_relative_error"] < 0.01


def test_calibrated_applies_the_chosen_mode_unless_the_config_fixes_it(tmp_path):
    from gradselect.validate import apply_calibration as calibrated

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({
        "mode": "l2", "parameter": "lam", "value": 0.05, "mean_relative_error": 0.1, "loo_mean_relative_error": 0.12,
        "candidates": {
            "l2": {"parameter": "lam", "value": 0.05, "mean_relative_error": 0.1, "loo_mean_relative_error": 0.12},
            "trust_region": {"parameter": "radius", "value": 0.3, "mean_relative_error": 0.2,
                             "loo_mean_relative_error": 0.25}}}))
    chosen = calibrated(EstimateConfig(), path)
    assert chosen.mode == "l2" and chosen.lam == 0.05
    fixed_mode = calibrated(EstimateConfig(mode="trust_region"), path)
    assert fixed_mode.mode == "trust_region" and fixed_mode.radius == 0.3
    own_step = calibrated(EstimateConfig(mode="trust_region", radius=1.5), path)
    assert own_step.radius == 1.5
    assert calibrated(EstimateConfig(), tmp_path / "missing.json") == EstimateConfig()


def test_trust_check_trains_like_the_final_fine_tunes():
    from gradselect.config import RunConfig

    validation_train_config = RunConfig.final_train_config
    config = RunConfig.model_validate({"train": {"epochs": 2}})
    assert validation_train_config(config) == config.train
    fixed = config.model_copy(update={"run": config.run.model_copy(update={"final_steps": 7})})
    assert validation_train_config(fixed).max_steps == 7 and validation_train_config(fixed).epochs == 2


def test_ranking_calibration_orders_first_and_holds_out():
    from gradselect.estimate import SubsetEstimator
    from gradselect.validate.calibration import calibrate_for_ranking

    rng = np.random.default_rng(0)
    g = rng.normal(size=(400, 6))
    b = rng.normal(1.0, 0.5, size=400)
    rows = {s: np.arange(100 + 50 * i, 150 + 50 * i) for i, s in enumerate("abcdef")}
    arrays = FeatureArrays(g, b, rows, np.arange(0, 50), np.arange(50, 100), param_norm=3.0)
    subsets = [list(c) for c in ("ab", "cd", "ef", "abc", "def", "ace", "bdf", "a", "f", "abcdef")]
    # Truth: a radius the grid does not hold, with its level shifted and scaled (a calibration must recover
    # the order and, apart, the level).
    est = SubsetEstimator(EstimateConfig(radius=0.77)).fit(arrays)
    true = est.base_loss_ + 0.5 * (est.estimate(subsets) - est.base_loss_) - 0.01
    result = calibrate_for_ranking(arrays, EstimateConfig(), subsets, true)
    assert result["mode"] == "trust_region" and result["in_sample_pairwise_accuracy"] >= 0.9
    assert result["loo"]["pairwise_accuracy"] >= 0.9 and result["loo"]["mean_relative_error"] < 0.01
    # A configured step that orders clearly worse (a tiny radius: 78% of pairs) is replaced by one that
    # orders them all; the near-perfect default above (93%) was kept: within one standard error.
    switched = calibrate_for_ranking(arrays, EstimateConfig(radius=0.01), subsets, true)
    assert switched["value"] != 0.01 and switched["in_sample_pairwise_accuracy"] == 1.0
    assert result["value"] == EstimateConfig().radius_fraction * arrays.param_norm
    # A held-out subset never reaches its own prediction: change only its truth, its prediction stays.
    wild = true.copy()
    wild[3] = 5.0
    again = calibrate_for_ranking(arrays, EstimateConfig(), subsets, wild)
    assert again["held_out_predictions"][3] == result["held_out_predictions"][3]
    assert again["held_out_predictions"][4] != result["held_out_predictions"][4]  # the others saw it
    # Estimates computed once for every candidate give the same calibration.
    from gradselect.validate.calibration import candidate_estimates, ranking_candidates

    every = candidate_estimates(arrays, ranking_candidates(arrays, EstimateConfig()), subsets)
    assert calibrate_for_ranking(arrays, EstimateConfig(), subsets, true, precomputed=every) == result
    with pytest.raises(ValueError, match="precomputed"):
        calibrate_for_ranking(arrays, EstimateConfig(), subsets[:-1], true[:-1], precomputed=every)


def test_trust_check_fine_tunes_start_from_theta_star(small_task, tmp_path, monkeypatch):
    """With a zero learning rate a fine-tune from theta* must measure theta*'s own dev loss and move
    nothing; one started from the base model (what a broken init would do) measures another loss."""
    from gradselect.config import RunConfig
    from gradselect.estimate.solvers import mean_logistic_loss
    from gradselect.features import featurize
    from gradselect.train import TrainConfig
    from gradselect.validate.truth import measure_truth

    taskset, adapter = small_task
    config = RunConfig.model_validate({"data": {"target": {"reasoning_gym": "chain_sum", "size": 20, "seed": 1}},
                                       "features": {"proj_dim": 16}})
    store = featurize(taskset, tmp_path / "f", feature_config=config.features, adapter_path=adapter,
                      progress=False, device="cpu")
    still = TrainConfig(max_steps=2, batch_size=4, warmup=0).model_copy(update={"learning_rate": 0.0})  # not a user value
    theta_star_loss = mean_logistic_loss(store.b[store.rows_of(split="dev")])
    from_meta = measure_truth(config, taskset, ["sums"], tmp_path / "meta", train_config=still, init_adapter=adapter,
                              store=store, device="cpu", progress=False)
    assert from_meta["loss"] == pytest.approx(theta_star_loss, rel=1e-5)
    assert from_meta["displacement"]["param_norm"] == 0.0 and from_meta["displacement"]["projected_norm"] == 0.0
    from_base = measure_truth(config, taskset, ["sums"], tmp_path / "base", train_config=still, init_adapter=None,
                              device="cpu", progress=False)
    assert abs(from_base["loss"] - theta_star_loss) > 1e-3
    # The same fine-tune asked for in another functional is measured again from its adapter, not retrained.
    import gradselect.train
    from gradselect.features import output_values
    from gradselect.model import load_trained

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached fine-tune")

    skip = config.model_copy(update={"features": config.features.model_copy(update={"skip_special_tokens": True})})
    monkeypatch.setattr(gradselect.train, "train", no_training)
    again = measure_truth(skip, taskset, ["sums"], tmp_path / "meta", train_config=still, init_adapter=adapter,
                          store=store, device="cpu", progress=False)
    model, tok = load_trained(config.model, config.adapter, tmp_path / "meta" / "adapter", device="cpu")
    b = output_values(model, tok, taskset.target_dev.examples, config.tokenize, skip_special_tokens=True)
    assert again["loss"] == pytest.approx(mean_logistic_loss(b), rel=1e-6) and again["loss"] != from_meta["loss"]
    assert again["functional"] == {"output": "log_odds", "skip_special_tokens": True}
    assert again["token_ce"] == from_meta["token_ce"] and len(again["example_losses"]) == len(b)
    back = measure_truth(config, taskset, ["sums"], tmp_path / "meta", train_config=still, init_adapter=adapter,
                         store=store, device="cpu", progress=False)
    assert back["loss"] == pytest.approx(from_meta["loss"], rel=1e-9)
    # Truths in another functional than the features' are refused before any fine-tune.
    from gradselect.errors import GradselectError
    from gradselect.validate import validate

    other = config.model_copy(update={"features": config.features.model_copy(update={"skip_special_tokens": True})})
    with pytest.raises(GradselectError, match="skip_special_tokens = False, but the config's"):
        validate(other, taskset, store, adapter, tmp_path / "v", k=3, device="cpu", progress=False)
    assert not (tmp_path / "v").exists()


def test_measured_choice_needs_a_gain_beyond_seed_and_dev_noise():
    from gradselect.validate.trust import measured_choice

    subsets = [["a", "b"], [], ["a"], ["b"]]
    rng = np.random.default_rng(0)
    alone_ex = rng.normal(0.8, 0.1, 200)
    # "a" helps every dev example by 0.2; "b" by 0.01; seed noise 0.01 between repeats
    ex = [alone_ex - 0.05, alone_ex, alone_ex - 0.2 + rng.normal(0, 0.02, 200), alone_ex - 0.01]
    losses = [[e.mean(), e.mean() + 0.01] if i < 2 else [e.mean()] for i, e in enumerate(ex)]
    m = measured_choice(subsets, losses, ex)
    assert m["sources"] == ["a"] and m["sufficient"]
    assert m["gain"] == pytest.approx(ex[1].mean() + 0.005 - ex[2].mean())
    assert m["z"] == pytest.approx(2.394, abs=1e-3)  # Bonferroni over 3 candidates
    assert m["seed_sd"] == pytest.approx(np.sqrt(0.01 ** 2 / 2))
    # The same best gain inside a large seed noise: not evidence.
    noisy = [[losses[0][0], losses[0][0] + 0.5], losses[1], losses[2], losses[3]]
    assert not measured_choice(subsets, noisy, ex)["sufficient"]
    # Without repeats and without per-example losses there is no noise estimate: never sufficient.
    assert not measured_choice(subsets, [[x[0]] for x in losses])["sufficient"]
    assert measured_choice([["a"], ["b"]], [[1.0], [0.5]]) is None  # no target-alone subset


def test_dev_needed_is_the_smallest_dev_split_that_confirms_the_gain():
    from gradselect.report import measured_line
    from gradselect.validate.trust import dev_needed, measured_choice

    gain, z, seed_term, dev_se, n_dev = 0.1, 2.0, 0.0009, 0.05, 30
    n = dev_needed(gain, z, seed_term, dev_se, n_dev)
    s2 = dev_se ** 2 * n_dev  # per-example variance of the paired differences
    assert z * np.sqrt(seed_term + s2 / n) < gain <= z * np.sqrt(seed_term + s2 / (n - 1))
    assert dev_needed(gain, z, 0.003, dev_se, n_dev) is None  # seed noise alone: z * 0.055 > gain
    assert dev_needed(-0.1, z, seed_term, dev_se, n_dev) is None
    assert dev_needed(gain, z, seed_term, None, None) is None

    # In the report: a dev size where the dev noise is what keeps the gain inside the margin ...
    subsets = [["a"], [], ["b"]]
    rng = np.random.default_rng(1)
    alone = rng.normal(1.0, 0.5, 20)
    ex = [alone - 0.1 + rng.normal(0, 0.5, 20), alone, alone + 0.05]
    losses = [[e.mean(), e.mean() + 0.001] if i < 2 else [e.mean()] for i, e in enumerate(ex)]
    m = measured_choice(subsets, losses, ex)
    assert not m["sufficient"] and m["n_dev"] == 20 and m["dev_needed"] > 20
    assert f"a dev split of about {m['dev_needed']} examples (now 20)" in measured_line(m)
    # ... and more seeds where the seed noise alone exceeds it.
    noisy = [losses[0], [losses[1][0], losses[1][0] + 0.5], losses[2]]
    m = measured_choice(subsets, noisy, ex)
    assert m["sources"] == ["a"] and not m["sufficient"]
    assert m["dev_needed"] is None and "more seeds" in measured_line(m)
    # Both mixtures beat the target alone here, but two are too few to say so.
    assert (m["mixtures_better"], m["mixtures"]) == (2, 2) and "every one of" not in measured_line(m)


def test_measured_line_says_when_every_validated_mixture_beat_the_target_alone():
    from gradselect.report import measured_line
    from gradselect.validate.trust import measured_choice

    subsets = [[], ["a"], ["b"], ["a", "b"]]
    losses = [[1.0, 1.4], [0.9], [0.95], [0.8, 1.1]]  # every mixture better, inside a large seed noise
    m = measured_choice(subsets, losses)
    assert not m["sufficient"] and (m["mixtures_better"], m["mixtures"]) == (3, 3)
    assert "every one of the 3 validated mixtures beat the target alone" in measured_line(m)
    worse = [[1.0, 1.4], [0.9], [1.3], [0.8, 1.1]]
    assert "every one of" not in measured_line(measured_choice(subsets, worse))


def test_a_warning_where_the_two_metrics_disagree_on_the_target_alone():
    from gradselect.report import format_validation, metric_disagreement
    from gradselect.validate.trust import measured_choice

    subsets = [["a"], [], ["b"]]
    rng = np.random.default_rng(2)
    alone = rng.normal(1.0, 0.3, 40)
    # functional: the target alone best; token CE: mixture "a" best
    functional = [alone + 0.2, alone, alone + 0.3]
    token_ce = [alone - 0.3, alone, alone + 0.1]
    seeds = lambda ex: [[e.mean(), e.mean() + 0.01] for e in ex]  # noqa: E731
    f = measured_choice(subsets, seeds(functional), functional)
    ce = measured_choice(subsets, seeds(token_ce), token_ce)
    assert f["gain"] < 0 < ce["gain"]
    text = metric_disagreement({"measured_choice": f, "measured_choice_token_ce": ce})
    assert "in the functional the target alone is better" in text and "in token cross-entropy a mixture" in text
    assert "skip_special_tokens = true" in text  # the option that leaves the end-of-turn token out ...
    assert "skip_special_tokens" not in metric_disagreement(  # ... named only where it is not already set
        {"measured_choice": f, "measured_choice_token_ce": ce, "skip_special_tokens": True})
    # agreeing metrics (or one missing) say nothing
    assert metric_disagreement({"measured_choice": ce, "measured_choice_token_ce": ce}) is None
    assert metric_disagreement({"measured_choice": f, "measured_choice_token_ce": None}) is None

    # ... and the validate output carries it (the committed first-draw trust check, where they disagreed)
    import json
    from pathlib import Path

    report = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" /
                         "selection-bbh-natural-ce01-smollm2.validation.json").read_text())
    assert "warning: the two metrics disagree" in format_validation(report)
