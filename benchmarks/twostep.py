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
    from gradselect.estimate.forward import TARGET, ForwardPassEstimator, SourceGradients
    from gradselect.model import apply_adapter, load_model
    from gradselect.validate.fidelity import bootstrap_ci, pairwise_accuracy
    from truthbank import SUITES, features_at_base

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

    def step(d):
        norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in d.values())))
        with torch.no_grad():
            for name, t in est.params_.items():
                t.add_(d[name] * (half / norm))

    rows = []
    for i in order:
        names = subsets[i]["sources"]
        key = f"{args.fraction:g}|" + ";".join(sorted(names))
        if key not in one_step:
            print(f"no one-step pass for {names} at {args.fraction:g} in {cache_file}", file=sys.stderr)
            return 2
        start = time.time()
        saved = {n: t.detach().clone() for n, t in est.params_.items()}
        try:
            step(est.direction(names))
            here = SourceGradients.compute(model, tok, SimpleNamespace(
                sources=[s for s in taskset.sources if s.name in names], target_train=taskset.target_train),
                config.tokenize)
            groups = list(names) + [TARGET]
            count = sum(here.counts[g] for g in groups)
            step({n: -torch.sign(sum(here.sums[g][n] for g in groups) / count) for n in est.params_})
            two = float(np.mean(est.example_losses(est._measure())))
        finally:
            with torch.no_grad():
                for n, t in est.params_.items():
                    t.copy_(saved[n])
        rows.append({"sources": names, "two_step": two, "one_step": float(one_step[key]),
                     "truth": float(np.mean(subsets[i]["losses"]))})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bank": str(args.bank), "fraction": args.fraction, "subsets": rows}, indent=1))
        tmp.replace(args.out)
        print(f"[{len(rows)}/{len(order)}] {len(names)} sources: two-step {two:.4f}, one-step {one_step[key]:.4f}, "
              f"truth {rows[-1]['truth']:.4f} ({time.time() - start:.0f} s)", flush=True)

    a = np.array([[r["two_step"], r["one_step"], len(r["sources"])] for r in rows], dtype=float)
    truth = np.array([r["truth"] for r in rows])
    rho = lambda x, y: spearmanr(x, y)[0]  # noqa: E731
    for j, label in [(0, "two-step sign"), (1, "one-step sign"), (2, "number of sources (no model)")]:
        lo, hi = bootstrap_ci(rho, a[:, j], truth)
        print(f"  {rho(a[:, j], truth):+.2f} [{lo:+.2f}, {hi:+.2f}]  pairwise {pairwise_accuracy(a[:, j], truth):.2f}  "
              f"{label}")
    print(f"  Spearman with the number of sources: two-step {rho(a[:, 0], a[:, 2]):+.2f}, "
          f"one-step {rho(a[:, 1], a[:, 2]):+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
