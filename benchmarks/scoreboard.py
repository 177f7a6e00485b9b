"""The selection against every baseline, suite by suite, from committed ``metrics.json`` files.

Issue 15's goal is a statement over suites: the selection beats all sources, the target alone,
random, grad-sim, repr-sim, LESS-style and KMM on every suite, with the paired interval excluding
zero on at least two. This re-reads the final models' per-example test metrics (no fine-tune, no
model) and prints, per suite, each baseline minus the selection with its paired bootstrap 95%
interval (the ``metrics.json`` rows' own; over test examples, so whether every training seed, seed i
against seed i, falls the same way is shown beside it), and whether the goal holds:

    python benchmarks/scoreboard.py                      # the share-0.5, token-CE protocol suites
    python benchmarks/scoreboard.py --suite bbh=benchmarks/results/selection-bbh-share-ce01-smollm2.metrics.json \\
        --suite navigate=benchmarks/results/selection-navigate-share-ce-smollm2.metrics.json

``--dev-check`` instead reads every ``metrics.json`` in benchmarks/results that records the closing
dev check (each final model's token cross-entropy on the target's dev split, never the test split) and
prints, per run, the model the dev split preferred against the model best on test: how far the
recommendation a run ends with can be trusted.

``--suite LABEL=FILE[+FILE...]``: the first file's selection row is the reference; rows of the
further files (baselines trained in an earlier run of the same suite) are paired with it only when
both files hold the same target-alone fine-tune, per test example to the last digit (the same test
examples in the same order; the target alone does not depend on the selection). A label present in
several files is taken from the first. Lower is better for ``loss``; higher for the other metrics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"

#: The suites of the share-0.5 protocol deciding in token cross-entropy (docs/results.md, "Why
#: selections tie the target alone, and a mixing ratio"); earlier runs of a suite after a "+".
DEFAULT_SUITES = {
    "boolean_expressions": ["selection-bbh-share-ce01-smollm2.metrics.json", "selection-bbh-share-ce-smollm2.metrics.json",
                            "selection-bbh-share-smollm2.metrics.json"],
    "navigate": ["selection-navigate-share-ce-smollm2.metrics.json"],
    "navigate (60 dev, another draw)": ["selection-navigate-share-ce60-smollm2.metrics.json"],
    "web_of_lies": ["selection-weboflies-share-ce-smollm2.metrics.json"],
}

#: The baselines the issue's goal names (``target-only`` included), as ``metrics.json`` labels.
GOAL_BASELINES = ("all", "target-only", "random", "grad-sim", "repr-sim", "less", "kmm")


def _table(path: Path):
    from gradselect.evaluate.results import MetricsTable

    return MetricsTable.load(path, redo=f"regenerate it with benchmarks/selection.py ({path})")


def _same_target_alone(a, b) -> bool:
    """Whether two tables hold the same target-alone fine-tune on the same test examples."""
    ra, rb = a.rows.get("target-only"), b.rows.get("target-only")
    if ra is None or rb is None or not ra.per_example or not rb.per_example or "loss" not in ra.per_example \
            or "loss" not in rb.per_example:
        return False
    x, y = ra.per_example["loss"], rb.per_example["loss"]
    return len(x.num) == len(y.num) and np.array_equal(x.num, y.num) and np.array_equal(x.den, y.den)


def seeds_agree(row, sel, metric: str) -> str | None:
    """Which side the training seeds favour, seed i against seed i
    (:func:`gradselect.evaluate.results.seed_differences`): ``selection`` where the selection's value is
    better for every seed, ``baseline`` the reverse, ``mixed`` otherwise; None without the same number
    (2+) of seeds on both. The paired interval covers the test examples only (seed means), so this is the
    check on the training seed that it leaves out."""
    from gradselect.evaluate.results import seed_differences

    d = seed_differences(row, sel, metric)
    if d is None:
        return None
    sign = 1 if metric == "loss" else -1  # > 0: the selection's value better
    if min(sign * x for x in d) > 0:
        return "selection"
    if max(sign * x for x in d) < 0:
        return "baseline"
    return "mixed"


def score_suite(paths: list[Path], metrics=("loss", "exact_match")) -> dict:
    """Every baseline row minus the selection, per metric, paired over test examples.

    Returns
    -------
    dict
        ``selection`` (sources, values), ``rows``: label -> {``file``, ``sources``, metric ->
        {``difference``, ``ci95``, ``verdict``}}; ``verdict`` is ``selection better``, ``selection
        worse`` (the interval excludes zero) or ``tie``; ``skipped``: files not paired and why.
    """
    from gradselect.evaluate.metrics import paired_difference

    first = _table(paths[0])
    sel = first.rows.get("selection")
    if sel is None or not sel.per_example:
        raise SystemExit(f"{paths[0]}: no selection row with per-example metrics")
    out = {"selection": {"file": paths[0].name, "sources": sel.sources, **{m: sel.get(m) for m in metrics}},
           "rows": {}, "skipped": []}
    for i, path in enumerate(paths):
        table = first if i == 0 else _table(path)
        if i and not _same_target_alone(first, table):
            out["skipped"].append(f"{path.name}: not the same target-alone fine-tune on the same test examples")
            continue
        for label, row in table.rows.items():
            if label == "selection" and i == 0 or label in out["rows"] or not row.per_example:
                continue
            name = label if i == 0 or label != "selection" else f"selection ({path.stem.split('.')[0]})"
            if name in out["rows"]:
                continue
            entry = {"file": path.name, "sources": row.sources, "n_examples": row.n_examples}
            for m in metrics:
                if m not in row.per_example or m not in sel.per_example:
                    continue
                d = paired_difference(row.per_example[m], sel.per_example[m])
                lo, hi = d["ci95"]
                better_low = m == "loss"  # a baseline minus the selection: > 0 in loss means the selection is better
                if lo > 0 or hi < 0:
                    sel_better = (lo > 0) == better_low
                    verdict = "selection better" if sel_better else "selection worse"
                else:
                    verdict = "tie"
                entry[m] = {"difference": d["difference"], "ci95": d["ci95"], "verdict": verdict,
                            "seeds": seeds_agree(row, sel, m)}
            out["rows"][name] = entry
    return out


def goal(suites: dict[str, dict], metric: str = "loss") -> dict:
    """Issue 15's goal in ``metric``: on every suite no named baseline ahead of the selection (point
    estimate), and on at least two suites every named baseline behind it beyond its interval.
    Baselines a suite did not run are listed as missing (the goal cannot be met without them)."""
    ahead, clear, missing = {}, [], {}
    for name, s in suites.items():
        rows = {k: v for k, v in s["rows"].items() if k in GOAL_BASELINES and metric in v}
        missing[name] = [b for b in GOAL_BASELINES if b not in rows]
        sign = 1 if metric == "loss" else -1  # baseline minus selection, in the direction "selection better"
        ahead[name] = [k for k, v in rows.items() if sign * v[metric]["difference"] < 0]
        if rows and all(v[metric]["verdict"] == "selection better" for v in rows.values()):
            clear.append(name)
    met = all(not a for a in ahead.values()) and len(clear) >= 2 and not any(missing.values())
    return {"metric": metric, "baselines_ahead": ahead, "suites_clear": clear, "missing": missing, "met": met}


def dev_check(path: Path) -> dict | None:
    """The closing dev check of one run against its test split: the model the dev split preferred, the
    model best in test loss, and the preferred minus the best, paired over test examples (0 when they
    are the same model or trained on the same data). None for a run without the dev check."""
    from gradselect.evaluate.metrics import paired_difference

    table = _table(path)
    preferred = table.dev_preferred()
    if preferred is None:
        return None
    test = {k: r.get("loss") for k, r in table.rows.items() if r.get("loss") is not None}
    best = min(test, key=lambda k: (test[k], k != "selection"))
    a, b = table.rows[preferred], table.rows[best]
    d = paired_difference(a.per_example["loss"], b.per_example["loss"]) if a.per_example and b.per_example \
        else {"difference": test[preferred] - test[best], "ci95": None}
    return {"file": path.name, "dev_preferred": preferred, "test_best": best, "selection_loss": test["selection"],
            "preferred_loss": test[preferred], "best_loss": test[best], "preferred_minus_best": d["difference"],
            "ci95": d["ci95"], "models": len(test)}


def _fmt(entry: dict, m: str) -> str:
    if m not in entry:
        return "-"
    e = entry[m]
    mark = {"selection better": "+", "selection worse": "-", "tie": "="}[e["verdict"]]
    seeds = {"selection": "S", "baseline": "B", "mixed": "~", None: " "}[e.get("seeds")]
    return f"{e['difference']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] {mark}{seeds}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", default=[], metavar="LABEL=FILE[+FILE...]",
                   help="a suite's metrics.json files (default: the share-0.5 token-CE suites in benchmarks/results)")
    p.add_argument("--json", type=Path, help="also write the scoreboard here")
    p.add_argument("--dev-check", action="store_true",
                   help="the closing dev check of every run in benchmarks/results against its test split")
    args = p.parse_args(argv)
    if args.dev_check:
        records = [r for r in (dev_check(f) for f in sorted(RESULTS.glob("*.metrics.json"))) if r]
        w = max(len(r["file"]) for r in records)
        print(f"{'run':<{w}}  models  {'dev prefers':<12} {'test best':<12} selection  preferred  preferred minus best [95%]")
        for r in records:
            ci = "" if r["ci95"] is None else f" [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
            print(f"{r['file']:<{w}}  {r['models']:>6}  {r['dev_preferred']:<12} {r['test_best']:<12} "
                  f"{r['selection_loss']:9.4f}  {r['preferred_loss']:9.4f}  {r['preferred_minus_best']:+.4f}{ci}")
        hits = sum(r["preferred_minus_best"] <= 0.0 or r["ci95"] is not None and r["ci95"][0] <= 0 <= r["ci95"][1]
                   for r in records)
        away = sum(r["dev_preferred"] != "selection" for r in records)
        print(f"\n{len(records)} runs: the dev split's choice was the test-best model or tied with it (paired interval "
              f"includes 0) in {hits}; it preferred a model other than the selection in {away}")
        if args.json:
            from gradselect.io import write_json_atomic

            write_json_atomic(args.json, {"dev_check": records, "command": "python benchmarks/scoreboard.py --dev-check"})
        return 0
    if args.suite:
        specs = {}
        for s in args.suite:
            label, sep, files = s.partition("=")
            if not sep or not label or not files:
                p.error(f"--suite {s!r}: expected LABEL=FILE[+FILE...]")
            specs[label] = [Path(f) for f in files.split("+")]
    else:
        specs = {k: [RESULTS / f for f in v] for k, v in DEFAULT_SUITES.items()}
        specs = {k: [f for f in v if f.exists()] for k, v in specs.items()}
        specs = {k: v for k, v in specs.items() if v}
    for label, files in specs.items():
        for f in files:
            if not f.is_file():
                p.error(f"--suite {label}: {f} does not exist")
    suites = {label: score_suite(files) for label, files in specs.items()}
    for label, s in suites.items():
        sel = s["selection"]
        print(f"\n{label}: selection {len(sel['sources'])} sources, test loss {sel['loss']:.4f}"
              + (f", exact match {sel['exact_match']:.3f}" if sel.get("exact_match") is not None else "")
              + f"  ({sel['file']})")
        w = max([24] + [len(k) for k in s["rows"]])
        print(f"  {'baseline minus selection':<{w}} {'test loss [95%]':<30} {'exact match [95%]':<30} file")
        for k, e in s["rows"].items():
            print(f"  {k:<{w}} {_fmt(e, 'loss'):<30} {_fmt(e, 'exact_match'):<30} {e['file']}")
        for msg in s["skipped"]:
            print(f"  skipped {msg}")
    print("\n(+ the selection better beyond the interval, - worse, = tie; the interval is over test examples, "
          "so the training seed is checked apart, seed i against seed i: S the selection better in every seed, "
          "B the baseline, ~ mixed or equal, blank without the same 2+ seeds on both)")
    verdicts = {m: goal(suites, m) for m in ("loss", "exact_match")}
    for m, g in verdicts.items():
        ahead = "; ".join(f"{k}: {', '.join(v)}" for k, v in g["baselines_ahead"].items() if v) or "none"
        miss = "; ".join(f"{k}: {', '.join(v)}" for k, v in g["missing"].items() if v) or "none"
        print(f"goal in {m}: {'met' if g['met'] else 'NOT met'} (baselines ahead of the selection by their point estimate: {ahead}; "
              f"suites where every baseline is behind beyond its interval: {', '.join(g['suites_clear']) or 'none'}; "
              f"baselines not run: {miss})")
    if args.json:
        from gradselect.io import write_json_atomic

        write_json_atomic(args.json, {"suites": suites, "goal": verdicts,
                                      "command": "python benchmarks/scoreboard.py " + " ".join(argv or sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
