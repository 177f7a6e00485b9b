import json
import subprocess
import sys

import pytest

from gradselect.cli import build_parser, main

from conftest import write_jsonl

VERBS = ["train", "evaluate", "featurize", "demo"]


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
