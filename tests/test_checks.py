"""Rules across keys are checked when a config loads; ignored options warn; modes and metrics are registries."""

import warnings

import numpy as np
import pytest

from gradselect.config import RunConfig
from gradselect.configbase import validate_config
from gradselect.errors import ConfigError
from gradselect.estimate import STEP_MODELS, EstimateConfig, FeatureArrays, SubsetEstimator
from gradselect.estimate.modes import L2Step
from gradselect.select.search import greedy_forward


def load(data):
    return validate_config(RunConfig, data, "run.toml")


@pytest.mark.parametrize("data, message", [
    ({"run": {"validate_k": 2}}, "run.validate_k: .*needs >= 3 subsets"),
    ({"select": {"rule": "top_k"}}, "rule = 'top_k' needs k"),
    ({"train": {"include_target_train": False}}, r"\[train\] include_target_train = false but \[estimate\]"),
    ({"train": {"include_target_train": False}, "estimate": {"include_target_train": False}},
     "compare has 'target-only'"),
    ({"train": {"target_share": 0.5}}, r"\[train\] target_share = 0.5 but \[estimate\] target_share = None"),
    ({"train": {"target_share": 0.5, "include_target_train": False}, "estimate": {"include_target_train": False}},
     "target_share is set but include_target_train = false"),
    ({"tokenize": {"max_length": 32}, "evaluate": {"max_new_tokens": 32}}, "no room for a prompt"),
    ({"select": {"method": "repr-sim"}}, "hidden_states = true"),
    ({"estimate": {"mode": "sgd"}}, "unknown mode 'sgd'; modes are trust_region, l2, reference"),
])
def test_cross_key_rules_fail_at_load_time_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load(data)


@pytest.mark.parametrize("section, message", [
    ({"estimate": {"mode": "l2", "radius": 0.5}}, r"\[estimate\] radius is ignored by mode 'l2'"),
    ({"estimate": {"rank": 8}}, r"\[estimate\] rank is ignored by solver 'fast'"),
    ({"select": {"method": "grad-sim", "threshold": 0.1}}, r"\[select\] threshold is ignored by method 'grad-sim'"),
])
def test_options_the_choice_ignores_warn(section, message):
    with pytest.warns(UserWarning, match=message):
        load(section)


def test_options_that_are_read_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load({"estimate": {"mode": "l2", "lam": 0.1}, "select": {"method": "ensemble", "rule": "top_k", "k": 2}})


def test_a_new_step_model_is_one_class_found_by_name(monkeypatch):
    class HalfL2(L2Step):
        """L2 with twice the strength: a stand-in for a new mode."""

        name = "half_l2"

        def ridge(self, counts):
            return 2 * self.config.lam

    monkeypatch.setitem(STEP_MODELS, "half_l2", HalfL2)
    rng = np.random.default_rng(0)
    arrays = FeatureArrays(rng.normal(size=(120, 5)), rng.normal(1, 0.5, size=120),
                           {"a": np.arange(40, 80), "b": np.arange(80, 120)}, np.arange(0, 20), np.arange(20, 40))
    new = SubsetEstimator(EstimateConfig(mode="half_l2", lam=0.05)).fit(arrays).estimate([["a"], ["a", "b"]])
    same = SubsetEstimator(EstimateConfig(mode="l2", lam=0.1)).fit(arrays).estimate([["a"], ["a", "b"]])
    assert np.allclose(new, same)
    from gradselect.estimate.modes import calibrated_modes

    assert "half_l2" in calibrated_modes()


def test_greedy_search_tie_break_and_stop_rule():
    names = ["b", "a", "c"]
    table = {(): 1.0, ("b",): 0.5, ("a",): 0.5, ("c",): 0.9, ("a", "b"): 0.6, ("a", "c"): 0.4}

    def oracle(masks):
        return np.array([table.get(tuple(sorted(n for n, m in zip(names, row) if m)), 2.0) for row in masks])

    result = greedy_forward(names, oracle)
    # a and b tie at 0.5: the first name alphabetically wins, whatever the listed order; c then helps, b does not.
    assert [s["added"] for s in result.path] == [None, "a", "c"] and result.loss == 0.4 and result.finished
    assert result.n_evaluations == 1 + 3 + 2 + 1
    capped = greedy_forward(names, oracle, budget=4)
    assert [s["added"] for s in capped.path] == [None, "a"] and not capped.finished


def test_a_registered_metric_reaches_every_table():
    from gradselect.evaluate import METRICS, Metric, MetricRow, MetricsTable
    from gradselect.report import format_metrics

    # Adding a metric is one entry in evaluate.metrics.METRICS; tables and metrics.json follow.
    extra = Metric("accuracy", "mc accuracy", ".2f", compute=lambda *a: 0.5, lower_is_better=False)
    METRICS.append(extra)
    try:
        table = MetricsTable("test", 3, {"selection": MetricRow("selection", ["a"], {"loss": 1.25, "accuracy": 0.5})})
        text = format_metrics(table)
        assert "mc accuracy" in text and "0.50" in text and "1.2500" in text
        assert table.to_json()["rows"]["selection"]["test_accuracy"] == 0.5
    finally:
        METRICS.remove(extra)


def test_final_metrics_carry_intervals_and_paired_differences(tmp_path):
    from gradselect.evaluate import MetricRow, MetricsTable
    from gradselect.evaluate.metrics import PerExample

    rng = np.random.default_rng(0)
    loss = PerExample(rng.normal(1.0, 0.3, 80) * 4, np.full(80, 4.0))
    better = PerExample(loss.num - 0.8, loss.den)  # the same examples, 0.2 lower each
    table = MetricsTable("test", 80, {"selection": MetricRow("selection", ["a"], {"loss": loss.value}, {"loss": loss}),
                                      "all": MetricRow("all", ["a", "b"], {"loss": better.value}, {"loss": better}),
                                      "same": MetricRow("same", ["a"], {"loss": loss.value}, {"loss": loss})})
    lo, hi = table.rows["selection"].interval("loss")
    assert lo < loss.value < hi
    d = table.versus("all", "loss")
    assert d["difference"] == pytest.approx(-0.2) and d["ci95"][0] == pytest.approx(-0.2) == d["ci95"][1]
    assert table.versus("same", "loss") == {"difference": 0.0, "ci95": [0.0, 0.0]}
    table.save(tmp_path / "metrics.json")
    again = MetricsTable.load(tmp_path / "metrics.json")
    assert again.versus("all", "loss") == d and again.rows["all"].interval("loss") == table.rows["all"].interval("loss")
