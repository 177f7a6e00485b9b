"""Benchmark: estimation quality against the projection dimension d, on a validated run.

Re-featurizes a finished run's meta-initialization at several projection
dimensions (``features-d<d>/`` beside its features; cached) and scores each
against the run's trust check (the real fine-tunes in ``validation/``): Spearman
of the estimates with the true losses, and the trust-region radius calibrated
with leave-one-out, with its leave-one-out mean relative error. Also prints the
featurization time per d.

    python benchmarks/dim_curve.py runs/demo --dims 32 64 128 256 512 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from scipy.stats import spearmanr

    from gradselect.config import load_config
    from gradselect.data import load_taskset
    from gradselect.estimate import FeatureArrays, SubsetEstimator
    from gradselect.validate import calibrate
    from gradselect.features import FeatureStore, featurize

    run_dir = args.run_dir
    config = load_config(run_dir / "config.toml")
    taskset = load_taskset(config.data)
    validation = json.loads((run_dir / "validation" / "validation.json").read_text())
    subsets = [s["sources"] for s in validation["subsets"]]
    true = np.array([s["true_loss"] for s in validation["subsets"]])
    norms = [s["displacement"]["projected_norm"] for s in validation["subsets"]]
    cfg = config.estimate.model_copy(update={"mode": "trust_region"})
    rows = []
    for d in args.dims:
        out = run_dir / f"features-d{d}"
        start = time.perf_counter()
        if (out / "manifest.json").exists():
            store, seconds = FeatureStore.open(out), None
        else:
            store = featurize(taskset, out, model_config=config.model, adapter_config=config.adapter,
                              tokenize_config=config.tokenize,
                              feature_config=config.features.model_copy(update={"proj_dim": d}),
                              adapter_path=run_dir / "meta_init" / "adapter", device=args.device, progress=False)
            seconds = time.perf_counter() - start
        arrays = FeatureArrays.from_store(store)
        default = SubsetEstimator(cfg).fit(arrays).estimate(subsets)
        calib = calibrate(arrays, cfg, subsets, true, norms)
        tuned = SubsetEstimator(cfg.model_copy(update={"radius": calib["value"]})).fit(arrays).estimate(subsets)
        rows.append({"d": d, "featurize_s": seconds, "spearman_default": float(spearmanr(default, true)[0]),
                     "spearman_calibrated": float(spearmanr(tuned, true)[0]), "radius": calib["value"],
                     "mean_rel_err": calib["mean_relative_error"], "loo_rel_err": calib["loo_mean_relative_error"]})
        r = rows[-1]
        print(f"d={d}: Spearman default {r['spearman_default']:.3f}, calibrated {r['spearman_calibrated']:.3f}; "
              f"radius {r['radius']:.3g}, mean rel. err {r['mean_rel_err']:.2%} (LOO {r['loo_rel_err']:.2%})"
              + (f"; featurized in {seconds:.0f} s" if seconds else ""), flush=True)
    (run_dir / "dim_curve.json").write_text(json.dumps({"n_subsets": len(subsets), "rows": rows}, indent=2))
    print("\n| d | Spearman (default radius) | Spearman (calibrated) | calibrated radius | mean rel. err | LOO rel. err |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['spearman_default']:.3f} | {r['spearman_calibrated']:.3f} | {r['radius']:.3g} | "
              f"{r['mean_rel_err']:.2%} | {r['loo_rel_err']:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
