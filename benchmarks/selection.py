"""Benchmark: final models trained on each method's selection, and the cost of conventional selection.

Runs ``gradselect run`` on one suite, comparing on the target's test split, with equal
step budgets for every final fine-tune. Suites:

- ``planted`` (default): a planted reasoning-gym suite with ``--n-sources`` sources
  (target chain_sum; related, unrelated and label-noise sources); methods: gradselect's
  random-ensemble selection, forward selection on estimates, gradient- and
  representation-similarity, all sources, target only, a random subset, and conventional
  forward selection with one real fine-tune (from the base model) per candidate, capped
  at ``--budget`` fine-tunes (with its cost ratio against gradselect's stages);
- ``bbh``: one BIG-Bench-Hard task (``--target``, default boolean_expressions) as a
  scarce target (``--test-size`` test questions, ``--dev-size`` dev, default 30, the rest, 20 of 250,
  to train)
  and ``--n-sources`` other BBH tasks of ``--per-source`` examples as sources, the last
  two with swapped answers (planted harm); the planted suite's methods;
- ``arith``: BIG-bench arithmetic (``--arithmetic``, ``../shared/data/bigbench/arithmetic``):
  2-digit addition as a scarce target (``--target-train`` questions, default 16; ``--dev-size`` dev, default 60;
  ``--test-size`` test; multiple-choice accuracy over the task's answer options) and the 12 other
  subtasks of the arith12 truth bank as sources, two with swapped answers (planted harm);
- ``cot``: chain-of-thought data selection (issue 16): StrategyQA from ``--data``
  (BIG-bench, ``../shared/data/bigbench/strategyqa``), questions with an answer and a
  short explanation as the training data, with ``--noisy`` of them given another
  question's explanation (planted noise); the pooled examples are clustered by projected
  gradient (``--clusters`` clusters, agglomerative, cosine) and the clusters are the
  sources; the target is other StrategyQA questions with their explanations (exact match
  of the leading Yes/No, token cross-entropy of the whole response). Methods: the cluster
  selection, all data, random clusters of equal size, LESS-style example selection of
  equal size, target only.

    python benchmarks/selection.py --model tiny-llama -o runs/selection-tiny
    python benchmarks/selection.py -o runs/selection-smollm2 --budget 30     # SmolLM2 + LoRA
    python benchmarks/selection.py -o runs/selection-planted12 --budget 0 --test-size 200 --final-seeds 2
    python benchmarks/selection.py --suite cot -o runs/selection-cot          # SmolLM2 + LoRA
    python benchmarks/selection.py --suite bbh -o runs/selection-bbh --budget 0
    python benchmarks/selection.py --suite arith -o runs/selection-arith12 --budget 0 --validate-k 8
    python benchmarks/selection.py -o runs/selection-scarce --budget 0 --target-train 8   # a source should help
    python benchmarks/selection.py -o runs/selection-scarce --budget 0 --target-train 8 --n-sources 8 \
        --validate-k 8 --margin auto   # with a trust check; --margin 0 takes any estimated gain
    python benchmarks/selection.py -o runs/selection-scarce12 --budget 0 --target-train 8 --validate-k 8 \
        --scorer forward   # subsets scored by dev forward passes (the other methods' fine-tunes are reused)
    python benchmarks/selection.py -o runs/selection-scarce12-at-base --budget 0 --target-train 8 --validate-k 8 \
        --scorer forward --estimate-at base   # no meta-training: estimates where the final fine-tunes start

The cot suite writes its derived data files (BIG-bench format, canary kept) into the
run folder, never into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from fidelity import COMPARE, print_selection_rows, selection_rows, stage_seconds  # noqa: E402

SOURCES = [  # (name, generator, label noise)
    ("chain_sum_more", "chain_sum", 0.0), ("decimal_chain_sum", "decimal_chain_sum", 0.0),
    ("arith", "basic_arithmetic", 0.0), ("products", "products", 0.0), ("gcd", "gcd", 0.0), ("lcm", "lcm", 0.0),
    ("count_bits", "count_bits", 0.0), ("legs", "leg_counting", 0.0), ("letters", "letter_counting", 0.0),
    ("chain_sum_noisy", "chain_sum", 1.0), ("arith_noisy", "basic_arithmetic", 1.0),
    ("decimal_chain_sum_noisy", "decimal_chain_sum", 1.0),
]


def source_sizes(run_dir: Path) -> str:
    """The examples per source the run featurized: ``30``, or ``23-30`` where sources differ."""
    from gradselect.features.store import FeatureStore

    sizes = [len(rows) for rows in FeatureStore.open(Path(run_dir) / "features").rows_by_source().values()]
    return str(min(sizes)) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"


def suite_config(model: str | None, n_sources: int, size: int, test_size: int = 200, target_train: int | None = None):
    """The demo's target (two-term sums, which SmolLM2 partly solves once fine-tuned) with ``n_sources``
    sources, chain sums and arithmetic at the target's difficulty, and ``test_size`` test questions;
    ``target_train`` target training questions (default: the demo's 60; fewer make a scarce target,
    where more of the same task, ``chain_sum_more``, should help)."""
    from gradselect.demo import EASY_ARITHMETIC, FINAL_STEPS, demo_config

    quick = model is not None and model.startswith("tiny-")
    config = demo_config(quick=quick, model=model)
    chosen = SOURCES[:n_sources - 3] + SOURCES[-3:] if n_sources >= 3 else SOURCES[:n_sources]
    spec = type(config.data.sources[0])

    def args(gen):
        easy = dict(EASY_ARITHMETIC) if gen in ("chain_sum", "basic_arithmetic") else {}
        return easy | ({"operators": ["+", "-"]} if gen == "basic_arithmetic" else {})

    data = config.data.model_copy(update={
        "sources": [spec.model_validate({"name": name, "reasoning_gym": gen, "size": size, "seed": 100 + i,
                                         "label_noise": noise, "reasoning_gym_args": args(gen)})
                    for i, (name, gen, noise) in enumerate(chosen)],
        "target_test": config.data.target_test.model_copy(update={"size": test_size}),
        **({"target": config.data.target.model_copy(update={"size": target_train})} if target_train else {})})
    steps = FINAL_STEPS["tiny" if quick else "smollm2"]
    return config.model_copy(update={"data": data}), steps


def cot_config(model: str | None, data: Path, out: Path, n_train: int, n_noisy: int, n_target: int,
               clusters: int):
    """StrategyQA as chain-of-thought training data, clustered into pseudo-sources; a Yes/No target."""
    import random

    from gradselect.config import RunConfig
    from gradselect.demo import FINAL_STEPS

    task = json.loads((data / "task.json").read_text())
    rows = list(task["examples"])
    random.Random(0).shuffle(rows)
    need = n_train + n_noisy + n_target
    if len(rows) < need:
        raise SystemExit(f"{data}: {len(rows)} examples, the suite needs {need}")
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, examples):
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"canary": task.get("canary"), "name": name, "examples": examples}))
        return str(path)

    # Answer and explanation everywhere: the target is scored on its answer (exact match of the leading
    # Yes/No) and on the whole response (token cross-entropy), in the format the training data teaches.
    cot = [{"input": r["input"], "target": r["target"]} for r in rows[:n_train + n_noisy]]
    target = [{"input": r["input"], "target": r["target"]} for r in rows[n_train + n_noisy:need]]
    tiny = (model or "smollm2").startswith("tiny-")
    config = RunConfig.model_validate({
        "data": {
            "target": {"name": "strategyqa", "path": write("target", target)},
            "dev_fraction": 0.2, "test_fraction": 0.5, "split_seed": 0,
            "sources": [{"name": "cot", "path": write("cot", cot[:n_train])},
                        {"name": "cot_noisy", "path": write("cot_noisy", cot[n_train:]), "label_noise": 1.0}],
        },
        "model": {"name_or_path": model or "smollm2"},
        "adapter": {"method": "full" if tiny else "lora"},
        "features": {"proj_dim": 128 if tiny else 256, "params": [r"layers\.1\..*proj"] if tiny else None},
        "tokenize": {"max_length": 768 if tiny else 256, "chat_template": not tiny},  # tiny: character tokens
        "train": {"epochs": 1, "learning_rate": 3e-3 if tiny else 5e-4, "batch_size": 8, "logging_steps": 5},
        "select": {"method": "ensemble", "n_subsets": 64, "pseudo_sources": clusters},
        "evaluate": {"max_new_tokens": 4, "exact_match": True, "answer_extractor": "regex",  # the leading answer
                     "answer_regex": "^\\s*(Yes|No)"},
    })
    return config, FINAL_STEPS["tiny" if tiny else "smollm2"]


BBH_DEV, ARITH_DEV = 30, 60
"""Target dev questions of the bbh and arith suites unless ``--dev-size`` says otherwise."""


def _checked_dev(dev_size: int) -> int:
    if dev_size < 2:
        raise SystemExit(f"--dev-size {dev_size}: at least 2 dev questions")
    return dev_size


def bbh_selection_config(bbh: Path, target: str, n_sources: int, per_source: int, test_size: int,
                         model: str | None, target_train: int | None = None, dev_size: int = BBH_DEV):
    """One BIG-Bench-Hard task as a scarce target (``test_size`` test questions, ``dev_size`` dev, the rest
    to train, or ``target_train`` of them: a scarcer target, drawn with the data seed) and ``n_sources``
    other BBH tasks as sources, the last two of them with every answer swapped for another example's
    (planted harm, known to the benchmark)."""
    from gradselect.demo import FINAL_STEPS

    sys.path.insert(0, str(Path(__file__).parent))
    from fidelity import bbh_config

    rows = len(json.loads((bbh / f"{target}.json").read_text())["examples"])
    dev = _checked_dev(dev_size)
    if target_train is None and rows - test_size - dev < 10:
        raise SystemExit(f"{bbh / (target + '.json')}: {rows} examples leave fewer than 10 to train after "
                         f"{test_size} test and {dev} dev questions; lower --test-size or --dev-size")
    if target_train is not None and not 1 <= target_train <= rows - test_size - dev:
        raise SystemExit(f"--target-train {target_train}: {bbh / (target + '.json')} has {rows - test_size - dev} "
                         f"examples to train after {test_size} test and {dev} dev questions")
    config, _, _ = bbh_config(bbh, target, n_sources, per_source, model)
    data = config.data.model_dump()
    # The split is by fractions of the kept examples: keep only what test, dev and training need.
    kept = rows if target_train is None else test_size + dev + target_train
    data["target"]["max_examples"] = None if target_train is None else kept
    data["dev_fraction"], data["test_fraction"] = dev / kept, test_size / kept
    for spec in data["sources"][-2:]:
        spec["name"], spec["label_noise"] = spec["name"] + "_noisy", 1.0
    config = config.model_copy(update={"data": type(config.data).model_validate(data)})
    tiny = config.model.name_or_path.startswith("tiny-")
    return config, FINAL_STEPS["tiny" if tiny else "smollm2"], [s["name"] for s in data["sources"][-2:]]


def arith_selection_config(root: Path, target_train: int, test_size: int, model: str | None, n_sources: int = 12,
                           dev_size: int = ARITH_DEV):
    """BIG-bench arithmetic: 2-digit addition as the target (``target_train`` training questions, ``dev_size`` dev,
    ``test_size`` test; multiple choice kept), the truth bank arith12's 12 other subtasks as sources
    (30 examples each; two with swapped answers, planted harm); fewer with ``n_sources`` (the first
    clean ones and both noisy ones)."""
    from gradselect.demo import FINAL_STEPS

    sys.path.insert(0, str(Path(__file__).parent))
    from truthbank import ARITH_SOURCES, arith12_config

    config = arith12_config(root)
    dev = _checked_dev(dev_size)
    total = target_train + dev + test_size
    data = config.data.model_dump()
    data["target"]["max_examples"] = total
    data["dev_fraction"], data["test_fraction"] = dev / total, test_size / total
    if not 3 <= n_sources <= len(data["sources"]):
        raise SystemExit(f"--n-sources: the arith suite has 3 to {len(data['sources'])} sources")
    data["sources"] = data["sources"][:n_sources - 2] + data["sources"][-2:]
    if model:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": model})})
    config = config.model_copy(update={"data": type(config.data).model_validate(data),
                                       "select": config.select.model_copy(update={"n_subsets": 64})})
    tiny = config.model.name_or_path.startswith("tiny-")
    return config, FINAL_STEPS["tiny" if tiny else "smollm2"], [n for n, _, noise in ARITH_SOURCES if noise]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", help="model (default: smollm2)")
    p.add_argument("--n-sources", type=int, default=12)
    p.add_argument("--size", type=int, default=30, help="examples per source")
    p.add_argument("--budget", type=int, default=100,
                   help="fine-tunes at most for the conventional search (0: skip it)")
    p.add_argument("--test-size", type=int, default=200, help="planted: target test questions")
    p.add_argument("--target-train", type=int,
                   help="planted / arith / bbh: target training questions (default: the demo's 60 / 16 / "
                        "every BBH question left after test and dev)")
    p.add_argument("--dev-size", type=int,
                   help="bbh / arith: target dev questions, what the trust check and the evidence margin "
                        "measure on (default 30 / 60)")
    p.add_argument("--final-seeds", type=int, default=2, help="training seeds of every final fine-tune")
    p.add_argument("--final-init", choices=["base", "meta"], default="base",
                   help="where every final fine-tune starts: the base model or theta* ([run] final_init)")
    p.add_argument("--validate-k", type=int, default=0,
                   help="trust check of this many subsets fine-tuned before selecting ([run] validate_k)")
    p.add_argument("--validate-init", choices=["auto", "meta", "base"], default="auto",
                   help="where the trust check's fine-tunes start ([run] validate_init): auto (where the final "
                        "fine-tunes start), theta* or the base model")
    p.add_argument("--compare", type=lambda text: [m for m in text.split(",") if m],
                   default=COMPARE + ["kmm", "less", "uniform", "stratified"],
                   help="comma list of the methods compared with the selection (default: every one)")
    p.add_argument("--margin", default="auto",
                   help="evidence margin of the selection ([select] margin): auto, or a number (0: the old rule)")
    p.add_argument("--scorer", choices=["linear", "forward"], default="linear",
                   help="how the selection scores subsets ([estimate] scorer): the linear first-order estimate, or "
                        "a real dev forward pass at theta* + a sign step per subset")
    p.add_argument("--estimate-at", choices=["meta", "base"], default="meta",
                   help="where the estimates linearize ([run] estimate_at): theta* (meta-training on all sources) or "
                        "the base model's untrained adapter (no meta-training)")
    p.add_argument("--forward-length", type=float, metavar="FRACTION",
                   help="forward scorer: sign-step length as a fraction of |theta| ([estimate] forward_length_fraction)")
    p.add_argument("--forward-metric", choices=["functional", "token_ce"], default="functional",
                   help="forward scorer: what a subset's dev loss is measured in, and so what the trust check and the "
                        "evidence margin compare ([estimate] forward_metric)")
    p.add_argument("--skip-special-tokens", action="store_true",
                   help="leave the tokenizer's special tokens (end of turn, EOS) out of the functional: features, "
                        "forward scores and trust-check truths ([features] skip_special_tokens)")
    p.add_argument("--target-share", type=float, metavar="SHARE",
                   help="keep the target's train split at this share of every mixture ([train] and [estimate] "
                        "target_share)")
    p.add_argument("--device", default="auto")
    p.add_argument("--suite", choices=["planted", "bbh", "arith", "cot"], default="planted")
    p.add_argument("--arithmetic", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                   / "bigbench" / "arithmetic", help="arith: the BIG-bench arithmetic folder (subtask folders)")
    p.add_argument("--bbh", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh",
                   help="bbh: BIG-Bench-Hard folder")
    p.add_argument("--target", default="boolean_expressions", help="bbh: target task")
    p.add_argument("--per-source", type=int, default=40, help="bbh: examples per source task")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bigbench"
                   / "strategyqa", help="cot: the StrategyQA folder (BIG-bench task.json)")
    p.add_argument("--n-train", type=int, default=240, help="cot: clean chain-of-thought examples")
    p.add_argument("--noisy", type=int, default=80, help="cot: examples with another question's explanation")
    p.add_argument("--n-target", type=int, default=500, help="cot: target questions (half of them test)")
    p.add_argument("--clusters", type=int, default=16, help="cot: clusters of the pooled examples")
    args = p.parse_args(argv)

    from gradselect.pipeline import run_pipeline
    from gradselect.report import cost_of_selection

    if args.suite == "cot":
        if not (args.data / "task.json").exists():
            print(f"skipped: no StrategyQA at {args.data}")
            return 0
        config, steps = cot_config(args.model, args.data, args.out, args.n_train, args.noisy, args.n_target,
                                   args.clusters)
        config = config.model_copy(update={"run": config.run.model_copy(update={
            "run_dir": str(args.out), "compare": ["all", "random", "less", "target-only"], "final_steps": steps})})
        run_pipeline(config, device=args.device, progress=False)
        print(f"# chain-of-thought suite: {config.model.name_or_path}, {args.n_train} + {args.noisy} noisy "
              f"StrategyQA explanations in {args.clusters} clusters; final fine-tunes of {steps} steps")
        print_selection_rows(selection_rows(args.out))
        clusters = json.loads((args.out / "clusters.json").read_text())
        sel = json.loads((args.out / "selection.json").read_text())
        # Each cluster lists [source, example id] pairs: the share of planted-noisy examples among the
        # chosen clusters' examples, against all examples.
        pairs = clusters["clusters"]
        chosen = sel["chosen"]
        kept = [src for c in chosen for src, _ in pairs[c]]
        every = [src for c in pairs for src, _ in pairs[c]]
        share = np.mean([s == "cot_noisy" for s in kept]) if kept else float("nan")
        print(f"clusters chosen: {len(chosen)} of {len(pairs)} ({len(kept)} of {len(every)} examples); planted-noisy "
              f"share {share:.2f} among the chosen examples, {np.mean([s == 'cot_noisy' for s in every]):.2f} "
              f"among all; cluster sizes {sorted((len(v) for v in pairs.values()), reverse=True)}")
        return 0
    planted = [name for name, _, noise in SOURCES if noise] if args.suite == "planted" else []
    if args.suite == "bbh":
        if not (args.bbh / f"{args.target}.json").exists():
            print(f"skipped: no BIG-Bench-Hard task {args.target} at {args.bbh}")
            return 0
        config, steps, planted = bbh_selection_config(args.bbh, args.target, args.n_sources, args.per_source,
                                                      args.test_size, args.model, args.target_train,
                                                      BBH_DEV if args.dev_size is None else args.dev_size)
    elif args.suite == "arith":
        if not (args.arithmetic / "2_digit_addition" / "task.json").exists():
            print(f"skipped: no BIG-bench arithmetic at {args.arithmetic}")
            return 0
        config, steps, planted = arith_selection_config(args.arithmetic, args.target_train or 16, args.test_size,
                                                        args.model, args.n_sources,
                                                        ARITH_DEV if args.dev_size is None else args.dev_size)
    else:
        config, steps = suite_config(args.model, args.n_sources, args.size, args.test_size, args.target_train)
    config = config.model_copy(update={"run": config.run.model_copy(update={
        "run_dir": str(args.out), "compare": args.compare, "final_steps": steps,
        "final_seeds": args.final_seeds, "final_init": args.final_init, "conventional_budget": args.budget,
        "validate_k": args.validate_k, "validate_init": args.validate_init, "estimate_at": args.estimate_at}),
        "select": config.select.model_copy(update={"margin": args.margin if args.margin == "auto"
                                                   else float(args.margin)}),
        "train": config.train.model_copy(update={"target_share": args.target_share}),
        **({"features": config.features.model_copy(update={"skip_special_tokens": True})}
           if args.skip_special_tokens else {}),
        "estimate": config.estimate.model_copy(update={"scorer": args.scorer, "target_share": args.target_share, **(
            {"forward_length_fraction": args.forward_length} if args.forward_length else {}), **(
            {"forward_metric": args.forward_metric} if args.forward_metric != "functional" else {})})})
    run_pipeline(config, device=args.device, progress=False)
    rows = selection_rows(args.out)
    ours = cost_of_selection(args.out)
    print(f"# selection suite {args.suite}: {config.model.name_or_path}, {args.n_sources} sources of "
          f"{source_sizes(args.out)} examples, {args.test_size} test questions, final fine-tunes of {steps} steps x "
          f"{args.final_seeds} seeds "
          f"from {'theta*' if args.final_init == 'meta' else 'the base model'}; trust check of {args.validate_k} "
          f"subsets from {'theta*' if config.run.trust_check_start() == 'meta' else 'the base model'}; "
          f"evidence margin "
          f"{args.margin}; {args.scorer} scorer"
          + (f" in {args.forward_metric}" if args.scorer == "forward" else "")
          + (" without special tokens" if args.skip_special_tokens else "") + "; estimates at "
          f"{'theta*' if args.estimate_at == 'meta' else 'the base model (no meta-training)'}"
          + (f"; target share {args.target_share}" if args.target_share else ""))
    print_selection_rows(rows)
    sel = json.loads((args.out / "selection.json").read_text())
    print(f"planted harmful sources {planted}; chosen among them: {sorted(set(planted) & set(sel['chosen']))}")
    seconds = stage_seconds(args.out)
    print(f"\ngradselect: meta-init {seconds['meta_init']:.0f} s + features {seconds['features']:.0f} s + "
          f"select {seconds['select']:.1f} s + final {seconds['final']:.0f} s = {ours:.0f} s")
    if not args.budget:
        return 0
    conv = json.loads((args.out / "conventional" / "conventional.json").read_text())
    state = "finished" if conv["finished"] else f"stopped by the budget of {conv['budget']}"
    print(f"conventional forward: {conv['n_finetunes']} fine-tunes, {conv['seconds']:.0f} s ({state}); "
          f"chose {conv['chosen']}")
    sel = json.loads((args.out / "selection.json").read_text())
    print(f"gradselect chose {sel['chosen']}; same as conventional: {sorted(sel['chosen']) == sorted(conv['chosen'])}")
    print(f"cost ratio conventional / gradselect: {conv['seconds'] / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
