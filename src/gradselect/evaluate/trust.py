"""The trust check: estimates against real fine-tunes from the meta-initialization.

:func:`validate` fine-tunes from theta* on sampled subsets (always including
all sources and the target alone), measures the true target dev loss in the
estimator's functional (logistic loss of the mean log-odds) and as token
cross-entropy, and compares the estimates with it. Each subset's run is cached
under ``out_dir/runs/<key>/``, so a rerun with a larger ``k`` adds subsets.

Reported next to every error figure: the zero-order baseline (predicting
theta*'s own loss for every subset) and the R^2 of the predicted *change* in
loss, because fine-tuning often moves the loss by only a few percent. Repeats
with other training seeds measure the noise floor of the truth itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from gradselect.errors import GradselectError
from gradselect.io import write_json_atomic


def _bootstrap_ci(fn, x, y, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(set(idx)) < 3:
            continue
        v = fn(x[idx], y[idx])
        if np.isfinite(v):
            vals.append(v)
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else [float("nan")] * 2


def compare(estimated: np.ndarray, true: np.ndarray, base: float) -> dict:
    """Error, rank and skill figures of estimates against true losses (n_subsets each)."""
    from scipy.stats import kendalltau, spearmanr

    estimated, true = np.asarray(estimated, float), np.asarray(true, float)
    rel = np.abs(estimated - true) / true
    zero = np.abs(base - true) / true
    d_true, d_est = true - base, estimated - base
    ss = ((d_true - d_true.mean()) ** 2).sum()
    r2 = float(1 - ((d_est - d_true) ** 2).sum() / ss) if ss > 0 else float("nan")
    rho = lambda a, b: spearmanr(a, b)[0]  # noqa: E731
    tau = lambda a, b: kendalltau(a, b)[0]  # noqa: E731
    return {
        "n_subsets": int(len(true)),
        "mean_relative_error": float(rel.mean()),
        "max_relative_error": float(rel.max()),
        "zero_order_mean_relative_error": float(zero.mean()),
        "r2_of_change": r2,
        "spearman": float(rho(estimated, true)) if len(true) > 2 else float("nan"),
        "spearman_ci95": _bootstrap_ci(rho, estimated, true) if len(true) > 2 else None,
        "kendall": float(tau(estimated, true)) if len(true) > 2 else float("nan"),
        "kendall_ci95": _bootstrap_ci(tau, estimated, true) if len(true) > 2 else None,
    }


def validation_subsets(names: list[str], k: int, seed: int) -> list[list[str]]:
    """All sources, the target alone, then seeded random half-size subsets: k in all (deduplicated)."""
    from gradselect.select import EnsembleSelector

    subsets = [list(names), []]
    masks = EnsembleSelector(n_subsets=max(4 * k, 8), alpha=0.5, seed=seed).sample_subsets(len(names))
    for m in masks:
        chosen = [n for n, x in zip(names, m) if x]
        if chosen not in subsets:
            subsets.append(chosen)
        if len(subsets) >= k:
            break
    return subsets[:k]


def _run_key(names, seed, train_config) -> str:
    payload = json.dumps([sorted(names), seed, train_config.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def validation_train_config(config):
    """How the trust check fine-tunes from theta*: like the final fine-tunes.

    With ``[run] final_steps`` every subset gets that many optimizer steps, so subsets
    differ in *what* they train on, not in how long: the estimator models a step of
    fixed length (trust region) on the subset's mean loss, whatever its size. With
    epochs instead, a subset twice as large trains twice as long and moves twice as
    far, which the estimate does not model.
    """
    steps = getattr(getattr(config, "run", None), "final_steps", None)
    return config.train if steps is None else config.train.model_copy(update={"max_steps": steps})


def measure_truth(config, taskset, names: list[str], folder: Path, *, train_config, init_adapter: Path | None = None,
                  store=None, device: str = "auto", progress: bool = True) -> dict:
    """Fine-tune on ``names`` (+ target train) and measure the target dev loss; cached in ``folder/truth.json``.

    Starts from ``init_adapter`` (theta*, for the trust check) or from the base model
    (``None``: what a conventional selection does). Records the loss in the
    estimator's functional (``loss``), token cross-entropy (``token_ce``), the
    wall time of training + measuring (``seconds``) and, with a feature ``store`` and
    an ``init_adapter``, how far training moved (``displacement``).
    """
    import time

    from gradselect.estimate.solvers import mean_logistic_loss
    from gradselect.evaluate.metrics import target_loss
    from gradselect.features.extract import output_values
    from gradselect.model import load_for_inference, load_model
    from gradselect.train import train

    result_file = Path(folder) / "truth.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    start = time.perf_counter()
    train(taskset, names, folder, model_config=config.model, adapter_config=config.adapter,
          train_config=train_config, tokenize_config=config.tokenize, init_adapter=init_adapter,
          device=device, progress=progress, overwrite=True)
    base, tok = load_model(config.model, device=device)
    model = load_for_inference(base, Path(folder) / "adapter", config.adapter)
    dev = taskset.target_dev.examples
    b_new = output_values(model, tok, dev, config.tokenize, output=config.features.output)
    truth = {
        "sources": list(names),
        "seed": train_config.seed,
        "loss": float(mean_logistic_loss(b_new)),
        "token_ce": target_loss(model, tok, dev, config.tokenize).loss,
    }
    if store is not None and init_adapter is not None:
        truth["displacement"] = _displacement(model, init_adapter, config, store)
    truth["seconds"] = time.perf_counter() - start
    write_json_atomic(result_file, truth)
    return truth


def validate(config, taskset, store, meta_adapter: Path, out_dir: Path, *, k: int = 8, repeats: int = 2,
             seed: int = 0, device: str = "auto", progress: bool = True) -> dict:
    """Fine-tune on k subsets from theta*, measure the truth, compare with estimates, calibrate.

    Parameters
    ----------
    config : RunConfig
    taskset : TaskSet
    store : FeatureStore
        Features at ``meta_adapter``.
    k : int
        Subsets to validate (>= 3).
    repeats : int
        How many of them to fine-tune a second time with another seed (noise floor).

    Returns
    -------
    dict
        Also written to ``out_dir/validation.json`` (with ``validation.png``).
    """
    from gradselect.estimate import FeatureArrays, SubsetEstimator
    from gradselect.estimate.calibrate import calibrate

    if k < 3:
        raise GradselectError(f"validate needs k >= 3 subsets to compare ranks, got {k}")
    out_dir = Path(out_dir)
    arrays = FeatureArrays.from_store(store)
    names = arrays.source_names
    subsets = validation_subsets(names, k, seed)
    if not config.estimate.include_target_train:
        subsets = [s for s in subsets if s]
    runs = []
    base_train = validation_train_config(config)
    plan = [(s, base_train.seed) for s in subsets] + [(s, base_train.seed + 1) for s in subsets[:repeats]]
    for names_s, train_seed in plan:
        train_cfg = base_train.model_copy(update={"seed": train_seed})
        folder = out_dir / "runs" / _run_key(names_s, train_seed, train_cfg)
        runs.append(measure_truth(config, taskset, names_s, folder, train_config=train_cfg, init_adapter=meta_adapter,
                                  store=store, device=device, progress=progress))

    primary = runs[: len(subsets)]
    true = np.array([r["loss"] for r in primary])
    estimator = SubsetEstimator(config.estimate).fit(arrays)
    estimated = estimator.estimate([r["sources"] for r in primary])
    report = {
        "estimator": config.estimate.model_dump(mode="json") | {"radius_used": estimator.radius_},
        "base_loss": estimator.base_loss_,
        "subsets": [{"sources": r["sources"], "true_loss": r["loss"], "true_token_ce": r["token_ce"],
                     "estimated_loss": float(e), "displacement": r["displacement"]}
                    for r, e in zip(primary, estimated)],
        "metrics": compare(estimated, true, estimator.base_loss_),
    }
    repeat_pairs = [(primary[i]["loss"], runs[len(subsets) + i]["loss"]) for i in range(min(repeats, len(subsets)))]
    if repeat_pairs:
        diffs = [abs(a - b) / ((a + b) / 2) for a, b in repeat_pairs]
        report["noise_floor_mean_relative_difference"] = float(np.mean(diffs))
    # Mode choice: calibrate both step models and keep the one that generalises (leave-one-out).
    norms = [r["displacement"]["projected_norm"] for r in primary]
    candidates = {mode: calibrate(arrays, config.estimate.model_copy(update={"mode": mode}),
                                  [r["sources"] for r in primary], true, norms)
                  for mode in ("trust_region", "l2")}
    best = min(candidates, key=lambda mode: candidates[mode]["loo_mean_relative_error"])
    report["calibration"] = candidates[best] | {"mode": best}
    report["calibration_candidates"] = {mode: _calibration_summary(c) for mode, c in candidates.items()}
    write_json_atomic(out_dir / "validation.json", report)
    _scatter(report, out_dir / "validation.png")
    calib = report["calibration"]
    if calib.get("parameter"):
        # Beside the feature store, where fitted_estimator picks it up for later estimates.
        write_json_atomic(Path(store.path).parent / "calibration.json",
                          {"mode": calib["mode"], **_calibration_summary(calib),
                           "candidates": report["calibration_candidates"],
                           "validation": str(out_dir / "validation.json")})
    return report


def _calibration_summary(calib: dict) -> dict:
    keys = ("parameter", "value", "mean_relative_error", "loo_mean_relative_error")
    return {k: calib[k] for k in keys}


def _displacement(model, meta_adapter: Path, config, store) -> dict:
    """How far fine-tuning moved the differentiated parameters from theta*, in parameter and projected space."""
    from safetensors.torch import load_file

    from gradselect.features.projector import make_projector

    params = {n: p.detach().double().cpu() for n, p in model.named_parameters()}
    start_files = sorted(Path(meta_adapter).glob("*.safetensors"))
    start = {}
    for f in start_files:
        start.update(load_file(str(f)))
    shapes = {n: tuple(s) for n, s in store.manifest["params"]}
    delta = {}
    for name in shapes:
        # Stored adapter keys drop peft's adapter name ("default"); match by suffix.
        # Saved LoRA keys drop peft's adapter name (".default"); full weights keep the model's names.
        saved = start.get(name, start.get(name.replace(".default", "")))
        if name not in params or saved is None:
            return {"param_norm": None, "projected_norm": None}
        delta[name] = (params[name] - saved.double()).float()[None]
    proj = store.manifest["projector"]
    projector = make_projector(proj["kind"], shapes, proj["dim"], proj["seed"])
    v = projector.project(delta)[0]
    return {"param_norm": float(torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values()))),
            "projected_norm": float(v.norm())}


def _scatter(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = [s["estimated_loss"] for s in report["subsets"]]
    true = [s["true_loss"] for s in report["subsets"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, est, zorder=3)
    lo, hi = min(est + true), max(est + true)
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", label="y = x")
    ax.axhline(report["base_loss"], color="tab:orange", linestyle=":", label="meta-initialization")
    m = report["metrics"]
    ax.set_title(f"Spearman {m['spearman']:.2f}, mean rel. error {m['mean_relative_error']:.1%}")
    ax.set_xlabel("true target dev loss (fine-tuned from theta*)")
    ax.set_ylabel("estimated")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
