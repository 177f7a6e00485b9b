"""A hostile user's inputs, kills and corruptions: no finished result lost, one clear message each."""

import json
import shutil

import numpy as np
import pytest

from gradselect.cli import main

from conftest import TINY_RUN_TOML, tiny_run

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run; tests work on copies of it."""
    base = tmp_path_factory.mktemp("finished")
    cfg = base / "run.toml"
    cfg.write_text(tiny_run(base / "run"))
    assert main(["run", str(cfg), "-q"]) == 0
    return base / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    cfg = tmp_path / "run.toml"
    cfg.write_text(tiny_run(run_dir))
    return cfg, run_dir


def snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "checkpoints" not in p.parts}


def test_a_failed_redo_keeps_the_last_good_result(run_copy, capsys):
    cfg, run_dir = run_copy
    before = snapshot(run_dir)
    # A model-name typo against a finished run: fails before anything is touched.
    cfg.write_text(cfg.read_text().replace('name_or_path = "tiny-llama"', 'name_or_path = "./tiny-llamma"'))
    assert main(["run", str(cfg), "-q"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert snapshot(run_dir) == before

    # A redo that fails midway (corrupt features under --force select) leaves selection.json and the records.
    cfg.write_text(tiny_run(run_dir))
    g = run_dir / "features" / "g.npy"
    good = g.read_bytes()
    g.write_bytes(b"\0" * 16 + good[16:])  # same size: the stage record still takes it for its own
    assert main(["run", str(cfg), "-q", "--force", "select"]) == 2
    err = capsys.readouterr().err
    assert "g.npy is corrupt" in err and "--force features" in err
    g.write_bytes(good)
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("stages/")} == \
           {k: v for k, v in before.items() if not k.startswith("stages/")}
    assert all(after[k] == before[k] for k in before if k.startswith("stages/") and "running" not in k)

    # --force evaluate redoes it in place: metrics.json is replaced, never missing.
    assert main(["run", str(cfg), "-q", "--force", "evaluate"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["rows"].keys() == {"selection", "all"}


@pytest.mark.parametrize("artifact, damage, message", [
    ("features/manifest.json", "{not json", "manifest.json is corrupt"),
    ("features/index.json", '{"ids": 3}', "index.json is corrupt"),
    ("features/g.npy", "\x93NUMPY", "g.npy is corrupt"),
    ("selection.json", '{"method": "x"}', "not a selection file"),
    ("metrics.json", "[1, 2", "metrics.json is corrupt"),
])
def test_corrupt_artifacts_give_one_clear_error(run_copy, capsys, artifact, damage, message):
    cfg, run_dir = run_copy
    (run_dir / artifact).write_text(damage)
    if artifact.startswith("features/"):
        code = main(["select", "--features", str(run_dir / "features"), "-o", str(run_dir / "other.json"), "-q"])
    else:
        code = main(["report", str(run_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "rerun" in err or "recompute" in err


def test_an_edited_output_is_stale_and_redone(run_copy, capsys):
    cfg, run_dir = run_copy
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["rows"]["selection"]["test_loss"] = 0.0
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: evaluate" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["rows"]["selection"]["test_loss"] > 0


def test_a_calibration_from_other_features_is_ignored_loudly(run_copy, capsys):
    cfg, run_dir = run_copy
    (run_dir / "calibration.json").write_text(json.dumps({
        "mode": "l2", "parameter": "lam", "value": 0.5, "mean_relative_error": 0.1, "loo_mean_relative_error": 0.1,
        "candidates": {}, "features": "someone-else"}))
    with pytest.warns(UserWarning, match="fitted on other features"):
        assert main(["select", "--features", str(run_dir / "features"), "-o", str(run_dir / "s.json"), "-q"]) == 0
    assert json.loads((run_dir / "s.json").read_text())["params"]["estimator"]["mode"] == "trust_region"
    # gradselect run ignores it too: only its own trust check calibrates it ([run] validate_k is 0 here).
    assert main(["run", str(cfg), "-q"]) == 0
    assert json.loads((run_dir / "selection.json").read_text())["params"]["estimator"]["mode"] == "trust_region"


def test_truth_is_keyed_by_everything_it_depends_on(tmp_path):
    from gradselect.config import RunConfig
    from gradselect.validate import truth_key

    class FakeTaskset:
        def __init__(self, fp):
            self.fp = fp

        def fingerprint(self):
            return self.fp

    config = RunConfig()
    train = config.train
    key = truth_key(config, FakeTaskset("a"), ["x"], train, None)
    other_model = config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": "tiny-llama"})})
    assert truth_key(other_model, FakeTaskset("a"), ["x"], train, None) != key
    assert truth_key(config, FakeTaskset("b"), ["x"], train, None) != key
    assert truth_key(config, FakeTaskset("a"), ["x"], train.model_copy(update={"seed": 1}), None) != key
    assert truth_key(config, FakeTaskset("a"), ["x"], train, None) == key
    # The functional is measured, not trained: the same fine-tune (measure_truth measures it again).
    for change in ({"output": "log_odds_softmin"}, {"skip_special_tokens": True}):
        other = config.model_copy(update={"features": config.features.model_copy(update=change)})
        assert truth_key(other, FakeTaskset("a"), ["x"], train, None) == key, change
    start = tmp_path / "theta"
    start.mkdir()
    (start / "model.safetensors").write_bytes(b"one")
    with_start = truth_key(config, FakeTaskset("a"), ["x"], train, start)
    (start / "model.safetensors").write_bytes(b"two")
    assert with_start != key and truth_key(config, FakeTaskset("a"), ["x"], train, start) != with_start


def test_degenerate_estimates_refuse_to_rank():
    from gradselect.errors import GradselectError
    from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
    from gradselect.select import EnsembleSelector
    from gradselect.select.selectors import check_informative

    rng = np.random.default_rng(0)
    g = rng.normal(size=(100, 8))
    same = np.arange(40, 100)
    # Four sources made of the same rows: every subset has the same mean loss, hence the same estimate.
    arrays = FeatureArrays(g, rng.normal(1, 0.3, size=100), {s: same for s in "abcd"}, np.arange(0, 20),
                           np.arange(20, 40))
    est = SubsetEstimator(EstimateConfig(include_target_train=False)).fit(arrays)
    with pytest.raises(GradselectError, match="same target dev loss"):
        EnsembleSelector(n_subsets=10).select(est)
    # Every estimate at the floor of the loss: a step far longer than fine-tuning moves.
    with pytest.raises(GradselectError, match="~0"):
        check_informative(np.array([1e-9, 2e-9, 3e-9]), est)
    check_informative(np.array([0.30, 0.31]), est)  # informative estimates pass


@pytest.mark.parametrize("data, message", [
    ({"evaluate": {"max_new_tokens": True}}, "expected a number, got a boolean"),
    ({"run": {"validate_k": 1}}, "needs >= 3 subsets"),
])
def test_booleans_and_small_k_are_config_errors(tmp_path, capsys, data, message):
    import tomli_w

    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN_TOML + "\n" + tomli_w.dumps(data))
    assert main(["run", str(cfg), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_data_hazards_warn_or_fail(tmp_path):
    from gradselect.data import DataConfig, load_taskset
    from gradselect.errors import DataError

    rows = [{"prompt": f"q{i % 5}", "response": f"a{i % 5}"} for i in range(40)]  # every row repeated 8 times
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    with pytest.warns(UserWarning) as caught:
        load_taskset(DataConfig.model_validate({"target": {"path": str(tmp_path / "t.jsonl")},
                                                "sources": [{"path": str(tmp_path / "s.jsonl")}]}))
    text = " ".join(str(w.message) for w in caught)
    assert "both the target's train and test splits" in text and "test example(s)" in text
    with pytest.raises(DataError, match="target_test is the same data as target"):
        load_taskset(DataConfig.model_validate({"target": {"path": str(tmp_path / "t.jsonl")},
                                                "target_test": {"path": str(tmp_path / "t.jsonl")}}))


def test_data_dependent_checks_come_before_any_training(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN_TOML + '\n[select]\nrule = "top_k"\nk = 9\n' + f'\n[run]\nrun_dir = "{tmp_path / "run"}"\n')
    assert main(["run", str(cfg), "-q"]) == 2
    assert "k = 9 but there are only 3 sources" in capsys.readouterr().err
    # A held-out response that cannot fit max_length would only fail at featurization or evaluation.
    rows = [{"prompt": f"q{i}", "response": "x" * (5 if i < 20 else 60)} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = TINY_RUN_TOML.replace('[data.target]\nreasoning_gym = "chain_sum"\nsize = 40\nseed = 1\n',
                                 f'[data.target]\npath = "{tmp_path / "t.jsonl"}"\n')
    text = text.replace("max_length = 192", "max_length = 40")
    cfg.write_text(text + f'\n[evaluate]\nmax_new_tokens = 4\n[run]\nrun_dir = "{tmp_path / "run"}"\n')
    assert main(["run", str(cfg), "-q"]) == 2
    assert "response does not fit in max_length=40" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_sources_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data.target]\nreasoning_gym = "chain_sum"\nsize = 30\n[model]\nname_or_path = "tiny-llama"\n'
                   f'[run]\nrun_dir = "{tmp_path / "run"}"\n')
    assert main(["run", str(cfg), "-q"]) == 2
    assert "no auxiliary source" in capsys.readouterr().err


def test_cut_prompts_warn():
    from gradselect.data import Example, Source
    from gradselect.data.tokenize import TokenizeConfig
    from gradselect.evaluate import EvalConfig, exact_match
    from gradselect.model import make_tiny_model

    model, tok = make_tiny_model("llama")
    src = Source("t", [Example(id=f"t:{i}", prompt="x" * 40, response="1") for i in range(2)])
    with pytest.warns(UserWarning, match="2 prompt\\(s\\) were cut to their last 12 tokens"):
        exact_match(model, tok, src, TokenizeConfig(max_length=16), EvalConfig(max_new_tokens=4))


def test_force_features_with_bad_weights_keeps_the_old_store(run_copy, capsys):
    cfg, run_dir = run_copy
    before = snapshot(run_dir / "features")
    weights = next((run_dir / "meta_init" / "adapter").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(b"\0" * 16 + data[16:])  # same size: meta_init still looks current
    assert main(["run", str(cfg), "-q", "--force", "features"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the weights" in err or "corrupt" in err
    assert snapshot(run_dir / "features") == before


def test_atomic_writes_give_the_mode_a_plain_write_would(tmp_path):
    """mkstemp makes 0600 files; an artifact a user shares (report.md, selection.json) must not be private."""
    import os
    import stat

    from gradselect.io import write_json_atomic

    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        write_json_atomic(fresh, {"a": 1})
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        write_json_atomic(kept, {"b": 2})
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
        assert json.loads(kept.read_text()) == {"b": 2}
        # a non-default umask is honoured, and left as it was
        os.umask(0o027)
        private = tmp_path / "private.json"
        write_json_atomic(private, {"c": 3})
        assert stat.S_IMODE(private.stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(umask)
