"""Selection methods on synthetic features with known answers."""

import dataclasses
import itertools

import numpy as np
import pytest

from conftest import reorder_sources
from gradselect.errors import GradselectError
from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
from gradselect.select import (
    SELECTORS,
    BackwardSelector,
    EnsembleSelector,
    ForwardSelector,
    GradientSimilarity,
    RandomSelector,
    RepresentationSimilarity,
    Selection,
    apply_rule,
    pseudo_sources,
)


def planted(n_sources=10, harmful=(2, 5, 7), per_source=40, d=8, seed=0, hidden=True, clean_target=False):
    """Sources whose gradients point with (helpful) or against (harmful) the target's."""
    rng = np.random.default_rng(seed)
    u = np.zeros(d)
    u[0] = 1.0
    blocks, rows = [], {}
    target = rng.normal(size=(80, d)) * 0.5 + u
    # Target train rows that barely point at the target's direction: alone they step the wrong way
    # (a trust-region step has a fixed length, so only direction counts); the sources decide the step.
    if clean_target:  # target train rows as well aimed as the dev rows: the target alone steps best
        target[:40] *= 0.1
    else:
        target[:40] = rng.normal(size=(40, d)) * 0.5 + 0.05 * u
    blocks.append(target)
    start = 80
    for i in range(n_sources):
        sign = -1.0 if i in harmful else 1.0
        blocks.append(rng.normal(size=(per_source, d)) * 0.5 + sign * u * rng.uniform(0.5, 1.5))
        rows[f"src{i}"] = np.arange(start, start + per_source)
        start += per_source
    g = np.concatenate(blocks)
    b = rng.normal(0.5, 0.3, size=len(g))
    h = g @ rng.normal(size=(d, 5)) if hidden else None
    return FeatureArrays(g, b, rows, np.arange(0, 40), np.arange(40, 80), param_norm=5.0, hidden=h)


@pytest.mark.parametrize("mode", ["trust_region", "l2"])
def test_planted_harmful_sources_score_worst(mode):
    arr = planted()
    est = SubsetEstimator(EstimateConfig(mode=mode, lam=1e-2, radius=0.5)).fit(arr)
    sel = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200).select(est)
    worst = set(sel.ranking()[-3:])
    assert worst == {"src2", "src5", "src7"}
    assert set(sel.chosen).isdisjoint(worst) and sel.chosen
    coef = sel.params["ridge_coefficients"]
    assert all(coef[n] > 0 for n in worst) and all(coef[n] < 0 for n in sel.chosen)
    for name, (lo, hi) in sel.intervals.items():
        assert lo <= sel.scores[name] <= hi
    assert sel.estimated_loss < est.base_loss_


def test_forward_and_backward_find_the_optimum_of_a_small_problem():
    arr = planted(n_sources=6, harmful=(1, 4), seed=3)
    est = SubsetEstimator(EstimateConfig(mode="l2", lam=5e-2)).fit(arr)
    n = len(est.source_names_)
    masks = np.array(list(itertools.product([False, True], repeat=n)))
    losses = est.estimate(masks)
    optimum = {est.source_names_[i] for i in np.flatnonzero(masks[np.argmin(losses)])}
    assert optimum == {"src0", "src2", "src3", "src5"}
    fwd = ForwardSelector().select(est)
    bwd = BackwardSelector().select(est)
    assert set(fwd.chosen) == optimum and set(bwd.chosen) == optimum
    assert fwd.estimated_loss == pytest.approx(losses.min())
    assert len(fwd.params["path"]) == len(optimum) + 1
    capped = ForwardSelector(max_size=2).select(est)
    assert len(capped.chosen) == 2 and set(capped.chosen) <= optimum


def test_reordering_sources_permutes_scores_only():
    arr = planted()
    names = arr.source_names
    perm = list(np.random.default_rng(0).permutation(len(names)))
    shuffled = reorder_sources(arr, perm)
    cfg = EstimateConfig(radius=0.5)
    for method in ("forward", "backward", "grad-sim", "repr-sim", "all"):
        a = SELECTORS[method]().select(SubsetEstimator(cfg).fit(arr))
        b = SELECTORS[method]().select(SubsetEstimator(cfg).fit(shuffled))
        assert a.scores == pytest.approx(b.scores, rel=1e-9) and set(a.chosen) == set(b.chosen), method


def test_decision_rules():
    arr = planted()
    est = SubsetEstimator(EstimateConfig(radius=0.5)).fit(arr)
    scores = {n: float(i) for i, n in enumerate(reversed(est.source_names_))}  # src9 best
    top, _ = apply_rule(est, scores, "top_k", k=2)
    assert top == ["src8", "src9"]
    below, _ = apply_rule(est, scores, "threshold", threshold=3)
    assert below == ["src7", "src8", "src9"]
    prefix, extra = apply_rule(est, scores, "best_prefix")
    assert len(extra["prefix_losses"]) == 10
    assert len(prefix) == int(np.argmin(extra["prefix_losses"])) + 1
    with pytest.raises(GradselectError, match="needs k"):
        apply_rule(est, scores, "top_k")


def test_baselines():
    arr = planted()
    est = SubsetEstimator(EstimateConfig(radius=0.5)).fit(arr)
    grad = GradientSimilarity().select(est)
    assert set(grad.chosen) == set(arr.source_names) - {"src2", "src5", "src7"}
    assert RepresentationSimilarity(k=3).select(est).chosen.__len__() == 3
    r1, r2 = RandomSelector(k=4, seed=1).select(est), RandomSelector(k=4, seed=1).select(est)
    assert r1.chosen == r2.chosen and len(r1.chosen) == 4
    assert SELECTORS["all"]().select(est).chosen == arr.source_names
    assert SELECTORS["target-only"]().select(est).chosen == []
    no_hidden = FeatureArrays(arr.g, arr.b, arr.source_rows, arr.train_rows, arr.dev_rows)
    with pytest.raises(GradselectError, match="hidden_states = true"):
        RepresentationSimilarity().select(SubsetEstimator().fit(no_hidden))


def test_selection_round_trips(tmp_path):
    est = SubsetEstimator(EstimateConfig(radius=0.5)).fit(planted())
    sel = EnsembleSelector(n_subsets=30, n_bootstrap=50).select(est)
    sel.save(tmp_path / "s.json")
    again = Selection.load(tmp_path / "s.json")
    assert again == sel
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(GradselectError, match="bad.json"):
        Selection.load(tmp_path / "bad.json")


@pytest.mark.parametrize("method, floor", [("kmeans", 0.95), ("agglomerative", 0.9)])
def test_pseudo_sources_recover_planted_groups(method, floor):
    arr = planted(n_sources=4, harmful=(1, 3), seed=5)
    clusters = pseudo_sources(arr, 2, seed=0, method=method)
    helpful = set(arr.source_rows["src0"]) | set(arr.source_rows["src2"])
    purity = [max(len(set(r) & helpful), len(set(r) - helpful)) / len(r) for r in clusters.source_rows.values()]
    assert min(purity) > floor
    assert sum(len(r) for r in clusters.source_rows.values()) == 160
    assert list(clusters.source_rows) == ["cluster-0", "cluster-1"]
    with pytest.raises(GradselectError, match="k must be between"):
        pseudo_sources(arr, 1000)


def test_choosing_no_source_is_possible_and_said():
    from gradselect.report import format_selection

    est = SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(planted(clean_target=True))
    sel = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200).select(est)
    assert sel.chosen == [] and sel.params["no_source_helps"]
    assert sel.params["target_only_loss"] <= min(sel.params["prefix_losses"])
    assert "no source helps" in format_selection(sel)
    # At natural proportions the output points to the mixing ratio; with one set, or a source chosen, it does not.
    assert "target_share = 0.5" in format_selection(sel)
    shared = dataclasses.replace(sel, params={**sel.params, "estimator": {"target_share": 0.5}})
    assert "target_share = 0.5" not in format_selection(shared)
    some = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200).select(
        SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(planted()))
    assert some.chosen and "target_share = 0.5" not in format_selection(some)


def test_report_md_points_to_the_mixing_ratio_when_no_source_is_chosen(tmp_path):
    from gradselect.report import write_report

    est = SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(planted(clean_target=True))
    sel = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200).select(est)
    sel.save(tmp_path / "selection.json")
    assert "target_share = 0.5 keep" in write_report(tmp_path).read_text()
    shared = dataclasses.replace(sel, params={**sel.params, "estimator": {"target_share": 0.5}})
    shared.save(tmp_path / "selection.json")
    text = write_report(tmp_path).read_text()
    assert "Mixing ratio" in text and "target_share = 0.5 keep" not in text


def test_kmm_accounts_for_redundancy_where_gradient_similarity_does_not():
    from gradselect.select import SELECTORS

    rng = np.random.default_rng(0)
    d = 16
    u1, u2 = np.eye(d)[0], np.eye(d)[1]
    blocks = [rng.normal(size=(40, d)) * 0.05 + (u1 + u2)]  # target train + dev
    rows, start = {}, 40
    for name, direction in (("a", u1), ("a_copy", u1), ("b", u2 + 0.3 * np.eye(d)[2])):
        blocks.append(rng.normal(size=(30, d)) * 0.05 + direction)
        rows[name] = np.arange(start, start + 30)
        start += 30
    g = np.concatenate(blocks)
    arrays = FeatureArrays(g, rng.normal(0.5, 0.3, size=len(g)), rows, np.arange(0, 20), np.arange(20, 40))
    est = SubsetEstimator(EstimateConfig(radius=0.5)).fit(arrays)
    sim = SELECTORS["grad-sim"](k=2).select(est)
    kmm = SELECTORS["kmm"](k=2).select(est)
    assert set(sim.chosen) == {"a", "a_copy"}  # both copies align best with the target
    assert "b" in kmm.chosen and len(kmm.chosen) == 2  # the second copy adds nothing to the match
    assert SELECTORS["kmm"]().select(est).params["weights"]["b"] > 0


def test_less_examples_are_the_rows_most_aligned_with_the_target():
    from gradselect.select.selectors import less_examples

    arr = planted(n_sources=4, harmful=(1, 3), seed=2)
    est = SubsetEstimator(EstimateConfig(radius=0.5)).fit(arr)
    rows = less_examples(est, 50)
    helpful = set(arr.source_rows["src0"]) | set(arr.source_rows["src2"])
    assert len(rows) == 50 and len(set(rows.tolist()) & helpful) >= 48
    assert len(less_examples(est, 10_000)) == 160


def test_sampled_examples_draw_the_requested_count_uniformly_or_in_equal_shares():
    from gradselect.select.selectors import sampled_examples

    arr = planted(n_sources=4, harmful=(1, 3), seed=2)
    # Uneven sources: src0 keeps 10 rows, so an equal share of 15 cannot come from it.
    arr.source_rows["src0"] = arr.source_rows["src0"][:10]
    est = SubsetEstimator(EstimateConfig(radius=0.5)).fit(arr)
    pooled = np.concatenate([arr.source_rows[n] for n in est.source_names_])
    uniform = sampled_examples(est, 60, seed=3)
    assert len(uniform) == len(set(uniform.tolist())) == 60 and set(uniform.tolist()) <= set(pooled.tolist())
    assert np.array_equal(uniform, sampled_examples(est, 60, seed=3))
    assert not np.array_equal(uniform, sampled_examples(est, 60, seed=4))
    strat = sampled_examples(est, 60, stratified=True, seed=3)
    counts = {n: len(set(strat.tolist()) & set(arr.source_rows[n].tolist())) for n in est.source_names_}
    # 60 over 4 sources: src0 gives its 10, the other three split the remaining 50 as evenly as possible.
    assert counts["src0"] == 10 and sorted(counts[n] for n in ("src1", "src2", "src3")) == [16, 17, 17]
    assert len(sampled_examples(est, 10_000, stratified=True)) == len(pooled)
    assert len(sampled_examples(est, 0)) == 0


def test_evidence_margin_is_the_gain_over_the_target_alone_beyond_the_estimates_error():
    from gradselect.report import format_selection
    from gradselect.select.selectors import evidence

    est = SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(planted())
    sel = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200).select(est)
    ev = sel.params["evidence"]
    assert sel.chosen and ev["sufficient"] and ev["measured_error"] is None
    # The gain is the target alone's estimate minus the choice's; its SE is paired over dev examples.
    masks = est.subset_masks([[], sel.chosen])
    alone, loss = est.estimate(masks)
    assert ev["gain"] == pytest.approx(alone - loss) and sel.estimated_loss == pytest.approx(loss)
    per = np.logaddexp(0, -est.predict_logodds(masks))
    assert ev["dev_standard_error"] == pytest.approx(np.std(per[0] - per[1], ddof=1) / np.sqrt(per.shape[1]))
    assert ev["margin"] == pytest.approx(1.96 * ev["dev_standard_error"]) and ev["gain"] > ev["margin"]
    assert "beyond the estimate's error" in format_selection(sel)

    # A trust check that measured a gain error larger than the gain: no source, said so, for every rule.
    est.gain_error_ = ev["gain"]
    for selector in (EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200), ForwardSelector(),
                     BackwardSelector(), EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200, rule="threshold")):
        out = selector.select(est)
        assert out.chosen == [] and out.params["no_source_helps"], selector
        assert out.params["evidence"]["measured_error"] == ev["gain"]
        assert out.estimated_loss == pytest.approx(alone) == out.params["target_only_loss"]
    assert "no source helps beyond the estimate's error" in format_selection(out)
    # top_k keeps what it was asked for and says the evidence is not there.
    topk = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200, rule="top_k", k=2).select(est)
    assert len(topk.chosen) == 2 and not topk.params["evidence"]["sufficient"]
    assert "NOT beyond" in format_selection(topk)
    # A fixed margin of 0 takes any estimated gain (the rule before the margin).
    assert EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200, margin=0.0).select(est).chosen == sel.chosen
    assert evidence(est, sel.chosen, margin=0.0)["sufficient"]
    with pytest.raises(GradselectError, match="margin"):
        evidence(est, sel.chosen, margin=-1.0)


def test_a_gain_inside_the_dev_examples_noise_is_not_evidence():
    # Dev questions that disagree: the sources move half of them one way and half the other, so the
    # mean gain is small next to its standard error over dev examples.
    arr = planted(clean_target=False, seed=2)
    rng = np.random.default_rng(7)
    d = arr.g.shape[1]
    sign = np.where(np.arange(40) % 2 == 0, 1.0, -1.05)
    u = np.zeros(d)
    u[0] = 1.0
    arr.g[40:80] = rng.normal(size=(40, d)) * 0.05 + sign[:, None] * u * 2.0
    est = SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(arr)
    taken = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200, margin=0.0).select(est)
    assert taken.chosen and taken.params["evidence"]["gain"] > 0
    held = EnsembleSelector(n_subsets=100, seed=1, n_bootstrap=200).select(est)
    assert held.chosen == [] and held.params["no_source_helps"]
    ev = held.params["evidence"]
    assert 0 < ev["gain"] <= ev["margin"] == pytest.approx(1.96 * ev["dev_standard_error"])


def test_margin_is_validated_by_the_config():
    from gradselect.select import SelectConfig

    assert SelectConfig().margin == "auto" and SelectConfig(margin=0.01).make_selector().margin == 0.01
    assert SelectConfig(method="forward", margin=0).make_selector().margin == 0
    for bad in (-0.1, "big", float("nan")):
        with pytest.raises(ValueError, match="margin"):
            SelectConfig(margin=bad)


def test_baselines_keep_their_own_size_when_the_selection_chose_no_source(tmp_path):
    from gradselect.select import compare_subsets

    est = SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(planted())
    held = compare_subsets(est, ["grad-sim", "kmm", "forward", "target-only"], tmp_path / "cmp.json", size=2)
    assert all(len(held["subsets"][m]) == 2 for m in ("grad-sim", "kmm", "forward"))
    # Held to zero sources every baseline would be the target alone again; they keep their own rules.
    own = compare_subsets(est, ["grad-sim", "kmm", "forward", "target-only"], tmp_path / "cmp.json", size=0)
    assert own["subsets"]["target-only"] == []
    for m in ("grad-sim", "kmm", "forward"):
        assert own["subsets"][m] == SELECTORS[m]().select(est).chosen != [], m
    # The similarity baseline's threshold is its own rule: a trust check's error does not empty it.
    est.gain_error_ = 1e9
    assert SELECTORS["grad-sim"]().select(est).chosen == own["subsets"]["grad-sim"]
    assert "evidence" not in SELECTORS["grad-sim"](k=2).select(est).params
