"""Benchmark: estimates against real fine-tunes, harmful-source detection, and final selections.

One run folder per suite, built with ``gradselect run`` (stages cached, so a rerun
or a larger ``--k`` reuses finished work), then:

1. **estimates vs truth**: the trust check fine-tunes from theta* on ``--k`` subsets
   (all sources, target only, random halves; 2 repeated with another seed for the
   noise floor). For each estimator mode: mean relative error, the zero-order
   baseline, R^2 of the predicted change, Spearman; calibrated modes also with the
   leave-one-out error of their calibration.
2. **harmful sources, verified**: leave-one-out real fine-tunes from theta* (all
   sources, and all but each one). A source is *truly harmful* when dropping it
   lowers the true dev loss. The planted noisy sources are checked against this
   before being used as ground truth. Detection by the estimator (dropping it lowers
   the *estimated* loss) and by the selection (not chosen): precision, recall, F1.
3. **selections**: target test loss / exact match of the final fine-tunes on each
   method's choice (equal step budgets) and each method's wall time.

Truth banks (seed-repeated fine-tunes from theta* on 50+ subsets, committed as JSON):

    python benchmarks/fidelity.py score --bank benchmarks/truth/planted12.json

Suites:

    python benchmarks/fidelity.py planted --model tiny-llama -o runs/fidelity-tiny
    python benchmarks/fidelity.py planted -o runs/demo          # SmolLM2 + LoRA: the demo's config
    python benchmarks/fidelity.py bbh --bbh ../shared/data/bbh -o runs/fidelity-bbh

``planted`` is the demo's reasoning-gym config (target chain_sum; 6 sources, two with
all responses swapped); pointing ``-o`` at a finished demo folder reuses its stages.
``bbh`` takes one BIG-Bench-Hard task as target and ``--n-sources`` others as
sources (skips cleanly when the folder is absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BBH_SOURCES = [
    "navigate", "web_of_lies", "sports_understanding", "causal_judgement", "formal_fallacies",
    "logical_deduction_three_objects", "object_counting", "date_understanding", "hyperbaton", "snarks",
    "disambiguation_qa", "temporal_sequences", "penguins_in_a_table", "ruin_names", "movie_recommendation",
]
COMPARE = ["all", "target-only", "grad-sim", "repr-sim", "random", "forward"]


def planted_config(model: str | None):
    from gradselect.demo import FINAL_STEPS, demo_config

    quick = model is not None and model.startswith("tiny-")
    config = demo_config(quick=quick, model=model)
    steps = FINAL_STEPS["tiny" if config.model.name_or_path.startswith("tiny-") else "smollm2"]
    return config, steps, ["chain_sum_noisy", "arith_noisy"]


def bbh_config(bbh: Path, target: str, n_sources: int, per_source: int, model: str | None):
    from gradselect.config import RunConfig

    names = [s for s in BBH_SOURCES if s != target][:n_sources]
    config = RunConfig.model_validate({
        "data": {
            "target": {"name": target, "path": str(bbh / f"{target}.json"), "max_examples": 100},
            "sources": [{"name": n, "path": str(bbh / f"{n}.json"), "max_examples": per_source} for n in names],
        },
        "model": {"name_or_path": model or "smollm2"},
        "features": {"proj_dim": 256, "hidden_states": True},
        "tokenize": {"max_length": 256, "chat_template": True},
        "train": {"epochs": 1, "learning_rate": 5e-4, "batch_size": 8, "logging_steps": 5},
        "select": {"method": "ensemble", "n_subsets": 64},
        "evaluate": {"max_new_tokens": 8, "exact_match": True},
    })
    return config, 20, []


def prf(predicted: set, actual: set) -> dict:
    tp = len(predicted & actual)
    p = tp / len(predicted) if predicted else float("nan")
    r = tp / len(actual) if actual else float("nan")
    f1 = 2 * p * r / (p + r) if predicted and actual and (p + r) > 0 else float("nan")
    return {"precision": p, "recall": r, "f1": f1, "predicted": sorted(predicted), "actual": sorted(actual)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:  # re-score estimators against a committed truth bank (benchmarks/truthbank.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from truthbank import main as truthbank_main

        return truthbank_main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=["planted", "bbh"])
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", help="model (default: smollm2)")
    p.add_argument("--k", type=int, default=20, help="validated subsets")
    p.add_argument("--bbh", type=Path, default=Path("../shared/data/bbh"))
    p.add_argument("--target", default="boolean_expressions")
    p.add_argument("--n-sources", type=int, default=10)
    p.add_argument("--per-source", type=int, default=20)
    p.add_argument("--harm-seeds", type=int, default=3, help="seeds of each leave-one-out fine-tune (>= 3)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from gradselect.data import load_taskset
    from gradselect.estimate import FeatureArrays, SubsetEstimator
    from gradselect.features import FeatureStore
    from gradselect.io import write_json_atomic
    from gradselect.pipeline import run_pipeline
    from gradselect.select import fitted_estimator
    from gradselect.validate import apply_calibration, calibrate, compare, measure_truth, truth_key

    if args.suite == "bbh":
        if not (args.bbh / f"{args.target}.json").exists():
            print(f"skipped: no BIG-Bench-Hard data at {args.bbh}")
            return 0
        config, steps, planted = bbh_config(args.bbh, args.target, args.n_sources, args.per_source, args.model)
    else:
        config, steps, planted = planted_config(args.model)
    config = config.model_copy(update={"run": config.run.model_copy(update={
        "run_dir": str(args.out), "compare": COMPARE, "final_steps": steps, "validate_k": args.k,
        "validate_init": "meta", "validate_repeats": 2})})  # (the estimator against what it models)
    start = time.perf_counter()
    result = run_pipeline(config, device=args.device, progress=False)
    run_dir = args.out
    taskset = load_taskset(config.data)
    store = FeatureStore.open(run_dir / "features")
    arrays = FeatureArrays.from_store(store)
    names = list(taskset.source_names)
    validation = json.loads((run_dir / "validation" / "validation.json").read_text())
    subsets = [s["sources"] for s in validation["subsets"]]
    true = np.array([s["true_loss"] for s in validation["subsets"]])
    base = validation["base_loss"]

    # 1. estimates vs truth, per mode
    modes = {}
    for label, est_cfg in [
        ("trust region, default radius", config.estimate),
        ("trust region, calibrated", None),
        ("l2, calibrated lam", config.estimate.model_copy(update={"mode": "l2"})),
        ("reference (authors')", config.estimate.model_copy(update={"mode": "reference"})),
        ("trust region, calibrated, lowrank", None),
    ]:
        calib = None
        if label.startswith("trust region, calibrated"):
            calib = validation.get("calibration_candidates", {}).get("trust_region") or validation["calibration"]
            est_cfg = config.estimate.model_copy(update={"radius": calib["value"]})
            if "lowrank" in label:
                est_cfg = est_cfg.model_copy(update={"solver": "lowrank"})
        elif label.startswith("l2"):
            calib = validation.get("calibration_candidates", {}).get("l2") or calibrate(arrays, est_cfg, subsets, true)
            est_cfg = est_cfg.model_copy(update={"lam": calib["value"]})
        estimates = SubsetEstimator(est_cfg).fit(arrays).estimate(subsets)
        row = compare(estimates, true, base)
        if calib:
            row["calibrated"] = {"parameter": calib["parameter"], "value": calib["value"],
                                 "loo_mean_relative_error": calib["loo_mean_relative_error"]}
        modes[label] = row

    # 2. harmful sources: leave-one-out real fine-tunes from theta* (the trust check's training), with
    # --harm-seeds seeds each; a source is harmful (helpful) only when the 95% interval of its paired
    # effect loss(all) - loss(all - s) over the seeds lies above (below) zero, undetermined otherwise.
    from scipy.stats import t as student_t

    meta = run_dir / "meta_init" / "adapter"
    base_cfg = config.final_train_config()
    loo_true = {}
    for seed in range(args.harm_seeds):
        train_cfg = base_cfg.model_copy(update={"seed": base_cfg.seed + seed})
        for subset in [names] + [[n for n in names if n != s] for s in names]:
            folder = run_dir / "validation" / "runs" / truth_key(config, taskset, subset, train_cfg, meta)
            loo_true[(tuple(subset), seed)] = measure_truth(config, taskset, subset, folder, train_config=train_cfg,
                                                            init_adapter=meta, store=store, device=args.device,
                                                            progress=False)["loss"]
    effects = {s: np.array([loo_true[(tuple(names), k)] - loo_true[(tuple(n for n in names if n != s), k)]
                            for k in range(args.harm_seeds)]) for s in names}
    true_harm = {s: float(e.mean()) for s, e in effects.items()}
    half = {s: float(student_t.ppf(0.975, len(e) - 1) * e.std(ddof=1) / np.sqrt(len(e))) if len(e) > 1
            else float("inf") for s, e in effects.items()}
    harm_ci = {s: [true_harm[s] - half[s], true_harm[s] + half[s]] for s in names}
    verdict = {s: "harmful" if harm_ci[s][0] > 0 else "helpful" if harm_ci[s][1] < 0 else "undetermined"
               for s in names}
    estimate_config = apply_calibration(config.estimate, run_dir / "calibration.json", store.manifest)
    estimator = fitted_estimator(estimate_config, config.select, run_dir / "features")
    est = estimator.estimate([names] + [[n for n in names if n != s] for s in names])
    est_harm = {s: float(est[0] - est[i + 1]) for i, s in enumerate(names)}
    truly_harmful = {s for s in names if verdict[s] == "harmful"}
    selection = json.loads((run_dir / "selection.json").read_text())
    detection = {
        "true_harm": true_harm, "true_harm_ci95": harm_ci, "verdict": verdict, "harm_seeds": args.harm_seeds,
        "estimated_harm": est_harm,
        "planted_verified": {s: verdict[s] == "harmful" for s in planted},
        "estimate_vs_verified": prf({s for s in names if est_harm[s] > 0}, truly_harmful),
        "selection_vs_verified": prf(set(names) - set(selection["chosen"]), truly_harmful),
    }
    if planted:
        detection["estimate_vs_planted"] = prf({s for s in names if est_harm[s] > 0}, set(planted))
        detection["selection_vs_planted"] = prf(set(names) - set(selection["chosen"]), set(planted))
        detection["selection_ranking"] = sorted(selection["scores"], key=selection["scores"].get)

    # 3. selections on the test split, with wall times
    rows = selection_rows(run_dir)

    out = {"suite": args.suite, "model": config.model.name_or_path, "n_sources": len(names),
           "target": taskset.target_train.name, "sizes": {s.name: len(s) for s in taskset.sources},
           "base_loss": base, "noise_floor": validation.get("noise_floor_mean_relative_difference"),
           "modes": modes, "detection": detection, "selections": rows, "stage_seconds": stage_seconds(run_dir),
           "wall_s_this_call": time.perf_counter() - start, "ran": result["ran"]}
    write_json_atomic(run_dir / "fidelity.json", out)

    print(f"# {args.suite} suite: {config.model.name_or_path}, {len(names)} sources, "
          f"{len(subsets)} validated subsets, noise floor {out['noise_floor']:.2%}")
    print("| estimator | mean rel. err | zero-order | skill of change | Spearman [95%] | calibrated (LOO err) |")
    print("|---|---|---|---|---|---|")
    for label, m in modes.items():
        c = m.get("calibrated")
        ci = m["spearman_ci95"]
        print(f"| {label} | {m['mean_relative_error']:.2%} | {m['zero_order_mean_relative_error']:.2%} | "
              f"{m['skill_of_change']:.2f} | {m['spearman']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | "
              + (f"{c['parameter']} {c['value']:.3g} ({c['loo_mean_relative_error']:.2%})" if c else "") + " |")
    print(f"\n| source | true harm (loss(all) - loss(all - s)), {args.harm_seeds} seeds [95%] | verdict | "
          "estimated harm | chosen |")
    print("|---|---|---|---|---|")
    for s in names:
        print(f"| {s}{' (planted)' if s in planted else ''} | {true_harm[s]:+.4f} [{harm_ci[s][0]:+.4f}, "
              f"{harm_ci[s][1]:+.4f}] | {verdict[s]} | {est_harm[s]:+.4f} | {'yes' if s in selection['chosen'] else ''} |")
    for key in ("estimate_vs_verified", "selection_vs_verified", "estimate_vs_planted", "selection_vs_planted"):
        if key in detection:
            d = detection[key]
            print(f"{key}: precision {d['precision']:.2f} recall {d['recall']:.2f} F1 {d['f1']:.2f} "
                  f"(predicted {d['predicted']}, actual {d['actual']})")
    print()
    print_selection_rows(rows)
    return 0


def stage_seconds(run_dir: Path) -> dict:
    return {p.stem: json.loads(p.read_text()).get("seconds", 0.0) for p in (run_dir / "stages").glob("*.json")
            if not p.name.endswith(".running.json")}


def final_seconds(run_dir: Path) -> dict:
    """Wall seconds of each final fine-tune stage, by stage name; a repeat of an identical fine-tune (its
    record's output is another label's folder) is charged the fine-tune it shares: the longest stage
    that wrote that folder."""
    records = {p.stem: json.loads(p.read_text()) for p in (run_dir / "stages").glob("final*.json")
               if not p.name.endswith(".running.json")}
    by_folder = {}
    for r in records.values():
        for folder in r.get("outputs", {}):
            by_folder[folder] = max(by_folder.get(folder, 0.0), r.get("seconds", 0.0))
    return {name: max((by_folder[f] for f in r.get("outputs", {})), default=r.get("seconds", 0.0))
            for name, r in records.items()}


def selection_rows(run_dir: Path) -> dict:
    """metrics.json rows with each method's wall time: its final fine-tune, plus meta-init + features +
    selection for methods that need the features, plus the search for the conventional baseline."""
    from gradselect.evaluate import MetricsTable

    table = MetricsTable.load(run_dir / "metrics.json")
    seconds = stage_seconds(run_dir)
    shared = seconds.get("meta_init", 0) + seconds.get("features", 0) + seconds.get("select", 0)
    finals = final_seconds(run_dir)
    rows = {}
    for label, row in table.rows.items():
        wall = finals.get("final" if label == "selection" else f"final-{label}", 0.0)
        if label in ("selection", "grad-sim", "repr-sim", "forward", "kmm", "less"):
            wall += shared
        if label in ("selection", "forward"):  # the trust check calibrates the estimates they rest on
            wall += seconds.get("validate", 0.0)
        if label == "conventional":
            wall += json.loads((run_dir / "conventional" / "conventional.json").read_text())["seconds"]
        rows[label] = {"sources": row.sources, **{f"test_{k}": v for k, v in row.values.items()}, "wall_s": wall,
                       **{f"ci95_{k}": row.interval(k) for k in row.values},
                       **{f"vs_selection_{k}": table.versus(label, k) for k in row.values if label != "selection"}}
    return rows


def print_selection_rows(rows: dict) -> None:
    from gradselect.evaluate import METRICS

    columns = [m for m in METRICS if any(f"test_{m.key}" in r for r in rows.values())]
    print("| method | sources | " + " | ".join(f"{m.title} [95%] | minus selection [95%]" for m in columns)
          + " | wall s |")
    print("|---|---|" + "---|---|" * len(columns) + "---|")

    def cell(r, m):
        value, ci = r.get(f"test_{m.key}"), r.get(f"ci95_{m.key}")
        if value is None:
            return " | "
        text = format(value, m.fmt) + (f" [{format(ci[0], m.fmt)}, {format(ci[1], m.fmt)}]" if ci else "")
        diff = r.get(f"vs_selection_{m.key}")
        if diff:
            lo, hi = diff["ci95"]
            text += f" | {diff['difference']:+{m.fmt}} [{lo:+{m.fmt}}, {hi:+{m.fmt}}]"
        else:
            text += " | "
        return text

    for label, r in sorted(rows.items(), key=lambda kv: kv[1]["test_loss"]):
        cells = " | ".join(cell(r, m) for m in columns)
        print(f"| {label} | {len(r['sources'])} | {cells} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
