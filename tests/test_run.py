"""gradselect run end to end on a tiny model: stages cached, re-run only downstream of a change."""

import json


from gradselect.cli import main

from conftest import tiny_run

def config(k, run_dir):
    return tiny_run(run_dir, k=k)


def stage_records(run_dir):
    return {p.stem: json.loads(p.read_text())["key"] for p in (run_dir / "stages").glob("*.json")
            if not p.name.endswith(".running.json")}


def test_run_caches_stages_and_reruns_downstream_only(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text(config(1, run_dir))
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: meta_init, features, select, final, final-all, evaluate, report" in out
    for artifact in ("report.md", "scores.png", "training.png", "selection.json", "metrics.json", "config.toml"):
        assert (run_dir / artifact).exists(), artifact
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["rows"]) == {"selection", "all"} and len(metrics["rows"]["selection"]["sources"]) == 1
    report = (run_dir / "report.md").read_text()
    assert "## Source ranking" in report and "## Final models on the target's test split" in report
    # Every final model's dev loss, and which one the dev split prefers, beside the test metrics.
    assert set(metrics["dev_loss"]) == {"selection", "all"} and all(v > 0 for v in metrics["dev_loss"].values())
    assert metrics["dev_preferred"] == min(metrics["dev_loss"], key=metrics["dev_loss"].get)
    assert "Check on the target's dev split" in report
    first = stage_records(run_dir)

    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: none; skipped (inputs unchanged): meta_init, features, select, final, final-all, evaluate, " \
           "report" in capsys.readouterr().out
    assert stage_records(run_dir) == first

    cfg.write_text(config(2, run_dir))
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: select, final, evaluate, report; skipped (inputs unchanged): meta_init, features, final-all" \
           in out
    again = stage_records(run_dir)
    assert again["meta_init"] == first["meta_init"] and again["features"] == first["features"]
    assert again["select"] != first["select"]
    assert len(json.loads((run_dir / "selection.json").read_text())["chosen"]) == 2

    assert main(["run", str(cfg), "-q", "--force", "features"]) == 0
    assert "stages run: features; skipped" in capsys.readouterr().out
    # Turning the trust check on runs it, and selection again with the calibrated radius.
    cfg.write_text(config(2, run_dir) + "validate_k = 3\nvalidate_repeats = 0\n")
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: validate, select" in out and "meta_init, features" in out.split("skipped")[1]
    assert "trust check: 3 subsets fine-tuned from the base model" in out  # its evidence, printed by run too
    assert (run_dir / "calibration.json").exists()
    assert "## Trust check" in (run_dir / "report.md").read_text()
    assert "Best measured subset" in (run_dir / "report.md").read_text()  # the trust check's own evidence
    assert main(["run", str(cfg), "-q", "--force", "nope"]) == 2
    assert "unknown stage(s) ['nope']" in capsys.readouterr().err

    # The conventional baseline: its own stage, its choice fine-tuned and evaluated, the cost ratio reported.
    cfg.write_text(config(2, run_dir) + "validate_k = 3\nvalidate_repeats = 0\n"
                   "conventional_budget = 20\n")
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: conventional, final-conventional, evaluate, report" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    conv = json.loads((run_dir / "conventional" / "conventional.json").read_text())
    assert metrics["rows"]["conventional"]["sources"] == conv["chosen"]
    assert "## Conventional forward selection" in (run_dir / "report.md").read_text()
    assert "cost ratio conventional / gradselect" in (run_dir / "report.md").read_text()

    current = (run_dir / "report.md").read_text()
    assert "2 of 3 sources chosen" in current
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == current
    # By default the trust check starts where the final fine-tunes do (the base model); from theta*
    # ([run] validate_init = "meta") it reruns, and the report says where it started.
    assert json.loads((run_dir / "validation" / "validation.json").read_text())["start"] == "base"
    assert "3 subsets fine-tuned from the base model" in current
    cfg.write_text(config(2, run_dir) + 'validate_k = 3\nvalidate_repeats = 0\nvalidate_init = "meta"\n'
                   "conventional_budget = 20\n")
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: validate" in capsys.readouterr().out
    assert json.loads((run_dir / "validation" / "validation.json").read_text())["start"] == "meta"
    assert "3 subsets fine-tuned from the meta-initialization" in (run_dir / "report.md").read_text()

    # Features in Adam's metric through a Kronecker projector: features and what follows rerun, not
    # meta-training (whose optimizer moments they read); the trust check's cached fine-tunes are reused.
    adam = config(2, run_dir).replace(
        "[features]\n", '[features]\nprecondition = "adam"\nprojector = "kronecker"\nfactor_dim = 8\n').replace(
        "[evaluate]\n", '[evaluate]\nlm_eval_tasks = ["gradselect_target"]\nlm_eval_limit = 3\n')
    cfg.write_text(adam + "validate_k = 3\nvalidate_repeats = 0\n")
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: features, validate, select" in out and "meta_init" in out.split("skipped")[1]
    manifest = json.loads((run_dir / "features" / "manifest.json").read_text())
    assert manifest["precondition"]["kind"] == "adam" and manifest["projector"]["kind"] == "kronecker"
    assert (run_dir / "meta_init" / "optimizer_moments.safetensors").exists()
    assert not (run_dir / "final" / "selection" / "optimizer_moments.safetensors").exists()  # meta-init only
    # The final models also went through lm-evaluation-harness on the target as a local task.
    harness = json.loads((run_dir / "lm_eval.json").read_text())
    assert set(harness["models"]) == {"selection", "all"}
    assert harness["models"]["selection"]["gradselect_target"]["n_examples"] == 3
    assert "## lm-evaluation-harness" in (run_dir / "report.md").read_text()

    # The trust check's residual surrogate, on by default: selection says it corrected its estimates with
    # it; said explicitly, nothing reruns ...
    assert "Residual surrogate (kernel ridge" in (run_dir / "report.md").read_text()
    entry = json.loads((run_dir / "calibration.json").read_text())["residual_surrogate"]
    assert entry["apply"] and entry["kernel"] == "additive"  # [run] surrogate_kernel's default
    cfg.write_text(adam + 'validate_k = 3\nvalidate_repeats = 0\nresidual_surrogate = "on"\n')
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: none" in out
    assert json.loads((run_dir / "calibration.json").read_text())["residual_surrogate"]["apply"]
    params = json.loads((run_dir / "selection.json").read_text())["params"]
    assert params["residual_surrogate"] == {"validated_subsets": 3}
    # ... and off, without it.
    cfg.write_text(adam + 'validate_k = 3\nvalidate_repeats = 0\nresidual_surrogate = "off"\n')
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: validate, select" in capsys.readouterr().out
    assert not json.loads((run_dir / "calibration.json").read_text())["residual_surrogate"]["apply"]
    assert "residual_surrogate" not in json.loads((run_dir / "selection.json").read_text())["params"]
    # The RBF kernel refits the surrogate (the fine-tunes are cached), and the report names it.
    cfg.write_text(adam + 'validate_k = 3\nvalidate_repeats = 0\nsurrogate_kernel = "rbf"\n')
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: validate, select" in capsys.readouterr().out
    assert json.loads((run_dir / "calibration.json").read_text())["residual_surrogate"]["kernel"] == "rbf"
    assert "kernel rbf" in (run_dir / "report.md").read_text()


def test_report_needs_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no selection.json" in capsys.readouterr().err


def test_interrupted_stage_resumes_with_same_inputs_and_starts_clean_otherwise(tmp_path):
    from gradselect.pipeline import Stage, build_dir

    done_dir = tmp_path / "meta_init"
    work = build_dir(done_dir)
    (work / "checkpoints").mkdir(parents=True)
    stage = Stage(tmp_path, "meta_init", "key-a", [done_dir], staging=[work])
    stage.begin()  # no earlier run: a fresh start clears leftovers
    assert not work.exists()
    (work / "checkpoints").mkdir(parents=True)
    Stage(tmp_path, "meta_init", "key-a", [done_dir], staging=[work]).begin()  # same inputs: resume
    assert (work / "checkpoints").exists()
    Stage(tmp_path, "meta_init", "key-b", [done_dir], staging=[work]).begin()  # other inputs: clean
    assert not work.exists()
    (done_dir / "adapter").mkdir(parents=True)
    done = Stage(tmp_path, "meta_init", "key-b", [done_dir], staging=[work])
    done.finish(1.0)
    assert done.is_current() and not done.running.exists()
    assert not Stage(tmp_path, "meta_init", "key-c", [done_dir]).is_current()
    # A redo with other inputs never touches the finished result or its record until it succeeds.
    Stage(tmp_path, "meta_init", "key-c", [done_dir], staging=[work]).begin()
    assert (done_dir / "adapter").exists() and done.is_current()
