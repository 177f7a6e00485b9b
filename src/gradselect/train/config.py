"""Configuration of supervised fine-tuning (meta-training, trust-check runs, final fine-tune)."""

from __future__ import annotations

from typing import Literal

import pydantic

from gradselect.configbase import StrictConfig


class TrainConfig(StrictConfig):
    """Optimiser, schedule and length of one fine-tuning run (HF Trainer underneath)."""

    learning_rate: float = pydantic.Field(default=5e-4, gt=0)
    """Peak AdamW learning rate (5e-4 suits LoRA; use ~2e-5 for full fine-tuning)."""
    epochs: float = pydantic.Field(default=2.0, gt=0)
    """Passes over the training examples (ignored when ``max_steps`` is set)."""
    max_steps: int | None = pydantic.Field(default=None, ge=1)
    """Optimizer steps to run, overriding ``epochs``."""
    batch_size: int = pydantic.Field(default=8, ge=1)
    """Examples per device per step."""
    grad_accum: int = pydantic.Field(default=1, ge=1)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    warmup: float = pydantic.Field(default=0.1, ge=0)
    """Linear warmup: a fraction of all steps if < 1, else a number of steps."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warmup."""
    weight_decay: float = pydantic.Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = pydantic.Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    seed: int = 0
    """Seed of adapter initialisation, shuffling and dropout."""
    include_target_train: bool = True
    """Train on the target's train split along with the chosen sources."""
    target_share: float | None = pydantic.Field(default=None, gt=0, lt=1)
    """Share of the training examples the target's train split makes up when sources are chosen:
    its examples are repeated (whole copies) to about this share (e.g. 0.5: half of every epoch
    is the target). None keeps natural proportions, where a large mixture dilutes a small target
    at a fixed step budget. Needs ``include_target_train``."""
    select_best_on_dev: bool = False
    """Evaluate target dev loss each epoch and keep the best checkpoint (stops an
    overfit meta-initialization; never uses the test split)."""
    save_total_limit: int = pydantic.Field(default=2, ge=1)
    """Checkpoints kept for resuming."""
    logging_steps: int = pydantic.Field(default=10, ge=1)
    """Log training loss every this many steps."""

    @pydantic.model_validator(mode="after")
    def _share_needs_target(self) -> "TrainConfig":
        if self.target_share is not None and not self.include_target_train:
            raise ValueError("target_share is set but include_target_train = false: there is no target to weight")
        return self

    @pydantic.field_validator("warmup")
    @classmethod
    def _warmup_steps(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("warmup >= 1 is a number of steps and must be whole")
        return v
