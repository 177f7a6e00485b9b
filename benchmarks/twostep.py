"""Benchmark: a two-step sign estimate at the base model, against the one-step sign step, on a base-model bank.

The one-step forward estimate (``gradselect.estimate.forward``, ``sign``) moves every LoRA coordinate against
the sign of the subset's mean training gradient at the base model, then measures the dev loss. On arith12 it
sees which sources help but not how much a mixture dilutes the target. Here the same total length is split in
two half-steps, the subset's mean gradient recomputed after the first (one batched backward pass over the
subset's examples and the target's train split), then one dev forward pass. Each subset's one-step figure is
read from the forward passes ``truthbank.py at-base`` keeps (``RUN_DIR/at_base/forward.json``), so run that first.

    python benchmarks/twostep.py --bank benchmarks/truth/arith12.base.json --run-dir runs/bank-arith12 --n 24

Writes ``--out`` (JSON: per subset the two estimates and the truth) after every subset, and prints Spearman
with bootstrap intervals on the subsets done. Subsets: all sources, the target alone, then random others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bank", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True, help="truthbank.py at-base's cache for this bank")
    p.add_argument("--n", type=int, default=24, help="subsets to score (all sources and the target alone first)")
    p.add_argument("--fraction", type=float, default=0.1, help="total length, a fraction of |theta| (as at-base)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/twostep.json"))
    args = p.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    from gradselect.data import load_taskset
    from gradselect.estimate.forward import ForwardPassEstimator, SourceGradients
    from gradselect.io import write_json_atomic
    from gradselect.model import apply_adapter, load_model
    from truthbank import SUITES, _order_figures, features_at_base, forward_pass_key, print_order_figures

    torch.set_num_threads(args.threads)
    bank = json.loads(args.bank.read_text())
    if bank.get("start") != "base":
        print(f"{args.bank}: not a base-model bank (truthbank.py build-base)", file=sys.stderr)
        return 2
    cache_file = args.run_dir / "at_base" / "forward.json"
    grads_file = args.run_dir / "at_base" / "source_gradients.safetensors"
    if not cache_file.exists() or not grads_file.exists():
        print(f"{args.run_dir}: run truthbank.py at-base first (needs {cache_file} and {grads_file})", file=sys.stderr)
        return 2
    one_step = json.loads(cache_file.read_text())
    config = SUITES[bank["suite"]]()
    taskset = load_taskset(config.data)
    adapter, _ = features_at_base(config, taskset, args.run_dir, "cpu")
    model, tok = load_model(config.model, device="cpu")
    model = apply_adapter(model, config.adapter, init_adapter=adapter)
    est = ForwardPassEstimator("sign", length_fraction=args.fraction).fit(
        model, tok, SourceGradients.load(grads_file), taskset.target_dev.examples, config.tokenize)
    half = est.length_ / 2
    subsets = bank["subsets"]
    rng = np.random.default_rng(0)
    order = [0, 1] + [int(i) for i in rng.permutation(np.arange(2, len(subsets)))[:max(args.n - 2, 0)]]

    rows = []
    for i in order:
        names = subsets[i]["sources"]
        key = forward_pass_key("functional", "sign", f"{args.fraction:g}", names)
        if key not in one_step:
            print(f"no one-step pass for {names} at {args.fraction:g} in {cache_file}", file=sys.stderr)
            return 2
        start = time.time()
        saved, at_base = {n: t.detach().clone() for n, t in est.params_.items()}, est.gradients_
        try:
            first = est.direction(names)
            norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in first.values())))
            with torch.no_grad():  # the first half-step, kept while the gradient is recomputed there
                for n, t in est.params_.items():
                    t.add_(first[n] * (half / norm))
            # The subset's gradient sums at the new point; the estimator's own direction and measurement
            # (``_along`` takes the second half-step, passes the dev split forward and steps back) use them.
            est.gradients_ = SourceGradients.compute(model, tok, SimpleNamespace(
                sources=[s for s in taskset.sources if s.name in names], target_train=taskset.target_train),
                config.tokenize)
            two = float(np.mean(est.example_losses(est._along(est.direction(names), half, est.metric))))
        finally:
            est.gradients_ = at_base
            with torch.no_grad():
                for n, t in est.params_.items():
                    t.copy_(saved[n])
        rows.append({"sources": names, "two_step": two, "one_step": float(one_step[key]),
                     "truth": float(np.mean(subsets[i]["losses"]))})
        write_json_atomic(args.out, {"bank": str(args.bank), "fraction": args.fraction, "subsets": rows})
        print(f"[{len(rows)}/{len(order)}] {len(names)} sources: two-step {two:.4f}, one-step {one_step[key]:.4f}, "
              f"truth {rows[-1]['truth']:.4f} ({time.time() - start:.0f} s)", flush=True)

    done = [r["sources"] for r in rows]
    truth = [r["truth"] for r in rows]
    size = [len(r["sources"]) for r in rows]
    for label, est_of in [("two-step sign", [r["two_step"] for r in rows]),
                          ("one-step sign", [r["one_step"] for r in rows]), ("number of sources (no model)", size)]:
        print_order_figures(_order_figures(est_of, truth, done), label)
    print(f"  Spearman with the number of sources: two-step {spearmanr([r['two_step'] for r in rows], size)[0]:+.2f}, "
          f"one-step {spearmanr([r['one_step'] for r in rows], size)[0]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
