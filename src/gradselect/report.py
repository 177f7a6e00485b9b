"""Renderers of a run's artifacts: plain-text tables for the CLI, ``report.md`` with PNG plots.

Reads only the run's artifacts (selection.json, metrics.json, validation.json,
train results), so ``gradselect report RUN_DIR`` can regenerate it at any time;
the CLI, the demo and the benchmarks print tables with the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradselect.errors import GradselectError
from gradselect.evaluate.results import MetricsTable
from gradselect.io import read_json_artifact, write_text_atomic
from gradselect.select.result import Selection
from gradselect.validate.trust import estimates_origin


# -- plain-text tables ----------------------------------------------------------------------------------------
def format_selection(selection: Selection, base_loss: float | None = None) -> str:
    """A plain-text table of a selection: sources ranked, scores, intervals, chosen."""
    lines = [f"method {selection.method}: {len(selection.chosen)} of {len(selection.scores)} sources chosen"]
    if selection.params.get("forward_passes") is not None:
        lines[0] += (f" (scored by {selection.params['forward_passes']} dev forward passes at "
                     f"{forward_origin(selection.params)} + a "
                     f"{(selection.params.get('estimator') or {}).get('forward_step', 'sign')} step, in "
                     f"{forward_metric_name(selection.params)})")
    if selection.params.get("forward_length_choice"):
        lines.append(forward_length_line(selection.params["forward_length_choice"]))
    if selection.params.get("forward_surrogate_choice"):
        lines.append(forward_surrogate_line(selection.params["forward_surrogate_choice"]))
    width = max([len(n) for n in selection.scores] + [6])
    header = f"  {'source':<{width}}  {'score':>10}"
    if selection.intervals:
        header += f"  {'95% MC interval':>23}"
    lines.append(header + "  chosen")
    for name in selection.ranking():
        row = f"  {name:<{width}}  {selection.scores[name]:>10.5f}"
        if selection.intervals:
            lo, hi = selection.intervals[name]
            row += f"  [{lo:>10.5f}, {hi:>10.5f}]"
        lines.append(row + ("  *" if name in selection.chosen else ""))
    ev = selection.params.get("evidence")
    if ev:
        lines.append(_evidence_line(ev, chosen=bool(selection.chosen)))
    elif selection.params.get("no_source_helps"):
        lines.append("no source helps: the target alone is estimated lower than every prefix of the ranking")
    hint = dilution_hint(selection.chosen, selection.params)
    if hint:
        lines.append(hint)
    if selection.intervals:
        lines.append("MC interval: the Monte-Carlo error of the mean over the sampled subsets (it shrinks with "
                     "n_subsets), not the uncertainty of the source's effect")
    if selection.estimated_loss is not None:
        where = start_of_estimates(selection.params)
        extra = f"; {where} {base_loss:.5f}" if base_loss is not None else ""
        lines.append(f"estimated target dev loss of the choice: {selection.estimated_loss:.5f}{extra} (the "
                     "estimator's own scale, for ranking; gradselect validate measures how far it is from real "
                     "fine-tunes)")
    return "\n".join(lines)


def dilution_hint(chosen: list[str], params: dict) -> str | None:
    """A hint when no source was chosen at natural proportions (None otherwise): at a fixed step budget every
    source dilutes a small target, which a mixing ratio undoes. Measured (docs/results.md): at natural
    proportions the target alone beat every mixture on both base-model truth banks; on a BIG-Bench-Hard
    target with 8 training questions (boolean_expressions) at ``target_share = 0.5`` every mixture beat it,
    on a second (navigate) the 5 sources KMM chose did."""
    if chosen or not params.get("no_source_helps") or (params.get("estimator") or {}).get("target_share"):
        return None  # a source chosen, a baseline (target-only chooses none by definition), or a ratio set
    return ("at natural proportions each source dilutes the target's own examples at a fixed step budget; "
            "[train] and [estimate] target_share = 0.5 keep the target at half of every mixture (on one scarce "
            "BIG-Bench-Hard target, sources then helped where they had not)")


def forward_length_line(choice: dict) -> str:
    """One line on how the trust check set the forward step's length (``params["forward_length_choice"]``)."""
    marks = ", ".join(f"{f} |theta| {a:.2f}" for f, a in choice["pairwise_accuracy"].items())
    kept = ("kept" if np.isclose(choice["chosen_fraction"], choice["configured_fraction"])
            else "chosen over the configured {:g} |theta|".format(choice["configured_fraction"]))
    size = choice.get("size_baseline_pairwise_accuracy")
    rival = ("" if size is None or not np.isfinite(size)
             else f"; the number of sources alone orders them at {size:.2f}")
    return (f"step length {choice['chosen_fraction']:g} |theta| {kept} by the trust check's pairwise order of its "
            f"{choice['subsets']} subsets (one-SE rule): {marks}{rival}")


def forward_surrogate_line(choice: dict) -> str:
    """One line on whether the trust check's residual surrogate corrects the forward scores
    (``params["forward_surrogate_choice"]``)."""
    marks = choice["pairwise_accuracy"]
    used = "corrected by" if choice["apply"] else "not corrected by"
    return (f"forward scores {used} the residual surrogate of the trust check's {choice['subsets']} subsets "
            f"(residual_surrogate = \"{choice['mode']}\", kernel {choice.get('kernel', 'rbf')}; held-out pairwise "
            f"order: forward "
            f"{marks['forward']:.2f}, corrected {marks['forward + surrogate (held out)']:.2f})")


def forward_metric_name(params: dict) -> str:
    """What the forward scorer measured (a selection's ``params``): its scores, gain and margin are in it."""
    if (params.get("estimator") or {}).get("forward_metric") == "token_ce":
        return "token cross-entropy"
    return "the estimator's functional"


def forward_origin(params: dict) -> str:
    """Where the forward scorer's steps start (a selection's ``params``), in one short phrase."""
    return "the base model" if params.get("estimated_at") == "base" else "theta*"


def start_of_estimates(params: dict) -> str:
    """Where a selection's estimates were made, as outputs name it (its base loss belongs there)."""
    if params.get("estimated_at") == "base":
        return "base model (untrained adapter of the final fine-tunes)"
    return "meta-initialization"


def _evidence_line(ev: dict, *, chosen: bool) -> str:
    """One line on whether the choice's estimated gain over the target alone is beyond the estimate's error."""
    parts = [f"dev SE {ev['dev_standard_error']:.4g}"]
    if ev.get("measured_error") is not None:
        parts.append(f"trust check's gain error {ev['measured_error']:.4g}")
    how = f"margin {ev['margin']:.4g}" + (f" = 1.96 x ({', '.join(parts)})" if ev.get("margin_rule") == "auto" else "")
    gain = f"estimated gain over the target alone {ev['gain']:+.4g}, {how}"
    if chosen and ev["sufficient"]:
        return f"{gain}: beyond the estimate's error"
    if chosen:
        return f"{gain}: NOT beyond the estimate's error (kept because the rule fixes the number of sources)"
    return (f"no source helps beyond the estimate's error: the best choice's {gain}; the target alone is "
            "recommended")


def _ordered(table: MetricsTable, labels: dict | None) -> list[str]:
    labels = labels or {}
    return sorted(table.rows, key=lambda k: (k != "selection", list(labels).index(k) if k in labels else len(labels)))


def _metric_cell(row, metric) -> str:
    value = row.get(metric.key)
    if value is None:
        return ""
    ci = row.interval(metric.key)
    cell = format(value, metric.fmt) + (f" {format_interval(ci, metric.fmt)}" if ci else "")
    seeds = (row.seed_values or {}).get(metric.key)
    if seeds and len(seeds) > 1:  # the mean over seeds, and how far the seeds spread
        cell += f" sd {format(float(np.std(seeds, ddof=1)), metric.fmt)} ({len(seeds)} seeds)"
    return cell


def _difference_cell(table: MetricsTable, label: str, metric) -> str:
    d = table.versus(label, metric.key)
    if d is None:
        return ""
    fmt = "+" + metric.fmt
    cell = f"{format(d['difference'], fmt)} [{format(d['ci95'][0], fmt)}, {format(d['ci95'][1], fmt)}]"
    seeds = table.seed_versus(label, metric.key)
    if seeds:  # the interval is over test examples; the training seed, seed by seed
        cell += " by seed " + " / ".join(format(x, fmt) for x in seeds)
    return cell


def _seeded(table: MetricsTable) -> bool:
    """Whether the table's models were trained with several seeds (each row's seed differences shown)."""
    return any(r.seed_values for r in table.rows.values())


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_metrics(table: MetricsTable, labels: dict | None = None) -> str:
    """A plain-text table of final-model metrics (with 95% intervals over test examples), selection first,
    then each comparison's paired difference to the selection."""
    labels = labels or {}
    columns = table.columns()
    order = _ordered(table, labels)
    grid = [["fine-tuned on", "sources"] + [m.title for m in columns]]
    for key in order:
        r = table.rows[key]
        grid.append([labels.get(key, key), r.size_text()] + [_metric_cell(r, m) for m in columns])
    text = _grid(grid)
    if table.final_init == "meta":  # the paper's default (base) goes without saying
        text += f"\n({start_line(table)})"
    others = [k for k in order if k != "selection" and "selection" in table.rows]
    diffs = [[labels.get(k, k)] + [_difference_cell(table, k, m) for m in columns] for k in others]
    if diffs and any(any(c for c in row[1:]) for row in diffs):
        text += (f"\n\nminus the selection, on the same {table.n_examples} test examples (95% paired bootstrap "
                 "interval; an interval that excludes 0 is a difference beyond test-set noise"
                 + ("; then the difference for each training seed, seed i against seed i" if _seeded(table) else "")
                 + "):\n")
        text += _grid([["fine-tuned on"] + [m.title for m in columns]] + diffs)
    return text + dev_check(table, labels)


def _dev_summary(table: MetricsTable, labels: dict | None = None) -> tuple[str, str] | None:
    """``(losses, preferred)``: each final model's dev loss, lowest first (the selection first on a tie),
    and the label the dev split prefers; None without dev losses or a selection."""
    if not table.dev_loss or "selection" not in table.dev_loss:
        return None
    labels = labels or {}
    ranked = sorted(table.dev_loss.items(), key=lambda kv: (kv[1], kv[0] != "selection"))
    return ", ".join(f"{labels.get(k, k)} {v:.4f}" for k, v in ranked), table.dev_preferred()


def dev_check(table: MetricsTable, labels: dict | None = None) -> str:
    """What the target's dev split says about the choice: the final model it prefers (never the test split)."""
    summary = _dev_summary(table, labels)
    if summary is None:
        return ""
    losses, best = summary
    name = (labels or {}).get(best, best)
    text = f"\n\ncheck on the target's dev split (token cross-entropy of each final model): {losses}"
    margin = dev_margin(table, labels)
    if margin:
        text += f"\n{margin}"
    if best != "selection":
        if _within_noise(table, best):
            text += f"\nthe dev split prefers {name} to the selection by less than its own noise: it cannot tell " \
                    "them apart"
        else:
            text += f"\nthe dev split prefers {name} to the selection: {_disagree(table)}; consider training on " \
                    f"{name}'s data instead"
    return text


def _within_noise(table: MetricsTable, label: str) -> bool:
    d = table.dev_versus(label)
    return d is not None and d["ci95"][0] <= 0 <= d["ci95"][1]


def dev_margin(table: MetricsTable, labels: dict | None = None) -> str:
    """The dev split's closest call against the selection, with its paired 95% interval over dev examples
    ("" when the table has no per-example dev losses)."""
    labels = labels or {}
    others = [k for k in (table.dev_loss or {}) if k != "selection"]
    diffs = {k: table.dev_versus(k) for k in others}
    diffs = {k: d for k, d in diffs.items() if d is not None}
    if not diffs:
        return ""
    k = min(diffs, key=lambda x: diffs[x]["difference"])  # the comparison best on dev, relative to the selection
    d = diffs[k]
    lo, hi = d["ci95"]
    noise = "within the dev split's noise" if lo <= 0 <= hi else "beyond the dev split's noise"
    return (f"{labels.get(k, k)} minus the selection on the same dev examples: {d['difference']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] ({noise})")


def _disagree(table: MetricsTable) -> str:
    if table.final_init == "meta":
        return "the estimates and the real fine-tunes from the meta-initialization disagree here"
    return "the estimates and the real fine-tunes from the base model disagree here"


def start_line(table: MetricsTable) -> str:
    """Where the final fine-tunes started ("" for tables that did not record it)."""
    return {"base": "every final model fine-tuned from the base model ([run] final_init = \"base\")",
            "meta": "every final model fine-tuned from the meta-initialization theta* ([run] final_init = \"meta\")"
            }.get(table.final_init or "", "")


def format_interval(ci, fmt: str = ".3f") -> str:
    """``[lo, hi]`` at the precision of the values (``n/a`` when missing)."""
    if not ci or any(x is None for x in ci):
        return "n/a"
    return f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def measured_line(measured: dict | None) -> str:
    """The trust check's best measured subset against the target alone, in words ("" without one)."""
    if not measured:
        return ""
    parts = [f"seed SD {measured['seed_sd']:.4f}" if measured.get("seed_sd") is not None else "no repeated seeds",
             f"dev SE {measured['dev_standard_error']:.4f}" if measured.get("dev_standard_error") is not None
             else "no per-example losses"]
    verdict = ("beyond its noise: real fine-tunes show this subset helps" if measured["sufficient"]
               else "not beyond its noise" + narrowing(measured) + unanimous(measured))
    return (f"best measured subset {', '.join(measured['sources'])}: {measured['loss']:.5f} vs the target alone "
            f"{measured['target_only_loss']:.5f}, gain {measured['gain']:+.5f}, margin {measured['margin']:.5f} = "
            f"{measured['z']:.2f} x SE {measured['standard_error']:.5f} ({'; '.join(parts)}; z for the best of the "
            f"validated subsets): {verdict}")


def metric_disagreement(report: dict) -> str | None:
    """A warning where the trust check's two metrics disagree on whether any validated mixture beats the
    target alone (the best mixture's gain positive in one, negative in the other); None where they agree
    or either was not measured. The final models are compared in test token cross-entropy, and the
    functional can saturate, so which metric a selection decides in matters most exactly here."""
    f, ce = report.get("measured_choice"), report.get("measured_choice_token_ce")
    if not f or not ce or f["gain"] * ce["gain"] >= 0:
        return None
    better = lambda m: ("a mixture" if m["gain"] > 0 else "the target alone")  # noqa: E731
    return (f"the two metrics disagree: in the functional {better(f)} is better (gain {f['gain']:+.4f}, margin "
            f"{f['margin']:.4f}), in token cross-entropy {better(ce)} (gain {ce['gain']:+.4f}, margin "
            f"{ce['margin']:.4f}); the linear scorer decides in the functional, the forward scorer in [estimate] "
            "forward_metric, and the final models are compared in test token cross-entropy"
            + ("" if report.get("skip_special_tokens") else
               "; with short answers the end-of-turn token's confidence can decide the functional: [features] "
               "skip_special_tokens = true leaves the special tokens out of it"))


def narrowing(measured: dict) -> str:
    """What would narrow an insufficient margin enough for the measured gain, as a clause ("" where the
    gain is not positive or nothing was measured to say it)."""
    if measured["gain"] <= 0 or measured.get("dev_standard_error") is None or "dev_needed" not in measured:
        return ""
    if measured["dev_needed"] is None:
        return ("; the training-seed noise alone exceeds what this gain allows, so more seeds "
                "([run] validate_repeats), not a larger dev split, would narrow the margin")
    return (f"; a dev split of about {measured['dev_needed']} examples (now {measured['n_dev']}), seed noise "
            "unchanged, would put a gain this size beyond it")


def unanimous(measured: dict) -> str:
    """A clause where every validated mixture beat the target alone although the best did not beat it by its
    margin ("" otherwise): the margin is for the best of them alone; all of them at once is evidence too."""
    n = measured.get("mixtures", 0)
    if n < 3 or measured.get("mixtures_better") != n:
        return ""
    return (f"; but every one of the {n} validated mixtures beat the target alone, which on our benchmark runs "
            "went with a mixture winning on test (docs/results.md): weigh training on the best of them")


def trust_start(report: dict) -> str:
    """Where the trust check's fine-tunes started, as the reports say it."""
    if report.get("start") == "base":
        return (f"the base model (where the final fine-tunes start; estimates made at {estimates_origin(report)}; "
                "[run] validate_init)")
    if report.get("estimated_at") == "base":
        return "the untrained adapter the estimates were made at"
    return "the meta-initialization"


def size_line(report: dict) -> str | None:
    """The trust check's trivial rival in one line: how well the number of sources alone orders its subsets
    (``report["size_baseline"]``), against the estimates' order; None where it was not measured."""
    size, m = report.get("size_baseline"), report["metrics"]
    if not size or not np.isfinite(size.get("spearman", float("nan"))):
        return None
    verdict = ("the estimates order them better" if m["pairwise_accuracy"] > size["pairwise_accuracy"]
               else "the estimates do not order them better: they have not shown they know which sources matter")
    return (f"baseline: the number of sources alone (fewer = lower loss) orders these subsets at Spearman "
            f"{size['spearman']:.3f} {format_interval(size['spearman_ci95'])}, pairwise order "
            f"{size['pairwise_accuracy']:.3f}; {verdict}")


def format_validation(report: dict) -> str:
    """The trust check's figures as plain text."""
    m = report["metrics"]
    lines = [f"{m['n_subsets']} subsets fine-tuned from {trust_start(report)} (dev loss at "
             f"{estimates_origin(report)}: "
             f"{report['base_loss']:.5f})",
             f"  mean relative error {m['mean_relative_error']:.2%} (max {m['max_relative_error']:.2%}); "
             f"zero-order baseline {m['zero_order_mean_relative_error']:.2%}",
             f"  skill of the change over predicting none {m['skill_of_change']:.3f}; Spearman {m['spearman']:.3f} "
             f"{format_interval(m['spearman_ci95'])}; pairwise order accuracy {m['pairwise_accuracy']:.3f} "
             f"{format_interval(m['pairwise_accuracy_ci95'])}"]
    if size := size_line(report):
        lines.append("  " + size)
    if "noise_floor_mean_relative_difference" in report:
        lines.append(f"  noise floor (same subset, other seed): {report['noise_floor_mean_relative_difference']:.2%}")
    if measured_line(report.get("measured_choice")):
        lines.append("  " + measured_line(report["measured_choice"]))
    if measured_line(report.get("measured_choice_token_ce")):
        lines.append("  in token cross-entropy: " + measured_line(report["measured_choice_token_ce"]))
    if warning := metric_disagreement(report):
        lines.append("  warning: " + warning)
    from gradselect.estimate.estimator import SATURATED_LOSS

    if report["base_loss"] < SATURATED_LOSS:
        lines.append(f"  warning: the dev loss at {estimates_origin(report)} {report['base_loss']:.2g} is below {SATURATED_LOSS}: the functional "
                     "saturates, and estimates (and this truth) barely separate subsets")
    c = report["calibration"]
    if "loo" in c:
        loo = c["loo"]
        lines.append(f"  step for selection, chosen by pairwise order (the configured step unless another is better by "
                     f"more than one standard error): {c['mode']} {c['parameter']} = {c['value']:.4g}; "
                     f"held out (choice and level fitted without the subset): Spearman {loo['spearman']:.3f} "
                     f"{format_interval(loo['spearman_ci95'])}, pairwise order {loo['pairwise_accuracy']:.3f}, "
                     f"mean relative error {loo['mean_relative_error']:.2%} after the level fit")
    if "surrogate" in report:
        sur, before = report["surrogate"]["loo"], report["surrogate"]["loo_calibrated"]
        state = "used by selection" if report["surrogate"]["apply"] else "not used by selection"
        kernel = report["surrogate"].get("kernel", "rbf")
        lines.append(f"  residual surrogate ({report['surrogate']['mode']}, kernel {kernel}: {state}), held out "
                     "against the seed-mean "
                     f"truth: Spearman {sur['spearman']:.3f} {format_interval(sur['spearman_ci95'])}, pairwise order "
                     f"{sur['pairwise_accuracy']:.3f}, mean relative error {sur['mean_relative_error']:.2%} (calibrated "
                     f"step alone: {before['spearman']:.3f}, {before['pairwise_accuracy']:.3f}, "
                     f"{before['mean_relative_error']:.2%})")
    if report.get("gain_rmse") is not None:
        raw = report.get("gain_rmse_raw")
        lines.append(f"  error of the estimated gain over the target alone (what selection's evidence margin allows "
                     f"for): {report['gain_rmse']:.4g}" + (f" ({raw:.4g} before the truth's own seed noise is taken "
                                                          "off)" if raw is not None and raw != report["gain_rmse"]
                                                          else ""))
    for mode, cand in report["calibration_candidates"].items():
        lines.append(f"  level-only calibration of {mode} {cand['parameter']} = {cand['value']:.4g}: mean relative error "
                     f"{cand['mean_relative_error']:.2%}, leave-one-out {cand['loo_mean_relative_error']:.2%}")
    return "\n".join(lines)


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
    """Wall seconds of the stages gradselect needs to reach its final model, from ``stages/*.json``:
    meta-initialization, features, the trust check when it ran (its real fine-tunes are part of
    what gradselect recommends), selection and the final fine-tune."""
    total = 0.0
    for name in ("meta_init", "features", "validate", "select", "final"):
        record = run_dir / "stages" / f"{name}.json"
        if not record.exists():
            if name == "validate":
                continue
            return None
        total += json.loads(record.read_text()).get("seconds", 0.0)
    return total


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (and ``scores.png``, ``training.png``) into ``run_dir``."""
    run_dir = Path(run_dir)
    sel_file = run_dir / "selection.json"
    if not sel_file.exists():
        raise GradselectError(f"{run_dir}: no selection.json; run gradselect run (or select) first")
    selection = Selection.load(sel_file).to_json()
    lines = ["# gradselect run report", "", f"Run folder: `{run_dir}`", ""]

    lines += ["## Source ranking", "",
              f"Method **{selection['method']}**; {len(selection['chosen'])} of {len(selection['scores'])} sources "
              "chosen. Scores: lower is better (for the ensemble, the mean estimated target dev loss of the "
              "random subsets that contain the source).", ""]
    params = selection.get("params", {})
    if params.get("forward_passes") is not None:
        step = (params.get("estimator") or {}).get("forward_step", "sign")
        lines += [f"Scorer: **forward** — each subset scored by a real forward pass of the target dev split at "
                  f"{forward_origin(params)} + a {step} step of "
                  f"norm {params.get('forward_step_length', float('nan')):.4g}, measured in "
                  f"{forward_metric_name(params)} ({params['forward_passes']} passes).", ""]
        if params.get("forward_length_choice"):
            lines += [forward_length_line(params["forward_length_choice"]), ""]
        if params.get("forward_surrogate_choice"):
            lines += [forward_surrogate_line(params["forward_surrogate_choice"]), ""]
    share = (params.get("estimator") or {}).get("target_share")
    if share:
        lines += [f"Mixing ratio: the target's train split is repeated to about {share:.0%} of every mixture "
                  "(`[train]`/`[estimate] target_share`), in the estimates and the fine-tunes alike.", ""]
    elif hint := dilution_hint(selection.get("chosen", []), params):
        lines += [hint[0].upper() + hint[1:] + ".", ""]
    if params.get("base_loss") is not None and selection.get("estimated_loss") is not None:
        lines += [f"Estimated target dev loss of the choice: {selection['estimated_loss']:.5f} "
                  f"({start_of_estimates(params)}: {params['base_loss']:.5f}), on the estimator's own scale: for "
                  "ranking, "
                  "not a prediction; the trust check (`[run] validate_k`) measures how far it is from real "
                  "fine-tunes.", ""]
    if selection.get("intervals"):
        lines += ["MC interval: the Monte-Carlo error of the mean over the sampled subsets (it shrinks as "
                  "`n_subsets` grows), not the uncertainty of a source's effect.", ""]
    header = "| rank | source | score | 95% MC interval | chosen |"
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

    clusters_file = run_dir / "clusters.json"
    if clusters_file.exists():
        clusters = read_json_artifact(clusters_file, redo="rerun with --force select")
        lines += ["", "## Clusters (pseudo-sources)", "",
                  f"All source examples pooled and clustered into {len(clusters['clusters'])} groups by their projected "
                  f"gradients ({clusters['method']}); the clusters are the sources above.", "",
                  "| cluster | examples | from sources | e.g. | chosen |", "|---|---|---|---|---|"]
        for name, pairs in clusters["clusters"].items():
            origin: dict[str, int] = {}
            for src, _ in pairs:
                origin[src] = origin.get(src, 0) + 1
            mix = ", ".join(f"{s} {n}" for s, n in sorted(origin.items(), key=lambda kv: -kv[1])[:3])
            examples = ", ".join(f"`{ex}`" for _, ex in pairs[:3])
            lines.append(f"| {name} | {len(pairs)} | {mix} | {examples} | {'yes' if name in selection['chosen'] else ''} |")

    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        table = MetricsTable.load(metrics_file)
        columns = table.columns()
        lines += ["", "## Final models on the target's test split", "",
                  f"{table.n_examples} test examples, never seen by estimation or selection; 95% bootstrap "
                  "intervals over the test examples." + (f" {start_line(table).capitalize()}." if start_line(table)
                                                         else ""), "",
                  "| fine-tuned on | sources | " + " | ".join(m.title for m in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        order = _ordered(table, None)
        for label in order:
            row = table.rows[label]
            lines.append(f"| {label} | {row.size_text()} | " + " | ".join(_metric_cell(row, m) for m in columns)
                         + " |")
        others = [k for k in order if k != "selection" and "selection" in table.rows]
        if others and table.versus(others[0], columns[0].key) is not None:
            lines += ["", "Each comparison minus the selection on the same test examples (95% paired bootstrap "
                          "interval" + ("; then the difference for each training seed, seed i against seed i"
                                        if _seeded(table) else "") + "):", "",
                      "| fine-tuned on | " + " | ".join(m.title for m in columns) + " |", "|---|" + "---|" * len(columns)]
            lines += [f"| {k} | " + " | ".join(_difference_cell(table, k, m) for m in columns) + " |" for k in others]
        summary = _dev_summary(table)
        if summary is not None:
            losses, best = summary
            lines += ["", f"Check on the target's dev split (token cross-entropy of each final model; no test "
                          f"example involved): {losses}."]
            margin = dev_margin(table)
            if margin:
                lines += ["", margin[0].upper() + margin[1:] + "."]
            if best != "selection" and _within_noise(table, best):
                lines += ["", f"The dev split prefers {best} to the selection by less than its own noise: it cannot "
                              "tell them apart."]
            elif best != "selection":
                lines += ["", f"**The dev split prefers {best} to the selection**: {_disagree(table)}; consider "
                              f"training on {best}'s data instead."]

    validation_file = run_dir / "validation" / "validation.json"
    if validation_file.exists():
        val = read_json_artifact(validation_file, redo="rerun with --force validate")
        m = val["metrics"]
        lines += ["", "## Trust check: estimates against real fine-tunes", "",
                  f"{m['n_subsets']} subsets fine-tuned from {trust_start(val)} (dev loss at "
                  f"{estimates_origin(val)}: "
                  f"{val['base_loss']:.5f}).", "",
                  "| mean rel. error | zero-order baseline | skill of the change | Spearman [95%] | "
                  "pairwise order accuracy [95%] |",
                  "|---|---|---|---|---|",
                  f"| {m['mean_relative_error']:.2%} | {m['zero_order_mean_relative_error']:.2%} | "
                  f"{m['skill_of_change']:.3f} | {m['spearman']:.3f} {format_interval(m['spearman_ci95'])} | "
                  f"{m['pairwise_accuracy']:.3f} {format_interval(m['pairwise_accuracy_ci95'])} |", "",
                  "Skill of the change: 1 - sum (est - true)^2 / sum (true - base)^2 over the subsets (base: the dev loss "
                  f"at {estimates_origin(val)}), i.e. how "
                  "much better than predicting no change (1 is perfect, 0 no better). The figures are for the "
                  "configured step (nothing fitted to the truth); the calibrated ones below are leave-one-out."]
        if text := size_line(val):
            lines += ["", text[:1].upper() + text[1:] + "."]
        if "noise_floor_mean_relative_difference" in val:
            lines += ["", f"Noise floor (same subset, another seed): "
                          f"{val['noise_floor_mean_relative_difference']:.2%} mean relative difference."]
        if measured_line(val.get("measured_choice")):
            text = measured_line(val["measured_choice"])
            lines += ["", text[:1].upper() + text[1:] + "."]
        if measured_line(val.get("measured_choice_token_ce")):
            lines += ["", "In token cross-entropy, the " + measured_line(val["measured_choice_token_ce"]) + "."]
        if warning := metric_disagreement(val):
            lines += ["", "**Warning:** " + warning + "."]
        c = val.get("calibration", {})
        if "loo" in c:
            loo = c["loo"]
            lines += ["", f"Step for selection, chosen by how well it orders the validated subsets (pairwise order "
                          f"accuracy; the configured step is kept unless another orders them better by more than one "
                          f"standard error): **{c['mode']} {c['parameter']} = {c['value']:.4g}**. Held out (the choice and "
                          f"the level fitted without the subset predicted): Spearman {loo['spearman']:.3f} "
                          f"{format_interval(loo['spearman_ci95'])}, pairwise order accuracy "
                          f"{loo['pairwise_accuracy']:.3f}, mean relative error {loo['mean_relative_error']:.2%} "
                          f"(zero-order {loo['zero_order_mean_relative_error']:.2%}), skill of the change "
                          f"{loo['skill_of_change']:.3f}."]
        if "surrogate" in val:
            sur, before = val["surrogate"]["loo"], val["surrogate"]["loo_calibrated"]
            state = "**used by selection**" if val["surrogate"]["apply"] else "not used by selection"
            lines += ["", f"Residual surrogate (kernel ridge over subset indicators fitted to the estimates' errors "
                          f"on the validated subsets; `residual_surrogate = \"{val['surrogate']['mode']}\"`, kernel "
                          f"{val['surrogate'].get('kernel', 'rbf')}): {state}. "
                          f"Held out against the seed-mean truth (each subset corrected by a surrogate fitted on the "
                          f"others): Spearman {sur['spearman']:.3f} {format_interval(sur['spearman_ci95'])}, pairwise "
                          f"order accuracy {sur['pairwise_accuracy']:.3f}, mean relative error "
                          f"{sur['mean_relative_error']:.2%}; the calibrated step alone: Spearman "
                          f"{before['spearman']:.3f}, pairwise {before['pairwise_accuracy']:.3f}, error "
                          f"{before['mean_relative_error']:.2%}."]
        for mode, cand in val.get("calibration_candidates", {}).items():
            lines += ["", f"Level-only calibration of {mode} {cand['parameter']} = {cand['value']:.4g} (mean relative "
                          f"error {cand['mean_relative_error']:.2%}, leave-one-out {cand['loo_mean_relative_error']:.2%})"
                          "; for reference, not used."]
        if (run_dir / "validation" / "validation.png").exists():
            lines += ["", "![estimated vs true](validation/validation.png)"]

    lm_eval_file = run_dir / "lm_eval.json"
    if lm_eval_file.exists():
        harness = read_json_artifact(lm_eval_file, redo="rerun with --force evaluate")
        lines += ["", "## lm-evaluation-harness", "",
                  f"Tasks {', '.join(harness['tasks'])}"
                  + (f" (at most {harness['limit']} examples each: not comparable to full runs)"
                     if harness.get("limit") else "") + "; each final model's first seed.", "",
                  "| model | task | metric | value | stderr |", "|---|---|---|---|---|"]
        for label, tasks in harness["models"].items():
            for task, values in tasks.items():
                for metric, value in values.items():
                    if metric == "n_examples" or metric.endswith("_stderr"):
                        continue
                    err = values.get(f"{metric}_stderr")
                    lines.append(f"| {label} | {task} | {metric} | {value:.4f} | "
                                 f"{'' if err is None else f'{err:.4f}'} |")

    conventional_file = run_dir / "conventional" / "conventional.json"
    if conventional_file.exists():
        conv = read_json_artifact(conventional_file, redo="rerun with --force conventional")
        lines += ["", "## Conventional forward selection (real fine-tunes)", "",
                  f"{conv['n_finetunes']} fine-tunes from the base model, {conv['seconds']:.0f} s"
                  + ("" if conv["finished"] else f" (stopped by the budget of {conv['budget']})")
                  + f"; chose {', '.join(conv['chosen']) or 'no source'} (dev {conv['metric']} {conv['loss']:.5f})."]
        ours = cost_of_selection(run_dir)
        if ours:
            trust = ", trust check" if (run_dir / "stages" / "validate.json").exists() else ""
            lines += ["", f"gradselect's stages (meta-initialization, features{trust}, selection, final fine-tune): "
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
