"""What the fidelity figures rest on: pairwise order, the noise ceiling, and leave-one-out that is really held out."""

import numpy as np
import pytest

from gradselect.validate.fidelity import (
    size_baseline,
    loo_affine,
    loo_select,
    noise_ceiling,
    pairwise_accuracy,
    score,
    skill_of_change,
    spearman_brown,
)


def test_pairwise_accuracy_and_skill():
    true = np.array([0.5, 0.4, 0.3, 0.2])
    assert pairwise_accuracy(true, true) == 1.0 and pairwise_accuracy(-true, true) == 0.0
    assert pairwise_accuracy(np.ones(4), true) == 0.5  # estimated ties count half
    assert skill_of_change(true, true, 0.6, 0.6) == 1.0
    assert skill_of_change(np.full(4, 0.6), true, 0.6, 0.6) == 0.0  # predicting no change: no skill
    m = score(true + 0.01, true, base_estimated=0.6)
    assert m["spearman"] == 1.0 and m["pairwise_accuracy"] == 1.0 and m["r2_losses"] < 1.0
    lo, hi = m["spearman_ci95"]
    assert lo <= 1.0 <= hi + 1e-12


def test_noise_ceiling_from_repeated_seeds():
    rng = np.random.default_rng(0)
    expected = rng.normal(1.0, 0.2, size=60)
    exact = noise_ceiling([[e, e] for e in expected])
    assert exact["spearman_seed_to_seed"] == 1.0 and exact["ceiling_spearman"] == 1.0
    noisy = noise_ceiling([[e + rng.normal(0, 0.2), e + rng.normal(0, 0.2)] for e in expected])
    r = noisy["spearman_seed_to_seed"]
    assert 0.2 < r < 0.8
    # The truth is a 2-seed mean: its ceiling is sqrt of the Spearman-Brown reliability, above one seed's r.
    assert noisy["ceiling_spearman"] == pytest.approx(np.sqrt(2 * r / (1 + r))) and noisy["ceiling_spearman"] > r
    assert spearman_brown(0.5, 3) == pytest.approx(0.75)
    assert noise_ceiling([[1.0], [2.0]])["n_subsets"] == 0
    # A one-seed truth: an exact estimator correlates with it at sqrt(r), above the seed-to-seed r.
    one = noise_ceiling([[e + rng.normal(0, 0.2), e + rng.normal(0, 0.2)] for e in expected], k=1)
    assert one["ceiling_spearman"] == pytest.approx(np.sqrt(one["spearman_seed_to_seed"]))


def test_leave_one_out_never_sees_the_held_out_subset():
    rng = np.random.default_rng(1)
    true = rng.normal(1.0, 0.1, size=12)
    est = 0.9 + 0.5 * (true - 1.0) + rng.normal(0, 0.01, size=12)
    base = loo_affine(est, true, 0.95, 1.05)
    cands = {"a": est, "b": -est, "c": est + 0.1}
    preds, chosen = loo_select(cands, true, lambda e, t: -np.mean(np.abs(e - t)))
    for i in range(len(true)):
        wild = true.copy()
        wild[i] = 50.0  # only subset i's truth changes
        assert loo_affine(est, wild, 0.95, 1.05)[i] == pytest.approx(base[i], abs=1e-12)
        p2, c2 = loo_select(cands, wild, lambda e, t: -np.mean(np.abs(e - t)))
        assert p2[i] == preds[i] and c2[i] == chosen[i]
    # The level fit moves the estimates onto the truth's scale without reordering them.
    assert np.mean(np.abs(base - true)) < np.mean(np.abs(est - true))


def test_one_se_rule_keeps_the_configured_step_unless_another_is_clearly_better():
    from gradselect.validate.fidelity import one_se_choice

    rng = np.random.default_rng(0)
    true = rng.normal(size=10)
    default = true + rng.normal(scale=1.0, size=10)  # orders the subsets somewhat
    # A candidate one pair better than the default (a swap that fixes one pair) is within noise: default kept.
    order = np.argsort(default)
    nudged = default.copy()
    for a, b in zip(order[:-1], order[1:]):
        if (true[a] - true[b]) * (default[a] - default[b]) < 0:  # a misordered neighbour pair: fix just it
            nudged[a], nudged[b] = default[b], default[a]
            break
    assert one_se_choice(np.stack([default, nudged]), true) == 0
    # The truth itself as a candidate is clearly better: chosen. Unusable candidates never are.
    assert one_se_choice(np.stack([default, nudged, true]), true) == 2
    assert one_se_choice(np.stack([default, nudged, true]), true, usable=[True, True, False]) == 0
    # Without the rule's guard (a default that is not usable), the best usable candidate wins.
    assert one_se_choice(np.stack([default, true]), true, usable=[False, True]) == 1


def test_one_se_rule_off_takes_the_best_however_slightly():
    from gradselect.validate.fidelity import one_se_choice

    true = np.arange(6.0)
    slightly = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 4.0])  # one pair wrong
    exact = true.copy()
    assert one_se_choice(np.stack([slightly, exact]), true, n_boot=0) == 1


def test_source_ranking_on_a_bank_orders_sources_by_their_additive_effect():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from truthbank import _source_ranking, source_scores

    names = [f"s{i}" for i in range(6)]
    effect = np.array([-0.3, -0.2, -0.1, 0.0, 0.1, 0.2])  # s0 helps most, s5 hurts most
    rng = np.random.default_rng(0)
    subsets = [[], names] + [[n for n in names if rng.random() < 0.5] for _ in range(40)]
    mean = np.array([1.0 + sum(effect[names.index(n)] for n in s) for s in subsets])
    seed_losses = [[m + rng.normal(0, 0.01), m + rng.normal(0, 0.01)] for m in mean]
    # A source's score is the mean over the mixed subsets holding it: empty and full subsets are left out.
    scores = source_scores(subsets, names, mean)
    mixed = [i for i, s in enumerate(subsets) if 0 < len(s) < len(names)]
    assert scores[0] == pytest.approx(np.mean([mean[i] for i in mixed if "s0" in subsets[i]]))
    from scipy.stats import spearmanr

    assert spearmanr(scores, effect)[0] > 0.8  # (means over random subsets: other sources' effects blur it)
    out = _source_ranking({"exact": mean, "reversed": -mean, "noise": rng.normal(size=len(mean))}, names, subsets,
                          seed_losses, n_boot=200)
    assert out["variants"]["exact"]["spearman"] == pytest.approx(1.0)
    assert out["variants"]["reversed"]["spearman"] == pytest.approx(-1.0)
    lo, hi = out["variants"]["noise"]["spearman_ci95"]
    assert lo < out["variants"]["noise"]["spearman"] < hi or lo == hi
    assert out["ceiling_spearman"] > 0.9 and out["seed_to_seed_spearman"] > 0.8


@pytest.mark.parametrize("suite, sizes", [("bbh12", (40, 100, 110)), ("arith12", (40, 120, 200))])
def test_bank_suites_on_shared_data_have_their_documented_splits(suite, sizes):
    """The BIG-bench banks read ../shared/data (skipped without it): the split sizes benchmarks/README.md states,
    12 sources, and the planted noise where the suite plants it."""
    import sys
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (shared / "bbh").is_dir() or not (shared / "bigbench" / "arithmetic").is_dir():
        pytest.skip("no ../shared/data on this machine")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import truthbank

    from gradselect.data import load_taskset

    taskset = load_taskset(truthbank.SUITES[suite]().data)
    got = (len(taskset.target_train.examples), len(taskset.target_dev.examples), len(taskset.target_test.examples))
    assert got == sizes
    assert len(taskset.sources) == 12
    noisy = {s.name for s in taskset.sources if any(e.meta.get("noisy") for e in s.examples)}
    assert noisy == ({"3_digit_addition_noisy", "2_digit_subtraction_noisy"} if suite == "arith12" else set())


def test_arith_selection_suite_is_a_scarce_multiple_choice_target_with_planted_noise():
    """benchmarks/selection.py --suite arith (skipped without ../shared/data): the documented splits, every
    test question multiple choice (BIG-bench target_scores), 12 sources of 30 or fewer with both noisy ones."""
    import sys
    from pathlib import Path

    arithmetic = Path(__file__).resolve().parents[2] / "shared" / "data" / "bigbench" / "arithmetic"
    if not (arithmetic / "2_digit_addition" / "task.json").exists():
        pytest.skip("no ../shared/data on this machine")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import selection

    from gradselect.data import load_taskset

    config, steps, planted = selection.arith_selection_config(arithmetic, 16, 200, None)
    taskset = load_taskset(config.data)
    assert (len(taskset.target_train.examples), len(taskset.target_dev.examples),
            len(taskset.target_test.examples)) == (16, 60, 200)
    assert all(e.choices and e.response in e.choices for e in taskset.target_test.examples)
    assert len(taskset.sources) == 12 and all(20 <= len(s.examples) <= 30 for s in taskset.sources)
    assert set(planted) == {s.name for s in taskset.sources if any(e.meta.get("noisy") for e in s.examples)}
    small, _, _ = selection.arith_selection_config(arithmetic, 16, 200, None, n_sources=6)
    assert [s.name for s in small.data.sources][-2:] == planted and len(small.data.sources) == 6


def test_bbh_selection_suite_takes_a_scarcer_target_without_touching_dev_and_test_sizes():
    """benchmarks/selection.py --suite bbh --target-train N (skipped without ../shared/data): N training
    questions, the documented 30 dev and test_size test questions, disjoint; an N the task cannot give is
    refused with the file named."""
    import sys
    from pathlib import Path

    bbh = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"
    if not (bbh / "boolean_expressions.json").exists():
        pytest.skip("no ../shared/data on this machine")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import selection

    from gradselect.data import load_taskset

    sizes = {}
    for target_train in (None, 8):
        config, _, planted = selection.bbh_selection_config(bbh, "boolean_expressions", 12, 40, 200, None,
                                                            target_train)
        taskset = load_taskset(config.data)
        splits = (taskset.target_train, taskset.target_dev, taskset.target_test)
        sizes[target_train] = tuple(len(s.examples) for s in splits)
        ids = [{e.id for e in s.examples} for s in splits]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert len(taskset.sources) == 12 and len(planted) == 2
    assert sizes == {None: (20, 30, 200), 8: (8, 30, 200)}
    with pytest.raises(SystemExit, match="boolean_expressions.json"):
        selection.bbh_selection_config(bbh, "boolean_expressions", 12, 40, 200, None, 21)
    # --dev-size: the questions a scarcer target leaves unused can go to dev (250 = 8 + 42 + 200).
    config, _, _ = selection.bbh_selection_config(bbh, "boolean_expressions", 12, 40, 200, None, 8, dev_size=42)
    taskset = load_taskset(config.data)
    assert tuple(len(s.examples) for s in (taskset.target_train, taskset.target_dev, taskset.target_test)) \
        == (8, 42, 200)
    with pytest.raises(SystemExit, match="boolean_expressions.json"):
        selection.bbh_selection_config(bbh, "boolean_expressions", 12, 40, 200, None, 8, dev_size=43)


def test_selection_suite_header_counts_the_examples_each_source_really_has(tmp_path):
    """benchmarks/selection.py prints the featurized sizes (a capped source may hold fewer than asked)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import selection

    from gradselect.features.store import FORMAT_VERSION, FeatureStore

    def store(sizes):
        sources = [s for s, n in sizes.items() for _ in range(n)] + ["target"] * 3
        splits = ["source"] * (len(sources) - 3) + ["target_train"] * 3
        index = {"ids": [str(i) for i in range(len(sources))], "sources": sources, "splits": splits}
        manifest = {"format_version": FORMAT_VERSION, "chunk_size": 4, "projector": {"dim": 2}}
        FeatureStore.create(tmp_path / "features", manifest, index)

    store({"a": 30, "b": 23, "c": 30})
    assert selection.source_sizes(tmp_path) == "23-30"
    store({"a": 30, "b": 30})
    assert selection.source_sizes(tmp_path) == "30"


def test_bank_variants_include_the_gradient_similarity_baseline_in_its_order():
    """benchmarks/truthbank.py scores a no-estimator baseline beside the estimators: the subset's summed
    gradient similarity (grad-sim's cosine) to the target, higher similarity estimated lower."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from truthbank import _variants

    from gradselect.estimate import FeatureArrays

    rng = np.random.default_rng(0)
    target = rng.normal(size=8)
    g = np.concatenate([target + rng.normal(0, 0.5, size=(30, 8)),  # target train, dev
                        target + rng.normal(0, 0.3, size=(20, 8)),  # "near": aligned with the target
                        -target + rng.normal(0, 0.3, size=(20, 8)),  # "far": opposed
                        rng.normal(size=(20, 8))])
    b = rng.normal(1.0, 0.3, size=len(g))
    arrays = FeatureArrays(g, b, {"near": np.arange(30, 50), "far": np.arange(50, 70), "other": np.arange(70, 90)},
                           np.arange(0, 15), np.arange(15, 30), param_norm=2.0)
    subsets = [[], ["near"], ["far"], ["near", "other"], ["near", "far", "other"]]
    out, base = _variants(arrays, subsets, np.linspace(1.0, 0.5, len(subsets)), 1.0, [None] * len(subsets))
    sim = out["gradient similarity summed over sources (no step; order only)"]
    assert sim[1] < sim[0] < sim[2]  # the aligned source lowers it, the opposed one raises it
    # additive over sources: all three = near + far + other, other's effect read off near+other
    assert sim[4] - sim[0] == pytest.approx((sim[1] - sim[0]) + (sim[2] - sim[0]) + (sim[3] - sim[1]))
    assert np.isfinite(sim).all() and sim[0] == pytest.approx(base)


def test_fresh_adapter_is_the_seeded_start_of_a_base_model_fine_tune(tmp_path):
    """benchmarks/truthbank.py at-base linearizes around the adapter a seed-0 fine-tune from the base
    model starts from: B = 0, A drawn under the training seed, the same bytes on every call."""
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from truthbank import fresh_adapter, planted12_config

    config = planted12_config()
    config = config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": "tiny-llama"})})
    first = load_file(fresh_adapter(config, tmp_path / "a", "cpu") / "adapter_model.safetensors")
    again = load_file(fresh_adapter(config, tmp_path / "b", "cpu") / "adapter_model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert all(not t.any() for k, t in first.items() if "lora_B" in k)
    assert any(t.abs().sum() > 0 for k, t in first.items() if "lora_A" in k)
    other = config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})})
    moved = load_file(fresh_adapter(other, tmp_path / "c", "cpu") / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], moved[k]) for k in first if "lora_A" in k)


def _tiny_bank_suite():
    """A truth-bank suite on the generated tiny model: 3 sources of 4 examples, one meta-training epoch."""
    from gradselect.config import RunConfig

    def rg(name, task, seed, noise=0.0, size=4):
        return {"name": name, "reasoning_gym": task, "size": size, "seed": seed, "label_noise": noise}

    return RunConfig.model_validate({
        "data": {"target": rg("chain_sum", "chain_sum", 10), "target_dev": rg("dev", "chain_sum", 20),
                 "target_test": rg("test", "chain_sum", 21),
                 "sources": [rg("more", "chain_sum", 11), rg("legs", "leg_counting", 13),
                             rg("noisy", "chain_sum", 15, 1.0)]},
        "model": {"name_or_path": "tiny-llama"},
        "features": {"proj_dim": 16},
        "tokenize": {"max_length": 48},
        "train": {"epochs": 1, "learning_rate": 5e-3, "batch_size": 4, "logging_steps": 1},
    })


def test_meta_training_rerun_keeps_checkpoints_and_ends_bitwise_at_theta_star(tmp_path):
    """benchmarks/truthbank.py's checkpoint ensemble (issue 13 B4) featurizes theta*'s meta-training at
    earlier checkpoints: the re-run with its steps fixed must be the same trajectory (its last adapter is
    theta*, bitwise) and keep a checkpoint every quarter of it, each a different point on the way; the
    ensemble variants are the means of their members' estimates."""
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import truthbank

    config = _tiny_bank_suite()
    taskset, meta_adapter, _ = truthbank.prepare(config, tmp_path, "cpu")
    saved, same = truthbank._meta_checkpoints(config, taskset, tmp_path, meta_adapter, "cpu")
    assert same
    assert sorted(saved) == [1, 2, 3, 4]  # 16 rows, batch 4: a checkpoint every step of 4
    weights = {s: load_file(p / "adapter_model.safetensors") for s, p in saved.items()}
    theta_star = load_file(meta_adapter / "adapter_model.safetensors")
    assert all(weights[4][k].equal(theta_star[k]) for k in theta_star)
    assert any(not weights[2][k].equal(theta_star[k]) for k in theta_star)
    # Cached: a second call trains nothing and finds the same checkpoints.
    assert truthbank._meta_checkpoints(config, taskset, tmp_path, meta_adapter, "cpu") == (saved, True)

    # The ensembles: each member's estimate alone, and their mean, over seeds, checkpoints and both.
    from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
    from gradselect.features import FeatureStore

    arrays = FeatureArrays.from_store(FeatureStore.open(tmp_path / "features"))
    subsets = [["more"], ["legs"], ["more", "noisy"], [], ["more", "legs", "noisy"]]
    true = np.linspace(1.0, 2.0, len(subsets))
    out, _ = truthbank._feature_variants(config, taskset, meta_adapter, tmp_path, "cpu", arrays, subsets, true,
                                         true, 1.5, 1.5, chosen=("seed1", "ckpt50"))
    alone = {k: out[f"trust_region, default radius, {k} alone"] for k in ("projection seed 1", "checkpoint at step 2")}
    default = SubsetEstimator(EstimateConfig()).fit(arrays).estimate(subsets)
    assert not np.allclose(alone["projection seed 1"], default)
    np.testing.assert_allclose(out["trust_region, default radius, mean over 2 projection seeds"],
                               (default + alone["projection seed 1"]) / 2)
    np.testing.assert_allclose(out["trust_region, default radius, mean over 2 checkpoints"],
                               (default + alone["checkpoint at step 2"]) / 2)
    np.testing.assert_allclose(
        out["trust_region, default radius, mean over 3 stores (projection seeds and checkpoints)"],
        (default + alone["projection seed 1"] + alone["checkpoint at step 2"]) / 3)


def test_base_bank_grows_resumably_and_scores_estimates_made_at_the_base_model(tmp_path, monkeypatch, capsys):
    """benchmarks/truthbank.py build-base: real fine-tunes from the base model (no theta*) on the keep-50%
    plan, one record per subset, resumable without retraining; at-base scores against its seed means."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import truthbank

    tiny_suite = _tiny_bank_suite
    monkeypatch.setitem(truthbank.SUITES, "tiny", tiny_suite)
    monkeypatch.setattr(truthbank, "TRUTH_STEPS", 2)
    bank_path, run_dir = tmp_path / "tiny.base.json", tmp_path / "run"
    args = ["build-base", "tiny", "--run-dir", str(run_dir), "--bank", str(bank_path), "--n-subsets", "2",
            "--device", "cpu"]
    assert truthbank.main(args) == 0
    bank = json.loads(bank_path.read_text())
    assert bank["start"] == "base" and "theta_star" not in bank
    assert [r["sources"] for r in bank["subsets"]][:2] == [["more", "legs", "noisy"], []]
    assert len(bank["subsets"]) == 4 and all(len(r["losses"]) == 1 and r["losses"][0] > 0 for r in bank["subsets"])
    assert not (run_dir / "meta_init").exists()  # no meta-training
    # Resumed: every fine-tune is cached, the truths are the same.
    assert truthbank.main(args) == 0
    assert json.loads(bank_path.read_text())["subsets"] == bank["subsets"]
    # Another initial adapter (another training seed draws another A) is refused, not mixed in.
    monkeypatch.setitem(truthbank.SUITES, "tiny", lambda: tiny_suite().model_copy(
        update={"train": tiny_suite().train.model_copy(update={"seed": 3})}))
    assert truthbank.main(args[:3] + [str(tmp_path / "other-run")] + args[4:]) == 2
    assert "initial_adapter_sha256" in capsys.readouterr().err
    monkeypatch.setitem(truthbank.SUITES, "tiny", tiny_suite)
    scores = tmp_path / "scores.json"
    assert truthbank.main(["at-base", "--bank", str(bank_path), "--run-dir", str(run_dir), "--lengths", "0.5",
                           "--device", "cpu", "--out", str(scores), "--steps", "sign,adam"]) == 0
    out = json.loads(scores.read_text())
    assert out["n_base_truths"] == 4 and out["truth_base"]["spearman_vs_theta_star_truth"] is None
    assert {"forward pass, sign step, 0.5 |theta|", "forward pass, adam step, 0.5 |theta|",
            "number of sources, fewer = lower (no features; order only)"} <= set(out["variants"])
    # Every pass is kept, per step and length, in the judged subsets' order; the two steps differ.
    passes = out["forward_estimates"]
    assert set(passes) == {"sign|0.5", "adam|0.5"} and all(len(v) == 4 for v in passes.values())
    assert passes["sign|0.5"] != passes["adam|0.5"]
    # In token cross-entropy: the forward passes measure it, the truth is every seed's token CE.
    ce_scores = tmp_path / "ce.json"
    assert truthbank.main(["at-base", "--bank", str(bank_path), "--run-dir", str(run_dir), "--lengths", "0.5",
                           "--device", "cpu", "--out", str(ce_scores), "--metric", "token_ce"]) == 0
    ce = json.loads(ce_scores.read_text())
    assert ce["metric"] == "token_ce" and out["metric"] == "functional"
    assert ce["forward_estimates"]["sign|0.5"] != passes["sign|0.5"]
    assert ce["truth_base"]["sd"] == pytest.approx(np.std([np.mean(r["token_ce"]) for r in bank["subsets"]]))
    assert truthbank.main(["at-base", "--bank", str(bank_path), "--run-dir", str(run_dir), "--steps", "sgd",
                           "--device", "cpu"]) == 2
    # The bank's identity (made without features) is the features' own: a bank of other data is refused.
    other = json.loads(bank_path.read_text())
    other["identity"]["dataset_fingerprint"] = "0" * 16
    bank_path.write_text(json.dumps(other))
    capsys.readouterr()
    assert truthbank.main(["at-base", "--bank", str(bank_path), "--run-dir", str(run_dir), "--lengths", "0.5",
                           "--device", "cpu", "--out", str(scores)]) == 2
    assert "dataset_fingerprint" in capsys.readouterr().err


def test_bank_baselines_score_subset_size_and_a_loo_datamodel_from_the_bank_file_alone(tmp_path, capsys):
    """benchmarks/truthbank.py baselines: the number of sources (fewer = lower) and an indicator datamodel
    fitted leave-one-out, on every truth the bank holds, with no model or features; a file that is not a
    bank is refused with its name."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import truthbank

    names = [f"s{i}" for i in range(6)]
    rng = np.random.default_rng(1)
    subsets = [names, []] + [[n for n in names if rng.random() < 0.5] for _ in range(20)]
    # Truth: every source dilutes the target (+0.1 each) and s0 hurts most (+0.3 more).
    loss = lambda s: 1.0 + 0.1 * len(s) + 0.3 * ("s0" in s)  # noqa: E731
    base_truth = [{"sources": s, "loss": loss(s) + 0.05} for s in subsets[:10]]
    bank = {"suite": "toy", "sources": names, "base_model_truth": base_truth,
            "subsets": [{"sources": s, "losses": [loss(s) + rng.normal(0, 0.01), loss(s)]} for s in subsets]}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(bank))
    assert truthbank.main(["baselines", "--bank", str(path)]) == 0
    out = json.loads((tmp_path / "toy.baselines.json").read_text())
    assert set(out["truths"]) == {"theta*", "base model"}
    theta = out["truths"]["theta*"]
    assert theta["n_subsets"] == len(subsets) and theta["target_alone_true_rank"] == 1
    size = theta["variants"]["number of sources, fewer = lower (label-free)"]
    assert size["target_alone_rank"] == 1 and 0.5 < size["spearman"] < 1.0  # size explains part, s0 the rest
    datamodel = theta["variants"]["indicator kernel ridge on the other truths (LOO)"]
    assert datamodel["spearman"] > size["spearman"]  # the fitted model also sees s0
    assert "spearman_mixtures_only" in size and size["spearman_ci95"][0] <= size["spearman"] <= size["spearman_ci95"][1]
    assert out["truths"]["base model"]["n_subsets"] == 10
    # A base-model bank holds one truth.
    base_bank = dict(bank, start="base")
    del base_bank["base_model_truth"]
    path.write_text(json.dumps(base_bank))
    assert truthbank.main(["baselines", "--bank", str(path), "--out", str(tmp_path / "b.json")]) == 0
    assert set(json.loads((tmp_path / "b.json").read_text())["truths"]) == {"base model"}
    bad = tmp_path / "bad.json"
    bad.write_text("{\"suite\": 1}")
    assert truthbank.main(["baselines", "--bank", str(bad)]) == 2
    assert "bad.json: not a truth bank" in capsys.readouterr().err


def test_size_baseline_orders_subsets_by_their_number_of_sources():
    subsets = [[], ["a"], ["a", "b"], ["b", "c", "d"]]
    diluted = size_baseline(subsets, [1.0, 1.1, 1.2, 1.3])  # every source dilutes: the count orders perfectly
    assert diluted["spearman"] == pytest.approx(1.0) and diluted["pairwise_accuracy"] == pytest.approx(1.0)
    helped = size_baseline(subsets, [1.3, 1.2, 1.1, 1.0])
    assert helped["spearman"] == pytest.approx(-1.0) and helped["pairwise_accuracy"] == pytest.approx(0.0)
    same = size_baseline([["a"], ["b"], ["c"]], [1.0, 2.0, 3.0])  # one size: no order to offer
    assert np.isnan(same["spearman"]) and same["spearman_ci95"] is None


def test_size_calibration_keeps_the_estimate_slope_nonnegative_and_sees_size():
    """benchmarks/size_calibration.py: an estimate anti-correlated with the truth is dropped (never inverted),
    and where the truth is the subset's size the joint map orders the unseen subsets as size does."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from size_calibration import fit_predict, simulate

    X = np.array([[1.0], [2.0], [3.0]])
    y = np.array([3.0, 2.0, 1.0])
    assert np.allclose(fit_predict(X, y, np.array([[10.0]])), [2.0])  # slope < 0: the mean, not an inversion
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(10)]
    subsets = [[]] + [sorted(rng.choice(names, int(rng.integers(1, 10)), replace=False).tolist()) for _ in range(30)]
    truth = np.log1p([len(s) for s in subsets]) + rng.normal(0, 0.01, len(subsets))
    noise = rng.normal(size=len(subsets))
    res = simulate(subsets, truth, noise, len(names), ks=(8,), draws=20)
    assert res["k=8"]["est+size"]["mean"] > 0.9
    assert abs(res["k=8"]["est"]["mean"]) < 0.5
    assert res["k=8"]["est+size+krr"]["mean"] > 0.8  # the surrogate on top keeps what the size map found
    # An estimate that is the truth: left uncorrected, and the automatic choice keeps that order.
    exact = simulate(subsets, truth, 3.0 * truth, len(names), ks=(8,), draws=10)["k=8"]
    assert exact["raw"]["mean"] > 0.99
    assert exact["auto(raw, raw+krr)"]["mean"] > 0.95
    assert sum(exact["auto_picks"]["auto(raw, raw+krr)"].values()) == 10
    # The product's forward trust check: a length that is the truth replaces a configured one that is noise,
    # and where the scores are right the surrogate is left out.
    from size_calibration import simulate_forward_product

    product = simulate_forward_product(subsets, truth, {"noise": noise, "exact": 2.0 * truth}, "noise", len(names),
                                       ks=(8,), draws=10)["k=8"]
    assert product["chosen length"]["mean"] > 0.95 and abs(product["configured length"]["mean"]) < 0.5
    kept = simulate_forward_product(subsets, truth, {"exact": 2.0 * truth, "noise": noise}, "exact", len(names),
                                    ks=(8,), draws=10)["k=8"]
    for kernel in ("rbf", "additive"):
        assert kept["surrogate_applied"][kernel] == 0 and kept[f"chosen length + {kernel} surrogate auto"]["mean"] > 0.99
    # A residual that is per-source effects: the additive kernel's correction recovers the order, and the
    # estimate's additive effects rank the truth's as the script reports them.
    off = truth + 1.0 * np.array([("s0" in s) - ("s1" in s) for s in subsets])
    fixed = simulate(subsets, off, truth, len(names), ks=(12,), draws=10)
    assert fixed["k=12"]["raw+additive"]["mean"] > fixed["k=12"]["raw"]["mean"] + 0.05
    assert fixed["source_effects"]["n_sources"] == len(names)
    # A truth additive over sources, estimated with noise on each subset: the additive model fitted to the
    # other subsets' estimates (no truth) orders better than the noisy estimate itself.
    many = [[n for n in names if rng.random() < 0.5] for _ in range(80)]
    effects = dict(zip(names, rng.normal(size=len(names))))
    additive_truth = np.array([sum(effects[n] for n in s) for s in many])
    noisy = additive_truth + rng.normal(0, 2.0, len(many))
    res = simulate(many, additive_truth, noisy, len(names), ks=(8,), draws=4)
    assert res["all_subsets_spearman"]["additive"] > res["all_subsets_spearman"]["est"] + 0.1
    # ... and so on the unseen subsets of a simulated trust check.
    assert res["k=8"]["est made additive"]["mean"] > res["k=8"]["raw"]["mean"] + 0.1


def test_scoreboard_pairs_runs_only_on_the_same_target_alone(tmp_path):
    """benchmarks/scoreboard.py: baseline minus selection per test example, verdicts from the paired
    interval, an earlier run's rows paired only when it holds the same target-alone fine-tune, and the
    issue-15 goal not met while a named baseline was not run or is ahead."""
    import sys
    from pathlib import Path

    from gradselect.evaluate.metrics import PerExample
    from gradselect.evaluate.results import MetricRow, MetricsTable

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import scoreboard

    rng = np.random.default_rng(0)
    n = 200
    ones = np.ones(n)

    def row(label, sources, loss):
        per = {"loss": PerExample(loss, ones), "exact_match": PerExample((loss < 0.5).astype(float), ones)}
        return MetricRow(label, sources, {k: v.value for k, v in per.items()}, per)

    alone = rng.uniform(0.3, 1.5, n)
    sel = alone - 0.3 + rng.normal(0, 0.05, n)
    centred = rng.normal(0, 0.05, n)
    centred -= centred.mean()  # a baseline 0.002 behind on average: within the interval
    first = MetricsTable("test", n, {"selection": row("selection", ["a", "b"], sel),
                                     "target-only": row("target-only", [], alone),
                                     "all": row("all", ["a", "b", "c"], sel + 0.1 + rng.normal(0, 0.05, n)),
                                     "kmm": row("kmm", ["a"], sel + 0.002 + centred)})
    earlier = MetricsTable("test", n, {"target-only": row("target-only", [], alone),
                                       "random": row("random", ["c"], sel - 0.2),
                                       "kmm": row("kmm", ["c"], sel - 1.0)})
    other = MetricsTable("test", n, {"target-only": row("target-only", [], alone + 0.01),
                                     "less": row("less", ["c"], sel + 1.0)})
    for name, t in (("first", first), ("earlier", earlier), ("other", other)):
        t.save(tmp_path / f"{name}.metrics.json")
    s = scoreboard.score_suite([tmp_path / "first.metrics.json", tmp_path / "earlier.metrics.json",
                                tmp_path / "other.metrics.json"])
    assert s["rows"]["all"]["loss"]["verdict"] == "selection better"
    assert s["rows"]["target-only"]["loss"]["difference"] == pytest.approx(alone.mean() - sel.mean())
    assert s["rows"]["kmm"]["file"] == "first.metrics.json"  # the first file's row wins
    assert s["rows"]["kmm"]["loss"]["verdict"] == "tie"
    assert s["rows"]["random"]["loss"]["verdict"] == "selection worse"
    assert "less" not in s["rows"] and "other.metrics.json" in s["skipped"][0]
    g = scoreboard.goal({"one": s}, "loss")
    assert not g["met"] and g["baselines_ahead"]["one"] == ["random"]
    assert set(g["missing"]["one"]) == {"grad-sim", "repr-sim", "less"}

    # The training seed, seed i against seed i: a seed bad for every model cancels.
    two = MetricRow("selection", [], {"loss": 0.55}, seed_values={"loss": [0.50, 0.60], "exact_match": [0.5, 0.4]})
    assert scoreboard.seeds_agree(MetricRow("all", [], {}, seed_values={"loss": [0.55, 0.65]}), two, "loss") \
        == "selection"  # 0.55 > 0.50 and 0.65 > 0.60, though 0.55 < 0.60 across seeds
    assert scoreboard.seeds_agree(MetricRow("kmm", [], {}, seed_values={"loss": [0.45, 0.70]}), two, "loss") == "mixed"
    assert scoreboard.seeds_agree(MetricRow("kmm", [], {}, seed_values={"exact_match": [0.6, 0.5]}), two,
                                  "exact_match") == "baseline"  # higher is better
    assert scoreboard.seeds_agree(MetricRow("one", [], {}, seed_values={"loss": [0.4]}), two, "loss") is None
    assert s["rows"]["all"]["loss"]["seeds"] is None  # no seeds recorded

    # The closing dev check against the test split: the dev split prefers "all", the test split "kmm".
    dev = {"selection": 0.5, "all": 0.4, "target-only": 0.9, "kmm": 0.45}
    checked = MetricsTable("test", n, first.rows, dev_loss=dev)
    checked.save(tmp_path / "checked.metrics.json")
    r = scoreboard.dev_check(tmp_path / "checked.metrics.json")
    assert r["dev_preferred"] == "all" and r["test_best"] == "selection"
    assert r["preferred_minus_best"] == pytest.approx(first.rows["all"].get("loss") - sel.mean())
    assert r["ci95"][0] > 0  # "all" is behind on test beyond the interval
    assert scoreboard.dev_check(tmp_path / "first.metrics.json") is None  # no dev check recorded


def test_pertoken_log_odds_give_the_functional_and_the_token_cross_entropy():
    """benchmarks/pertoken.py's per-position gold log-odds: their mean's logistic loss is the functional
    (gradselect's output value), and the per-token logistic loss, token-weighted, is the token cross-entropy."""
    import sys
    from pathlib import Path

    import torch

    from gradselect.data.examples import Example
    from gradselect.data.tokenize import TokenizeConfig
    from gradselect.evaluate.metrics import target_loss
    from gradselect.features.extract import output_values
    from gradselect.model import ModelConfig, load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from pertoken import gold_log_odds

    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(name_or_path="tiny-llama"), device="cpu")
    model.eval()
    examples = [Example(f"e{i}", f"What is {i} + {i}?", f" {2 * i} exactly" if i % 2 else f" {2 * i}")
                for i in range(6)]
    cfg = TokenizeConfig(max_length=32)
    z = gold_log_odds(model, tok, examples, cfg, batch_size=4)
    assert len(z) == 6 and len({len(x) for x in z}) > 1  # responses of several lengths
    functional = np.array([np.logaddexp(0, -x.mean()) for x in z])
    b = output_values(model, tok, examples, cfg)
    np.testing.assert_allclose(functional, np.logaddexp(0, -b), rtol=1e-4)
    per_token = np.concatenate([np.logaddexp(0, -x) for x in z])
    assert per_token.mean() == pytest.approx(target_loss(model, tok, examples, cfg).loss, rel=1e-4)


def test_at_base_reuses_the_forward_passes_an_earlier_scoring_recorded(tmp_path):
    """benchmarks/truthbank.py at-base on a fresh run folder: the passes a committed scores file records are
    put back under the keys the scorer looks up, so only a grown bank's new subsets are passed forward."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from truthbank import _reuse_forward_passes

    bank = {"subsets": [{"sources": ["b", "a"]}, {"sources": []}, {"sources": ["c"]}]}
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"metric": "token_ce", "judged": [0, 2],
                                  "forward_estimates": {"sign|0.2": [0.5, 0.7], "unroll|natural": [0.1, 0.3]}}))
    cache = {"token_ce|0.2|a;b": 9.0}
    assert _reuse_forward_passes(cache, scores, bank, "token_ce") == 3
    assert cache == {"token_ce|0.2|a;b": 9.0, "token_ce|0.2|c": 0.7, "token_ce|unroll|natural|a;b": 0.1,
                     "token_ce|unroll|natural|c": 0.3}
    assert _reuse_forward_passes({}, scores, bank, "functional") == 0  # passes in another metric
    assert _reuse_forward_passes({}, tmp_path / "none.json", bank, "token_ce") == 0


def test_trust_pooled_counts_checked_mixtures_against_the_target_alone(tmp_path, capsys):
    """benchmarks/trust_pooled.py: per committed run, how many trust-check mixtures beat the target alone on
    dev (seed means, per metric) and the test gain of the best mixture-trained final model."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from trust_pooled import dev_gains, main, test_gain

    validation = {"subsets": [
        {"sources": [], "true_losses": [0.5, 0.7], "true_token_ce": 1.2, "true_token_ces": [1.2, 0.8]},
        {"sources": ["a"], "true_losses": [0.4], "true_token_ces": [0.8]},
        {"sources": ["a", "b"], "true_losses": [0.9, 0.9], "true_token_ces": [0.5]}]}
    (tmp_path / "run.validation.json").write_text(json.dumps(validation))
    assert np.allclose(dev_gains(tmp_path / "run.validation.json", "functional"), [0.2, -0.3])
    # Seed means: the target alone's two seeds (1.2, 0.8), not its first.
    assert np.allclose(dev_gains(tmp_path / "run.validation.json", "token_ce"), [0.2, 0.5])
    (tmp_path / "alone.json").write_text(json.dumps({"subsets": [{"sources": ["a"], "true_losses": [0.4]}]}))
    assert dev_gains(tmp_path / "alone.json", "functional") is None
    assert dev_gains(tmp_path / "alone.json", "token_ce") is None  # no token CE recorded
    metrics = {"rows": {"selection": {"sources": [], "test_loss": 1.0}, "all": {"sources": ["a", "b"], "test_loss": 0.9},
                        "kmm": {"sources": ["a"], "test_loss": 0.7}}}
    assert test_gain(metrics) == {"best": "kmm", "gain": pytest.approx(0.3), "selection_sources": 0}
    (tmp_path / "run.metrics.json").write_text(json.dumps(metrics))
    assert main(["--results", str(tmp_path)]) == 0
    assert "run | 1/2, -0.050 | 2/2, +0.350 | +0.300 (kmm) | 0" in capsys.readouterr().out
    assert main(["--results", str(tmp_path / "none")]) == 2
