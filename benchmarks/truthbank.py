"""Truth banks: seed-repeated real fine-tunes from theta* on many subsets, kept as data.

A bank is one JSON file per suite under ``benchmarks/truth/``. It records how the
meta-initialization theta* and its features were made (base-model, theta* and
data digests, the suite's config), and one record per subset with the true target
dev loss of every seed's fine-tune from theta* (``losses``, the estimator's
functional; ``token_ce``, response-token cross-entropy), so an estimator can be
re-scored against it without retraining.

    python benchmarks/truthbank.py build planted12 --run-dir runs/bank-planted12
    python benchmarks/truthbank.py build planted12 --run-dir runs/bank-planted12 --n-subsets 50 --seeds 2
    python benchmarks/fidelity.py score --bank benchmarks/truth/planted12.json     # = truthbank.py score
    python benchmarks/fidelity.py score --bank benchmarks/truth/planted12.json --features adam,softmin   # + other features
    python benchmarks/truthbank.py build bbh12 --run-dir runs/bank-bbh12          # BIG-Bench-Hard, 12 sources
    python benchmarks/truthbank.py build arith12 --run-dir runs/bank-arith12      # BIG-bench arithmetic, 12 sources
    python benchmarks/truthbank.py choose --bank benchmarks/truth/planted12.json  # the product's choice, measured
    python benchmarks/truthbank.py build-base arith12 --run-dir runs/bank-arith12   # truths from the base model
    python benchmarks/truthbank.py at-base --bank benchmarks/truth/arith12.base.json --lengths 0.2,0.5
    python benchmarks/truthbank.py baselines --bank benchmarks/truth/arith12.base.json   # data-only, seconds
    python benchmarks/truthbank.py build planted12 --run-dir runs/bank-planted12-cuda --device cuda \
        --bank benchmarks/truth/planted12-cuda.json   # a GPU bank: its own theta*, so its own file

``build`` is resumable at two levels: every fine-tune is cached in the run folder
under a content key (subset, seed, training config, theta* digest), and the bank
file is rewritten atomically after each subset, so a later session on a fresh
clone (no run folder) re-creates theta* (CPU meta-training is deterministic, the
digests are checked) and only trains the subsets the bank still lacks.

Subsets: all sources, target only, then keep-50% draws (each source in with
probability 1/2, seeded, distinct). Each subset is fine-tuned with every seed
before the next subset starts, so a partial bank holds complete repeat sets.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

BANK_VERSION = 1
TRUTH_STEPS = 30


#: The residual surrogate's kernel in this script's simulated trust checks: ``rbf``, the product's kernel
#: when the figures recorded from it were made (before 2026-12-07; ``[run] surrogate_kernel`` now defaults
#: to ``additive``). ``size_calibration.py`` compares the two kernels.
SURROGATE_KERNEL = "rbf"

def planted12_config():
    """The demo's planted reasoning-gym data, grown: 12 sources (3 with swapped labels), dev 120, test 200."""
    from gradselect.config import RunConfig

    def rg(name, task, seed, noise=0.0, size=30):
        return {"name": name, "reasoning_gym": task, "size": size, "seed": seed, "label_noise": noise}

    sources = [
        rg("chain_sum_more", "chain_sum", 11), rg("arith", "basic_arithmetic", 12), rg("legs", "leg_counting", 13),
        rg("letters", "letter_counting", 14), rg("chain_sum_noisy", "chain_sum", 15, 1.0),
        rg("arith_noisy", "basic_arithmetic", 16, 1.0), rg("decimal_chain_sum", "decimal_chain_sum", 17),
        rg("products", "products", 18), rg("gcd", "gcd", 19), rg("number_sorting", "number_sorting", 22),
        rg("spell_backward", "spell_backward", 23), rg("chain_sum_halfnoisy", "chain_sum", 24, 0.5),
    ]
    return RunConfig.model_validate({
        "data": {
            "target": {"name": "chain_sum", "reasoning_gym": "chain_sum", "size": 40, "seed": 10},
            "target_dev": {"name": "chain_sum_dev", "reasoning_gym": "chain_sum", "size": 120, "seed": 20},
            "target_test": {"name": "chain_sum_test", "reasoning_gym": "chain_sum", "size": 200, "seed": 21},
            "sources": sources,
        },
        "model": {"name_or_path": "smollm2"},
        "features": {"proj_dim": 256, "hidden_states": True},
        "tokenize": {"max_length": 128, "chat_template": True},
        "train": {"epochs": 1, "learning_rate": 5e-4, "batch_size": 8, "logging_steps": 5},
        "evaluate": {"max_new_tokens": 12, "exact_match": True},
    })


BBH_TARGET = "boolean_expressions"
BBH_SOURCES = ["navigate", "web_of_lies", "sports_understanding", "causal_judgement", "formal_fallacies",
               "logical_deduction_three_objects", "object_counting", "date_understanding", "hyperbaton", "snarks",
               "disambiguation_qa", "temporal_sequences"]


def bbh12_config(bbh: Path | None = None):
    """BIG-Bench-Hard: boolean_expressions as the target (40 train / 100 dev / rest test, split seeded), 12 other
    tasks as sources (30 examples each). ``bbh``: the data folder (default ``../shared/data/bbh`` or $GRADSELECT_BBH)."""
    from gradselect.config import RunConfig

    bbh = Path(bbh or os.environ.get("GRADSELECT_BBH", Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"))
    if not (bbh / f"{BBH_TARGET}.json").exists():
        raise SystemExit(f"no BIG-Bench-Hard data at {bbh}; set GRADSELECT_BBH to its folder")
    return RunConfig.model_validate({
        "data": {
            "target": {"name": BBH_TARGET, "path": str(bbh / f"{BBH_TARGET}.json")},
            "dev_fraction": 0.4, "test_fraction": 0.44, "split_seed": 0,
            "sources": [{"name": n, "path": str(bbh / f"{n}.json"), "max_examples": 30, "seed": 1} for n in BBH_SOURCES],
        },
        "model": {"name_or_path": "smollm2"},
        "features": {"proj_dim": 256, "hidden_states": True},
        "tokenize": {"max_length": 256, "chat_template": True},
        "train": {"epochs": 1, "learning_rate": 5e-4, "batch_size": 8, "logging_steps": 5},
        "evaluate": {"max_new_tokens": 8, "exact_match": True},
    })


ARITH_TARGET = "2_digit_addition"
ARITH_SOURCES = [  # (name, BIG-bench arithmetic subtask, label noise): two planted with swapped answers
    ("1_digit_addition", "1_digit_addition", 0.0), ("1_digit_subtraction", "1_digit_subtraction", 0.0),
    ("1_digit_multiplication", "1_digit_multiplication", 0.0), ("1_digit_division", "1_digit_division", 0.0),
    ("2_digit_subtraction", "2_digit_subtraction", 0.0), ("2_digit_multiplication", "2_digit_multiplication", 0.0),
    ("3_digit_addition", "3_digit_addition", 0.0), ("3_digit_subtraction", "3_digit_subtraction", 0.0),
    ("4_digit_addition", "4_digit_addition", 0.0), ("5_digit_addition", "5_digit_addition", 0.0),
    ("3_digit_addition_noisy", "3_digit_addition", 1.0), ("2_digit_subtraction_noisy", "2_digit_subtraction", 1.0),
]


def arith12_config(arithmetic: Path | None = None):
    """BIG-bench arithmetic: 2-digit addition as the target (360 questions: 40 train / 120 dev / 200 test, split
    seeded), 12 other subtasks as sources (30 examples each; two with swapped answers). ``arithmetic``: the
    folder of subtask folders (default ``../shared/data/bigbench/arithmetic`` or $GRADSELECT_ARITHMETIC)."""
    from gradselect.config import RunConfig

    root = Path(arithmetic or os.environ.get(
        "GRADSELECT_ARITHMETIC", Path(__file__).resolve().parents[2] / "shared" / "data" / "bigbench" / "arithmetic"))
    if not (root / ARITH_TARGET / "task.json").exists():
        raise SystemExit(f"no BIG-bench arithmetic data at {root}; set GRADSELECT_ARITHMETIC to its folder")
    return RunConfig.model_validate({
        "data": {
            "target": {"name": ARITH_TARGET, "path": str(root / ARITH_TARGET / "task.json"), "max_examples": 360,
                       "seed": 0},
            "dev_fraction": 1 / 3, "test_fraction": 5 / 9, "split_seed": 0,
            "sources": [{"name": name, "path": str(root / task / "task.json"), "max_examples": 30,
                         "seed": 2 if noise else 1, "label_noise": noise} for name, task, noise in ARITH_SOURCES],
        },
        "model": {"name_or_path": "smollm2"},
        "features": {"proj_dim": 256, "hidden_states": True},
        "tokenize": {"max_length": 96, "chat_template": True},
        "train": {"epochs": 1, "learning_rate": 5e-4, "batch_size": 8, "logging_steps": 5},
        "evaluate": {"max_new_tokens": 8, "exact_match": True},
    })


SUITES = {"planted12": planted12_config, "bbh12": bbh12_config, "arith12": arith12_config}


def keep_half_subsets(names: list[str], n: int, seed: int) -> list[list[str]]:
    """All sources, target only, then distinct keep-50% draws: ``n`` random subsets beyond the two."""
    rng = np.random.default_rng([seed, 13])
    subsets = [list(names), []]
    limit = 2 ** len(names)
    while len(subsets) < n + 2 and len(subsets) < limit:
        chosen = [s for s in names if rng.random() < 0.5]
        if chosen not in subsets:
            subsets.append(chosen)
    return subsets


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


#: Torch threads of every bank computation: float reductions depend on the thread count, and a
#: fresh clone re-creates theta* bitwise only with the count the bank was made with (2 here,
#: whatever OMP_NUM_THREADS or the machine's core count say).
BANK_THREADS = 2


def prepare(config, run_dir: Path, device: str):
    """theta* (meta-training on all sources) and its features, cached in ``run_dir``."""
    import torch

    from gradselect.data import load_taskset
    from gradselect.features import FeatureStore, featurize
    from gradselect.train import train

    torch.set_num_threads(BANK_THREADS)

    taskset = load_taskset(config.data)
    common = dict(model_config=config.model, adapter_config=config.adapter, tokenize_config=config.tokenize,
                  device=device, progress=False)
    meta = run_dir / "meta_init"
    if not (meta / "train_result.json").exists():
        train(taskset, taskset.source_names, meta, train_config=config.train, **common)
    feat = run_dir / "features"
    store = featurize(taskset, feat, feature_config=config.features, adapter_path=meta / "adapter", **common)
    return taskset, meta / "adapter", store or FeatureStore.open(feat)


def _identity(store, meta_adapter: Path) -> dict:
    """What a bank's truths depend on: base model, theta*, data and the features' definition."""
    return {
        "base_model_sha256": store.manifest["model"]["weights_sha256"],
        "theta_star_sha256": _sha(meta_adapter),
        "dataset_fingerprint": store.manifest["dataset_fingerprint"],
        "features": {k: store.manifest[k] for k in ("projector", "output_function", "param_norm")},
    }


#: How far (relative) |theta*| may differ when theta* is re-trained on another CPU: meta-training is
#: deterministic on one machine, but float rounding differs between CPUs (an AMD/AVX2 machine re-made the
#: planted12 theta* with |theta*| 1e-6 off and another digest). Beyond this it is another theta*.
THETA_DRIFT_TOLERANCE = 1e-4


def drift_from(bank_identity: dict, identity: dict) -> float | None:
    """The relative difference of |theta*| when two identities agree in everything but theta*'s digest and
    |theta*| (a theta* re-trained on another CPU), else None (another model, data, projector or output)."""
    a, b = copy.deepcopy(bank_identity), copy.deepcopy(identity)
    na, nb = a["features"].pop("param_norm"), b["features"].pop("param_norm")
    a.pop("theta_star_sha256"), b.pop("theta_star_sha256")
    if a != b:
        return None
    return abs(na - nb) / abs(na)


def _check_identity(bank: dict, identity: dict, bank_path, accept_drift: bool) -> tuple[bool, float | None]:
    """(usable, drift): whether a bank may be used with this run's theta*, and |theta*|'s relative drift."""
    if bank.get("identity") == identity:
        return True, None
    drift = drift_from(bank["identity"], identity)
    if drift is None:
        diff = [k for k in identity if identity[k] != bank["identity"].get(k)]
        print(f"{bank_path}: made from another theta* / data than this run (they differ in {diff}); refusing to "
              f"mix them. Found {bank.get('identity')}, have {identity}", file=sys.stderr)
        return False, None
    if not accept_drift or drift > THETA_DRIFT_TOLERANCE:
        print(f"{bank_path}: this run's theta* has another digest and |theta*| {drift:.2g} (relative) off the "
              f"bank's: theta* re-trained on another CPU. "
              + (f"Beyond the tolerance {THETA_DRIFT_TOLERANCE:g}: another theta*." if drift > THETA_DRIFT_TOLERANCE
                 else "Pass --accept-drift to use it (recorded in the bank / scores)."), file=sys.stderr)
        return False, drift
    return True, drift


def _new_bank(suite: str, identity: dict, config, taskset, truth_train, **extra) -> dict:
    """An empty bank's header: what its truths depend on and how they are measured."""
    return {
        "bank_version": BANK_VERSION, "suite": suite, **extra, "identity": identity,
        "config": config.model_dump(mode="json", exclude_none=True),
        "truth_train": truth_train.model_dump(mode="json"),
        "functional": "logistic loss of the mean gold-token log-odds on the target dev split",
        "n_dev": len(taskset.target_dev), "sources": list(taskset.source_names), "subsets": [],
    }


def _grow_subsets(bank: dict, bank_path: Path, plan: list[list[str]], n_seeds: int, measure, *,
                  extra: tuple[str, ...] = (), label: str = "") -> None:
    """Fine-tune every subset of ``plan`` with seeds ``0..n_seeds-1`` that ``bank["subsets"]`` still lacks,
    rewriting the bank atomically after each subset (so a partial bank holds complete repeat sets).

    ``measure(subset, seed, record)`` returns :func:`~gradselect.validate.measure_truth`'s result and
    fills the record's own ``extra`` lists; the losses, token cross-entropies, seconds and per-example
    dev losses are recorded here."""
    from gradselect.io import write_json_atomic

    done = {tuple(r["sources"]): r for r in bank["subsets"]}
    for i, subset in enumerate(plan):
        record = done.get(tuple(subset)) or {"sources": subset, "seeds": [], "losses": [], "token_ce": [],
                                             **{k: [] for k in extra}, "seconds": []}
        for seed in range(n_seeds):
            if seed in record["seeds"]:
                continue
            start = time.perf_counter()
            t = measure(subset, seed, record)
            record["seeds"].append(seed)
            record["losses"].append(t["loss"])
            record["token_ce"].append(t["token_ce"])
            record["seconds"].append(t.get("seconds", time.perf_counter() - start))
            # Per dev example (5 decimals), for paired comparisons between subsets; absent in older records.
            record.setdefault("example_losses", {})[str(seed)] = [round(x, 5) for x in t["example_losses"]]
        if tuple(subset) not in done:
            bank["subsets"].append(record)
            done[tuple(subset)] = record
        bank["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(bank_path, bank)
        print(f"[{i + 1}/{len(plan)}] {len(subset)} sources{label}: losses {record['losses']}", flush=True)


def build(args) -> int:
    from gradselect.io import write_json_atomic

    from gradselect.validate import measure_truth, truth_key

    config = SUITES[args.suite]()
    run_dir = Path(args.run_dir)
    bank_path = Path(args.bank or Path(__file__).parent / "truth" / f"{args.suite}.json")
    taskset, meta_adapter, store = prepare(config, run_dir, args.device)
    names = list(taskset.source_names)
    identity = _identity(store, meta_adapter)
    truth_train = config.train.model_copy(update={"max_steps": TRUTH_STEPS})
    bank = json.loads(bank_path.read_text()) if bank_path.exists() else None
    drift = None
    if bank is not None:
        usable, drift = _check_identity(bank, identity, bank_path, args.accept_drift)
        if not usable:
            return 2
    bank = bank or {**_new_bank(args.suite, identity, config, taskset, truth_train), "base_model_truth": []}
    bank["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    base_loss = _theta_star_loss(config, taskset, meta_adapter, args.device)
    theta = identity["theta_star_sha256"]
    if drift is None:
        bank["theta_star"] = base_loss
    else:
        # Truths from here on start at this re-made theta*: recorded per seed, with a check that it
        # reproduces the bank (the target alone, seed 0, measured again from it).
        entry = next((d for d in bank.setdefault("theta_star_drift", []) if d["theta_star_sha256"] == theta), None)
        if entry is None:
            entry = {"theta_star_sha256": theta, "param_norm_relative_difference": drift,
                     "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
                     "date": datetime.date.today().isoformat(), "theta_star": base_loss}
            bank["theta_star_drift"].append(entry)
        old = next((r for r in bank["subsets"] if not r["sources"]), None)  # the target alone
        if "check" not in entry and old and 0 in old["seeds"]:
            cfg = truth_train.model_copy(update={"seed": 0})
            t = measure_truth(config, taskset, [], run_dir / "truth" / truth_key(config, taskset, [], cfg, meta_adapter),
                              train_config=cfg, init_adapter=meta_adapter, store=store, device=args.device,
                              progress=False)
            was = old["losses"][old["seeds"].index(0)]
            entry["check"] = {"sources": [], "seed": 0, "bank_loss": was, "loss": t["loss"],
                              "relative_difference": abs(t["loss"] - was) / was,
                              "theta_star_loss_relative_difference": abs(base_loss["loss"] - bank["theta_star"]["loss"])
                              / bank["theta_star"]["loss"]}
            write_json_atomic(bank_path, bank)
        print(f"theta* re-made on this machine (|theta*| {drift:.2g} relative off the bank's); check: "
              f"{entry.get('check')}", flush=True)
    plan = keep_half_subsets(names, args.n_subsets, seed=0)

    def measure(subset, seed, record):
        cfg = truth_train.model_copy(update={"seed": seed})
        folder = run_dir / "truth" / truth_key(config, taskset, subset, cfg, meta_adapter)
        t = measure_truth(config, taskset, subset, folder, train_config=cfg, init_adapter=meta_adapter,
                          store=store, device=args.device, progress=False)
        if drift is not None:  # which theta* this seed started from (the bank's identity when absent)
            record.setdefault("theta_star_of_seed", {})[str(seed)] = theta
        record["projected_norm"].append((t.get("displacement") or {}).get("projected_norm"))
        return t

    _grow_subsets(bank, bank_path, plan, args.seeds, measure, extra=("projected_norm",))
    # The truth a user gets: fine-tunes from the base model (one seed) on the first subsets.
    have = {tuple(r["sources"]) for r in bank["base_model_truth"]}
    for subset in plan[: args.base_subsets]:
        if tuple(subset) in have:
            continue
        cfg = truth_train.model_copy(update={"seed": 0})
        folder = run_dir / "truth_base" / truth_key(config, taskset, subset, cfg, None)
        t = measure_truth(config, taskset, subset, folder, train_config=cfg, init_adapter=None, device=args.device,
                          progress=False)
        bank["base_model_truth"].append({"sources": subset, "seed": 0, "loss": t["loss"], "token_ce": t["token_ce"]})
        write_json_atomic(bank_path, bank)
        print(f"base-model truth: {len(subset)} sources: {t['loss']:.5f}", flush=True)
    return 0


def _variants(arrays, subsets, true, base_true, norms):
    """Held-out estimates of each estimator variant, shape (n_subsets,) each.

    Nothing here is fitted on the subset it predicts: fixed-step variants fit nothing;
    the others are leave-one-out (:mod:`gradselect.validate.fidelity`).
    """
    from gradselect.estimate import EstimateConfig, SubsetEstimator
    from gradselect.validate.fidelity import loo_affine, loo_select, pairwise_accuracy

    def est(cfg):
        model = SubsetEstimator(cfg).fit(arrays)
        return model.estimate(subsets), model.base_loss_

    out = {}
    default, base_est = est(EstimateConfig())
    out["trust_region, default radius"] = default
    out["trust_region, default radius, additive over sources (LOO, label-free)"] = _loo_additive(
        arrays.source_names, subsets, default)
    out["trust_region, default radius, lowrank"] = est(EstimateConfig(solver="lowrank", rank=32))[0]
    out["gradient similarity summed over sources (no step; order only)"] = _summed_gradient_similarity(
        arrays, subsets, base_est)
    out["number of sources, fewer = lower (no features; order only)"] = subset_size_baseline(subsets, base_est)
    out["l2, default lam"] = est(EstimateConfig(mode="l2"))[0]
    out["reference"] = est(EstimateConfig(mode="reference"))[0]
    # The radius grid is fixed in advance (around the default), so it carries no held-out information.
    r0 = EstimateConfig().radius_fraction * arrays.param_norm
    grid = r0 * np.logspace(-2, 1.5, 36)
    by_radius = {f"{r:.4g}": est(EstimateConfig(radius=float(r)))[0] for r in grid}
    mre = lambda e, t: -float(np.mean(np.abs(e - t) / t))  # noqa: E731
    out["trust_region, radius by LOO relative error"] = loo_select(by_radius, true, mre)[0]
    ranked, _ = loo_select(by_radius, true, pairwise_accuracy)
    out["trust_region, radius by LOO pairwise order"] = ranked
    # The order-best radius, with its level fitted separately (affine, LOO): order and level both held out.
    affine = np.empty(len(true))
    for i in range(len(true)):
        keep = np.arange(len(true)) != i
        marks = {k: pairwise_accuracy(v[keep], true[keep]) for k, v in by_radius.items()}
        best = by_radius[max(marks, key=marks.get)]
        affine[i] = _affine_fit(best[keep], true[keep], base_est, base_true, best[i])
    out["trust_region, radius by LOO pairwise order + LOO level"] = affine
    out["trust_region, default radius + LOO level"] = loo_affine(default, true, base_est, base_true)
    # Exactly what the trust check does for a user (gradselect.validate.calibration.calibrate_for_ranking):
    # the configured step first, a truth-independent grid of every calibrated mode, the step that orders the
    # other subsets best, its level fitted apart; held out.
    from gradselect.validate.calibration import calibrate_for_ranking

    out["trust check's choice (order-first over modes and steps + level, LOO)"] = np.array(
        calibrate_for_ranking(arrays, EstimateConfig(), subsets, true)["held_out_predictions"])
    # The same without the one-standard-error guard (what the trust check did before 2026-12-02).
    out["trust check's choice without the one-SE guard (LOO)"] = np.array(
        calibrate_for_ranking(arrays, EstimateConfig(), subsets, true, one_se=False)["held_out_predictions"])
    # Kernel surrogates over subset indicators (Kernel Surrogate Models, ICLR 2026), leave-one-out on the truth:
    # the data-only baseline (no features), and a correction of the default estimate by its residuals.
    out["indicator kernel ridge on the other truths (LOO, no features)"] = _loo_kernel_ridge(
        arrays.source_names, subsets, true)
    out["default radius + kernel ridge on its residuals (LOO)"] = default + _loo_kernel_ridge(
        arrays.source_names, subsets, true - default)
    measured = list(norms)
    if all(x is not None for x in measured):
        loo_r = np.empty(len(true))
        for i in range(len(true)):
            r = float(np.median([m for j, m in enumerate(measured) if j != i]))
            loo_r[i] = SubsetEstimator(EstimateConfig(radius=r)).fit(arrays).estimate([subsets[i]])[0]
        out["trust_region, radius = median measured displacement (LOO)"] = loo_r
    return out, base_est


def _forward_variants(config, taskset, meta_adapter, run_dir, subsets, true, base_true, norms, device,
                      forward_cache, only=None, loo_lengths: bool = True, fractions=()):
    """Parameter-space steps scored by real forward passes at theta* + step (gradselect.estimate.forward):
    the steps named in ``only`` (default: all), each at its default length, at each of ``fractions`` x
    |theta*| (one more pass per subset each) and, with ``loo_lengths``, at the median displacement the
    other fine-tunes measured (one more pass per subset). ``forward_cache`` = (JSON file, theta* and data digests):
    passes are kept there and reused only for the same theta* and data."""
    from gradselect.estimate.forward import ForwardPassEstimator, SourceGradients
    from gradselect.model import apply_adapter, load_model
    from gradselect.validate.fidelity import loo_affine

    model, tok = load_model(config.model, device=device)
    model = apply_adapter(model, config.adapter, init_adapter=meta_adapter)
    def source_gradients(path, squares):
        if path.exists():
            return SourceGradients.load(path)
        g = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=squares, progress=True)
        g.save(path)
        return g

    grads = source_gradients(run_dir / "source_gradients.safetensors", False)
    # Per-example squared gradients (one backward pass per example) for Adam's first step.
    wants_adam = only is None or any(s.startswith("adam") for s in only)
    grads_sq = source_gradients(run_dir / "source_gradients_squares.safetensors", True) if wants_adam else None
    # Every forward pass is cached by step, length and subset, beside the bank (committed: a fresh clone
    # re-scores without redoing the passes) when made from the bank's own theta*, else in the run folder.
    from gradselect.io import write_json_atomic

    cache_file, theta_digest = forward_cache
    cache = {}
    if cache_file.exists():
        stored = json.loads(cache_file.read_text())
        if stored.get("theta_star_and_data") == theta_digest:
            cache = stored["passes"]

    def cached(est, step, subset, length):
        key = f"{step}|{length:.9g}|{';'.join(sorted(subset))}"
        if key not in cache:
            cache[key] = float(est.estimate([subset], length=length)[0])
            write_json_atomic(cache_file, {"theta_star_and_data": theta_digest,
                                           "passes": dict(sorted(cache.items()))})
        return cache[key]

    out = {}
    batch = config.train.batch_size
    steps = {"sign": ("sign", {}, grads), "normalized": ("normalized", {}, grads),
             # Adam's first step at the training batch size, and at batch 1 (mean / per-example RMS).
             f"adam (batch {batch})": ("adam", {"train_batch_size": batch}, grads_sq),
             "adam (batch 1)": ("adam", {"train_batch_size": 1}, grads_sq)}
    for step, (kind, kwargs, source_grads) in steps.items():
        if only is not None and step not in only and kind not in only:
            continue
        est = ForwardPassEstimator(kind, **kwargs).fit(model, tok, source_grads, taskset.target_dev.examples,
                                                       config.tokenize)
        default = np.array([cached(est, step, s, est.length_) for s in subsets])
        out[f"forward pass, {step} step, default length"] = default
        out[f"forward pass, {step} step, default length, additive over sources (LOO, label-free)"] = \
            _loo_additive(est.source_names_, subsets, default)
        out[f"forward pass, {step} step, default length + LOO level"] = loo_affine(default, true, est.base_loss_,
                                                                                  base_true)
        for f in fractions:
            out[f"forward pass, {step} step, length {f:g} |theta*|"] = np.array(
                [cached(est, step, s, f * est.param_norm_) for s in subsets])
        if loo_lengths and kind != "adam" and all(x is not None for x in norms):
            # Length = the median displacement the *other* real fine-tunes measured (projected norms,
            # which the projection keeps close to the parameter-space norm).
            loo = np.array([cached(est, step, subsets[i], float(np.median(np.delete(np.array(norms), i))))
                            for i in range(len(subsets))])
            out[f"forward pass, {step} step, length = LOO median measured displacement"] = loo
        # The trust check's correction, on the forward pass instead of the linear estimate.
        out[f"forward pass, {step} step, default length + kernel ridge on its residuals (LOO)"] = (
            default + _loo_kernel_ridge(est.source_names_, subsets, true - default))
    if only is not None and "lifted" in only:
        out.update(_lifted_variants(config, taskset, model, tok, grads, run_dir, subsets, true, cached, fractions))
    return out


def _lifted_variants(config, taskset, model, tok, grads, run_dir, subsets, true, cached, fractions=()):
    """The authors' estimator: the linear estimator's projected-space step v_S (default trust region)
    taken back to the parameters as ``P v_S`` (:meth:`gradselect.features.Projector.lift`), scaled to a
    length, and scored by a dev forward pass. Only when asked (``--forward-steps lifted``)."""
    import torch

    from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
    from gradselect.estimate.forward import ForwardPassEstimator
    from gradselect.estimate.solvers import mean_logistic_loss
    from gradselect.features import FeatureStore, make_projector

    store = FeatureStore.open(run_dir / "features")
    m = store.manifest
    projector = make_projector(m["projector"]["kind"], {n: tuple(s) for n, s in m["params"]}, m["projector"]["dim"],
                               m["projector"]["seed"])
    linear = SubsetEstimator(EstimateConfig()).fit(FeatureArrays.from_store(store))
    scorer = ForwardPassEstimator("sign").fit(model, tok, grads, taskset.target_dev.examples, config.tokenize)

    class Lifted:  # what ``cached`` calls: estimate([subset], length=...)
        def estimate(self, subsets, length):
            d = projector.lift(torch.as_tensor(linear.solve(subsets)[0], dtype=torch.float32))
            return [float(mean_logistic_loss(scorer.outputs_along(d, length=length)))]

    out = {}
    for f in (0.1, *fractions):
        label = "default length" if f == 0.1 else f"length {f:g} |theta*|"
        out[f"forward pass, lifted linear step, {label}"] = np.array(
            [cached(Lifted(), "lifted", s, f * scorer.param_norm_) for s in subsets])
    projector.free_memory()
    return out


def _trust_check_draws(subsets, n_sources: int, ks, draws: int, seed: int):
    """Per k (those that leave at least 4 subsets unseen): ``(k, [(chosen, rest), ...])``, ``draws`` random
    trust checks of k bank subsets (all sources and target only always among them, as
    :func:`gradselect.validate.validation_subsets` draws them) and the subsets each leaves unseen. Seeded
    once for all k, so every caller sees the same draws."""
    fixed = [i for i, s in enumerate(subsets) if len(s) in (0, n_sources)]
    others = [i for i in range(len(subsets)) if i not in fixed]
    rng = np.random.default_rng([seed, 13])
    for k in ks:
        if k >= len(subsets) - 3:
            continue
        chosen = [fixed + list(rng.choice(others, size=k - len(fixed), replace=False)) for _ in range(draws)]
        yield k, [(c, [i for i in range(len(subsets)) if i not in c]) for c in chosen]


def _surrogate_at_k(estimates: dict, names, subsets, true, ks=(6, 8, 10, 12), draws: int = 20,
                    seed: int = 0) -> dict:
    """A trust check of k subsets for estimators given as fixed estimates of every bank subset (forward
    passes): each alone and corrected by the residual surrogate fitted on the k, scored on the bank's other
    subsets. The draws are :func:`_trust_check_at_k`'s (:func:`_trust_check_draws`), so the columns compare.
    """
    from scipy.stats import spearmanr

    from gradselect.estimate.surrogate import ResidualSurrogate

    true = np.asarray(true, float)
    x = np.array([[n in s for n in names] for s in subsets], dtype=bool)
    out = {}
    for k, checks in _trust_check_draws(subsets, len(names), ks, draws, seed):
        rows = {f"{name}{tag}": [] for name in estimates for tag in ("", " + surrogate")}
        for chosen, rest in checks:
            for name, e in estimates.items():
                e = np.asarray(e, float)
                sur = ResidualSurrogate(SURROGATE_KERNEL).fit(x[chosen], true[chosen] - e[chosen])
                rows[name].append(spearmanr(e[rest], true[rest])[0])
                rows[f"{name} + surrogate"].append(spearmanr(e[rest] + sur.predict(x[rest]), true[rest])[0])
        out[str(k)] = {key: {"spearman_mean": float(np.mean(v)),
                             "spearman_p10_p90": [float(q) for q in np.percentile(v, [10, 90])]}
                       for key, v in rows.items()}
    return out


def _decisions_at_k(arrays, subsets, true, candidates, ks=(6, 8, 10, 12), draws: int = 20, seed: int = 0,
                    seed_losses=None) -> dict:
    """What the choice is worth: after a trust check of k bank subsets, choose among the subsets it did not
    see and the target alone by the product's estimates, with and without the evidence margin.

    Per draw (:func:`_trust_check_draws`): the step calibrated and the residual surrogate fitted (on) as
    ``gradselect validate`` does on those k, the trust check's gain error
    (``gain_rmse`` of :func:`gradselect.validate.trust.fit_surrogate`), then among the unseen subsets plus
    the target alone the lowest corrected estimate is chosen (``margin 0``), kept only when its gain over the target alone
    exceeds 1.96 x its dev-example standard error (``dev SE only``) or 1.96 x (dev SE combined with the
    gain error) (``auto``, the product's default: the gain error less the truth's seed noise, estimated as
    the product does from the subsets it repeats, all sources and the target alone, from ``seed_losses``;
    ``auto, raw gain error``: without taking it off). Returns per k and rule the mean over draws of the chosen
    subset's true loss, its regret (minus the best candidate's truth), how often the target alone was
    chosen and how often the choice was truly worse than the target alone; plus the target alone and the
    best candidate (oracle) for scale. ``candidates``: as for :func:`_trust_check_at_k`.
    """
    from gradselect.estimate import EstimateConfig, SubsetEstimator
    from gradselect.estimate.surrogate import ResidualSurrogate
    from gradselect.select.selectors import EVIDENCE_Z
    from gradselect.validate.calibration import calibrate_for_ranking, calibrated_config
    from gradselect.validate.trust import fit_surrogate

    true = np.asarray(true, float)
    if [] not in subsets:
        return {}
    alone = subsets.index([])
    _, every, base = candidates
    per_example = {}  # config json -> per-dev-example losses of every bank subset

    def dev_se(cfg, est):
        key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        if key not in per_example:
            per_example[key] = np.logaddexp(0.0, -est.predict_logodds(subsets))
        diff = per_example[key][alone][None, :] - per_example[key]
        return diff.std(axis=1, ddof=1) / np.sqrt(diff.shape[1])

    out = {}
    for k, checks in _trust_check_draws(subsets, len(arrays.source_names), ks, draws, seed):
        rows = {r: {"true_loss": [], "regret": [], "chose_target_alone": [], "worse_than_target_alone": []}
                for r in ("margin 0", "dev SE only", "auto", "auto, raw gain error", "target alone", "oracle")}
        gain_errors, raw_errors = [], []
        for chosen, rest in checks:
            val = [subsets[i] for i in chosen]
            calib = calibrate_for_ranking(arrays, EstimateConfig(), val, true[chosen],
                                          precomputed=(every[:, chosen], base), n_boot=0)
            cfg = calibrated_config(EstimateConfig(), calib)
            est = SubsetEstimator(cfg).fit(arrays)
            mine = est.estimate(subsets)
            noise = None
            if seed_losses is not None:
                # Each bank truth is a seed mean; the seed variance as the product estimates it, from its
                # repeats (the first two of a trust check: all sources and the target alone).
                fixed = [i for i in chosen if len(subsets[i]) in (0, len(arrays.source_names))]
                var = [np.var(seed_losses[i], ddof=1) for i in fixed if len(seed_losses[i]) >= 2]
                n = np.array([len(seed_losses[i]) for i in chosen], dtype=float)
                noise = float(np.mean(var)) * (1 / n + 1 / n[[subsets[i] for i in chosen].index([])]) if var else None
            fitted = fit_surrogate(arrays, cfg, val, true[chosen], calib["held_out_predictions"], mode="on",
                                   estimated=mine[chosen], n_boot=0, gain_noise=noise, kernel=SURROGATE_KERNEL)
            corrected = mine + ResidualSurrogate.from_dict(fitted["fitted"], est.source_names_).predict(
                est.subset_masks(subsets))
            err = fitted["gain_rmse"] or 0.0  # as gradselect validate measures it
            raw = fitted["gain_rmse_raw"] or 0.0
            gain_errors.append(err)
            raw_errors.append(raw)
            se = dev_se(cfg, est)
            cands = [alone] + [i for i in rest if i != alone]
            best = cands[int(np.argmin(corrected[cands]))]
            gain = corrected[alone] - corrected[best]
            picks = {"margin 0": best,
                     "dev SE only": best if gain > EVIDENCE_Z * se[best] else alone,
                     "auto": best if gain > EVIDENCE_Z * np.hypot(se[best], err) else alone,
                     "auto, raw gain error": best if gain > EVIDENCE_Z * np.hypot(se[best], raw) else alone,
                     "target alone": alone, "oracle": cands[int(np.argmin(true[cands]))]}
            floor = float(true[cands].min())
            for rule, i in picks.items():
                rows[rule]["true_loss"].append(float(true[i]))
                rows[rule]["regret"].append(float(true[i]) - floor)
                rows[rule]["chose_target_alone"].append(i == alone)
                rows[rule]["worse_than_target_alone"].append(bool(true[i] > true[alone]))
        out[str(k)] = {rule: {key: float(np.mean(v)) for key, v in r.items()} for rule, r in rows.items()}
        out[str(k)]["gain_error_mean"] = float(np.mean(gain_errors))
        out[str(k)]["gain_error_raw_mean"] = float(np.mean(raw_errors))
    return out


#: Alternative feature stores scored with ``score --features``: name -> FeatureConfig changes.
FEATURE_VARIANTS = {
    "adam": {"precondition": "adam"},
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
    "softmin": {"output": "log_odds_softmin"},
    # The projection dimension d (issue 13, B6), re-measured on the bank; the bank's own store is d = 256.
    "d64": {"proj_dim": 64},
    "d128": {"proj_dim": 128},
    "d512": {"proj_dim": 512},
    "d1024": {"proj_dim": 1024},
}

#: Feature stores at earlier checkpoints of meta-training (issue 13 B4): name -> the share of theta*'s
#: meta-training steps at which the checkpoint was saved (the nearest one HF Trainer kept).
CHECKPOINT_VARIANTS = {"ckpt50": 0.5, "ckpt75": 0.75}


def _meta_checkpoints(config, taskset, run_dir: Path, meta_adapter: Path, device: str) -> tuple[dict, bool]:
    """theta*'s meta-training re-run with its step count fixed, so that HF Trainer saves a checkpoint every
    quarter of it (``train`` saves every ``max_steps // 4`` steps when steps are set). The same data,
    seed and schedule: on one machine its last adapter is bitwise theta* (checked, and returned).

    Returns ``({step: checkpoint folder}, final adapter equals theta*)``.
    """
    import torch

    from gradselect.train import train

    torch.set_num_threads(BANK_THREADS)
    steps = json.loads((meta_adapter.parent / "train_result.json").read_text())["n_steps"]
    out = run_dir / "meta_init_checkpoints"
    if not (out / "train_result.json").exists():
        train(taskset, taskset.source_names, out, model_config=config.model, adapter_config=config.adapter,
              tokenize_config=config.tokenize, device=device, progress=False,
              train_config=config.train.model_copy(update={"max_steps": steps, "save_total_limit": 8}))
    saved = {int(p.name.split("-")[-1]): p for p in (out / "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit()}
    return saved, _sha(out / "adapter") == _sha(meta_adapter)


def _feature_variants(config, taskset, meta_adapter, run_dir, device, base_arrays, subsets, true, true_ce,
                      base_true, base_true_ce, chosen=tuple(FEATURE_VARIANTS)):
    """Estimators on other features of the same theta*: Adam-preconditioned gradients, ensembles over
    projection seeds and over meta-training checkpoints (:data:`CHECKPOINT_VARIANTS`, featurized at the
    checkpoints of :func:`_meta_checkpoints`), other projection dimensions and the soft-minimum functional.
    Each store is featurized once into ``run_dir``.

    Returns two dicts of held-out estimates: against the bank's functional truth, and against its
    token cross-entropy truth (every figure there in cross-entropy: the level maps are fitted to it).
    """
    from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
    from gradselect.features import featurize
    from gradselect.validate.calibration import calibrate_for_ranking
    from gradselect.validate.fidelity import loo_affine

    arrays, seconds = {"default": base_arrays}, {}
    stores = {name: (config.features.model_copy(update=change), meta_adapter)
              for name, change in FEATURE_VARIANTS.items() if name in chosen}
    checkpoint_steps = {}
    if any(name in CHECKPOINT_VARIANTS for name in chosen):
        saved, same = _meta_checkpoints(config, taskset, run_dir, meta_adapter, device)
        print(f"meta-training re-run with checkpoints {sorted(saved)}: its last adapter "
              f"{'is' if same else 'is NOT'} bitwise theta*", flush=True)
        total = max(saved)
        for name, share in CHECKPOINT_VARIANTS.items():
            if name in chosen:
                step = min(saved, key=lambda s: abs(s - share * total))
                checkpoint_steps[name] = step
                stores[name] = (config.features, saved[step])
    for name, (feature_config, adapter) in stores.items():
        start = time.perf_counter()
        store = featurize(taskset, run_dir / f"features-{name}", model_config=config.model,
                          adapter_config=config.adapter, tokenize_config=config.tokenize,
                          feature_config=feature_config, adapter_path=adapter, device=device, progress=True)
        arrays[name] = FeatureArrays.from_store(store)
        seconds[name] = time.perf_counter() - start  # near 0 when the store was cached

    def default(a):
        est = SubsetEstimator(EstimateConfig()).fit(a)
        return est.estimate(subsets), est.base_loss_

    def order_first(a, truth):
        return np.array(calibrate_for_ranking(a, EstimateConfig(), subsets, truth)["held_out_predictions"])

    out, ce = {}, {}
    if "adam" in arrays:
        adam, base_est = default(arrays["adam"])
        out["adam-preconditioned, default radius"] = adam
        out["adam-preconditioned, default radius + LOO level"] = loo_affine(adam, true, base_est, base_true)
        out["adam-preconditioned, trust check's choice (LOO)"] = order_first(arrays["adam"], true)
    # Ensembles (issue 13 B4): the default estimate averaged over projection seeds, over checkpoints of
    # meta-training, and over both; each member also alone, for the spread the average removes.
    fitted = {}
    seeded = [k for k in ("default", "seed1", "seed2") if k in arrays]
    checkpointed = ["default", *(k for k in CHECKPOINT_VARIANTS if k in arrays)]
    members = list(dict.fromkeys(seeded + checkpointed))  # "default" in both: more than it means an ensemble
    for k in members if len(members) > 1 else ():
        fitted[k] = default(arrays[k])
        if k != "default":
            label = f"projection seed {k[4:]}" if k in seeded else f"checkpoint at step {checkpoint_steps[k]}"
            out[f"trust_region, default radius, {label} alone"] = fitted[k][0]
    groups = {f"{len(seeded)} projection seeds": seeded, f"{len(checkpointed)} checkpoints": checkpointed}
    if len(seeded) > 1 and len(checkpointed) > 1:
        groups[f"{len(fitted)} stores (projection seeds and checkpoints)"] = list(fitted)
    for label, members in groups.items():
        if len(members) > 1:
            mean = np.mean([fitted[k][0] for k in members], axis=0)
            base_mean = float(np.mean([fitted[k][1] for k in members]))
            out[f"trust_region, default radius, mean over {label}"] = mean
            out[f"trust_region, default radius, mean over {label} + LOO level"] = loo_affine(
                mean, true, base_mean, base_true)
            out[f"trust_region, default radius, mean over {label} + kernel ridge on its residuals (LOO)"] = (
                mean + _loo_kernel_ridge(arrays["default"].source_names, subsets, true - mean))
    # The projection dimension: the fixed default step, the trust check's choice and the residual surrogate
    # (each held out), at every d featurized, beside the bank's own d.
    dims = sorted((a.g.shape[1], k) for k, a in arrays.items() if k == "default" or k.startswith("d"))
    if len(dims) > 1:
        for d, name in dims:
            est, _ = default(arrays[name])
            out[f"d = {d}, default radius"] = est
            out[f"d = {d}, trust check's choice (LOO)"] = order_first(arrays[name], true)
            out[f"d = {d}, default radius + kernel ridge on its residuals (LOO)"] = est + _loo_kernel_ridge(
                arrays[name].source_names, subsets, true - est)
        print("featurization seconds (0 when cached): "
              + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), flush=True)
    # Against token cross-entropy: the level maps and the order-first choice are fitted to it (LOO).
    for name in [k for k in ("default", "adam", "softmin") if k in arrays]:
        est, base = default(arrays[name])
        label = {"default": "mean log-odds", "adam": "mean log-odds, adam-preconditioned",
                 "softmin": "soft-minimum log-odds"}[name]
        ce[f"{label}, default radius + LOO level"] = loo_affine(est, true_ce, base, base_true_ce)
        ce[f"{label}, trust check's choice (LOO)"] = order_first(arrays[name], true_ce)
    return out, ce


def _trust_check_at_k(arrays, subsets, true, candidates, ks=(6, 8, 10, 12), draws: int = 20, seed: int = 0) -> dict:
    """What a user's trust check of k subsets buys on the bank's other subsets.

    For each k and each of ``draws`` random draws of k validated subsets from the bank (all
    sources and target only always among them, as in :func:`gradselect.validate.validation_subsets`),
    the trust check is run as ``gradselect validate`` runs it on those k (step calibration, then the
    residual surrogate with its ``auto`` rule), and its estimates are scored on the bank's *remaining*
    subsets, which it never saw: the calibrated step alone, with the surrogate, as ``auto`` decided, and
    as a one-standard-error margin would have decided.
    ``candidates``: ``(configs, estimates, base)`` of :func:`gradselect.validate.calibration.ranking_candidates`
    and :func:`~gradselect.validate.calibration.candidate_estimates` on every bank subset.
    Returns, per k, the mean and the 10th-90th percentiles over draws of each figure, and how often
    ``auto`` used the surrogate.
    """
    from scipy.stats import spearmanr

    from gradselect.estimate import EstimateConfig, SubsetEstimator
    from gradselect.estimate.surrogate import ResidualSurrogate
    from gradselect.validate.calibration import calibrate_for_ranking, calibrated_config
    from gradselect.validate.fidelity import one_se_choice, pairwise_accuracy
    from gradselect.validate.trust import fit_surrogate

    true = np.asarray(true, float)
    configs, every, base = candidates
    index = {json.dumps(c.model_dump(mode="json"), sort_keys=True): j for j, c in enumerate(configs)}
    out = {}
    for k, checks in _trust_check_draws(subsets, len(arrays.source_names), ks, draws, seed):
        rows = {key: [] for key in ("default", "calibrated", "surrogate", "auto", "one_se")}
        used = one_se_used = 0
        for chosen, rest in checks:
            val = [subsets[i] for i in chosen]
            calib = calibrate_for_ranking(arrays, EstimateConfig(), val, true[chosen],
                                          precomputed=(every[:, chosen], base), n_boot=0)
            cfg = calibrated_config(EstimateConfig(), calib)
            j = index.get(json.dumps(cfg.model_dump(mode="json"), sort_keys=True))
            est = SubsetEstimator(cfg).fit(arrays)
            if j is None:  # the chosen value as written back differs from the grid's (float round trip)
                mine = est.estimate(subsets)
            else:
                mine = every[j]
            fitted = fit_surrogate(arrays, cfg, val, true[chosen], calib["held_out_predictions"],
                                   estimated=mine[chosen], n_boot=0, kernel=SURROGATE_KERNEL)
            masks = est.subset_masks([subsets[i] for i in rest])
            alone = mine[rest]
            corrected = alone + ResidualSurrogate.from_dict(fitted["fitted"], est.source_names_).predict(masks)
            used += fitted["apply"]
            # For comparison, the cautious rule auto was first: ahead by more than one bootstrap standard error.
            one_se = one_se_choice(np.array([calib["held_out_predictions"], fitted["held_out_predictions"]]),
                                   true[chosen], default=0) == 1
            one_se_used += one_se
            preds = {"default": every[0, rest], "calibrated": alone, "surrogate": corrected,
                     "auto": corrected if fitted["apply"] else alone, "one_se": corrected if one_se else alone}
            # Order as selection sees it (raw estimates); level error after the calibration's level map,
            # which the surrogate's mean residual replaces.
            a, b = calib["level"]["intercept"], calib["level"]["slope"]
            leveled = {"default": preds["default"], "calibrated": est.base_loss_ + a + b * (alone - est.base_loss_)}
            leveled["auto"] = corrected if fitted["apply"] else leveled["calibrated"]
            leveled["one_se"] = corrected if one_se else leveled["calibrated"]
            for key, e in preds.items():
                rho = spearmanr(e, true[rest])[0]
                err = leveled.get(key, e)
                rows[key].append((rho, pairwise_accuracy(e, true[rest]),
                                  float(np.mean(np.abs(err - true[rest]) / true[rest]))))
        summary = {}
        for key, vals in rows.items():
            v = np.array(vals)
            summary[key] = {"spearman_mean": float(v[:, 0].mean()),
                            "spearman_p10_p90": [float(x) for x in np.percentile(v[:, 0], [10, 90])],
                            "pairwise_mean": float(v[:, 1].mean()), "relative_error_mean": float(v[:, 2].mean())}
        out[str(k)] = {"draws": draws, "scored_on": len(subsets) - k, "auto_used_surrogate": used,
                       "one_se_used_surrogate": one_se_used, **summary}
    return out


def source_scores(subsets, names, values) -> np.ndarray:
    """The ensemble's source score on a bank: per source, the mean of ``values`` over the subsets that
    hold it, among the mixed subsets (neither empty nor all sources), as the ensemble selector scores
    its sampled subsets. Shape (n_sources,); NaN for a source no mixed subset holds."""
    mixed = [i for i, s in enumerate(subsets) if 0 < len(s) < len(names)]
    w = np.array([[n in subsets[i] for n in names] for i in mixed], dtype=float)
    v = np.asarray(values, dtype=float)[mixed]
    counts = w.sum(0)
    return np.where(counts > 0, (w.T @ v) / np.maximum(counts, 1), np.nan)


def _source_ranking(estimates: dict, names, subsets, seed_losses, n_boot: int = 1000, seed: int = 0,
                    n_split: int = 500) -> dict:
    """How well each estimator's source scores (what the ensemble selector ranks sources by) order the
    sources' true scores (the same means over the same bank subsets, of the seed-mean truth).

    Spearman over sources with a 95% interval from resampling the bank's subsets (estimate and truth
    recomputed on each resample), and the ceiling: seed A's source scores against seed B's, raised to
    the k-seed mean by Spearman-Brown.

    Both figures score estimate and truth on the *same* subsets, so they share which sources each
    subset holds: a source that happens to sit with harmful ones scores badly in both. The selector
    scores sources on subsets of its own. ``split_half`` removes that: the estimate's source scores on
    one random half of the bank's subsets against the truth's on the other half (mean Spearman over
    ``n_split`` splits), beside the truth's own half-against-half figure, the ceiling of that view
    (subset-sampling noise, not seed noise)."""
    from scipy.stats import spearmanr

    from gradselect.validate.fidelity import spearman_brown

    two = [i for i, s in enumerate(seed_losses) if len(s) >= 2]
    true = np.array([np.mean(s) for s in seed_losses])
    truth = source_scores(subsets, names, true)
    a = source_scores([subsets[i] for i in two], names, [seed_losses[i][0] for i in two])
    b = source_scores([subsets[i] for i in two], names, [seed_losses[i][1] for i in two])
    r = float(spearmanr(a, b, nan_policy="omit")[0])
    k = int(np.bincount([len(s) for s in seed_losses]).argmax())
    ceiling = float(np.sqrt(max(spearman_brown(r, k), 0.0)))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(subsets), len(subsets)) for _ in range(n_boot)]
    mixed = [i for i, s in enumerate(subsets) if 0 < len(s) < len(names)]
    halves = []
    for _ in range(n_split):
        p = rng.permutation(mixed)
        halves.append((p[: len(p) // 2], p[len(p) // 2:]))

    def split_half(values):
        rhos = []
        for a_idx, b_idx in halves:
            e = source_scores([subsets[i] for i in a_idx], names, np.asarray(values)[a_idx])
            t = source_scores([subsets[i] for i in b_idx], names, true[b_idx])
            ok = ~(np.isnan(e) | np.isnan(t))
            if ok.sum() >= 3:
                rhos.append(spearmanr(e[ok], t[ok])[0])
        return {"spearman_mean": float(np.nanmean(rhos)),
                "spearman_p10_p90": [float(q) for q in np.nanpercentile(rhos, [10, 90])]}

    out = {"n_sources": len(names), "seed_to_seed_spearman": r, "ceiling_spearman": ceiling,
           "true_scores": dict(zip(names, map(float, truth))), "variants": {},
           # The truth's source scores on one half of the subsets against the other half's.
           "split_half_truth": split_half(true), "n_mixed_subsets": len(mixed)}
    for name, est in estimates.items():
        est = np.asarray(est, dtype=float)
        rho = float(spearmanr(source_scores(subsets, names, est), truth, nan_policy="omit")[0])
        boot = []
        for idx in draws:
            sub = [subsets[i] for i in idx]
            e, t = source_scores(sub, names, est[idx]), source_scores(sub, names, true[idx])
            ok = ~(np.isnan(e) | np.isnan(t))
            if ok.sum() >= 3:
                boot.append(spearmanr(e[ok], t[ok])[0])
        out["variants"][name] = {"spearman": rho, "split_half": split_half(est),
                                 "spearman_ci95": [float(np.nanpercentile(boot, 2.5)),
                                                   float(np.nanpercentile(boot, 97.5))] if boot else None}
    return out


def _summed_gradient_similarity(arrays, subsets, base: float) -> np.ndarray:
    """The baseline a user would try without an estimator: each source's gradient similarity to the target
    (grad-sim's own cosine), summed over the subset and placed around ``base`` (no step, no labels; only
    its order means anything), shape (n_subsets,)."""
    from gradselect.select.selectors import _cosine_scores

    negated = _cosine_scores({n: arrays.g[r].mean(0) for n, r in arrays.source_rows.items()},
                             arrays.g[arrays.dev_rows].mean(0))  # grad-sim's scores: -cosine
    return np.array([base + 0.01 * sum(negated[n] for n in s) for s in subsets])


def subset_size_baseline(subsets, base: float = 0.0) -> np.ndarray:
    """The trivial baseline: fewer sources, lower loss (each source dilutes the target in a fixed step
    budget). ``base + 0.01 * len(subset)``, shape (n_subsets,); no features, no labels, order only.
    An estimator that does not beat it on a bank has not shown it knows *which* sources matter."""
    return np.array([base + 0.01 * len(s) for s in subsets], dtype=float)


def _provenance() -> dict:
    """How a scores file was made: the command as invoked (options included), machine and date."""
    return {"command": " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _loo_kernel_ridge(names, subsets, y, alpha: float = 1e-2) -> np.ndarray:
    """Leave-one-out predictions of ``y`` by RBF kernel ridge on subset indicators (gamma = 1 / n_sources)."""
    from sklearn.kernel_ridge import KernelRidge

    x = np.array([[n in s for n in names] for s in subsets], dtype=float)
    y = np.asarray(y, float)
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        model = KernelRidge(alpha=alpha, kernel="rbf", gamma=1.0 / len(names))
        mean = y[keep].mean()
        model.fit(x[keep], y[keep] - mean)
        out[i] = mean + model.predict(x[i:i + 1])[0]
    return out


def _loo_additive(names, subsets, estimates) -> np.ndarray:
    """Leave-one-out: each subset's value predicted by an additive model over sources (intercept +
    one effect per source, least squares) fitted to the values of the other subsets. On *estimates* it is
    label-free (no truth enters): it asks whether a scorer's per-source effects, averaged over many
    subsets, predict an unscored subset better than its own score of that subset. On truths it measures
    how additive real fine-tuning is over sources."""
    x = np.c_[np.ones(len(subsets)), np.array([[n in s for n in names] for s in subsets], dtype=float)]
    y = np.asarray(estimates, float)
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
        out[i] = float(x[i] @ coef)
    return out


def _affine_fit(x_est, y_true, base_est, base_true, x_new) -> float:
    from gradselect.validate.fidelity import fit_level

    intercept, slope = fit_level(np.asarray(x_est) - base_est, np.asarray(y_true) - base_true)
    return float(base_true + intercept + slope * (x_new - base_est))


def score_bank(args) -> int:
    from scipy.stats import spearmanr

    from gradselect.estimate import EstimateConfig, FeatureArrays
    from gradselect.io import write_json_atomic
    from gradselect.validate.calibration import candidate_estimates, ranking_candidates
    from gradselect.validate.fidelity import noise_ceiling, score

    bank_path = Path(args.bank)
    try:
        bank = json.loads(bank_path.read_text())
        records = [r for r in bank["subsets"] if r["losses"]]
        suite = bank["suite"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        print(f"{bank_path}: not a truth bank ({err})", file=sys.stderr)
        return 2
    if len(records) < 4:
        print(f"{bank_path}: {len(records)} subsets measured so far; scoring needs at least 4", file=sys.stderr)
        return 2
    config = SUITES[suite]()
    run_dir = Path(args.run_dir or f"runs/bank-{suite}")
    taskset, meta_adapter, store = prepare(config, run_dir, args.device)
    identity = _identity(store, meta_adapter)
    usable, drift = _check_identity(bank, identity, bank_path, args.accept_drift)
    if not usable:
        print(f"{bank_path} is stale for this machine's theta* / features: rebuild it (truthbank.py build {suite}), "
              "score on the machine that made it, or (a theta* re-trained on another CPU) pass --accept-drift",
              file=sys.stderr)
        return 2
    arrays = FeatureArrays.from_store(store)
    subsets = [r["sources"] for r in records]
    true = np.array([np.mean(r["losses"]) for r in records])
    true_ce = np.array([np.mean(r["token_ce"]) for r in records])
    base_true = bank["theta_star"]["loss"]
    ceiling = noise_ceiling([r["losses"] for r in records])
    ceiling_ce = noise_ceiling([r["token_ce"] for r in records])
    norms = [np.mean([x for x in r["projected_norm"] if x is not None]) if any(r["projected_norm"]) else None
             for r in records]
    variants, base_est = _variants(arrays, subsets, true, base_true, norms)
    if args.forward:
        only = [x.strip() for x in args.forward_steps.split(",")] if args.forward_steps else None
        # theta* equal to the bank's: the passes belong beside the bank; a drifted theta* keeps its own.
        cache_file = (bank_path.with_name(bank_path.stem + ".forward.json") if drift is None
                      else run_dir / "forward_cache.json")
        made_from = f"{identity['theta_star_sha256']}/{identity['dataset_fingerprint']}"
        variants.update(_forward_variants(config, taskset, meta_adapter, run_dir, subsets, true, base_true, norms,
                                          args.device, (cache_file, made_from), only=only,
                                          loo_lengths=not args.forward_default_length,
                                          fractions=[float(x) for x in (args.forward_lengths or "").split(",") if x]))
    ce_variants = {}
    if args.features:
        chosen = ([c.strip() for c in args.features.split(",")] if args.features != "all"
                  else [*FEATURE_VARIANTS, *CHECKPOINT_VARIANTS])
        known = {**FEATURE_VARIANTS, **CHECKPOINT_VARIANTS}
        unknown = [c for c in chosen if c not in known]
        if unknown:
            print(f"--features: unknown {unknown}; choose from {list(known)} or all", file=sys.stderr)
            return 2
        more, ce_variants = _feature_variants(config, taskset, meta_adapter, run_dir, args.device, arrays, subsets,
                                              true, true_ce, base_true, bank["theta_star"]["token_ce"], chosen)
        variants.update(more)
    scores = {}
    alone_at = next((i for i, x in enumerate(subsets) if not x), None)
    for name, est in variants.items():
        m = score(est, true, base_estimated=base_est, base_true=base_true)
        m["r2_change"] = m["skill_of_change"]
        m["ceiling_spearman"] = ceiling["ceiling_spearman"]
        m["spearman_vs_token_ce_truth"] = float(spearmanr(est, true_ce)[0])
        # Where the target alone stands by this estimate (1 = lowest), against its true rank: the comparison
        # the selection's evidence check makes.
        if alone_at is not None:
            m["target_alone_rank"] = int(np.argsort(np.argsort(est))[alone_at]) + 1
            m["target_alone_true_rank"] = int(np.argsort(np.argsort(true))[alone_at]) + 1
        # The estimate of every bank subset, in the bank's order: a later session combines or re-scores
        # variants (forward passes take an hour here) from this file alone.
        m["estimates"] = [round(float(x), 6) for x in est]
        scores[name] = m
    scores_ce = {}
    for name, est in ce_variants.items():
        m = score(est, true_ce, base_estimated=bank["theta_star"]["token_ce"], base_true=bank["theta_star"]["token_ce"])
        m["r2_change"] = m["skill_of_change"]
        m["ceiling_spearman"] = ceiling_ce["ceiling_spearman"]
        scores_ce[name] = m
    at_k = decisions = {}
    if len(records) >= 10:
        # Every candidate step's estimate of every bank subset, once (the trust-check draws only slice it).
        configs = ranking_candidates(arrays, EstimateConfig())
        candidates = (configs, *candidate_estimates(arrays, configs, subsets))
        at_k = _trust_check_at_k(arrays, subsets, true, candidates)
        decisions = _decisions_at_k(arrays, subsets, true, candidates, seed_losses=[r["losses"] for r in records])
    forward_at_k = {}
    ensembles = {k: v for k, v in variants.items() if k.startswith("trust_region, default radius, mean over")
                 and "LOO" not in k}
    if (args.forward or ensembles) and len(records) >= 10:
        fixed = {"linear, default radius": variants["trust_region, default radius"], **ensembles}
        fixed.update({k: v for k, v in variants.items()
                      if k.startswith("forward pass") and (k.endswith("default length") or k.endswith("|theta*|"))})
        forward_at_k = _surrogate_at_k(fixed, arrays.source_names, subsets, true)
    # What the ensemble selector ranks sources by, from each fixed estimate (no fitting to the truth).
    ranked = {k: v for k, v in variants.items() if "LOO" not in k and "kernel ridge" not in k}
    source_ranking = _source_ranking(ranked, arrays.source_names, subsets, [r["losses"] for r in records])
    base_truth = {tuple(r["sources"]): r["loss"] for r in bank.get("base_model_truth", [])}
    common = [i for i, r in enumerate(records) if tuple(r["sources"]) in base_truth]
    two_truths = None
    if len(common) >= 4:
        bt = np.array([base_truth[tuple(records[i]["sources"])] for i in common])
        from gradselect.validate.fidelity import bootstrap_ci

        rho = lambda a, b: spearmanr(a, b)[0]  # noqa: E731
        alone = next((j for j, i in enumerate(common) if not records[i]["sources"]), None)

        def rank_of_alone(losses):
            return None if alone is None else int(np.argsort(np.argsort(losses))[alone]) + 1

        two_truths = {"n_subsets": len(common), "spearman_theta_star_vs_base": float(rho(true[common], bt)),
                      "spearman_theta_star_vs_base_ci95": bootstrap_ci(rho, true[common], bt),
                      "spearman_default_estimate_vs_base": float(
                          rho(variants["trust_region, default radius"][common], bt)),
                      # Every variant against the truth a user gets (fine-tunes from the base model, 1 seed).
                      "variants_vs_base": {k: {"spearman": float(rho(np.asarray(v)[common], bt)),
                                               "spearman_ci95": bootstrap_ci(rho, np.asarray(v)[common], bt)}
                                           for k, v in variants.items()},
                      # Where the target alone stands in each truth (1 = lowest loss).
                      "target_alone_rank_base": rank_of_alone(bt),
                      "target_alone_rank_theta_star": rank_of_alone(true[common]),
                      "base_truth_sd": float(np.std(bt))}
    out = {
        "bank": str(bank_path), "suite": suite, "n_subsets": len(records),
        "seeds_per_subset": sorted({len(r["losses"]) for r in records}),
        "theta_star_loss": base_true, "estimator_base_loss": base_est,
        # Features from a theta* re-made on another CPU (|theta*| this far off, relative), or None.
        "theta_star_drift": drift,
        "ceiling_spearman": ceiling["ceiling_spearman"], "ceiling": ceiling,
        "truth_spread_sd": float(np.std(true)), "base_model_truth": two_truths, "variants": scores,
        # Held out against the token cross-entropy truth (level maps fitted to it), with its own ceiling.
        "ceiling_spearman_token_ce": ceiling_ce["ceiling_spearman"], "variants_token_ce": scores_ce,
        # A trust check of k subsets drawn from the bank, scored on the subsets it did not see.
        "trust_check_at_k": at_k,
        # The same draws for fixed estimates (linear default, forward passes), each alone and + surrogate.
        "surrogate_at_k": forward_at_k,
        # After that trust check: the subset chosen among the unseen ones and the target alone, by margin rule.
        "decisions_at_k": decisions,
        # The ensemble's source scores (mean estimate over the mixed subsets holding each source) against
        # the same means of the truth: the ranking selection acts on.
        "source_ranking": source_ranking,
        # As invoked (fidelity.py score and truthbank.py score share this code), options included.
        **_provenance(),
    }
    scores_path = Path(args.out) if args.out else bank_path.with_name(bank_path.stem + ".scores.json")
    write_json_atomic(scores_path, out)
    print(f"# {suite}: {len(records)} subsets, seeds {out['seeds_per_subset']}; ceiling Spearman "
          f"{ceiling['ceiling_spearman']:.3f} (seed-to-seed {ceiling['spearman_seed_to_seed']:.3f}, mean relative "
          f"difference {ceiling['mean_relative_difference']:.2%})")
    print("| variant | Spearman [95%] | pairwise [95%] | skill of change | mean rel. err | zero-order |")
    print("|---|---|---|---|---|---|")
    fmt = lambda ci: "n/a" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"  # noqa: E731
    for name, m in scores.items():
        print(f"| {name} | {m['spearman']:.3f} {fmt(m['spearman_ci95'])} | {m['pairwise_accuracy']:.3f} "
              f"{fmt(m['pairwise_accuracy_ci95'])} | {m['skill_of_change']:.3f} | {m['mean_relative_error']:.2%} | "
              f"{m['zero_order_mean_relative_error']:.2%} |")
    if scores_ce:
        print(f"\n# against token cross-entropy (ceiling Spearman {ceiling_ce['ceiling_spearman']:.3f})")
        print("| variant | Spearman [95%] | pairwise [95%] | skill of change | mean rel. err | zero-order |")
        print("|---|---|---|---|---|---|")
        for name, m in scores_ce.items():
            print(f"| {name} | {m['spearman']:.3f} {fmt(m['spearman_ci95'])} | {m['pairwise_accuracy']:.3f} "
                  f"{fmt(m['pairwise_accuracy_ci95'])} | {m['skill_of_change']:.3f} | {m['mean_relative_error']:.2%} | "
                  f"{m['zero_order_mean_relative_error']:.2%} |")
    if at_k:
        print("\n# a trust check of k subsets, scored on the bank's other subsets (mean over draws; [p10, p90])")
        print("Spearman [p10, p90] / pairwise order / mean relative error (levelled)")
        print("| k | scored on | default step | calibrated step | + surrogate | auto (used) | one-SE margin (used) |")
        print("|---|---|---|---|---|---|---|")
        cell = lambda m: (f"{m['spearman_mean']:.2f} [{m['spearman_p10_p90'][0]:.2f}, {m['spearman_p10_p90'][1]:.2f}] "  # noqa: E731
                          f"/ {m['pairwise_mean']:.2f} / {m['relative_error_mean']:.1%}")
        for k, r in at_k.items():
            print(f"| {k} | {r['scored_on']} | {cell(r['default'])} | {cell(r['calibrated'])} | {cell(r['surrogate'])} "
                  f"| {cell(r['auto'])} ({r['auto_used_surrogate']}/{r['draws']}) "
                  f"| {cell(r['one_se'])} ({r['one_se_used_surrogate']}/{r['draws']}) |")
    if forward_at_k:
        print("\n# the same draws: fixed estimates alone and + residual surrogate (mean Spearman [p10, p90])")
        keys = list(next(iter(forward_at_k.values())))
        print("| k | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for k, r in forward_at_k.items():
            print(f"| {k} | " + " | ".join(f"{r[c]['spearman_mean']:.2f} [{r[c]['spearman_p10_p90'][0]:.2f}, "
                                         f"{r[c]['spearman_p10_p90'][1]:.2f}]" for c in keys) + " |")
    if decisions:
        print("\n# the choice after that trust check: among the unseen subsets and the target alone (mean over draws)")
        print("true loss of the choice / regret / chose the target alone / truly worse than the target alone")
        rules = [r for r in next(iter(decisions.values())) if not r.startswith("gain_error")]
        print("| k | gain error (raw) | " + " | ".join(rules) + " |")
        print("|---|---|" + "---|" * len(rules))
        for k, r in decisions.items():
            print(f"| {k} | {r['gain_error_mean']:.3f} ({r.get('gain_error_raw_mean', float('nan')):.3f}) | " + " | ".join(
                f"{r[c]['true_loss']:.3f} / {r[c]['regret']:.3f} / {r[c]['chose_target_alone']:.0%} / "
                f"{r[c]['worse_than_target_alone']:.0%}" for c in rules) + " |")
    if two_truths:
        print(f"\n# the truth a user gets: fine-tunes from the base model on {two_truths['n_subsets']} bank subsets "
              f"(1 seed); theta* truth vs base truth: Spearman {two_truths['spearman_theta_star_vs_base']:.2f} "
              f"{fmt(two_truths['spearman_theta_star_vs_base_ci95'])}; target alone ranks "
              f"{two_truths['target_alone_rank_base']} from the base model, {two_truths['target_alone_rank_theta_star']} "
              f"from theta*")
        print("| variant | Spearman vs base-model truth [95%] |")
        print("|---|---|")
        for name, m in two_truths["variants_vs_base"].items():
            print(f"| {name} | {m['spearman']:.2f} {fmt(m['spearman_ci95'])} |")
    print(f"\n# source scores (mean over the mixed bank subsets holding each source) against the truth's; "
          f"ceiling {source_ranking['ceiling_spearman']:.2f} (seed to seed {source_ranking['seed_to_seed_spearman']:.2f})")
    sh = source_ranking["split_half_truth"]
    print(f"(split half: the estimate's scores on one half of the subsets against the truth's on the other; "
          f"the truth's own half against half: {sh['spearman_mean']:.2f} {fmt(sh['spearman_p10_p90'])})")
    print("| variant | Spearman over sources [95%] | split half, mean [10th, 90th percentile] |")
    print("|---|---|---|")
    for name, m in source_ranking["variants"].items():
        print(f"| {name} | {m['spearman']:.2f} {fmt(m['spearman_ci95'])} | {m['split_half']['spearman_mean']:.2f} "
              f"{fmt(m['split_half']['spearman_p10_p90'])} |")
    print(f"scores: {scores_path}")
    return 0


def _theta_star_loss(config, taskset, adapter, device) -> dict:
    """theta*'s own dev loss, by a real forward pass (the zero-order baseline)."""
    from gradselect.estimate.solvers import mean_logistic_loss
    from gradselect.evaluate.metrics import target_loss
    from gradselect.features.extract import output_values
    from gradselect.model import load_trained

    model, tok = load_trained(config.model, config.adapter, adapter, device=device)
    dev = taskset.target_dev.examples
    b = output_values(model, tok, dev, config.tokenize, output=config.features.output)
    return {"loss": float(mean_logistic_loss(b)), "token_ce": target_loss(model, tok, dev, config.tokenize).loss}


def choose(args) -> int:
    """The product's own selection on a bank's theta* and features, and what its choice is worth there.

    Per scorer (``linear``, ``forward``) and selection seed: a trust check of ``--trust-k`` bank subsets
    (all sources, the target alone and random others: draw ``seed`` of :func:`_trust_check_draws`) gives
    the scorer's measured gain error, then :func:`gradselect.select.select_sources` chooses with the
    suite's ``[select]`` config (the ensemble, best prefix, evidence margin) exactly as ``gradselect run``
    does. A chosen subset the bank lacks is fine-tuned from theta* with the bank's seeds (kept in ``SUITE.choices.json``, apart from
    the bank's random subsets). Reported: the choice's true loss against the target alone's (seed-noise
    interval) and its rank among the bank's subsets.
    """
    from scipy.stats import norm

    from gradselect.io import write_json_atomic
    from gradselect.select import fitted_estimator, forward_scored, select_sources
    from gradselect.validate import measure_truth, truth_key
    from gradselect.validate.trust import _seed_variance, gain_error, seed_noise

    bank_path = Path(args.bank)
    bank = json.loads(bank_path.read_text())
    suite = bank["suite"]
    config = SUITES[suite]()
    run_dir = Path(args.run_dir or f"runs/bank-{suite}")
    taskset, meta_adapter, store = prepare(config, run_dir, args.device)
    usable, _ = _check_identity(bank, _identity(store, meta_adapter), bank_path, False)
    if not usable:
        return 2
    import torch

    torch.set_num_threads(args.threads)  # forward passes need no bitwise theta*: share the cores with a build
    truth_train = config.train.model_copy(update={"max_steps": TRUTH_STEPS})
    records = [r for r in bank["subsets"] if len(r["losses"]) >= 2]
    by_subset = {tuple(sorted(r["sources"])): r for r in records}
    # Fine-tunes of chosen subsets the bank lacks: kept in the choices file (the bank file has one writer,
    # build, which may be running), re-used by a later call.
    out_path = bank_path.with_name(bank_path.stem + ".choices.json")
    previous = json.loads(out_path.read_text()) if out_path.exists() else {}
    choices = previous.get("fine_tuned_choices", [])
    by_choice = {tuple(sorted(r["sources"])): r for r in choices}
    seed_var = _seed_variance([r["losses"] for r in records])
    alone = by_subset[()]
    bank_means = np.array([np.mean(r["losses"]) for r in records])
    # One simulated trust check per selection seed: the same draws the bank scorer's trust-check tables use.
    draws = dict(_trust_check_draws([r["sources"] for r in records], len(bank["sources"]), [args.trust_k],
                                    draws=args.seeds, seed=0))
    if args.trust_k not in draws:
        print(f"--trust-k {args.trust_k}: leaves fewer than 4 of the bank's {len(records)} subsets unseen",
              file=sys.stderr)
        return 2

    def truth_of(subset):
        key = tuple(sorted(subset))
        if key in by_subset:
            return by_subset[key]["losses"], "bank"
        record = by_choice.get(key)
        if record is None:
            record = {"sources": sorted(subset), "seeds": [], "losses": []}
            choices.append(record)
            by_choice[key] = record
        for seed in range(2):
            if seed in record["seeds"]:
                continue
            cfg = truth_train.model_copy(update={"seed": seed})
            folder = run_dir / "truth" / truth_key(config, taskset, sorted(subset), cfg, meta_adapter)
            t = measure_truth(config, taskset, sorted(subset), folder, train_config=cfg, init_adapter=meta_adapter,
                              store=store, device=args.device, progress=False)
            record["seeds"].append(seed)
            record["losses"].append(t["loss"])
            write_json_atomic(out_path, previous | {"fine_tuned_choices": choices})
        return record["losses"], "fine-tuned for this check"

    rows = []
    for scorer in args.scorers.split(","):
        est_cfg = config.estimate.model_copy(update={"scorer": scorer})
        cfg = config.model_copy(update={"estimate": est_cfg})
        estimator = fitted_estimator(est_cfg, cfg.select_config(), run_dir / "features")
        if scorer == "forward":
            estimator = forward_scored(estimator, cfg, taskset, meta_adapter, run_dir / "features",
                                       run_dir / "source_gradients" / "product.safetensors", device=args.device,
                                       progress=True)
        for seed in range(args.seeds):
            trust = draws[args.trust_k][seed][0]
            subsets = [records[i]["sources"] for i in trust]
            losses = [records[i]["losses"] for i in trust]
            estimator.gain_error_ = gain_error(estimator.estimate(subsets), np.array([np.mean(x) for x in losses]),
                                               subsets, noise=seed_noise(subsets, losses))
            select_config = cfg.select_config().model_copy(update={"seed": seed})
            out = run_dir / "choices" / f"{scorer}-seed{seed}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            sel = select_sources(estimator, select_config, out)
            seconds = time.perf_counter() - start
            ranking = sorted(sel.scores, key=sel.scores.get)
            prefix = sel.params.get("prefix_losses")
            best_prefix = ranking[: int(np.argmin(prefix)) + 1] if prefix else None
            true, where = truth_of(sel.chosen)
            diff = float(np.mean(true) - np.mean(alone["losses"]))
            se = float(np.sqrt(seed_var * (1 / len(true) + 1 / len(alone["losses"])))) if sel.chosen else 0.0
            z = float(norm.ppf(0.975))
            ev = sel.params.get("evidence") or {}
            rows.append({
                "scorer": scorer, "select_seed": seed, "chosen": sel.chosen, "n_chosen": len(sel.chosen),
                "trust_k": args.trust_k, "gain_error": estimator.gain_error_,
                "estimated_gain": ev.get("gain"), "margin": ev.get("margin"),
                "kept": bool(sel.chosen), "best_prefix": best_prefix, "ranking": ranking,
                "true_losses": true, "truth_from": where,
                "true_minus_target_alone": diff, "true_minus_target_alone_ci95": [diff - z * se, diff + z * se],
                # 1 = the lowest seed-mean loss among the bank's subsets (ties to the bank's own entry).
                "rank_in_bank": int(np.sum(bank_means < np.mean(true) - 1e-12)) + 1, "n_bank": len(records),
                "forward_passes": sel.params.get("forward_passes"), "select_seconds": seconds,
            })
            r = rows[-1]
            print(f"{scorer} seed {seed}: chose {r['chosen'] or 'no source'} (best prefix {r['best_prefix']}, "
                  f"estimated gain {r['estimated_gain']}, margin {r['margin']}); true {np.mean(true):.4f} vs target "
                  f"alone {np.mean(alone['losses']):.4f}: {diff:+.4f} [{r['true_minus_target_alone_ci95'][0]:+.4f}, "
                  f"{r['true_minus_target_alone_ci95'][1]:+.4f}], rank {r['rank_in_bank']} of {len(records)}",
                  flush=True)
    best = int(np.argmin(bank_means))
    out = {"bank": str(bank_path), "suite": suite, "n_bank_subsets": len(records),
           "command": "python benchmarks/truthbank.py " + " ".join(sys.argv[1:]),
           "date": datetime.date.today().isoformat(),
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
           "target_alone_losses": alone["losses"], "best_bank_subset": records[best]["sources"],
           "best_bank_loss": float(bank_means[best]), "seed_variance": seed_var, "rows": rows,
           "fine_tuned_choices": choices}
    write_json_atomic(out_path, out)
    return 0


def build_base(args) -> int:
    """Grow a base-model truth bank: real fine-tunes from the base model (no theta*), the truth a user
    of ``[run] estimate_at = "base"`` (and of every final fine-tune from the base model) gets.

    The bank (``SUITE.base.json``, ``"start": "base"``) has the theta* bank's subset plan and record
    format; its identity is the base model, the data and the fresh adapter the fine-tunes start from
    (whose features ``at-base`` scores, made here once)."""
    import torch

    from gradselect.data import load_taskset
    from gradselect.validate import measure_truth, truth_key

    # No theta* to re-make bitwise here: a build beside another job may take one thread.
    torch.set_num_threads(args.threads)
    config = SUITES[args.suite]()
    run_dir = Path(args.run_dir)
    bank_path = Path(args.bank or Path(__file__).parent / "truth" / f"{args.suite}.base.json")
    taskset = load_taskset(config.data)
    identity = base_identity(config, taskset, run_dir, args.device)
    truth_train = config.train.model_copy(update={"max_steps": TRUTH_STEPS})
    bank = json.loads(bank_path.read_text()) if bank_path.exists() else None
    if bank is not None and bank.get("identity") != identity:
        diff = [k for k in identity if identity[k] != bank["identity"].get(k)]
        print(f"{bank_path}: made from another base model / data / initial adapter (they differ in {diff}); "
              "refusing to mix them", file=sys.stderr)
        return 2
    names = list(taskset.source_names)
    bank = bank or _new_bank(args.suite, identity, config, taskset, truth_train, start="base")
    bank["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"

    def measure(subset, seed, record):
        cfg = truth_train.model_copy(update={"seed": seed})
        # the theta* bank's base-model truths live under the same keys: shared, not retrained
        folder = run_dir / "truth_base" / truth_key(config, taskset, subset, cfg, None)
        return measure_truth(config, taskset, subset, folder, train_config=cfg, init_adapter=None,
                             device=args.device, progress=False)

    _grow_subsets(bank, bank_path, keep_half_subsets(names, args.n_subsets, seed=0), args.seeds, measure,
                  label=" from the base model")
    return 0


def fresh_adapter(config, folder: Path, device: str) -> Path:
    """The adapter a seed-0 fine-tune from the base model starts from (LoRA B = 0, A drawn under the
    training seed), saved once: the point estimates "at the base model" linearize around (what
    ``[run] estimate_at = "base"`` does in a run)."""
    from gradselect.train import save_initial_adapter

    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").exists():
        save_initial_adapter(folder, model_config=config.model, adapter_config=config.adapter,
                             seed=config.train.seed, device=device)
    return adapter


def base_identity(config, taskset, run_dir: Path, device: str) -> dict:
    """What a base-model bank is made from: the base model's weights, the data and the fresh adapter
    (:func:`fresh_adapter`), the same digests the features at the base model carry in their manifest,
    computed without featurizing (growing the bank needs no features; ``at-base`` makes them)."""
    from gradselect.features.extract import weights_digest
    from gradselect.model import load_model

    adapter = fresh_adapter(config, run_dir / "at_base", device)
    model, _ = load_model(config.model, device=device)
    digest = weights_digest(model)
    del model
    return _base_bank_identity(digest, adapter, taskset.fingerprint())


def _base_bank_identity(weights_sha256: str, adapter: Path, dataset_fingerprint: str) -> dict:
    """A base-model bank's ``identity``: the base model's weights, the fresh adapter its fine-tunes start
    from, the data."""
    return {"base_model_sha256": weights_sha256, "initial_adapter_sha256": _sha(adapter),
            "dataset_fingerprint": dataset_fingerprint}


def features_at_base(config, taskset, run_dir: Path, device: str):
    """``(adapter, store)``: the fresh adapter (:func:`fresh_adapter`) and its features, cached in ``run_dir``
    (special tokens left out of the functional in a folder of their own)."""
    from gradselect.features import featurize

    adapter = fresh_adapter(config, run_dir / "at_base", device)
    folder = "features-at-base" + ("-skip-special" if config.features.skip_special_tokens else "")
    store = featurize(taskset, run_dir / folder, model_config=config.model,
                      adapter_config=config.adapter, tokenize_config=config.tokenize,
                      feature_config=config.features, adapter_path=adapter, device=device, progress=True)
    return adapter, store


def _length_by_trust_check(by_length: dict, true, subsets, n_sources: int, configured: str, ks=(8, 12),
                           draws: int = 20, seed: int = 0) -> dict:
    """What a trust check of k subsets would make of the forward step's length: per k, ``draws`` simulated
    checks (:func:`_trust_check_draws`) choose a length among ``by_length`` by pairwise order on their
    subsets, keeping ``configured`` unless another beats it by more than one standard error
    (:func:`gradselect.validate.fidelity.one_se_choice`, the rule the linear step's calibration uses);
    each is scored on the subsets it left unseen, beside the configured length and the best fixed length
    in hindsight. Pairwise accuracy and Spearman on the unseen subsets, where the length ranks the target
    alone among all the bank's subsets (it is always in the check, so never unseen; selection turns on
    it), and how often each length won."""
    from scipy.stats import spearmanr

    from gradselect.validate.fidelity import one_se_choice, pairwise_accuracy

    names = list(by_length)
    stack = np.array([by_length[n] for n in names])
    t = np.asarray(true, float)
    default = names.index(configured)
    alone = next((i for i, sub in enumerate(subsets) if not sub), None)
    alone_rank = [None if alone is None else int(np.argsort(np.argsort(e))[alone]) + 1 for e in stack]
    out = {}
    for k, pairs in _trust_check_draws(subsets, n_sources, ks, draws, seed):
        rows = {"chosen": [], "configured": [], "best in hindsight": []}
        won = []
        for chosen, rest in pairs:
            c = one_se_choice(stack[:, chosen], t[chosen], default=default)
            won.append(names[c])
            best = max(range(len(names)), key=lambda j: pairwise_accuracy(stack[j, rest], t[rest]))
            for key, j in (("chosen", c), ("configured", default), ("best in hindsight", best)):
                rows[key].append((pairwise_accuracy(stack[j, rest], t[rest]), spearmanr(stack[j, rest], t[rest])[0],
                                  alone_rank[j]))
        out[str(k)] = {key: {"pairwise_accuracy": float(np.mean([a for a, _, _ in v])),
                             "spearman": float(np.nanmean([r for _, r, _ in v])),
                             "target_alone_rank_mean": (None if alone is None
                                                        else float(np.mean([x for _, _, x in v])))}
                       for key, v in rows.items()}
        out[str(k)]["lengths_chosen"] = {n: won.count(n) for n in names if won.count(n)}
        out[str(k)]["draws"] = len(pairs)
    return out


def score_at_base(args) -> int:
    """Estimates made at the base model (the final fine-tunes' start; no meta-training), against the
    bank's base-model truths: the linear estimate, gradient similarity and forward passes of the
    sign step, on features of the fresh adapter a seed-0 fine-tune starts from."""
    import torch
    from scipy.stats import spearmanr

    from gradselect.data import load_taskset
    from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
    from gradselect.estimate.forward import REPLAYS, STEPS, ForwardPassEstimator, SourceGradients
    from gradselect.io import write_json_atomic
    from gradselect.model import apply_adapter, load_model
    from gradselect.validate.fidelity import loo_select, noise_ceiling, pairwise_accuracy

    torch.set_num_threads(args.threads)
    bank_path = Path(args.bank)
    bank = json.loads(bank_path.read_text())
    config = SUITES[bank["suite"]]()
    if args.skip_special_tokens:
        if args.metric == "functional":  # the bank's functional truths count the special tokens
            print("--skip-special-tokens needs --metric token_ce: the bank's functional truths count the special "
                  "tokens", file=sys.stderr)
            return 2
        config.features.skip_special_tokens = True
    run_dir = Path(args.run_dir or f"runs/bank-{bank['suite']}")
    base_bank = bank.get("start") == "base"  # a build-base bank: every subset's truth is from the base model
    # The truth in the metric scored: the estimator's functional, or token cross-entropy (every seed's).
    seeds_key = "losses" if args.metric == "functional" else "token_ce"
    one_key = "loss" if args.metric == "functional" else "token_ce"
    base_records = ([{"sources": r["sources"], "loss": float(np.mean(r[seeds_key]))} for r in bank["subsets"]]
                    if base_bank else [{"sources": r["sources"], "loss": r[one_key]}
                                       for r in bank.get("base_model_truth", [])])
    if len(base_records) < 4:
        print(f"{bank_path}: {len(base_records)} base-model truths; scoring needs at least 4", file=sys.stderr)
        return 2
    taskset = load_taskset(config.data)
    adapter, store = features_at_base(config, taskset, run_dir, args.device)
    made = _base_bank_identity(store.manifest["model"]["weights_sha256"], adapter, store.manifest["dataset_fingerprint"])
    if base_bank and bank.get("identity") != made:
        diff = [k for k in made if made[k] != (bank.get("identity") or {}).get(k)]
        print(f"{bank_path}: its fine-tunes started from another base model / data / initial adapter than these "
              f"features (they differ in {diff}); refusing to score them against each other", file=sys.stderr)
        return 2
    arrays = FeatureArrays.from_store(store)
    # Every bank subset is scored (the additive model needs many), the base-model truths judge.
    subsets = [r["sources"] for r in bank["subsets"]]
    truth = {tuple(r["sources"]): r["loss"] for r in base_records}
    judged = [i for i, s in enumerate(subsets) if tuple(s) in truth]
    judged_subsets = [subsets[i] for i in judged]
    bt = np.array([truth[tuple(s)] for s in judged_subsets])
    meta_true = None if base_bank else np.array([np.mean(bank["subsets"][i][seeds_key]) for i in judged])
    names = arrays.source_names

    variants = {}
    linear = SubsetEstimator(EstimateConfig()).fit(arrays)
    variants["linear, default radius"] = linear.estimate(subsets)
    variants["gradient similarity summed over sources (order only)"] = _summed_gradient_similarity(
        arrays, subsets, linear.base_loss_)
    variants["number of sources, fewer = lower (no features; order only)"] = subset_size_baseline(
        subsets, linear.base_loss_)
    r0 = EstimateConfig().radius_fraction * arrays.param_norm
    by_radius = {f"{r:.4g}": SubsetEstimator(EstimateConfig(radius=float(r))).fit(arrays).estimate(judged_subsets)
                 for r in r0 * np.logspace(-2, 1.5, 15)}
    loo_radius, _ = loo_select(by_radius, bt, pairwise_accuracy)

    model, tok = load_model(config.model, device=args.device)
    model = apply_adapter(model, config.adapter, init_adapter=adapter)
    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    unknown = [x for x in steps if x not in STEPS]
    if unknown or "sign" not in steps:
        print(f"--steps {args.steps}: choose among {', '.join(STEPS)} (sign always included)", file=sys.stderr)
        return 2
    squares = "adam" in steps  # the adam step needs per-example squared gradients (one backward pass per example)
    # The replays need every example's gradient (one backward pass per example), the saturating one their losses.
    per_example = any(step in REPLAYS for step in steps)
    kind = "_ex" if per_example else "_sq" if squares else ""
    grads_path = run_dir / "at_base" / f"source_gradients{kind}.safetensors"
    grads = SourceGradients.load(grads_path) if grads_path.exists() else None
    if grads is None or ("unroll_saturating" in steps and not grads.losses):  # older caches lack the losses
        grads = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=squares or per_example,
                                        per_example=per_example, progress=True)
        grads.save(grads_path)
    # The unroll step replays the bank's own fine-tunes: their optimizer, schedule, batches and step count.
    truth_train = config.train.model_copy(update={"max_steps": TRUTH_STEPS})
    ests = {step: ForwardPassEstimator(step, train_batch_size=config.train.batch_size, train_config=truth_train,
                                       metric=args.metric).fit(
        model, tok, grads, taskset.target_dev.examples, config.tokenize) for step in steps}
    est = ests["sign"]
    cache_file = run_dir / "at_base" / "forward.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    scores_file = lambda tag: bank_path.with_name(bank_path.stem + f".at-base{tag}.scores.json")  # noqa: E731
    metric_tag = "" if args.metric == "functional" else f".{args.metric}"
    out_path = Path(args.out) if args.out else scores_file(metric_tag + (".skip-special" if args.skip_special_tokens else ""))
    # Forward passes do not depend on the features: the scoring without --skip-special-tokens has the same ones.
    for earlier in dict.fromkeys([out_path, scores_file(metric_tag)]):
        reused = _reuse_forward_passes(cache, earlier, bank, args.metric)
        if reused:
            print(f"{reused} forward passes reused from {earlier} (a fresh run folder passes only the new subsets)")

    def passes(fraction, which, step="sign"):
        """Forward passes at ``fraction`` |theta| (None: the unroll replay's own length)."""
        out = []
        tag = "natural" if fraction is None else f"{fraction:g}"
        for s in which:
            key = forward_pass_key(args.metric, step, tag, s)
            if key not in cache:
                e = ests[step]
                cache[key] = float(e.estimate([s], length=None if fraction is None else fraction * e.param_norm_)[0])
                write_json_atomic(cache_file, cache)
            out.append(cache[key])
        return np.array(out)

    fractions = [float(x) for x in args.lengths.split(",")]
    # A replay is scored at its own length only (rescaled, unroll ordered alike: +0.26 vs +0.29 on arith12).
    by_step = {step: ({"natural": passes(None, judged_subsets, step)} if step in REPLAYS
                      else {f"{f:g}": passes(f, judged_subsets, step) for f in fractions}) for step in steps}
    by_length = by_step["sign"]
    if args.additive_length:  # one pass per bank subset, for the additive model over sources
        f = args.additive_length
        every = passes(f, subsets)
        variants[f"forward pass, sign step, {f:g} |theta|, every bank subset"] = every
        variants[f"forward pass, sign step, {f:g} |theta|, additive over sources (LOO, label-free)"] = _loo_additive(
            names, subsets, every)

    rho = lambda a, b: spearmanr(a, b)[0]  # noqa: E731

    def figures(e):
        return _order_figures(e, bt, judged_subsets)

    scores = {k: figures(np.asarray(v)[judged]) for k, v in variants.items()}
    scores["linear, radius by LOO pairwise order"] = figures(loo_radius)
    for step, lengths in by_step.items():
        for k, v in lengths.items():
            scores[f"forward pass, {step} step, {k} |theta|"] = figures(v)
        scores[f"forward pass, {step} step, length by LOO pairwise order"] = figures(
            loo_select(lengths, bt, pairwise_accuracy)[0])
    by_trust_check = None
    if args.configured_length is not None:
        configured = f"{args.configured_length:g}"
        if configured not in by_length:
            print(f"--configured-length {configured} is not among --lengths {args.lengths}", file=sys.stderr)
            return 2
        by_trust_check = _length_by_trust_check(by_length, bt, judged_subsets, len(names), configured)
    out = {
        "bank": str(bank_path), "suite": bank["suite"], "n_base_truths": len(judged), "metric": args.metric,
        "what": "estimates made at the base model (the fresh adapter of a seed-0 fine-tune; no theta*) against the "
                + ("base bank's truths (fine-tunes from the base model, seed mean)" if base_bank
                   else "bank's base-model truths (1 seed each)")
                + (" in token cross-entropy (forward passes measure it too; the linear estimates stay in the "
                   "functional, so only their order counts)" if args.metric == "token_ce" else ""),
        "param_norm": arrays.param_norm, "estimator_base_loss": linear.base_loss_, "forward_base_loss": est.base_loss_,
        "truth_base": {"spearman_vs_theta_star_truth": None if meta_true is None else float(rho(bt, meta_true)),
                       "seeds_per_truth": (max(len(r["losses"]) for r in bank["subsets"]) if base_bank else 1),
                       "target_alone_rank": figures(bt)["target_alone_rank"], "sd": float(np.std(bt)),
                       # Seed A against seed B over the subsets with two (a base bank grown with --seeds 2).
                       "ceiling": noise_ceiling([r[seeds_key] for r in bank["subsets"]]) if base_bank else None},
        "variants": scores,
        **({"length_by_trust_check": {"configured": args.configured_length, "by_k": by_trust_check}}
           if by_trust_check is not None else {}),
        "estimates": {k: [round(float(x), 6) for x in v] for k, v in variants.items()},
        # Every forward pass behind the figures, on the judged subsets in the bank's order: a later
        # session combines or re-scores them from this file alone (regenerating takes an hour here).
        "judged": judged,
        "forward_estimates": {f"{step}|{k}": [round(float(x), 6) for x in v]
                              for step, lengths in by_step.items()
                              for k, v in lengths.items()},
        **_provenance(),
    }
    write_json_atomic(out_path, out)
    print(f"{len(judged)} base-model truths (target alone rank {out['truth_base']['target_alone_rank']}); "
          f"written {out_path}")
    _print_ceiling(out["truth_base"]["ceiling"])
    for k, v in scores.items():
        print_order_figures(v, k)
    for k, v in (by_trust_check or {}).items():
        print(f"  trust check of {k} choosing the length (one-SE rule, configured {args.configured_length:g}), "
              f"on its unseen subsets over {v['draws']} draws: " + "; ".join(
                  f"{key} pairwise {v[key]['pairwise_accuracy']:.2f} Spearman {v[key]['spearman']:+.2f} "
                  f"alone ranked {v[key]['target_alone_rank_mean']}"
                  for key in ("chosen", "configured", "best in hindsight")) + f"; chosen {v['lengths_chosen']}")
    return 0


def forward_pass_key(metric: str, step: str, length: str, sources) -> str:
    """The key of one forward pass in :func:`score_at_base`'s cache (``RUN_DIR/at_base/forward.json``):
    ``[METRIC|][STEP|]LENGTH|SOURCES``, ``length`` a fraction of |theta| as ``f"{fraction:g}"`` (or ``natural``),
    the sources sorted and ``;``-joined. The functional and the sign step carry no prefix, so caches from
    before either option stay valid."""
    return (("" if metric == "functional" else f"{metric}|") + ("" if step == "sign" else f"{step}|")
            + f"{length}|{';'.join(sorted(sources))}")


def _reuse_forward_passes(cache: dict, scores_file: Path, bank: dict, metric: str) -> int:
    """Fill ``cache`` (:func:`score_at_base`'s forward-pass cache) from the passes an earlier scoring recorded
    in ``scores_file`` (its ``forward_estimates`` on its ``judged`` bank subsets), so a fresh run folder
    re-scores a grown bank by passing only the new subsets forward. Returns how many it added."""
    if not scores_file.exists():
        return 0
    earlier = json.loads(scores_file.read_text())
    if earlier.get("metric", "functional") != metric:
        return 0
    subsets = [bank["subsets"][i]["sources"] for i in earlier.get("judged", [])]
    added = 0
    for name, values in earlier.get("forward_estimates", {}).items():
        step, length = name.split("|", 1)
        for s, v in zip(subsets, values):
            key = forward_pass_key(metric, step, length, s)
            if key not in cache:
                cache[key] = float(v)
                added += 1
    return added


def _print_ceiling(ceiling: dict | None, tag: str = "") -> None:
    """One line for a :func:`gradselect.validate.fidelity.noise_ceiling` result (nothing under 3 subsets)."""
    if not ceiling or ceiling["n_subsets"] < 3:
        return
    lo, hi = ceiling["spearman_seed_to_seed_ci95"]
    print(f"  noise ceiling{tag}: {ceiling['n_subsets']} subsets with 2 seeds, seed to seed Spearman "
          f"{ceiling['spearman_seed_to_seed']:+.2f} [{lo:+.2f}, {hi:+.2f}], ceiling of the "
          f"{ceiling['seeds']}-seed truth {ceiling['ceiling_spearman']:.2f}, mean relative difference "
          f"{ceiling['mean_relative_difference']:.1%}")


def _order_figures(estimated, true, subsets) -> dict:
    """How ``estimated`` orders ``true`` (both shape (n_subsets,)): Spearman with its bootstrap interval,
    pairwise accuracy, and where it ranks the target alone (1 = lowest; None without it)."""
    from scipy.stats import spearmanr

    from gradselect.validate.fidelity import bootstrap_ci, pairwise_accuracy

    e, t = np.asarray(estimated, float), np.asarray(true, float)
    rho = lambda a, b: float(spearmanr(a, b)[0])  # noqa: E731
    alone = next((i for i, s in enumerate(subsets) if not s), None)
    return {"spearman": rho(e, t), "spearman_ci95": bootstrap_ci(rho, e, t), "pairwise_accuracy": pairwise_accuracy(e, t),
            "target_alone_rank": None if alone is None else int(np.argsort(np.argsort(e))[alone]) + 1}


def print_order_figures(figures: dict, label: str) -> None:
    """One line for an :func:`_order_figures` result: Spearman [95%], pairwise order, target alone's rank."""
    lo, hi = figures["spearman_ci95"] or (float("nan"), float("nan"))
    print(f"  {figures['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]  pairwise {figures['pairwise_accuracy']:.2f}  "
          f"alone {figures['target_alone_rank']}  {label}")


def _truths_of(bank: dict) -> dict:
    """Each truth a bank holds, by name: ``(subsets, losses)``, losses the seed mean of the estimator
    functional. A theta* bank holds its theta* truth and, where measured, the base-model truth; a
    build-base bank only the latter."""
    records = [r for r in bank["subsets"] if r["losses"]]
    out = {_own_truth(bank): ([r["sources"] for r in records], [float(np.mean(r["losses"])) for r in records])}
    if _own_truth(bank) == "base model":
        return out
    base = bank.get("base_model_truth", [])
    if base:
        out["base model"] = ([r["sources"] for r in base], [float(r["loss"]) for r in base])
    return out


def _own_truth(bank: dict) -> str:
    """The name of the truth a bank's ``subsets`` records hold (the one with every seed's loss)."""
    return "base model" if bank.get("start") == "base" else "theta*"


def _seed_losses_of(bank: dict, truth: str):
    """``[(sources, losses by seed), ...]`` of the truth :func:`_truths_of` names ``truth``, or None where the
    bank keeps only one loss per subset (a theta* bank's base-model truth)."""
    if truth != _own_truth(bank):
        return None
    return [(r["sources"], [float(x) for x in r["losses"]]) for r in bank["subsets"] if r["losses"]]


def score_baselines(args) -> int:
    """Data-only baselines every estimator must beat, from the bank file alone (no model, no features;
    seconds): the number of sources (fewer = lower loss; label-free) and two datamodels on subset
    indicators fitted to the other subsets' truths (leave-one-out; what real fine-tunes alone buy): an RBF
    kernel ridge, and an additive model (one effect per source), which says how additive the truth is.
    Scored on every truth the bank holds, over all subsets and over the mixtures only (the target
    alone left out: the order among mixtures is what says an estimator knows which sources matter)."""
    from scipy.stats import spearmanr

    from gradselect.io import write_json_atomic
    from gradselect.validate.fidelity import noise_ceiling, pairwise_accuracy

    bank_path = Path(args.bank)
    try:
        bank = json.loads(bank_path.read_text())
        truths = _truths_of(bank)
        names = list(bank["sources"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        print(f"{bank_path}: not a truth bank ({err})", file=sys.stderr)
        return 2
    def figures(e, t, subsets):
        e, t = np.asarray(e, float), np.asarray(t, float)
        mixed = np.array([bool(s) for s in subsets])
        return _order_figures(e, t, subsets) | {
            "spearman_mixtures_only": float(spearmanr(e[mixed], t[mixed])[0]),
            "pairwise_accuracy_mixtures_only": pairwise_accuracy(e[mixed], t[mixed])}

    out_truths = {}
    for truth, (subsets, losses) in truths.items():
        if len(subsets) < 4:
            continue
        t = np.asarray(losses, float)
        variants = {"number of sources, fewer = lower (label-free)": subset_size_baseline(subsets),
                    "indicator kernel ridge on the other truths (LOO)": _loo_kernel_ridge(names, subsets, t),
                    # How additive the truth itself is: if this is near the ceiling, a source's effect does not
                    # depend on which others are in, and ranking sources (what the ensemble does) loses nothing.
                    "additive over sources, fitted to the other truths (LOO)": _loo_additive(names, subsets, t)}
        out_truths[truth] = {"n_subsets": len(subsets),
                             "target_alone_true_rank": figures(t, t, subsets)["target_alone_rank"],
                             "variants": {k: figures(v, t, subsets) for k, v in variants.items()}}
        seeds = _seed_losses_of(bank, truth)
        if seeds is not None:  # seed A against seed B where a subset has two: what any estimator can reach
            out_truths[truth]["ceiling"] = noise_ceiling([x for _, x in seeds])
            out_truths[truth]["ceiling_mixtures_only"] = noise_ceiling([x for sub, x in seeds if sub])
    out = {"bank": str(bank_path), "suite": bank.get("suite"), "truths": out_truths, **_provenance()}
    out_path = Path(args.out) if args.out else bank_path.with_name(bank_path.stem + ".baselines.json")
    write_json_atomic(out_path, out)
    for truth, r in out_truths.items():
        print(f"# {bank.get('suite')}, {truth} truth: {r['n_subsets']} subsets "
              f"(target alone truly ranked {r['target_alone_true_rank']})")
        _print_ceiling(r.get("ceiling"))
        _print_ceiling(r.get("ceiling_mixtures_only"), ", mixtures only")
        for k, m in r["variants"].items():
            lo, hi = m["spearman_ci95"] or (float("nan"), float("nan"))
            print(f"  Spearman {m['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]  pairwise {m['pairwise_accuracy']:.2f}  "
                  f"mixtures only {m['spearman_mixtures_only']:+.2f} / {m['pairwise_accuracy_mixtures_only']:.2f}  "
                  f"alone {m['target_alone_rank']}  {k}")
    print(f"written {out_path}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="grow a truth bank (resumable)")
    b.add_argument("suite", choices=sorted(SUITES))
    b.add_argument("--run-dir", required=True, help="cache of theta*, features and every fine-tune")
    b.add_argument("--bank", help="bank file (default benchmarks/truth/SUITE.json)")
    b.add_argument("--n-subsets", type=int, default=50, help="random keep-50%% subsets beyond all / target only")
    b.add_argument("--seeds", type=int, default=2, help="fine-tunes per subset")
    b.add_argument("--base-subsets", type=int, default=20, help="subsets also fine-tuned from the base model")
    b.add_argument("--device", default="auto")
    b.add_argument("--accept-drift", action="store_true",
                   help="grow a bank made on another CPU from this machine's re-made theta* (same model, data and "
                        "features; |theta*| within 1e-4 relative); recorded per seed, with a re-measured check")
    bb = sub.add_parser("build-base", help="grow a base-model truth bank (fine-tunes from the base model; no theta*)")
    bb.add_argument("suite", choices=sorted(SUITES))
    bb.add_argument("--run-dir", required=True, help="cache of the initial adapter, its features and every fine-tune")
    bb.add_argument("--bank", help="bank file (default benchmarks/truth/SUITE.base.json)")
    bb.add_argument("--n-subsets", type=int, default=50, help="random keep-50%% subsets beyond all / target only")
    bb.add_argument("--seeds", type=int, default=1, help="fine-tunes per subset")
    bb.add_argument("--device", default="auto")
    bb.add_argument("--threads", type=int, default=BANK_THREADS, help="torch threads")
    sc = sub.add_parser("score", help="score every estimator variant against a bank (no training if cached)")
    sc.add_argument("--bank", required=True)
    sc.add_argument("--run-dir", help="cache of theta* and features (default runs/bank-SUITE)")
    sc.add_argument("--device", default="auto")
    sc.add_argument("--accept-drift", action="store_true",
                    help="score with features of a theta* re-made on another CPU (|theta*| within 1e-4 relative)")
    sc.add_argument("--out", help="scores file (default SUITE.scores.json beside the bank): a partial scoring, e.g. "
                                  "--features alone, kept apart from the full one")
    sc.add_argument("--forward", action="store_true",
                    help="also score forward-pass variants (one dev forward pass per subset and variant)")
    sc.add_argument("--forward-steps", help="with --forward: only these steps (comma list of sign, normalized, adam, "
                                            "lifted: the linear step taken back through the projection)")
    sc.add_argument("--forward-lengths", metavar="FRACTIONS",
                    help="with --forward: also these step lengths, as fractions of |theta*| (comma list)")
    sc.add_argument("--forward-default-length", action="store_true",
                    help="with --forward: the default step length only (no pass at the measured displacement)")
    sc.add_argument("--features", nargs="?", const="all", metavar="NAMES",
                    help="also score estimators on other features of the same theta*: comma-separated among "
                         f"{', '.join(FEATURE_VARIANTS)} (Adam-preconditioned, projection seeds 1-2, soft-minimum "
                         "functional, projection dimensions 64-1024) and "
                         f"{', '.join(CHECKPOINT_VARIANTS)} (theta*'s meta-training checkpoints at half and three "
                         "quarters of its steps), or all (the default); one featurization each, cached in the "
                         "run folder")
    ch = sub.add_parser("choose", help="run the product's selection on a bank's theta* and measure its choice")
    ch.add_argument("--bank", required=True)
    ch.add_argument("--run-dir", help="cache of theta* and features (default runs/bank-SUITE)")
    ch.add_argument("--device", default="auto")
    ch.add_argument("--scorers", default="linear,forward", help="comma list of linear, forward")
    ch.add_argument("--seeds", type=int, default=3, help="selection seeds (ensemble draws and trust checks)")
    ch.add_argument("--trust-k", type=int, default=8, help="bank subsets in each simulated trust check")
    ch.add_argument("--threads", type=int, default=BANK_THREADS, help="torch threads")
    ab = sub.add_parser("at-base", help="estimates made at the base model (no theta*) against the bank's "
                                        "base-model truths")
    ab.add_argument("--bank", required=True)
    ab.add_argument("--run-dir", help="cache of the base-model features and passes (default runs/bank-SUITE)")
    ab.add_argument("--device", default="auto")
    ab.add_argument("--lengths", default="0.02,0.05,0.2",
                    help="sign-step lengths, fractions of |theta| at the fresh adapter (comma list)")
    ab.add_argument("--additive-length", type=float, metavar="FRACTION",
                    help="also forward-score every bank subset at this length, for the additive model over sources")
    ab.add_argument("--steps", default="sign",
                    help="step models passed forward at each length (comma list of sign, normalized, adam, unroll, "
                         "unroll_saturating; "
                         "adam needs per-example squared gradients, the unrolls every example's gradient: one backward "
                         "pass per example; the unrolls at their own length only, 'natural')")
    ab.add_argument("--threads", type=int, default=BANK_THREADS, help="torch threads")
    ab.add_argument("--metric", choices=["functional", "token_ce"], default="functional",
                    help="the truth and the forward passes in the estimator's functional or in token cross-entropy "
                         "([estimate] forward_metric); token_ce writes SUITE.at-base.token_ce.scores.json")
    ab.add_argument("--configured-length", type=float, metavar="FRACTION",
                    help="also simulate trust checks of 8 and 12 bank subsets choosing the length among --lengths, "
                         "keeping this one unless another orders their subsets better by more than one SE")
    ab.add_argument("--skip-special-tokens", action="store_true",
                    help="features with the special tokens left out of the functional ([features] "
                         "skip_special_tokens; with --metric token_ce); writes SUITE.at-base.token_ce.skip-special.scores.json")
    ab.add_argument("--out", help="scores file (default SUITE.at-base.scores.json beside the bank)")
    bl = sub.add_parser("baselines", help="data-only baselines (number of sources; indicator datamodel, LOO) "
                                          "from the bank file alone, on every truth it holds")
    bl.add_argument("--bank", required=True)
    bl.add_argument("--out", help="output file (default SUITE.baselines.json beside the bank)")
    args = p.parse_args(argv)
    return {"build": build, "build-base": build_base, "score": score_bank, "choose": choose,
            "at-base": score_at_base, "baselines": score_baselines}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
