"""A run folder stays what its stages wrote: hand-made selections are refused or detected, configs replay."""

import json
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pytest

from gradselect.cli import main

from conftest import tiny_run, write_jsonl

RUN = tiny_run("runs/r", extra_sources="""
[[data.sources]]
name = "extra"
path = "data/extra.jsonl"
""")


def _setup(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "extra.jsonl",
                [{"prompt": f"Add {i} and {i + 1}.", "response": str(2 * i + 1)} for i in range(12)])
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN)
    monkeypatch.chdir(tmp_path)
    return cfg


def test_a_hand_made_selection_is_refused_then_detected(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0
    original = json.loads((run_dir / "selection.json").read_text())
    capsys.readouterr()

    # gradselect select does not overwrite a run's selection unless told to.
    assert main(["select", "--features", str(run_dir / "features"), "--method", "all", "-q"]) == 2
    assert "-o PATH" in capsys.readouterr().err
    assert json.loads((run_dir / "selection.json").read_text()) == original
    assert main(["select", "--features", str(run_dir / "features"), "--method", "all", "--force", "-q"]) == 0
    assert json.loads((run_dir / "selection.json").read_text())["method"] == "all"
    capsys.readouterr()

    # The next run sees the edit, redoes selection, and keeps every comparison fine-tune.
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: select" in out and "final-all" in out.split("skipped")[1]
    again = json.loads((run_dir / "selection.json").read_text())
    assert again["method"] == original["method"] and again["chosen"] == original["chosen"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["rows"]) == {"selection", "all"}
    # One schema, with versions; the comparison subsets live in their own file.
    assert again["selection_version"] == 1 and "comparisons" not in again["params"]
    assert json.loads((run_dir / "comparisons.json").read_text())["subsets"]["all"] == ["more", "legs", "noisy",
                                                                                       "extra"]
    assert metrics["metrics_version"] == 1


def test_a_run_folder_config_replays_from_any_directory(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0
    capsys.readouterr()
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    # Only what the user set, data paths and the run folder absolute, provenance as data.
    assert "estimate" not in saved and "adapter" in saved
    assert saved["data"]["sources"][-1]["path"] == str(tmp_path / "data" / "extra.jsonl")
    assert saved["run"]["run_dir"] == str(run_dir)
    assert saved["provenance"]["gradselect_version"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(run_dir / "config.toml"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stages run: none" in out
    assert not (elsewhere / "runs").exists()


def test_run_with_pseudo_sources_trains_on_the_chosen_clusters(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    text = RUN.replace("[select]\n", "[select]\npseudo_sources = 3\n")
    cfg.write_text(text)
    assert main(["run", str(cfg), "-q"]) == 0
    clusters = json.loads((run_dir / "clusters.json").read_text())["clusters"]
    assert list(clusters) == ["cluster-0", "cluster-1", "cluster-2"]
    assert sum(map(len, clusters.values())) == 16 * 3 + 12  # every source example, in exactly one cluster
    selection = json.loads((run_dir / "selection.json").read_text())
    assert len(selection["chosen"]) == 1 and selection["chosen"][0] in clusters
    assert selection["params"]["chosen_examples"] == clusters[selection["chosen"][0]]
    trained = json.loads((run_dir / "final" / "selection" / "train_result.json").read_text())
    n_target_train = trained["n_examples"] - len(clusters[selection["chosen"][0]])
    assert n_target_train > 0  # the chosen cluster's examples plus the target's train split
    assert "## Clusters (pseudo-sources)" in (run_dir / "report.md").read_text()
    capsys.readouterr()

    # Another K: features are reused, selection and the fine-tunes redone.
    cfg.write_text(text.replace("pseudo_sources = 3", "pseudo_sources = 2"))
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "meta_init, features" in out.split("skipped")[1] and "stages run: select, final" in out
    assert len(json.loads((run_dir / "clusters.json").read_text())["clusters"]) == 2


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_export_round_trips_the_selected_training_set(tmp_path, monkeypatch, capsys, fmt):
    import csv

    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--format", fmt, "-o", str(out), "-q"]) == 0
    if fmt == "jsonl":
        rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    else:
        import datasets

        rows = datasets.load_from_disk(str(out / "dataset")).to_list()
    trained = json.loads((run_dir / "final" / "selection" / "train_result.json").read_text())
    chosen = json.loads((run_dir / "selection.json").read_text())["chosen"]
    assert len(rows) == trained["n_examples"]  # exactly what the final fine-tune trained on
    assert {r["source"] for r in rows} == {"target/train", *chosen}
    scores = list(csv.DictReader((out / "scores.csv").read_text().splitlines()))
    assert [r["source"] for r in scores if r["chosen"] == "True"] == chosen and len(scores) == 4


def test_less_comparison_trains_on_as_many_examples_as_the_selection(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    cfg.write_text(RUN.replace('compare = ["all"]', 'compare = ["all", "less", "kmm", "uniform", "stratified"]'))
    assert main(["run", str(cfg), "-q"]) == 0
    compared = json.loads((run_dir / "comparisons.json").read_text())
    chosen = json.loads((run_dir / "selection.json").read_text())["chosen"]
    sizes = {"more": 16, "legs": 16, "noisy": 16, "extra": 12}
    assert len(compared["examples"]["less"]) == sum(sizes[n] for n in chosen) == compared["n_examples"]
    assert len(compared["subsets"]["kmm"]) == len(chosen)  # equal budgets
    ours = json.loads((run_dir / "final" / "selection" / "train_result.json").read_text())["n_examples"]
    for label in ("less", "uniform", "stratified"):  # example-level baselines: the selection's example count
        assert len(compared["examples"][label]) == compared["n_examples"]
        assert json.loads((run_dir / "final" / label / "train_result.json").read_text())["n_examples"] == ours
    assert {s for s, _ in compared["examples"]["stratified"]} == set(sizes)  # every source gives its share
    rows = json.loads((run_dir / "metrics.json").read_text())["rows"]
    assert set(rows) == {"selection", "all", "less", "kmm", "uniform", "stratified"}
    # reported by the sources their examples came from and their count, not as one pseudo-source
    assert rows["stratified"]["sources"] == list(sizes) and rows["stratified"]["n_examples"] == compared["n_examples"]
    assert set(rows["less"]["sources"]) == {s for s, _ in compared["examples"]["less"]}
    assert "n_examples" not in rows["kmm"]
    assert f"| stratified | {compared['n_examples']} ex. of 4 |" in (run_dir / "report.md").read_text()


def test_final_seeds_add_fine_tunes_and_report_the_mean_and_spread(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0
    capsys.readouterr()
    first = json.loads((run_dir / "metrics.json").read_text())["rows"]
    assert len(list((run_dir / "evaluations").glob("*.json"))) == 2  # one per model scored

    import gradselect.evaluate.results as results
    scored = []
    real = results.score_split_examples
    monkeypatch.setattr(results, "score_split_examples", lambda *a, **k: scored.append(1) or real(*a, **k))
    cfg.write_text(RUN.replace("final_steps = 3", "final_steps = 3\nfinal_seeds = 2"))
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    # Only the new seed's models are scored; the first seed's scores come back from evaluations/.
    assert len(scored) == 2 and len(list((run_dir / "evaluations").glob("*.json"))) == 4
    again = json.loads((run_dir / "metrics.json").read_text())["rows"]
    for label in ("selection", "all"):
        assert again[label]["seeds"]["loss"][0] == pytest.approx(first[label]["test_loss"], rel=1e-12)
    # --force evaluate scores every model again, a damaged cache entry included.
    next((run_dir / "evaluations").glob("*.json")).write_text("{not json")
    assert main(["run", str(cfg), "-q", "--force", "evaluate"]) == 0
    assert len(scored) == 6
    assert json.loads((run_dir / "metrics.json").read_text())["rows"] == again
    # The first seed's fine-tunes are kept; only the second seed's are trained.
    assert "stages run: final-seed1, final-all-seed1, evaluate, report" in out
    assert "(2 seeds)" in out
    row = json.loads((run_dir / "metrics.json").read_text())["rows"]["selection"]
    assert len(row["seeds"]["loss"]) == 2
    assert row["test_loss"] == pytest.approx(sum(row["seeds"]["loss"]) / 2, rel=1e-6)


def test_final_fine_tunes_from_theta_star_when_asked(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0
    capsys.readouterr()
    base = json.loads((run_dir / "metrics.json").read_text())
    assert base["final_init"] == "base"
    assert json.loads((run_dir / "final" / "selection" / "train_result.json").read_text())["init_adapter"] is None

    cfg.write_text(RUN.replace("final_steps = 3", 'final_steps = 3\nfinal_init = "meta"'))
    assert main(["run", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    # Only the final fine-tunes and what reads them rerun; each now starts from theta*'s adapter.
    assert "stages run: final, final-all, evaluate, report" in out
    assert "fine-tuned from the meta-initialization" in out
    for label in ("selection", "all"):
        result = json.loads((run_dir / "final" / label / "train_result.json").read_text())
        assert Path(result["init_adapter"]).resolve() == (run_dir / "meta_init" / "adapter").resolve()
    meta = json.loads((run_dir / "metrics.json").read_text())
    assert meta["final_init"] == "meta"
    assert meta["rows"]["selection"]["test_loss"] != base["rows"]["selection"]["test_loss"]
    assert "fine-tuned from the meta-initialization theta*" in (run_dir / "report.md").read_text()
    cfg.write_text(RUN.replace("final_steps = 3", 'final_steps = 3\nfinal_init = "theta"'))
    assert main(["run", str(cfg), "-q"]) == 2
    assert "final_init" in capsys.readouterr().err


def test_identical_final_fine_tunes_train_and_score_once(tmp_path, monkeypatch, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fidelity import selection_rows

    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    # top-k of all four sources: the selection is exactly the "all" comparison
    cfg.write_text(RUN.replace("k = 1", "k = 4"))
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: meta_init, features, select, final, final-all, evaluate" in capsys.readouterr().out
    assert not (run_dir / "final" / "all").exists()  # trained once, in final/selection
    record = json.loads((run_dir / "stages" / "final-all.json").read_text())
    assert list(record["outputs"]) == ["final/selection"]
    rows = json.loads((run_dir / "metrics.json").read_text())["rows"]
    assert rows["all"]["sources"] == rows["selection"]["sources"]
    assert rows["all"]["test_loss"] == rows["selection"]["test_loss"]
    # The benchmark's wall time charges the shared fine-tune to both rows.
    final = json.loads((run_dir / "stages" / "final.json").read_text())["seconds"]
    assert selection_rows(run_dir)["all"]["wall_s"] == pytest.approx(final)
    # Rerun: nothing to do.
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: none" in capsys.readouterr().out


def test_a_selection_that_picks_what_a_baseline_trained_before_copies_it(tmp_path, monkeypatch, capsys):
    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0  # top-1 selection, and all four sources as "all"
    capsys.readouterr()
    cfg.write_text(RUN.replace("k = 1", "k = 4"))  # now the selection is all four sources
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: select, final, evaluate" in capsys.readouterr().out
    mine, theirs = run_dir / "final" / "selection", run_dir / "final" / "all"
    # copied from final/all (file times kept), not trained again
    assert (mine / "train_result.json").stat().st_mtime == (theirs / "train_result.json").stat().st_mtime
    assert (mine / "train_result.json").read_text() == (theirs / "train_result.json").read_text()
    rows = json.loads((run_dir / "metrics.json").read_text())["rows"]
    assert rows["selection"]["test_loss"] == rows["all"]["test_loss"]
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: none" in capsys.readouterr().out


def test_estimates_at_the_base_model_skip_meta_training(tmp_path, monkeypatch, capsys):
    """[run] estimate_at = "base": no meta-training; the features are taken at the untrained LoRA adapter the
    final fine-tunes start from (B = 0, A under the final fine-tunes' seed), and switching back retrains theta*."""
    import torch
    from safetensors.torch import load_file

    from gradselect.features import FeatureStore
    from gradselect.features.extract import folder_digest

    cfg = _setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "r"
    lora = RUN.replace('method = "full"', 'method = "lora"')
    cfg.write_text(lora.replace("final_steps = 3", 'final_steps = 3\nestimate_at = "base"'))
    assert main(["run", str(cfg)]) == 0
    adapter = run_dir / "meta_init" / "adapter"
    assert not (run_dir / "meta_init" / "train_result.json").exists()  # nothing trained
    weights = load_file(adapter / "adapter_model.safetensors")
    assert all(not t.any() for k, t in weights.items() if "lora_B" in k)
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_A" in k)
    assert FeatureStore.open(run_dir / "features").manifest["adapter"]["sha256"] == folder_digest(adapter)
    # The same A a final fine-tune from the base model starts from: train() seeds, then draws it.
    from gradselect.config import load_config
    from gradselect.train import save_initial_adapter

    config = load_config(cfg)
    again = load_file(save_initial_adapter(tmp_path / "again", model_config=config.model,
                                           adapter_config=config.adapter,
                                           seed=config.final_train_config().seed, device="cpu")
                      / "adapter_model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["chosen"] and selection["params"]["estimated_at"] == "base"
    out = capsys.readouterr().out
    assert "base model (untrained adapter of the final fine-tunes)" in out and "meta-initialization 0" not in out
    assert "(base model (untrained adapter of the final fine-tunes): " in (run_dir / "report.md").read_text()
    # Back to theta*: meta-training runs, and every stage after it.
    cfg.write_text(lora)
    assert main(["run", str(cfg), "-q"]) == 0
    assert "stages run: meta_init, features" in capsys.readouterr().out
    assert (run_dir / "meta_init" / "train_result.json").exists()
    # Adam-preconditioned features need meta-training's optimizer: refused before any work.
    cfg.write_text(lora.replace("final_steps = 3", 'final_steps = 3\nestimate_at = "base"')
                   .replace("proj_dim = 32", 'proj_dim = 32\nprecondition = "adam"'))
    assert main(["run", str(cfg), "-q"]) == 2
    assert "estimate_at" in capsys.readouterr().err


def test_a_run_with_a_target_share_trains_and_exports_the_repeated_target(tmp_path, monkeypatch, capsys):
    """``[train] target_share``: the final fine-tune repeats the target's train split to its share of the
    mixture, the estimate models the same rows, and the export writes exactly what was trained on."""
    from gradselect.data.examples import target_repeats

    cfg = _setup(tmp_path, monkeypatch)
    cfg.write_text(RUN.replace("[train]\n", "[train]\ntarget_share = 0.75\n") + "\n[estimate]\ntarget_share = 0.75\n")
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", str(cfg), "-q"]) == 0
    assert main(["export", str(run_dir), "-o", str(tmp_path / "export"), "-q"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "export" / "train.jsonl").read_text().splitlines()]
    trained = json.loads((run_dir / "final" / "selection" / "train_result.json").read_text())
    assert trained["train"]["target_share"] == 0.75 and len(rows) == trained["n_examples"]
    chosen = json.loads((run_dir / "selection.json").read_text())["chosen"]
    n_sources = sum(r["source"] != "target/train" for r in rows)
    n_target = len({r["id"] for r in rows if r["source"] == "target/train"})
    copies = target_repeats(n_target, n_sources, 0.75)
    assert chosen and copies > 1 and sum(r["source"] == "target/train" for r in rows) == copies * n_target
    assert "repeated to about 75% of every mixture" in (run_dir / "report.md").read_text()
