import json
import subprocess
import sys

import pytest

from gradselect.cli import build_parser, main

from conftest import write_jsonl

VERBS = ["train", "evaluate", "featurize", "estimate", "select", "validate", "run", "report", "export", "demo"]


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    assert "usage: gradselect " + verb in capsys.readouterr().out


def test_every_verb_is_tested():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(VERBS)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "gradselect", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("gradselect ")


@pytest.fixture
def run_toml(tmp_path, qa_rows):
    write_jsonl(tmp_path / "target.jsonl", qa_rows * 2)
    write_jsonl(tmp_path / "extra.jsonl", [{"prompt": f"Add {i}", "response": f" {i + 1}"} for i in range(8)])
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        """
[data.target]
path = "target.jsonl"

[[data.sources]]
path = "extra.jsonl"

[[data.sources]]
name = "legs"
reasoning_gym = "leg_counting"
size = 6

[train]
max_steps = 2
batch_size = 4

[evaluate]
max_new_tokens = 4
"""
    )
    return cfg


def test_train_then_evaluate(tmp_path, run_toml, capsys):
    out = tmp_path / "out"
    assert main(["train", str(run_toml), "-o", str(out), "--sources", "extra", "-q", "--device", "cpu"]) == 0
    assert "trained on" in capsys.readouterr().out
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert "[train]" in (out / "config.toml").read_text()
    metrics_file = tmp_path / "m.json"
    assert main(["evaluate", str(run_toml), "--adapter", str(out / "adapter"), "-o", str(metrics_file), "-q"]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["split"] == "test" and metrics["n_examples"] == 4 and 0 <= metrics["exact_match"] <= 1
    assert metrics["loss"] > 0


def test_train_then_featurize(tmp_path, run_toml, capsys):
    out = tmp_path / "meta"
    assert main(["train", str(run_toml), "-o", str(out), "-q"]) == 0
    feats = tmp_path / "features"
    args = ["featurize", str(run_toml), "--adapter", str(out / "adapter"), "-o", str(feats), "--proj-dim", "16", "-q"]
    assert main(args) == 0
    assert "dimension 16" in capsys.readouterr().out
    from gradselect.features import FeatureStore

    store = FeatureStore.open(feats)
    assert store.source_names == ["extra", "legs"] and store.g.shape[1] == 16
    assert main(args[:-3] + ["--proj-dim", "8", "-q"]) == 2
    assert "different 'projector'" in capsys.readouterr().err
    assert main(args[:-3] + ["--proj-dim", "8", "--force", "-q"]) == 0
    assert FeatureStore.open(feats).g.shape[1] == 8


def test_flags_without_config(tmp_path, qa_rows, capsys):
    target = write_jsonl(tmp_path / "t.jsonl", qa_rows)
    code = main(["evaluate", "--target", str(target), "--model", "tiny-llama", "--split", "dev", "--no-exact-match", "-q"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["split"] == "dev"


def test_errors_exit_2_with_message(tmp_path, run_toml, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(run_toml.read_text() + "\n[model]\nname = 'x'\n")
    assert main(["train", str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.name'" in err and "name_or_path" in err
    assert main(["train", str(run_toml), "-o", str(tmp_path / "o"), "--sources", "nope"]) == 2
    assert "unknown source 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["evaluate", "--target", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert main(["train", "-o", str(tmp_path / "o")]) == 2
    assert "no target" in capsys.readouterr().err


@pytest.fixture
def feature_store(tmp_path, run_toml):
    meta = tmp_path / "meta"
    assert main(["train", str(run_toml), "-o", str(meta), "-q"]) == 0
    feats = tmp_path / "features"
    cmd = ["featurize", str(run_toml), "--adapter", str(meta / "adapter"), "-o", str(feats), "--proj-dim", "16", "-q"]
    assert main(cmd) == 0
    return feats


def test_estimate_and_select(tmp_path, feature_store, capsys):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    subsets = tmp_path / "subsets.json"
    subsets.write_text(json.dumps([["extra"], ["legs", "extra"], []]))
    out = tmp_path / "est.parquet"
    assert main(["estimate", "--features", str(feature_store), "--subsets", str(subsets), "-o", str(out), "-q"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["subset"] == ["extra", "extra;legs", ""] and table["size"] == [1, 2, 0]
    assert all(x > 0 for x in table["estimated_loss"]) and table["has:legs"] == [False, True, False]
    lines = tmp_path / "subsets.txt"
    lines.write_text("extra\nlegs, extra\n")
    csv_out = tmp_path / "est.csv"
    assert main(["estimate", "--features", str(feature_store), "--subsets", str(lines), "-o", str(csv_out),
                 "--mode", "l2", "--solver", "exact", "-q"]) == 0
    assert pacsv.read_csv(csv_out).num_rows == 2
    sampled = tmp_path / "sampled.csv"
    assert main(["estimate", "--features", str(feature_store), "--n-subsets", "5", "-o", str(sampled), "-q"]) == 0
    assert pacsv.read_csv(sampled).num_rows == 5
    # The low-rank solver at full rank reproduces the fast solver's table.
    full = tmp_path / "full.csv"
    assert main(["estimate", "--features", str(feature_store), "--subsets", str(subsets), "-o", str(full),
                 "--solver", "lowrank", "--rank", "4096", "-q"]) == 0
    assert pacsv.read_csv(full).column("estimated_loss").to_pylist() == pytest.approx(table["estimated_loss"], rel=1e-8)
    capsys.readouterr()

    for method in ["ensemble", "forward", "backward", "grad-sim", "random", "all", "target-only"]:
        sel_out = tmp_path / f"{method}.json"
        args = ["select", "--features", str(feature_store), "--method", method, "-o", str(sel_out), "-q"]
        if method == "ensemble":
            args += ["--n-subsets", "20"]
        assert main(args) == 0, method
        printed = capsys.readouterr().out
        assert f"method {method}" in printed
        if method in ("grad-sim", "random", "all", "target-only"):
            assert "target_share" not in printed, method  # a baseline's choice gets no hint
        saved = json.loads(sel_out.read_text())
        assert saved["method"] == method and set(saved["scores"]) == {"extra", "legs"}
    # The evidence margin from the command line: a huge fixed margin means no source, and says so.
    assert main(["select", "--features", str(feature_store), "--n-subsets", "20", "--margin", "1e9",
                 "-o", str(tmp_path / "m.json"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "no source helps beyond the estimate's error" in printed and "target_share = 0.5" in printed
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["chosen"] == [] and saved["params"]["margin"] == 1e9
    with pytest.raises(SystemExit):
        main(["select", "--features", str(feature_store), "--margin", "big"])
    assert "expected 'auto' or a number" in capsys.readouterr().err
    assert main(["select", "--features", str(feature_store), "--method", "repr-sim", "-q"]) == 2
    assert "hidden_states = true" in capsys.readouterr().err
    assert main(["select", "--features", str(feature_store), "--pseudo-sources", "3", "--n-subsets", "10", "-q"]) == 0
    assert "cluster-2" in capsys.readouterr().out


def test_estimate_errors(tmp_path, feature_store, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("extra\nextra, nope\n")
    assert main(["estimate", "--features", str(feature_store), "--subsets", str(bad), "-o", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.txt, line 2: unknown source(s) ['nope']" in err
    assert not (tmp_path / "x.csv").exists()
    assert main(["estimate", "--features", str(feature_store), "-o", str(tmp_path / "x.xlsx")]) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err
    assert main(["select", "--features", str(tmp_path / "nowhere")]) == 2
    assert "not a feature store" in capsys.readouterr().err
