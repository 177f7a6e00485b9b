"""What is trained: LoRA adapters through peft, or every weight.

Default LoRA targets are the attention projections of each architecture
family; other families fall back to peft's own defaults, and unknown ones get
an error listing their linear layers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gradselect.errors import ModelError
from gradselect.model.config import AdapterConfig

_LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEFAULT_LORA_TARGETS: dict[str, list[str] | str] = {
    # GPT-2's attention: fused qkv (c_attn) and output (attn.c_proj, not the MLP's c_proj).
    "gpt2": r".*\.attn\.(c_attn|c_proj)",
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _LLAMA_STYLE,
    "olmo": _LLAMA_STYLE,
    "olmo2": _LLAMA_STYLE,
}


def default_lora_targets(model) -> list[str] | str:
    """LoRA target modules for ``model``'s architecture (``config.model_type``)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(model.config, "model_type", None)
    if model_type in DEFAULT_LORA_TARGETS:
        return DEFAULT_LORA_TARGETS[model_type]
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    raise ModelError(
        f"no default LoRA targets for model type {model_type!r}; set adapter.target_modules "
        f"to some of its linear layers: {linear}"
    )


def apply_adapter(model, config: AdapterConfig | None = None, *, init_adapter: str | Path | None = None):
    """Make ``model`` trainable as configured; optionally start from a saved adapter.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    config : AdapterConfig
        ``lora``: wrap in a peft LoRA model (new adapter, or ``init_adapter``).
        ``full``: every parameter trainable (``init_adapter`` is then a folder of
        full weights saved by :func:`save_trained`).
    init_adapter : path, optional
        A folder written by a previous training run (``adapter/``).

    Returns
    -------
    model
        A ``peft.PeftModel`` (LoRA) or the model itself (full).
    """
    import peft

    config = config or AdapterConfig()
    if config.method == "full":
        if init_adapter is not None:
            load_full_weights(model, Path(init_adapter))
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if init_adapter is not None:
        path = Path(init_adapter)
        if not (path / "adapter_config.json").exists():
            raise ModelError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
        try:
            return peft.PeftModel.from_pretrained(model, str(path), is_trainable=True)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ModelError(f"{path}: adapter does not fit this model ({err})") from None
    targets = config.target_modules or default_lora_targets(model)
    lora = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
        # GPT-2 stores its projections as Conv1D (weights transposed).
        fan_in_fan_out=getattr(model.config, "model_type", None) == "gpt2",
    )
    try:
        return peft.get_peft_model(model, lora)
    except ValueError as err:
        raise ModelError(f"cannot apply LoRA with target_modules={targets!r}: {err}") from None


def trainable_parameters(model) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, in registration order (n_params in total)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_trained(model, out_dir: Path) -> None:
    """Save what was trained as safetensors: the LoRA adapter, or the full weights."""
    # PeftModel.save_pretrained writes only the adapter; a plain model all its weights.
    model.save_pretrained(str(out_dir), safe_serialization=True)


def read_weights_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's ``*.safetensors`` files (never pickle), by saved name."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights to start from")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ModelError(f"{f}: cannot read the weights ({err}); retrain this folder") from None
    return state


def load_full_weights(model, folder: Path) -> None:
    """Load full fine-tuned weights (safetensors, never pickle) into ``model``."""
    state = read_weights_folder(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ModelError(f"{folder}: weights do not match the model (unexpected: {unexpected[:5]})")


def load_for_inference(model, trained: str | Path | None, config: AdapterConfig | None = None):
    """``model`` with a trained adapter (or full weights) from ``trained`` applied, in eval mode."""
    if trained is None:
        return model.eval()
    model = apply_adapter(model, config, init_adapter=trained)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_trained(model_config, adapter_config, trained: str | Path | None, *, device: str = "auto"):
    """The base model with a trained adapter (or full weights) applied, in eval mode, and its tokenizer."""
    from gradselect.model.loading import load_model

    base, tokenizer = load_model(model_config, device=device)
    return load_for_inference(base, trained, adapter_config), tokenizer
