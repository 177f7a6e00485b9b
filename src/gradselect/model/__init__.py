"""Model: load a causal LM + tokenizer, and make it trainable (LoRA via peft, or full).

Entry points: :func:`load_model`, :func:`apply_adapter`, :func:`make_tiny_model`.
"""

from gradselect.model.adapters import (
    apply_adapter,
    default_lora_targets,
    load_for_inference,
    load_trained,
    read_weights_folder,
    save_trained,
    trainable_parameters,
)
from gradselect.model.config import AdapterConfig, ModelConfig
from gradselect.model.loading import load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_path
from gradselect.model.tiny import make_tiny_model, make_tiny_tokenizer

__all__ = [
    "AdapterConfig",
    "ModelConfig",
    "apply_adapter",
    "default_lora_targets",
    "load_for_inference",
    "load_model",
    "load_tokenizer",
    "load_trained",
    "read_weights_folder",
    "make_tiny_model",
    "make_tiny_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model_path",
    "save_trained",
    "trainable_parameters",
]
