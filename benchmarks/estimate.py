"""Benchmark: subsets estimated per second, gradselect's solvers vs the reference approach.

For synthetic features (n_rows x proj_dim, split into n_sources sources, plus
target train/dev rows), measures side by side in one run:

- ``fast-tr`` / ``fast-l2``: one Newton step on per-source sufficient statistics
  (trust-region = the default mode, and L2), batched over subsets;
- ``lowrank-tr``: the same step with each subset's Hessian dense only in the top
  ``--rank`` eigen-directions of the pooled Hessian (agreement with fast-tr reported);
- ``exact-tr`` / ``exact-l2``: solved to convergence on each subset's rows (the
  low-rank step refined by preconditioned chord iterations, batched over subsets);
- ``reference``: what the authors' code does per subset, one scikit-learn
  liblinear fit on the subset's raw rows (sign-flip trick, C = 1e-4);

and reports subsets/s, the ratio to the reference, the one-time statistics
cost, peak memory, and the agreement of fast with exact in the default
trust-region mode and in the L2 mode (Spearman over the exact subsets, max
relative difference of the estimates). Fast rates are the median of three timed
calls after a warm-up call; the reference rate comes from a few subsets.

    python benchmarks/estimate.py                       # the goal setting: n=100, d=256, N=20k
    python benchmarks/estimate.py --grid                # n in {20,100,500} x d in {128,512} x N in {10k,100k}
    python benchmarks/estimate.py --features runs/demo/features   # real features instead of synthetic
    python benchmarks/estimate.py --threads 1            # torch on one thread, like liblinear
    python benchmarks/estimate.py --small-systems-threaded   # as before small systems ran on one thread
    python benchmarks/estimate.py --flan                 # FLAN scale: n=1,729, d=400, N=100k, 1,000 subsets at 5%
    python benchmarks/estimate.py --device cuda          # the fast and lowrank solvers on a GPU beside the CPU

``--flan`` times the whole path a user takes at FLAN scale with the low-rank solver
(statistics without per-source d x d matrices, then a 1,000-subset ensemble with
subsets of 5% of the sources, bootstrap intervals included), and forward selection
over 500 sources, printing wall times and the process's peak memory. Features are
float32, as a feature store holds them. Goals: <= 60 s and <= 8 GB for the ensemble,
<= 60 s for forward selection.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import time

import numpy as np


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n_sources: int, d: int, n_rows: int, seed: int = 0):
    from gradselect.estimate import FeatureArrays

    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n_rows, d)) / np.sqrt(d)
    g += rng.normal(size=(1, d)) / np.sqrt(d)
    b = rng.normal(2.0, 1.0, size=n_rows)
    n_target = max(200, n_rows // 20)
    bounds = np.linspace(n_target, n_rows, n_sources + 1).astype(int)
    sources = {f"s{i}": np.arange(bounds[i], bounds[i + 1]) for i in range(n_sources)}
    half = n_target // 2
    return FeatureArrays(g, b, sources, np.arange(0, half), np.arange(half, n_target), param_norm=10.0)


def reference_fit(arrays, mask, names, c=1e-4):
    """One liblinear fit on the subset's raw rows, as the authors' released code does."""
    from sklearn.linear_model import LogisticRegression

    rows = np.concatenate([arrays.source_rows[names[i]] for i in np.flatnonzero(mask)] + [arrays.train_rows])
    x = arrays.g[rows].copy()
    y = np.ones(len(rows))
    x[::2] *= -1  # sign flip: two classes for sklearn, the same all-positive loss
    y[::2] = 0
    clf = LogisticRegression(C=c, solver="liblinear", fit_intercept=False).fit(x, y)
    v = clf.coef_[0]
    dev = arrays.dev_rows
    z = arrays.b[dev] + arrays.g[dev] @ v
    return np.logaddexp(0, -z).mean()


def run(n_sources, d, n_rows, n_fast, n_slow, n_exact=256, seed=0, rank=32, arrays=None, radius=None):
    from scipy.stats import spearmanr

    from gradselect.estimate import EstimateConfig, SubsetEstimator
    from gradselect.select import EnsembleSelector

    if arrays is None:
        arrays = synthetic(n_sources, d, n_rows, seed)
    masks = EnsembleSelector(n_subsets=max(n_fast, n_slow, n_exact), seed=seed).sample_subsets(n_sources)
    names = arrays.source_names
    row = {"n": n_sources, "d": d, "N": n_rows}
    base_mem = peak_mb()
    fast_tr_losses = None
    for label, cfg in (("fast-tr", EstimateConfig(radius=radius)), ("fast-l2", EstimateConfig(mode="l2", lam=1e-3)),
                       ("lowrank-tr", EstimateConfig(solver="lowrank", rank=rank, radius=radius))):
        t0 = time.perf_counter()
        est = SubsetEstimator(cfg).fit(arrays)
        row[f"{label} stats s"] = time.perf_counter() - t0
        est.estimate(masks[:n_fast])  # warm-up at full batch size: the first call pays for fresh memory
        times = []
        for _ in range(3):  # a call can take only ~20 ms: the median of three
            t0 = time.perf_counter()
            fast_losses = est.estimate(masks[:n_fast])
            times.append(time.perf_counter() - t0)
        row[f"{label} /s"] = n_fast / float(np.median(times))
        if label == "lowrank-tr":  # agreement with the full-rank fast solver over all fast subsets
            row["lowrank~fast rho"] = float(spearmanr(fast_losses, fast_tr_losses)[0])
            row["lowrank~fast rel"] = float(np.max(np.abs(fast_losses - fast_tr_losses) / fast_tr_losses))
            continue
        if label == "fast-tr":
            fast_tr_losses = fast_losses
            # How far the step moves the log-odds: the regime the exact solver works in
            # (on real SmolLM2 features at the calibrated radius, mean |dz| was 0.19-0.28).
            v = est.solve(masks[:n_slow])
            row["mean |dz|"] = float(np.abs(arrays.g @ v.T).mean())
        exact = SubsetEstimator(cfg.model_copy(update={"solver": "exact", "rank": rank})).fit(arrays)
        exact.estimate(masks[:2])  # warm-up
        t0 = time.perf_counter()
        exact_losses = exact.estimate(masks[:n_exact])
        row[f"exact-{label[5:]} /s"] = n_exact / (time.perf_counter() - t0)
        fast = fast_losses[:n_exact] if n_exact <= n_fast else est.estimate(masks[:n_exact])
        row[f"{label[5:]} fast~exact rho"] = float(spearmanr(fast, exact_losses)[0]) if n_exact > 2 else float("nan")
        row[f"{label[5:]} fast~exact rel"] = float(np.max(np.abs(fast - exact_losses) / exact_losses))
    t0 = time.perf_counter()
    for m in masks[:n_slow]:
        reference_fit(arrays, m, names)
    row["reference /s"] = n_slow / (time.perf_counter() - t0)
    row["peak+ MB"] = peak_mb() - base_mem
    return row


def flan(rank: int = 32, seed: int = 0) -> dict:
    """FLAN-scale estimation on synthetic float32 features; wall times and peak memory."""
    from gradselect.estimate import EstimateConfig, SubsetEstimator
    from gradselect.select import EnsembleSelector, ForwardSelector

    out = {}
    start_mb = peak_mb()
    arrays = synthetic(1729, 400, 100_000, seed)
    arrays.g = arrays.g.astype(np.float32)
    out["features MB"] = arrays.g.nbytes / 2**20
    t0 = time.perf_counter()
    est = SubsetEstimator(EstimateConfig(solver="lowrank", rank=rank)).fit(arrays)
    out["fit s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    sel = EnsembleSelector(n_subsets=1000, alpha=0.05, seed=seed).select(est)
    out["ensemble s"] = time.perf_counter() - t1
    out["fit + ensemble s"] = time.perf_counter() - t0
    out["chosen"] = len(sel.chosen)
    out["peak MB"] = peak_mb()
    out["peak MB above start"] = peak_mb() - start_mb
    small = synthetic(500, 400, 100_000, seed + 1)
    small.g = small.g.astype(np.float32)
    est500 = SubsetEstimator(EstimateConfig(solver="lowrank", rank=rank)).fit(small)
    t2 = time.perf_counter()
    fwd = ForwardSelector().select(est500)
    out["forward n=500 s"] = time.perf_counter() - t2
    out["forward n=500 steps"] = len(fwd.params["path"]) - 1
    out["peak MB (all)"] = peak_mb()
    return out


def on_device(device: str, settings, rank: int = 32, seed: int = 0) -> list[dict]:
    """Subsets/s of the fast and lowrank solvers (trust region) on the CPU and on ``device``, side by side.

    ``settings``: ``(n_sources, d, n_rows, subset share, solvers, n_subsets)`` each. Each rate is the
    median of three timed calls of ``n_subsets`` after a warm-up call; the estimates
    come back to the host (numpy), so the GPU's time includes the transfer. Also the largest relative
    difference between the two devices' estimates."""
    from gradselect.estimate import EstimateConfig, SubsetEstimator
    from gradselect.select import EnsembleSelector

    rows = []
    for n, d, n_rows, alpha, solvers, n_subsets in settings:
        arrays = synthetic(n, d, n_rows, seed)
        arrays.g = arrays.g.astype(np.float32)  # as a feature store holds them
        masks = EnsembleSelector(n_subsets=n_subsets, alpha=alpha, seed=seed).sample_subsets(n)
        for solver in solvers:
            row, losses = {"n": n, "d": d, "N": n_rows, "subset share": alpha, "subsets": n_subsets,
                           "solver": solver}, {}
            for where in ("cpu", device):
                t0 = time.perf_counter()
                cfg = EstimateConfig(solver=solver, device=where, **({"rank": rank} if solver == "lowrank" else {}))
                est = SubsetEstimator(cfg).fit(arrays)
                row[f"{where} fit s"] = time.perf_counter() - t0
                est.estimate(masks)  # warm-up: allocations, kernels
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    losses[where] = est.estimate(masks)
                    times.append(time.perf_counter() - t0)
                row[f"{where} /s"] = n_subsets / float(np.median(times))
            row[f"{device} / cpu"] = row[f"{device} /s"] / row["cpu /s"]
            row["max rel diff"] = float(np.max(np.abs(losses[device] - losses["cpu"]) / losses["cpu"]))
            rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-sources", type=int, default=100)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--grid", action="store_true", help="the full grid of settings")
    p.add_argument("--fast-subsets", type=int, default=500)
    p.add_argument("--slow-subsets", type=int, default=8, help="subsets for the reference (one liblinear fit each)")
    p.add_argument("--exact-subsets", type=int, default=256, help="subsets for the batched exact solver")
    p.add_argument("--rank", type=int, default=32, help="rank of the lowrank solver")
    p.add_argument("--radius", type=float, help="trust-region radius (default: the estimator's default)")
    p.add_argument("--features", help="a feature store (e.g. runs/demo/features) instead of synthetic features")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--flan", action="store_true", help="FLAN scale (n=1,729, d=400, N=100k): wall time and peak memory")
    p.add_argument("--small-systems-threaded", action="store_true",
                   help="solve small batched systems on every torch thread (the behaviour before "
                        "gradselect.estimate.solvers.small_system_threads; for side-by-side runs)")
    p.add_argument("--device", help="also solve on this torch device (e.g. cuda) beside the CPU: subsets/s of the fast "
                                    "and lowrank solvers on both, at the goal setting and FLAN's shape")
    p.add_argument("--device-subsets", type=int, default=10_000,
                   help="--device: subsets per timed call (the fast solver at most 2,000)")
    args = p.parse_args()
    if args.small_systems_threaded:
        from gradselect.estimate import solvers

        solvers.SMALL_SYSTEM = 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.flan:
        import torch

        print(f"# FLAN-scale estimation ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
              f"{platform.machine()}), lowrank solver rank {args.rank}")
        for key, value in flan(args.rank).items():
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
        return
    if args.device:
        import torch

        print(f"# estimator on {args.device} beside the CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch "
              f"threads, {platform.machine()}), trust region, lowrank rank {args.rank}")
        # The goal setting (both solvers), and FLAN's shape with the solver FLAN scale needs.
        # The fast solver solves about 300 subsets/s at d = 256 on 2 CPU cores (README): 2,000 per call for it.
        settings = [(args.n_sources, args.dim, args.rows, 0.5, ("fast",), min(args.device_subsets, 2000)),
                    (args.n_sources, args.dim, args.rows, 0.5, ("lowrank",), args.device_subsets),
                    (1729, 400, 100_000, 0.05, ("lowrank",), 1000)]
        for r in on_device(args.device, settings, args.rank):
            print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
        return
    if args.features:
        from gradselect.estimate import FeatureArrays
        from gradselect.features.store import FeatureStore

        arrays = FeatureArrays.from_store(FeatureStore.open(args.features))
        n, d = len(arrays.source_rows), arrays.g.shape[1]
        r = run(n, d, len(arrays.g), args.fast_subsets, args.slow_subsets, args.exact_subsets, rank=args.rank,
                arrays=arrays, radius=args.radius)
        for key, value in r.items():
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
        return
    settings = (
        list(itertools.product([20, 100, 500], [128, 512], [10_000, 100_000]))
        if args.grid else [(args.n_sources, args.dim, args.rows)]
    )
    import torch

    print(f"# estimate benchmark ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {platform.machine()}); "
          f"fast rates over {args.fast_subsets} subsets, exact over {args.exact_subsets}, reference over {args.slow_subsets}")
    cols = ["n", "d", "N", "mean |dz|", "fast-tr /s", "lowrank-tr /s", "lowrank~fast rho", "lowrank~fast rel", "fast-l2 /s", "exact-tr /s", "exact-l2 /s", "reference /s",
            "fast-tr stats s", "peak+ MB", "tr fast~exact rho", "tr fast~exact rel", "l2 fast~exact rho",
            "l2 fast~exact rel"]
    print(" | ".join(cols) + " | fast-tr / ref | lowrank-tr / ref | exact-tr / ref / exact-l2 / ref")
    for n, d, rows in settings:
        r = run(n, d, rows, args.fast_subsets, args.slow_subsets, args.exact_subsets, rank=args.rank, radius=args.radius)
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols]
        print(" | ".join(cells) + f" | {r['fast-tr /s'] / r['reference /s']:.0f}x | {r['lowrank-tr /s'] / r['reference /s']:.0f}x"
              f" | {r['exact-tr /s'] / r['reference /s']:.0f}x / {r['exact-l2 /s'] / r['reference /s']:.0f}x", flush=True)


if __name__ == "__main__":
    main()
