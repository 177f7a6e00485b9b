"""Can any source help on this suite at all? The target alone against all sources, from the base model.

A selection can beat the target alone only where some mixture of sources does. On the bbh and arith
base-model truth banks the target alone is the best of 24-26 subsets (docs/results.md), so there the
best a selection can do is to choose nothing and tie it. Before a long selection run on a new suite,
this fine-tunes the target alone and all sources from the base model (the final fine-tunes' start and
step budget, ``--seeds`` seeds each) for each ``--target-train`` size, and prints the target dev loss
(estimator functional and token cross-entropy) with the paired difference over dev examples, averaged
over seeds, and its bootstrap 95% interval. ``--target-share 0.5`` adds all sources with the target's
train split repeated to half of the examples (``[train] target_share``), a mixing ratio that keeps the
target in view at the same step budget:

    python benchmarks/scarcity.py --suite bbh --target-train 8,20 --target-share 0.5 -o runs/scarcity-bbh
    python benchmarks/scarcity.py --suite arith --target-train 4,16 -o runs/scarcity-arith

Fine-tunes are cached by content under ``-o`` (``truth/``); the figures go to ``-o/scarcity.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from selection import arith_selection_config, bbh_selection_config  # noqa: E402


def suite(args, target_train: int):
    if args.suite == "bbh":
        config, steps, _ = bbh_selection_config(args.bbh, args.target, args.n_sources, args.per_source,
                                                args.test_size, None, target_train)
    else:
        config, steps, _ = arith_selection_config(args.arithmetic, target_train, args.test_size, None, args.n_sources)
    return config, steps


def paired_interval(a, b) -> tuple[float, list[float]]:
    """Mean of ``a - b`` over dev examples and its paired bootstrap 95% interval (the final metrics' own)."""
    from gradselect.evaluate.metrics import PerExample, paired_difference

    mean = lambda x: PerExample(np.asarray(x, dtype=float), np.ones(len(x)))  # noqa: E731
    d = paired_difference(mean(a), mean(b))
    return d["difference"], d["ci95"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["bbh", "arith"], default="bbh")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--target-train", default="8", help="comma list of target training sizes")
    p.add_argument("--target-share", default="",
                   help="comma list of [train] target_share values to try with all sources (default: none)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--test-size", type=int, default=200)
    p.add_argument("--n-sources", type=int, default=12)
    p.add_argument("--bbh", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh")
    p.add_argument("--target", default="boolean_expressions", help="bbh: target task")
    p.add_argument("--per-source", type=int, default=40, help="bbh: examples per source task")
    p.add_argument("--arithmetic", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                   / "bigbench" / "arithmetic")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from gradselect.data import load_taskset
    from gradselect.io import write_json_atomic
    from gradselect.validate import measure_truth, truth_key

    results = {}
    for size in [int(s) for s in args.target_train.split(",")]:
        config, steps = suite(args, size)
        taskset = load_taskset(config.data)
        runs = {}
        every = list(taskset.source_names)
        arms = [("target alone", [], None), ("all sources", every, None)]
        arms += [(f"all sources, target share {w}", every, float(w)) for w in args.target_share.split(",") if w]
        for label, names, share in arms:
            runs[label] = []
            for seed in range(args.seeds):
                cfg = config.train.model_copy(update={"max_steps": steps, "seed": seed, "target_share": share})
                folder = args.out / "truth" / truth_key(config, taskset, names, cfg, None)
                runs[label].append(measure_truth(config, taskset, names, folder, train_config=cfg,
                                                 device=args.device, progress=False))
        per_example = {k: np.mean([r["example_losses"] for r in v], axis=0) for k, v in runs.items()}
        alone = per_example["target alone"]
        r = results[str(size)] = {"target_train": size, "steps": steps, "seeds": args.seeds, "n_dev": len(alone)}
        print(f"{args.suite}, {size} target training questions ({steps} steps, {args.seeds} seeds, {len(alone)} dev):")
        for label, v in runs.items():
            r[label] = {"loss": [x["loss"] for x in v], "token_ce": [x["token_ce"] for x in v]}
            line = f"  {label:<32} {np.mean(r[label]['loss']):.4f} (token CE {np.mean(r[label]['token_ce']):.4f})"
            if label != "target alone":
                diff, ci = paired_interval(per_example[label], alone)
                r[label].update(minus_alone=diff, minus_alone_ci95=ci)
                line += f"; minus target alone {diff:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            print(line, flush=True)
    write_json_atomic(args.out / "scarcity.json", {"suite": args.suite, "command": " ".join(sys.argv),
                                                   "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
