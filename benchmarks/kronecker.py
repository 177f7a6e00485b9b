"""Benchmark: memory of per-example gradient projection, formed vs Kronecker-factored, as a layer grows.

For one linear layer of shape (size, size), a batch of ``--n-examples`` examples of
``--n-tokens`` tokens: the layer's inputs ``x`` and output gradients ``dy`` are given,
and each method projects every example's weight gradient ``sum_t dy_t x_t^T`` to
``--proj-dim`` numbers:

- ``formed``:    gradselect's dense path: the per-example gradients (n x size x size)
                 formed by one einsum, then the blockwise seeded Rademacher projection;
- ``kronecker``: :class:`gradselect.features.KroneckerProjector` from the factors,
                 ``(A^T dy)(B^T x)^T`` then ``R``: the gradient is never formed.

Each (method, size) runs in its own subprocess; the figure is its peak RSS above the
state after the inputs were made, and the wall time of the projection.

    python benchmarks/kronecker.py
    python benchmarks/kronecker.py --sizes 256 1024 2048 4096 --proj-dim 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(method: str, size: int, args) -> dict:
    import torch

    from gradselect.features.projector import KroneckerProjector, RademacherProjector

    torch.manual_seed(0)
    dy = torch.randn(args.n_examples, args.n_tokens, size)
    x = torch.randn(args.n_examples, args.n_tokens, size)
    shapes = {"w": (size, size)}
    if method == "kronecker":
        proj = KroneckerProjector(shapes, args.proj_dim, 0, factor_dim=args.factor_dim)
        proj.factors("w")  # drawn once per run, like the cache in featurization
    else:
        proj = RademacherProjector(shapes, args.proj_dim, 0, max_cache_mb=0)
    base = rss_mb()
    start = time.perf_counter()
    if method == "kronecker":
        out = proj.project_factors("w", dy, x)
    else:
        grads = torch.einsum("bto,bti->boi", dy, x)  # [n_examples, size, size]
        out = proj.project({"w": grads})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "size": size, "peak_above_inputs_mb": max(0.0, peak - base), "seconds": seconds,
            "per_example_gradient_mb": size * size * 4 / 2**20, "out_norm": float(out.norm())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--n-examples", type=int, default=8)
    p.add_argument("--n-tokens", type=int, default=64)
    p.add_argument("--proj-dim", type=int, default=64)
    p.add_argument("--factor-dim", type=int, default=16)
    p.add_argument("--one", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return 0
    rows = []
    for size in args.sizes:
        for method in ("formed", "kronecker"):
            cmd = [sys.executable, __file__, "--one", method, str(size), "--n-examples", str(args.n_examples),
                   "--n-tokens", str(args.n_tokens), "--proj-dim", str(args.proj_dim),
                   "--factor-dim", str(args.factor_dim)]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; "
          f"{args.n_examples} examples x {args.n_tokens} tokens, proj_dim {args.proj_dim}, "
          f"factor_dim {args.factor_dim}")
    print("| layer | per-example gradient | formed: peak MB | formed: s | kronecker: peak MB | kronecker: s |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        f, k = (next(r for r in rows if r["size"] == size and r["method"] == m) for m in ("formed", "kronecker"))
        print(f"| {size} x {size} | {f['per_example_gradient_mb']:.1f} MB | {f['peak_above_inputs_mb']:.0f} | "
              f"{f['seconds']:.3f} | {k['peak_above_inputs_mb']:.0f} | {k['seconds']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
