"""Benchmark: final models trained on each method's selection, and the cost of conventional selection.

Runs ``gradselect run`` on a planted reasoning-gym suite with ``--n-sources`` sources
(target chain_sum; related, unrelated and label-noise sources), comparing on the
target's test split, with equal step budgets for every final fine-tune:

- gradselect's random-ensemble selection, forward selection on estimates,
  gradient- and representation-similarity (all from the same features);
- all sources, target only, a random subset;
- conventional forward selection with one real fine-tune (from the base model)
  per candidate, capped at ``--budget`` fine-tunes;

and prints each method's test loss, exact match and wall time, and the cost ratio
of the conventional search against gradselect's stages (meta-initialization,
featurization, selection, final fine-tune).

    python benchmarks/selection.py --model tiny-llama -o runs/selection-tiny
    python benchmarks/selection.py -o runs/selection-smollm2 --budget 30     # SmolLM2 + LoRA
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fidelity import COMPARE, print_selection_rows, selection_rows, stage_seconds  # noqa: E402

SOURCES = [  # (name, generator, label noise)
    ("chain_sum_more", "chain_sum", 0.0), ("decimal_chain_sum", "decimal_chain_sum", 0.0),
    ("arith", "basic_arithmetic", 0.0), ("products", "products", 0.0), ("gcd", "gcd", 0.0), ("lcm", "lcm", 0.0),
    ("count_bits", "count_bits", 0.0), ("legs", "leg_counting", 0.0), ("letters", "letter_counting", 0.0),
    ("chain_sum_noisy", "chain_sum", 1.0), ("arith_noisy", "basic_arithmetic", 1.0),
    ("decimal_chain_sum_noisy", "decimal_chain_sum", 1.0),
]


def suite_config(model: str | None, n_sources: int, size: int):
    from gradselect.demo import FINAL_STEPS, demo_config

    quick = model is not None and model.startswith("tiny-")
    config = demo_config(quick=quick, model=model)
    chosen = SOURCES[:n_sources - 3] + SOURCES[-3:] if n_sources >= 3 else SOURCES[:n_sources]
    data = config.data.model_copy(update={"sources": [
        type(config.data.sources[0]).model_validate(
            {"name": name, "reasoning_gym": gen, "size": size, "seed": 100 + i, "label_noise": noise})
        for i, (name, gen, noise) in enumerate(chosen)]})
    steps = FINAL_STEPS["tiny" if quick else "smollm2"]
    return config.model_copy(update={"data": data}), steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", help="model (default: smollm2)")
    p.add_argument("--n-sources", type=int, default=12)
    p.add_argument("--size", type=int, default=30, help="examples per source")
    p.add_argument("--budget", type=int, default=100, help="fine-tunes at most for the conventional search")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from gradselect.pipeline import run_pipeline
    from gradselect.report import cost_of_selection

    config, steps = suite_config(args.model, args.n_sources, args.size)
    config = config.model_copy(update={"run": config.run.model_copy(update={
        "run_dir": str(args.out), "compare": COMPARE, "final_steps": steps,
        "conventional_budget": args.budget})})
    run_pipeline(config, device=args.device, progress=False)
    rows = selection_rows(args.out)
    conv = json.loads((args.out / "conventional" / "conventional.json").read_text())
    ours = cost_of_selection(args.out)
    print(f"# selection suite: {config.model.name_or_path}, {args.n_sources} sources of {args.size} examples, "
          f"final fine-tunes of {steps} steps")
    print_selection_rows(rows)
    seconds = stage_seconds(args.out)
    print(f"\ngradselect: meta-init {seconds['meta_init']:.0f} s + features {seconds['features']:.0f} s + "
          f"select {seconds['select']:.1f} s + final {seconds['final']:.0f} s = {ours:.0f} s")
    state = "finished" if conv["finished"] else f"stopped by the budget of {conv['budget']}"
    print(f"conventional forward: {conv['n_finetunes']} fine-tunes, {conv['seconds']:.0f} s ({state}); "
          f"chose {conv['chosen']}")
    sel = json.loads((args.out / "selection.json").read_text())
    print(f"gradselect chose {sel['chosen']}; same as conventional: {sorted(sel['chosen']) == sorted(conv['chosen'])}")
    print(f"cost ratio conventional / gradselect: {conv['seconds'] / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
