"""Configuration of feature extraction (output values and projected gradients)."""

from __future__ import annotations

from typing import Literal

import pydantic

from gradselect.configbase import StrictConfig


class FeatureConfig(StrictConfig):
    """How per-example features are computed at the meta-initialization."""

    proj_dim: int = pydantic.Field(default=512, ge=1)
    """Projected gradient dimension d (ignored by the identity projector)."""
    projector: Literal["rademacher", "gaussian", "kronecker", "identity"] = "rademacher"
    """Random projection: +-1/sqrt(d) entries, N(0, 1/d) entries, Kronecker-structured per
    layer (each weight gradient reduced to factor_dim x factor_dim from the layer's inputs and
    output gradients, never formed: for full fine-tuning and large LoRA ranks), or none."""
    factor_dim: int = pydantic.Field(default=16, ge=1)
    """``kronecker`` projector: each side of a layer is reduced to at most this many dimensions."""
    seed: int = 0
    """Projection seed: the same seed gives the same matrix in every process."""
    output: Literal["log_odds", "log_odds_softmin", "log_likelihood"] = "log_odds"
    """Per-example output: mean gold-token log-odds (the method's), their soft minimum
    ``-log mean_t exp(-z_t)`` (does not saturate when theta* is confident on most tokens but
    not on the few that decide the answer), or mean log-likelihood."""
    skip_special_tokens: bool = False
    """Leave the tokenizer's special tokens (end of turn, EOS) out of the output function, where
    the features, the trust check's truths and the forward passes compute it (training still
    learns them): with short answers the end-of-turn token's confidence can otherwise decide
    the value (benchmarks/README.md, "Token by token"; docs/results.md). Off by default: on the
    52-subset BIG-Bench-Hard bank it ordered subsets no better."""
    precondition: Literal["none", "adam"] = "none"
    """Scale each gradient coordinate before projection: ``adam`` by the meta-training
    optimizer's per-coordinate step scale, ``sqrt(s)`` with ``s = 1 / (sqrt(v_hat) + eps)``
    (normalized to mean 1), so the estimator's step is a step in Adam's metric rather than
    the plain gradient's; ``none`` keeps the gradient as it is."""
    optimizer_state: str | None = None
    """With ``precondition = "adam"``: where Adam's second moments are read — a training
    run folder, its ``optimizer_moments.safetensors`` or an HF Trainer checkpoint's
    ``optimizer.pt``; default: the meta-initialization's training folder (the adapter
    folder's parent)."""
    gradients: Literal["auto", "hooks", "func", "loop"] = "auto"
    """Per-example gradients: ``hooks`` (one batched backward, outer products of linear
    layers), ``func`` (torch.func vmap), ``loop`` (one autograd call per example);
    ``auto`` takes hooks when every differentiated parameter belongs to a linear layer."""
    params: list[str] | None = None
    """Regular expressions choosing the parameters to differentiate; default: the trainable ones."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of projected gradients."""
    batch_size: int | None = pydantic.Field(default=None, ge=1)
    """Examples per forward+backward. Default on CPU: 1 for models over 50M weights (there batching
    only adds memory traffic: measured in benchmarks/README.md), else 8; on a GPU, chosen by memory:
    64 to start, halved whenever a batch runs out of memory (a set size is halved the same way)."""
    project_batch_size: int = pydantic.Field(default=32, ge=1)
    """Gradients projected together: projecting one example at a time would read the
    whole projection matrix per example."""
    chunk_size: int = pydantic.Field(default=64, ge=1)
    """Rows written (and resumable) at a time."""
    hidden_states: bool = False
    """Also store each example's mean last-layer hidden state (representation-similarity baseline)."""
    max_cache_mb: float = pydantic.Field(default=1024.0, ge=0)
    """Memory for cached projection blocks; beyond it blocks are regenerated per batch."""
