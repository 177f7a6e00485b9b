"""Benchmark: the cost of conventional forward selection against gradselect's whole pipeline, as n grows.

For each n in ``--n``, a planted reasoning-gym suite of n sources (11 task families with
distinct seeds, every fourth source with swapped labels; target chain_sum) runs through
``gradselect run`` with:

- gradselect as we recommend it: meta-initialization, featurization, the trust check
  (``--validate-k`` real fine-tunes from theta*), selection, one final fine-tune;
- conventional forward selection with one real fine-tune per candidate from the base
  model, trained like the final fine-tunes, capped at ``--budget`` fine-tunes (default: the
  2n fine-tunes of its first two steps).

Measured: each stage's wall time (stage records), the conventional search's fine-tunes
and seconds. Where the budget stops the search, its full cost is *modelled*: the mean
seconds of its fine-tunes times the fine-tunes forward selection needs to reach k
sources, ``1 + sum_{j<k} (n - j)`` (k = the size the capped search had reached, a lower
bound, and k = n / 2); the output says which figures are measured and which modelled.
A fit ``gradselect(n) = a + b n`` and ``conventional(n) = c(n) F(n)`` gives the n at which
the ratio crosses 30x (the paper's figure).

    python benchmarks/cost_ratio.py -o runs/cost --n 12 24 48                  # tiny Llama
    python benchmarks/cost_ratio.py -o runs/cost-smollm2 --model smollm2 --n 12 24
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

FAMILIES = ["chain_sum", "basic_arithmetic", "leg_counting", "letter_counting", "decimal_chain_sum", "products",
            "gcd", "lcm", "count_bits", "number_sorting", "spell_backward"]


def suite_config(model: str | None, n_sources: int, size: int, run_dir: Path, budget: int, validate_k: int):
    from gradselect.demo import FINAL_STEPS, demo_config

    quick = model is None or model.startswith("tiny-")
    config = demo_config(quick=quick, model=model or "tiny-llama")
    spec = type(config.data.sources[0])
    sources = [spec.model_validate({
        "name": f"{FAMILIES[i % len(FAMILIES)]}_{i}", "reasoning_gym": FAMILIES[i % len(FAMILIES)], "size": size,
        "seed": 1000 + i, "label_noise": 1.0 if i % 4 == 3 else 0.0}) for i in range(n_sources)]
    steps = FINAL_STEPS["tiny" if quick else "smollm2"]
    return config.model_copy(update={
        "data": config.data.model_copy(update={"sources": sources}),
        "run": config.run.model_copy(update={"run_dir": str(run_dir), "compare": [], "final_steps": steps,
                                             "conventional_budget": budget, "validate_k": validate_k,
                                             "validate_init": "meta",  # as the recorded measurements
                                             "validate_repeats": 0})})


def forward_finetunes(n: int, k: int) -> int:
    """Fine-tunes forward selection needs to add k of n sources: the target alone, then n - j candidates at step j."""
    return 1 + sum(n - j for j in range(k))


def measure(args, n: int) -> dict:
    from gradselect.pipeline import run_pipeline
    from gradselect.report import cost_of_selection

    run_dir = args.out / f"n{n}"
    # Default: the fine-tunes of two forward steps, so the cost per fine-tune is measured on subsets of
    # the sizes the search trains on, not on the target alone.
    budget = args.budget or forward_finetunes(n, 2)
    config = suite_config(args.model, n, args.size, run_dir, budget, args.validate_k)
    start = time.perf_counter()
    run_pipeline(config, device=args.device, progress=False)
    stages = {p.stem: json.loads(p.read_text()).get("seconds", 0.0) for p in (run_dir / "stages").glob("*.json")
              if not p.name.endswith(".running.json")}
    conv = json.loads((run_dir / "conventional" / "conventional.json").read_text())
    per_finetune = conv["seconds"] / max(conv["n_finetunes"], 1)
    # The step the budget interrupted counts as reached: the search needed it at least.
    reached = max(1, len(conv["chosen"]) + (0 if conv["finished"] is True else 1))
    return {
        "n": n, "wall_seconds": time.perf_counter() - start,
        "gradselect_seconds": cost_of_selection(run_dir),
        "stages": {k: stages.get(k) for k in ("meta_init", "features", "validate", "select", "final")},
        "conventional": {"n_finetunes": conv["n_finetunes"], "seconds": conv["seconds"], "finished": conv["finished"],
                         "chosen": conv["chosen"], "per_finetune_seconds": per_finetune},
        "modelled_conventional_seconds": {
            f"forward to k={reached} (reached)": per_finetune * forward_finetunes(n, reached),
            f"forward to k={n // 2}": per_finetune * forward_finetunes(n, n // 2),
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, required=True, help="folder of the runs (one per n)")
    p.add_argument("--n", type=int, nargs="+", default=[12, 24, 48])
    p.add_argument("--model", help="model (default: tiny-llama)")
    p.add_argument("--size", type=int, default=20, help="examples per source")
    p.add_argument("--budget", type=int, help="conventional fine-tunes at most, per n (default: two forward "
                                              "steps, 2n fine-tunes)")
    p.add_argument("--validate-k", type=int, default=8, help="trust-check fine-tunes gradselect runs")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    rows = [measure(args, n) for n in args.n]

    ns = np.array([r["n"] for r in rows], float)
    ours = np.array([r["gradselect_seconds"] for r in rows])
    per = np.array([r["conventional"]["per_finetune_seconds"] for r in rows])
    fit_g = np.polyfit(ns, ours, 1) if len(ns) > 1 else np.array([0.0, ours[0]])
    fit_c = np.polyfit(ns, per, 1) if len(ns) > 1 else np.array([0.0, per[0]])
    grid = np.arange(2, 5001)
    ratio_half = np.array([np.polyval(fit_c, m) * forward_finetunes(int(m), int(m) // 2) / np.polyval(fit_g, m)
                           for m in grid])
    crossing = int(grid[np.argmax(ratio_half >= 30)]) if (ratio_half >= 30).any() else None
    out = {"rows": rows, "fit": {"gradselect_seconds": list(map(float, fit_g)),
                                 "conventional_seconds_per_finetune": list(map(float, fit_c))},
           "ratio_30x_at_n (modelled, forward to n/2)": crossing,
           "command": "python benchmarks/cost_ratio.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    (args.out / "cost_ratio.json").write_text(json.dumps(out, indent=1))

    print(f"# cost ratio, {args.model or 'tiny-llama'}, {args.size} examples per source, trust check "
          f"{args.validate_k} fine-tunes; {out['machine']}, {out['date']}")
    print("| n | gradselect s (meta-init + features + trust check + select + final) | conventional: fine-tunes, s "
          "(measured) | measured ratio | s per fine-tune | modelled: forward to k reached | to n/2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s, c = r["stages"], r["conventional"]
        parts = " + ".join(f"{s[k]:.0f}" if s[k] is not None else "-" for k in s)
        state = "" if c["finished"] is True else " (budget)"
        (reach, half), g = r["modelled_conventional_seconds"].values(), r["gradselect_seconds"]
        print(f"| {r['n']} | {parts} = {g:.0f} | {c['n_finetunes']}, {c['seconds']:.0f}{state} | "
              f"{c['seconds'] / g:.1f}x | {c['per_finetune_seconds']:.1f} | {reach / g:.1f}x | {half / g:.1f}x |")
    print(f"fit: gradselect(n) = {fit_g[1]:.0f} + {fit_g[0]:.2f} n s; conventional per fine-tune = "
          f"{fit_c[1]:.1f} + {fit_c[0]:.3f} n s; ratio (forward to n/2) crosses 30x at n = {crossing} (modelled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
