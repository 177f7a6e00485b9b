"""Adam's second moments of a training run, by parameter name.

Adam moves coordinate k by about ``lr * m_k / (sqrt(v_k) + eps)``: its step is the
gradient rescaled per coordinate by ``1 / (sqrt(v_k) + eps)``. Features
preconditioned by the meta-training optimizer's ``v`` (``[features] precondition =
"adam"``) put the subset estimator in that geometry. :func:`train` writes the
moments at the end of a meta-initialization (``save_moments=True``; :data:`MOMENTS_FILE`, safetensors, one tensor per
trainable parameter, named as in ``model.named_parameters()``); runs made by plain
HF Trainer keep them in their checkpoints' ``optimizer.pt``, which
:func:`read_moments` also reads (with ``weights_only=True``: tensors and plain
values only, nothing executed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from gradselect.errors import GradselectError

#: The moments file :func:`gradselect.train.train` writes beside ``adapter/``.
MOMENTS_FILE = "optimizer_moments.safetensors"


def save_moments(optimizer, model, path: Path) -> bool:
    """Write each trainable parameter's bias-corrected Adam second moment ``v_hat`` to ``path``.

    Returns False (and writes nothing) when the optimizer keeps no ``exp_avg_sq``
    (not an Adam-family optimizer, or no step taken).
    """
    from safetensors.torch import save

    from gradselect.io import write_bytes_atomic

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, meta = {}, {}
    for group in optimizer.param_groups:
        beta2, eps = group.get("betas", (None, None))[1], group.get("eps")
        for p in group["params"]:
            state = optimizer.state.get(p) or {}
            if "exp_avg_sq" not in state or id(p) not in names:
                continue
            step = float(state["step"])
            tensors[names[id(p)]] = (state["exp_avg_sq"].detach().float() / (1 - beta2**step)).cpu().contiguous()
            meta = {"beta2": str(beta2), "eps": str(eps), "step": str(int(step))}
    if not tensors:
        return False
    write_bytes_atomic(path, save(tensors, metadata=meta))
    return True


def trainer_order(model) -> list[str]:
    """Trainable parameter names in the order HF Trainer hands them to its optimizer.

    Trainer makes two groups, parameters with weight decay then those without (biases
    and norms), each in ``named_parameters()`` order; ``optimizer.pt`` numbers them so.
    """
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named if n in decay] + [n for n, _ in named if n not in decay]


def read_moments(source: str | Path, model=None) -> tuple[dict[str, torch.Tensor], float]:
    """Bias-corrected second moments ``v_hat`` by parameter name, and Adam's ``eps``.

    Parameters
    ----------
    source : path
        A training run folder (its :data:`MOMENTS_FILE`, else the last complete
        checkpoint's ``optimizer.pt``), a moments file, or an ``optimizer.pt``.
    model : torch.nn.Module, optional
        Needed only for ``optimizer.pt``, whose state is numbered, not named: the model
        the run trained (its trainable parameters, in :func:`trainer_order`).

    Raises
    ------
    GradselectError
        Nothing readable there, or an ``optimizer.pt`` that does not fit ``model``.
    """
    from safetensors import safe_open

    from gradselect.train.sft import last_complete_checkpoint

    source = Path(source)
    path = source
    if source.is_dir():
        path = source / MOMENTS_FILE
        if not path.exists():
            checkpoint = last_complete_checkpoint(source / "checkpoints") or (
                source if (source / "optimizer.pt").exists() else None)
            if checkpoint is None:
                raise GradselectError(f"{source}: no {MOMENTS_FILE} and no checkpoint with optimizer.pt; the Adam "
                                      "preconditioner needs the meta-initialization's optimizer state")
            path = checkpoint / "optimizer.pt"
    if not path.exists():
        raise GradselectError(f"{path}: no such optimizer state file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                moments = {k: f.get_tensor(k) for k in f.keys()}
                eps = float((f.metadata() or {}).get("eps", 1e-8))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise GradselectError(f"{path}: not a readable moments file ({err})") from None
        return moments, eps
    return _from_optimizer_pt(path, model)


def _from_optimizer_pt(path: Path, model) -> tuple[dict[str, torch.Tensor], float]:
    if model is None:
        raise GradselectError(f"{path}: an optimizer.pt numbers its parameters; the model is needed to name them")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        groups, per_param = state["param_groups"], state["state"]
    except Exception as err:  # weights_only refuses anything but tensors and plain values
        raise GradselectError(f"{path}: not a readable optimizer state ({err})") from None
    order = trainer_order(model)
    shapes = dict((n, tuple(p.shape)) for n, p in model.named_parameters())
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(order):
        raise GradselectError(f"{path}: the optimizer held {len(ids)} parameters, the model has {len(order)} "
                              "trainable ones; it is not this model's training run")
    moments, eps = {}, float(groups[0].get("eps", 1e-8))
    for index, name in zip(ids, order):
        entry = per_param.get(index)
        if not entry or "exp_avg_sq" not in entry:
            raise GradselectError(f"{path}: no Adam second moment for parameter {index} ({name})")
        v = entry["exp_avg_sq"].float()
        if tuple(v.shape) != shapes[name]:
            raise GradselectError(f"{path}: parameter {index} has shape {tuple(v.shape)}, {name} has "
                                  f"{shapes[name]}; it is not this model's training run")
        beta2 = next(g for g in groups if index in g["params"])["betas"][1]
        moments[name] = v / (1 - beta2 ** float(entry["step"]))
    return moments, eps


def adam_scales(moments: Mapping[str, torch.Tensor], eps: float, names) -> dict[str, torch.Tensor]:
    """Per-coordinate feature scales ``sqrt(s / mean(s))`` with ``s = 1 / (sqrt(v_hat) + eps)``.

    Multiplying every per-example gradient by these (before projection) makes the
    estimator's Euclidean step a step in Adam's metric: the parameter step of a projected
    step ``v`` is ``D P v`` with ``D = diag(scales)``. Normalized so that ``mean(D^2) = 1``:
    step lengths keep their meaning next to unpreconditioned features.

    Raises
    ------
    GradselectError
        A differentiated parameter has no moment (the optimizer did not train it).
    """
    missing = [n for n in names if n not in moments and n.replace(".default", "") not in moments]
    if missing:
        raise GradselectError(f"no Adam second moments for {missing[:3]} (of {len(missing)}): the optimizer state "
                              "is from a run that did not train these parameters")
    s = {n: 1.0 / (moments.get(n, moments.get(n.replace(".default", ""))).double().sqrt() + eps) for n in names}
    total = sum(x.sum() for x in s.values()) / sum(x.numel() for x in s.values())
    return {n: (x / total).sqrt().float() for n, x in s.items()}
