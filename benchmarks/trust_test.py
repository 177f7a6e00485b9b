"""Test metrics of a run's trust-check fine-tunes (from theta*), beside theta* itself.

The trust check (``[run] validate_k``) fine-tunes from the meta-initialization on k
subsets and measures them on the target's *dev* split only. This scores the same saved
adapters on the target's *test* split, to see whether what the dev split said holds on
the test examples (and how fine-tunes from theta* compare with the run's final models
from the base model). Resumable: models already in the output JSON are skipped.

    python benchmarks/trust_test.py runs/demo-final -o runs/demo-final-trust-test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="output JSON (resumed when present)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from gradselect.config import load_config
    from gradselect.data import load_taskset
    from gradselect.evaluate.metrics import bootstrap_interval, score_split_examples
    from gradselect.io import write_json_atomic
    from gradselect.model.adapters import load_trained

    runs = args.run_dir / "validation" / "runs"
    if not runs.is_dir():
        print(f"{args.run_dir}: no trust-check fine-tunes (run with [run] validate_k first)", file=sys.stderr)
        return 2
    config = load_config(args.run_dir / "config.toml")
    test = load_taskset(config.data).target_test
    items = [("theta*", [], None, args.run_dir / "meta_init" / "adapter")]
    for d in sorted(runs.iterdir()):
        t = json.loads((d / "truth.json").read_text())
        items.append((",".join(t["sources"]) or "(target only)", t["sources"], t["seed"], d / "adapter"))
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["label"], r["seed"]) for r in rows}
    for label, sources, seed, adapter in items:
        if (label, seed) in done:
            continue
        model, tok = load_trained(config.model, config.adapter, adapter, device=args.device)
        values = score_split_examples(model, tok, test, config.tokenize, config.evaluate)
        row = {"label": label, "seed": seed, "sources": sources}
        for key, v in values.items():
            row[key], row[key + "_ci95"] = v.value, bootstrap_interval(v)
            row[key + "_per_example"] = (v.num / np.maximum(v.den, 1e-300)).tolist()
        rows.append(row)
        write_json_atomic(args.out, rows)
        print(label, seed, {k: round(row[k], 4) for k in values}, flush=True)
    # Seed means, best first.
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    print("\n| from theta*, fine-tuned on | seeds | test loss | exact match |\n|---|---|---|---|")
    for label, rs in sorted(by.items(), key=lambda kv: np.mean([r["loss"] for r in kv[1]])):
        em = f"{np.mean([r['exact_match'] for r in rs]):.3f}" if "exact_match" in rs[0] else "n/a"
        print(f"| {label} | {len(rs) if rs[0]['seed'] is not None else 0} | {np.mean([r['loss'] for r in rs]):.4f} | {em} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
