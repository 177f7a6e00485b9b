"""The conventional baseline on a tiny model: forward selection with one real fine-tune per candidate."""

import json

import pytest

from gradselect.config import load_config
from gradselect.data import load_taskset
from gradselect.errors import GradselectError
from gradselect.validate.conventional import conventional_forward

from conftest import TINY_RUN_TOML


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv")
    cfg = tmp / "run.toml"
    cfg.write_text(TINY_RUN_TOML)
    config = load_config(cfg)
    return config, load_taskset(config.data), tmp


def test_conventional_forward_follows_the_real_losses_and_caches(setup):
    config, taskset, tmp = setup
    out = tmp / "conv"
    result = conventional_forward(config, taskset, out, progress=False)
    runs = {tuple(sorted(r["sources"])): r["loss"] for r in result["runs"]}
    # Each step added the candidate with the lowest real dev loss, and only while it improved.
    current, loss = [], runs[()]
    assert result["path"][0] == {"added": None, "loss": loss}
    for step in result["path"][1:]:
        candidates = {n: runs[tuple(sorted(current + [n]))] for n in taskset.source_names if n not in current}
        assert step["added"] == min(candidates, key=candidates.get)
        assert step["loss"] == candidates[step["added"]] < loss
        current, loss = current + [step["added"]], step["loss"]
    if len(current) < len(taskset.source_names):  # stopped: no remaining candidate improved
        remaining = [n for n in taskset.source_names if n not in current]
        assert all(runs[tuple(sorted(current + [n]))] >= loss for n in remaining)
    assert sorted(result["chosen"]) == sorted(current) and result["finished"]
    assert result["n_finetunes"] == len(result["runs"]) == len(runs) and result["seconds"] > 0
    assert json.loads((out / "conventional.json").read_text())["chosen"] == result["chosen"]

    # A rerun trains nothing: every fine-tune comes from the cache, with its recorded time.
    stamps = {p: p.stat().st_mtime for p in (out / "runs").glob("*/truth.json")}
    again = conventional_forward(config, taskset, out, progress=False)
    assert again["chosen"] == result["chosen"] and again["seconds"] == pytest.approx(result["seconds"])
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*/truth.json")} == stamps


def test_conventional_budget_stops_before_an_unaffordable_step(setup):
    config, taskset, tmp = setup
    result = conventional_forward(config, taskset, tmp / "conv", budget=3, progress=False)
    # The first step needs 3 fine-tunes after the target-only one: over a budget of 3.
    assert not result["finished"] and result["n_finetunes"] == 1 and result["chosen"] == []
    import json

    assert json.loads((tmp / "conv" / "conventional.json").read_text())["finished"] is False  # not "False"
    with pytest.raises(GradselectError, match="budget >= 1"):
        conventional_forward(config, taskset, tmp / "conv", budget=0, progress=False)
