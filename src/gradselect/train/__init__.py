"""Train: supervised fine-tuning on HF Trainer (meta-training, trust checks, final fine-tune)."""

from gradselect.train.config import TrainConfig
from gradselect.train.sft import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
