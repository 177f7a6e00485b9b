"""A readable report of a run folder: ``report.md`` with PNG plots beside it.

Reads only the run's artifacts (selection.json, metrics.json, train results),
so ``gradselect report RUN_DIR`` can regenerate it at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

from gradselect.errors import GradselectError
from gradselect.io import write_text_atomic


def _plot_scores(selection: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = selection["scores"]
    names = sorted(scores, key=lambda n: scores[n])
    values = [scores[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    colors = ["tab:green" if n in selection["chosen"] else "tab:gray" for n in names]
    intervals = selection.get("intervals")
    if intervals:
        lo = [scores[n] - intervals[n][0] for n in names]
        hi = [intervals[n][1] - scores[n] for n in names]
        ax.errorbar(values, range(len(names)), xerr=[lo, hi], fmt="none", ecolor="black", capsize=3)
    ax.scatter(values, range(len(names)), c=colors, zorder=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("score (lower is better)")
    ax.set_title(f"{selection['method']}: chosen in green")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_training(curves: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(curves.values()):
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _curve(result_file: Path) -> list[tuple[int, float]]:
    if not result_file.exists():
        return []
    history = json.loads(result_file.read_text()).get("log_history", [])
    return [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]


def cost_of_selection(run_dir: Path) -> float | None:
    """Wall seconds of the stages gradselect needs to reach its final model, from ``stages/*.json``."""
    total = 0.0
    for name in ("meta_init", "features", "select", "final"):
        record = run_dir / "stages" / f"{name}.json"
        if not record.exists():
            return None
        total += json.loads(record.read_text()).get("seconds", 0.0)
    return total


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (and ``scores.png``, ``training.png``) into ``run_dir``."""
    run_dir = Path(run_dir)
    sel_file = run_dir / "selection.json"
    if not sel_file.exists():
        raise GradselectError(f"{run_dir}: no selection.json; run gradselect run (or select) first")
    selection = json.loads(sel_file.read_text())
    lines = ["# gradselect run report", "", f"Run folder: `{run_dir}`", ""]

    lines += ["## Source ranking", "",
              f"Method **{selection['method']}**; {len(selection['chosen'])} of {len(selection['scores'])} sources "
              "chosen. Scores: lower is better (for the ensemble, the mean estimated target dev loss of the "
              "random subsets that contain the source).", ""]
    params = selection.get("params", {})
    if params.get("base_loss") is not None and selection.get("estimated_loss") is not None:
        lines += [f"Estimated target dev loss of the choice: {selection['estimated_loss']:.5f} "
                  f"(meta-initialization: {params['base_loss']:.5f}).", ""]
    header = "| rank | source | score | 95% interval | chosen |"
    lines += [header, "|---|---|---|---|---|"]
    ranked = sorted(selection["scores"], key=lambda n: selection["scores"][n])
    intervals = selection.get("intervals") or {}
    for i, name in enumerate(ranked, 1):
        ci = intervals.get(name)
        ci_text = f"[{ci[0]:.5f}, {ci[1]:.5f}]" if ci else ""
        lines.append(f"| {i} | {name} | {selection['scores'][name]:.5f} | {ci_text} | "
                     f"{'yes' if name in selection['chosen'] else ''} |")
    if _plot_scores(selection, run_dir / "scores.png"):
        lines += ["", "![source scores](scores.png)"]

    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        lines += ["", "## Final models on the target's test split", "",
                  f"{metrics['n_examples']} test examples, never seen by estimation or selection.", "",
                  "| fine-tuned on | sources | test loss | exact match |", "|---|---|---|---|"]
        for label in sorted(metrics["rows"], key=lambda k: k != "selection"):  # selection first
            row = metrics["rows"][label]
            em = row.get("test_exact_match")
            lines.append(f"| {label} | {len(row['sources'])} | {row['test_loss']:.4f} | "
                         f"{'' if em is None else f'{em:.3f}'} |")

    validation_file = run_dir / "validation" / "validation.json"
    if validation_file.exists():
        val = json.loads(validation_file.read_text())
        m = val["metrics"]
        lines += ["", "## Trust check: estimates against real fine-tunes", "",
                  f"{m['n_subsets']} subsets fine-tuned from the meta-initialization (true dev loss there: "
                  f"{val['base_loss']:.5f}).", "",
                  "| mean rel. error | max rel. error | zero-order baseline | R^2 of change | Spearman | Kendall |",
                  "|---|---|---|---|---|---|",
                  f"| {m['mean_relative_error']:.2%} | {m['max_relative_error']:.2%} | "
                  f"{m['zero_order_mean_relative_error']:.2%} | {m['r2_of_change']:.3f} | {m['spearman']:.3f} | "
                  f"{m['kendall']:.3f} |"]
        if "noise_floor_mean_relative_difference" in val:
            lines += ["", f"Noise floor (same subset, another seed): "
                          f"{val['noise_floor_mean_relative_difference']:.2%} mean relative difference."]
        c = val.get("calibration", {})
        for mode, cand in val.get("calibration_candidates", {}).items():
            lines += ["", f"Calibrated {mode} {cand['parameter']} = {cand['value']:.4g} (mean relative error "
                          f"{cand['mean_relative_error']:.2%}, leave-one-out {cand['loo_mean_relative_error']:.2%})"
                          + ("; chosen for selection." if mode == c.get("mode") else ".")]
        if (run_dir / "validation" / "validation.png").exists():
            lines += ["", "![estimated vs true](validation/validation.png)"]

    conventional_file = run_dir / "conventional" / "conventional.json"
    if conventional_file.exists():
        conv = json.loads(conventional_file.read_text())
        lines += ["", "## Conventional forward selection (real fine-tunes)", "",
                  f"{conv['n_finetunes']} fine-tunes from the base model, {conv['seconds']:.0f} s"
                  + ("" if conv["finished"] else f" (stopped by the budget of {conv['budget']})")
                  + f"; chose {', '.join(conv['chosen']) or 'no source'} (dev {conv['metric']} {conv['loss']:.5f})."]
        ours = cost_of_selection(run_dir)
        if ours:
            lines += ["", f"gradselect's stages (meta-initialization, features, selection, final fine-tune): "
                          f"{ours:.0f} s; cost ratio conventional / gradselect: {conv['seconds'] / ours:.1f}x."]

    curves = {"meta-initialization": _curve(run_dir / "meta_init" / "train_result.json")}
    for folder in sorted((run_dir / "final").glob("*")) if (run_dir / "final").exists() else []:
        curves[f"final: {folder.name}"] = _curve(folder / "train_result.json")
    if _plot_training(curves, run_dir / "training.png"):
        lines += ["", "## Training curves", "", "![training curves](training.png)"]
    lines.append("")
    out = run_dir / "report.md"
    write_text_atomic(out, "\n".join(lines))
    return out
