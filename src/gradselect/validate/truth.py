"""Real fine-tunes as ground truth: train on a subset, measure the target dev loss.

:func:`measure_truth` is the one place a subset is fine-tuned to be measured: the
trust check (from theta*), the conventional baseline (from the base model) and the
benchmarks' truth banks all call it. Each fine-tune is cached in a folder named by
:func:`truth_key`, a hash of everything the fine-tune depends on (model, adapter,
tokenization, training config and seed, the data, the start weights and the subset),
so a changed input never returns an old model's loss. The functional is measured, not
trained: a cached fine-tune asked for in another one (``[features] output``,
``skip_special_tokens``) is measured again from its saved adapter, not retrained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from gradselect.io import content_key, file_digest, write_json_atomic


def _folder_digest(folder: Path | None) -> str | None:
    if folder is None:
        return None
    files = sorted(Path(folder).glob("*.safetensors"))
    return content_key([[f.name, file_digest(f)] for f in files])


def truth_key(config, taskset, names, train_config, init_adapter: Path | None) -> str:
    """Cache key of one fine-tune: every input that changes the fine-tuned model."""
    dump = lambda m: m.model_dump(mode="json")  # noqa: E731
    return content_key(
        "truth", sorted(names), dump(train_config), dump(config.model), dump(config.adapter), dump(config.tokenize),
        # The functional is measured, not trained (measure_truth re-measures a cached fine-tune in another
        # one); the constant stays where the output function's name was, so earlier caches keep their keys.
        "log_odds", taskset.fingerprint(), _folder_digest(init_adapter),
    )


def functional_of(config) -> dict:
    """The functional a truth's ``loss`` and ``example_losses`` are in (recorded as ``truth["functional"]``)."""
    return {"output": config.features.output, "skip_special_tokens": config.features.skip_special_tokens}


#: What truths cached before ``truth["functional"]`` was recorded were measured in (their key named it).
_EARLIER_FUNCTIONAL = {"output": "log_odds", "skip_special_tokens": False}


def measure_truth(config, taskset, names: list[str], folder: Path, *, train_config, init_adapter: Path | None = None,
                  store=None, device: str = "auto", progress: bool = True) -> dict:
    """Fine-tune on ``names`` (+ target train) and measure the target dev loss; cached in ``folder/truth.json``.

    Starts from ``init_adapter`` (theta*, for the trust check) or from the base model
    (``None``: what a conventional selection does). Records the loss in the
    estimator's functional (``loss``), token cross-entropy (``token_ce``), both per dev
    example (``example_losses``, ``example_token_ce``: their means are the two), the
    wall time of training + measuring (``seconds``) and, with a feature ``store`` and
    an ``init_adapter``, how far training moved (``displacement``). Name ``folder``
    with :func:`truth_key` so that a cached result is one of the same inputs.
    """
    from gradselect.estimate.solvers import mean_logistic_loss
    from gradselect.evaluate.metrics import target_loss
    from gradselect.features.extract import output_values
    from gradselect.model import load_trained
    from gradselect.train import train

    result_file = Path(folder) / "truth.json"
    if result_file.exists():
        try:
            truth = json.loads(result_file.read_text())
        except (OSError, json.JSONDecodeError):
            truth = None  # a corrupt cache entry is measured again
        if truth is not None and truth.get("functional", _EARLIER_FUNCTIONAL) != functional_of(config):
            truth.pop("example_losses", None)  # measured in another functional: measured again below
            truth.pop("loss", None)
        if truth is not None and "loss" not in truth and not (Path(folder) / "adapter").exists():
            truth = None  # nothing to measure again: fine-tuned again
        if truth is not None:
            missing = [k for k in ("example_losses", "example_token_ce") if k not in truth]
            if missing and (Path(folder) / "adapter").exists():
                # Cached before per-example losses were kept: dev forward passes of the saved adapter.
                model, tok = load_trained(config.model, config.adapter, Path(folder) / "adapter", device=device)
                dev = taskset.target_dev.examples
                if "example_losses" in missing:
                    b = output_values(model, tok, dev, config.tokenize, output=config.features.output,
                                      skip_special_tokens=config.features.skip_special_tokens)
                    truth["example_losses"] = _example_losses(b)
                    truth["loss"] = float(mean_logistic_loss(b))
                    truth["functional"] = functional_of(config)
                if "example_token_ce" in missing:
                    truth["example_token_ce"] = [
                        float(x) for x in target_loss(model, tok, dev, config.tokenize).weighted_example_loss()]
                write_json_atomic(result_file, truth)
            if store is not None and init_adapter is not None and truth.get("displacement_in") != _coordinates(store):
                # The fine-tune is the same; only the features' coordinates (projector, preconditioner) changed.
                model, _ = load_trained(config.model, config.adapter, Path(folder) / "adapter", device=device)
                truth["displacement"] = displacement(model, init_adapter, store)
                truth["displacement_in"] = _coordinates(store)
                write_json_atomic(result_file, truth)
            return truth
    start = time.perf_counter()
    train(taskset, names, folder, model_config=config.model, adapter_config=config.adapter,
          train_config=train_config, tokenize_config=config.tokenize, init_adapter=init_adapter,
          device=device, progress=progress, overwrite=True)
    model, tok = load_trained(config.model, config.adapter, Path(folder) / "adapter", device=device)
    dev = taskset.target_dev.examples
    b_new = output_values(model, tok, dev, config.tokenize, output=config.features.output,
                          skip_special_tokens=config.features.skip_special_tokens)
    ce = target_loss(model, tok, dev, config.tokenize)
    truth = {
        "sources": list(names),
        "seed": train_config.seed,
        "loss": float(mean_logistic_loss(b_new)),
        "functional": functional_of(config),
        # Per dev example (same functional): paired comparisons between fine-tunes need them.
        "example_losses": _example_losses(b_new),
        "token_ce": ce.loss,
        # Per dev example, its share of the token-weighted cross-entropy (their mean is token_ce).
        "example_token_ce": [float(x) for x in ce.weighted_example_loss()],
        "init": None if init_adapter is None else str(init_adapter),
    }
    if store is not None and init_adapter is not None:
        truth["displacement"] = displacement(model, init_adapter, store)
        truth["displacement_in"] = _coordinates(store)
    truth["seconds"] = time.perf_counter() - start
    write_json_atomic(result_file, truth)
    return truth


def _example_losses(b) -> list[float]:
    """Per dev example, the logistic loss of its output value (the functional ``loss`` averages)."""
    return [float(x) for x in np.logaddexp(0.0, -np.asarray(b, dtype=float))]


def _coordinates(store) -> str:
    """Identity of the features' coordinates a displacement is measured in."""
    return content_key(store.manifest.get("projector"), store.manifest.get("precondition"), store.manifest.get("params"))


def displacement(model, start_adapter: Path, store) -> dict:
    """How far fine-tuning moved the differentiated parameters from ``start_adapter``.

    Returns ``param_norm`` (|theta - theta_start| over the store's parameters) and
    ``projected_norm`` (the norm of the same delta in the features' coordinates: through the
    store's projector, after undoing its preconditioner if it has one).
    """
    from gradselect.features.projector import make_projector
    from gradselect.model import read_weights_folder

    params = {n: p.detach().double().cpu() for n, p in model.named_parameters()}
    start = read_weights_folder(start_adapter)
    shapes = {n: tuple(s) for n, s in store.manifest["params"]}
    scales = store.preconditioner()
    delta, coords = {}, {}
    for name in shapes:
        # Saved LoRA keys drop peft's adapter name (".default"); full weights keep the model's names.
        saved = start.get(name, start.get(name.replace(".default", "")))
        if name not in params or saved is None:
            return {"param_norm": None, "projected_norm": None}
        delta[name] = (params[name] - saved.double()).float()[None]
        # Preconditioned features (rows P^T D grad) give the step D^-1 delta the coordinates P^T D^-1 delta.
        coords[name] = delta[name] if scales is None else delta[name] / scales[name]
    proj = store.manifest["projector"]
    projector = make_projector(proj["kind"], shapes, proj["dim"], proj["seed"],
                               **({"factor_dim": proj["factor_dim"]} if "factor_dim" in proj else {}))
    v = projector.project(coords)[0]
    return {"param_norm": float(torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values()))),
            "projected_norm": float(v.norm())}
