"""Configuration of the subset estimator."""

from __future__ import annotations

import warnings
from typing import Literal

import pydantic

from gradselect.configbase import StrictConfig
from gradselect.errors import GradselectError
from gradselect.estimate.modes import MODE_FIELDS, STEP_MODELS


class EstimateConfig(StrictConfig):
    """How the fine-tuned target loss of a subset is estimated from features.

    Modes are step models registered by name in
    :data:`gradselect.estimate.modes.STEP_MODELS` (see that module):
    ``trust_region`` (default; a step of fixed length ``radius``), ``l2`` (an L2
    penalty ``lam``) and ``reference`` (the step direction of the authors' released
    estimator, scored linearly: not their estimator in full, see the modes module).
    Options the chosen mode or solver does not read warn when set.
    """

    mode: str = "trust_region"
    """Step model, by registered name: trust_region, l2 or reference."""
    solver: Literal["fast", "lowrank", "exact"] = "fast"
    """``fast``: one Newton step from v = 0 with per-source sufficient statistics (cost
    independent of the number of rows, one d x d factorisation per subset); ``lowrank``:
    the same step with each subset's Hessian kept dense only in the top ``rank``
    eigen-directions of the pooled Hessian and diagonal elsewhere (a rank x rank
    factorisation per subset; equal to ``fast`` when rank >= proj_dim); ``exact``: solved to
    ``tol`` on the rows — the ``lowrank`` step refined by chord iterations (one exact gradient
    each, batched over subsets, Anderson-accelerated), with plain Newton per subset as the
    fallback for any subset that does not converge or whose radius does not bind. It keeps a
    float64 copy of the training rows (8 x rows x proj_dim bytes)."""
    device: str = "cpu"
    """Where the ``fast`` and ``lowrank`` solvers solve subsets: ``cpu``, ``cuda`` (``cuda:N``) or
    ``auto`` (``cuda`` when torch sees a GPU). The per-source statistics are built on the CPU once and
    moved there; each batch of subsets is then a few batched float64 factorisations on the device
    (float64 runs at full speed on data-centre GPUs, slowly on consumer ones). The ``exact`` solver
    always runs on the CPU."""
    rank: int = pydantic.Field(default=32, ge=0)
    """``lowrank`` solver: directions in which each subset's Hessian is kept dense (on the
    demo's SmolLM2 features, rank 32 of d = 256 changed trust-region estimates by at most
    1.2e-4 relative; the L2 mode at small ``lam`` needs far more, see benchmarks/README.md).
    The ``exact`` solver uses the same model as its start and preconditioner (the rank
    changes its speed, not its answer)."""
    lam: float = pydantic.Field(default=1e-3, ge=0)
    """L2 strength of the ``l2`` mode (trust region: 1e-6 of it keeps the systems solvable)."""
    radius: float | None = pydantic.Field(default=None, gt=0)
    """Step length of the ``trust_region`` mode in projected units (|v| ~ the parameter
    displacement's norm). Default: ``radius_fraction * |theta*|``; ``gradselect validate``
    calibrates it from real fine-tunes."""
    radius_fraction: float = pydantic.Field(default=0.1, gt=0)
    """Default radius as a fraction of the trainable-parameter norm at the meta-initialization
    (LoRA fine-tunes of SmolLM2-135M moved 7-19% of it while we planned)."""
    include_target_train: bool = True
    """Add the target's train rows to every subset's training rows."""
    target_share: float | None = pydantic.Field(default=None, gt=0, lt=1)
    """Model ``[train] target_share``: count the target's train rows as many times as the fine-tunes
    repeat them (:func:`gradselect.data.examples.target_repeats`, per subset). Set it to the same
    value as ``[train] target_share``."""
    tol: float = pydantic.Field(default=1e-10, gt=0)
    """Exact solver: stop when the gradient's max-norm is below this."""
    max_iter: int = pydantic.Field(default=100, ge=1)
    """Exact solver: iterations at most (chord iterations, and Newton in the fallback)."""
    reference_c: float = pydantic.Field(default=1e-4, gt=0)
    """Reference mode: sklearn's inverse regularisation C."""
    reference_fraction: float = pydantic.Field(default=0.1, gt=0)
    """Reference mode: step norm as a fraction of |theta*|."""
    scorer: Literal["linear", "forward"] = "linear"
    """How selection scores a subset. ``linear``: the first-order model on the projected features
    (thousands of subsets per second). ``forward``: a step in the trainable parameters themselves,
    from per-source sums of the training-loss gradient at theta*, scored by a real forward pass on the
    target dev split at theta* + step (:mod:`gradselect.estimate.forward`): one dev forward pass per
    subset, so the ensemble samples fewer subsets (``[select] n_subsets`` defaults to 64 with it). On
    our 12-source bank its source scores predicted real fine-tunes' on other subsets as well as those
    fine-tunes predict themselves (split half 0.50; linear 0.09), but it estimated the target alone
    worst where it is second best: use it with a trust check (``[run] validate_k``), whose measured
    gain error the evidence margin then allows for (docs/results.md). Needs the model: ``gradselect
    run``, or ``gradselect select`` with a ``[data]`` section and theta*'s adapter."""
    forward_step: Literal["sign", "normalized", "adam"] = "sign"
    """Forward scorer: the step's shape (``sign``: every coordinate moved alike against the sign of the
    subset's mean gradient, the shape of AdamW's first steps; see :mod:`gradselect.estimate.forward`)."""
    forward_metric: Literal["functional", "token_ce"] = "functional"
    """Forward scorer: what a subset's dev loss is measured in, and so what the trust check compares it with
    and the evidence margin is counted in. ``functional``: the estimator's (the logistic loss of each dev
    example's mean log-odds); ``token_ce``: response-token cross-entropy, the test loss of the final
    evaluation. The functional saturates where the model is confident on most response tokens: on the bbh
    selection suite at ``target_share`` 0.5 every mixture's real fine-tunes lay within noise of the target
    alone's in it (0.111-0.151 against 0.125) while their token cross-entropy was 0.50-0.59 against 0.91,
    as was their test loss (docs/results.md)."""
    forward_length_fraction: float = pydantic.Field(default=0.1, gt=0)
    """Forward scorer: the step's norm as a fraction of |theta*| over the trainable parameters. With
    ``[run] estimate_at = "base"`` |theta| is the untrained adapter's (|A|, B = 0): on the planted12
    bank's base-model truths 0.2-1 ordered subsets alike (Spearman 0.63-0.66) and 0.05 worse (0.31);
    on the arith12 bank's (26 subsets) 0.1 was best (0.31, target alone ranked 1st) and 0.5-1 ordered
    nothing (-0.07, target alone 24th-25th). No one length suits both, hence
    ``forward_length_candidates`` (docs/results.md)."""
    forward_length_candidates: list[float] = [0.05, 0.2, 0.5, 1.0]
    """Forward scorer with a trust check: other step norms (fractions of |theta|) the trust check may
    choose instead of ``forward_length_fraction``. The validated subsets are passed forward at each
    (one pass per subset and length) and the length that orders them best by pairwise accuracy is
    used only when it is ahead of the configured one by more than one standard error
    (:func:`gradselect.validate.trust.trust_forward_scorer`); ``[]`` keeps the configured length."""

    @pydantic.field_validator("forward_length_candidates")
    @classmethod
    def _positive_lengths(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not (x > 0 and x < float("inf"))]
        if bad:
            raise ValueError(f"step lengths must be positive fractions of |theta|, got {bad}")
        return v

    @pydantic.field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        import torch

        if v == "auto":
            return v
        try:
            kind = torch.device(v).type
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {v!r}")
        return v

    def solver_device(self):
        """The torch device the subset solves run on (``auto`` resolved; the exact solver: the CPU)."""
        import torch

        if self.solver == "exact" or self.device == "cpu":
            return torch.device("cpu")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not torch.cuda.is_available():
            raise GradselectError(f"[estimate] device = {self.device!r}, but torch sees no CUDA GPU here "
                                  "(use cpu or auto)")
        return torch.device(self.device)

    @pydantic.field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        if v not in STEP_MODELS:
            raise ValueError(f"unknown mode {v!r}; modes are {', '.join(STEP_MODELS)}")
        return v

    @pydantic.model_validator(mode="after")
    def _warn_ignored(self) -> "EstimateConfig":
        step = STEP_MODELS[self.mode]
        # (field, the setting that ignores it)
        ignored = [(f, "mode") for f in MODE_FIELDS if f not in step.reads]
        if self.solver == "fast":
            ignored.append(("rank", "solver"))
        if self.solver != "exact":
            ignored += [("tol", "solver"), ("max_iter", "solver")]
        else:
            ignored.append(("device", "solver"))
        if self.scorer == "linear":
            ignored += [("forward_step", "scorer"), ("forward_length_fraction", "scorer"),
                        ("forward_length_candidates", "scorer"), ("forward_metric", "scorer")]
        for f, by in ignored:
            if f in self.model_fields_set:
                warnings.warn(f"[estimate] {f} is ignored by {by} {getattr(self, by)!r}", UserWarning, stacklevel=2)
        return self

    def step_model(self, param_norm: float):
        """This config's step model (see :mod:`gradselect.estimate.modes`)."""
        return STEP_MODELS[self.mode](self, param_norm)
