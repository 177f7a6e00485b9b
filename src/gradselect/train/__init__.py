"""Train: supervised fine-tuning on HF Trainer (meta-training, trust checks, final fine-tune)."""

from gradselect.train.config import TrainConfig
from gradselect.train.moments import MOMENTS_FILE, adam_scales, read_moments
from gradselect.train.sft import TrainResult, save_initial_adapter, train

__all__ = ["MOMENTS_FILE", "TrainConfig", "TrainResult", "adam_scales", "read_moments", "save_initial_adapter", "train"]
