"""Forward-pass estimates: a subset's step taken in parameter space and scored by a real forward pass.

The linear estimate scores a step as ``b + g . v`` in projected space. Here the step
is built in the trainable parameters themselves, from per-source sums of the
training-loss gradient at theta* (:class:`SourceGradients`, one batched backward pass
per source, no per-example gradients), and the target dev loss at ``theta* + step`` is
measured with a real forward pass, in the estimator's functional. One dev forward
pass per subset: for re-ranking candidates or checking an ensemble's top, not for
10,000-subset ensembles.

Step models (``step``)
----------------------
``sign``
    Every coordinate moved by the same amount against the sign of the subset's mean
    gradient: the shape of AdamW's first steps, which move each coordinate by about the
    learning rate whatever the gradient's size.
``normalized``
    Against the mean gradient's direction.
``adam``
    The expected direction of Adam's first step on the subset: per coordinate, the mean
    gradient over the root of the expected squared minibatch gradient, ``m / sqrt(m^2 +
    var / B)`` (``var`` the per-example variance, ``B`` the training batch size). A
    coordinate the subset's examples agree on moves like ``sign``; one they disagree on
    (a small or mixed subset: a noisy mean) barely moves, where ``sign`` moves every
    coordinate alike. Needs per-example squared gradients (``SourceGradients.compute(...,
    squares=True)``).

``unroll``
    The whole fine-tune replayed with the gradients frozen at the start: ``train_steps``
    minibatches drawn from the subset's examples as the trainer draws them (shuffled, one
    epoch after another), each minibatch's gradient the token-weighted mean of its examples'
    gradients, clipped and fed to the same ``torch.optim.AdamW`` and learning-rate schedule
    as the fine-tune (``train_config``). Unlike the one-step models it sees how often each
    example is revisited: a target alone of 40 examples is seen about six times in 30 steps
    of 8 and about 0.6 times among 400 mixed examples, and Adam's moments average the
    mixture's disagreeing minibatches down. Needs per-example gradients
    (``SourceGradients.compute(..., per_example=True)``). Its length is the replay's own
    displacement unless ``length`` is given. On the arith12 bank it ordered subsets no better
    than ``sign`` (frozen gradients cannot show what refitting revisited examples gains;
    docs/results.md), so it is a benchmark variant, not a ``[estimate] forward_step``.
``unroll_saturating``
    ``unroll`` where an example's gradient shrinks as it is fitted: each example's frozen
    gradient ``g_i`` is scaled by ``(1 - exp(-L_i)) / (1 - exp(-L_i0))``, ``L_i0`` its loss at
    theta* and ``L_i = max(0, L_i0 + g_i . (theta - theta*))`` its loss at the replay's current
    point to first order (the cross-entropy gradient of a token is about ``1 - p`` in size,
    ``p = exp(-loss)``). Revisiting an example then pulls less each time, as in a real
    fine-tune, and a small subset's steps stop short of where its frozen mean gradient would
    overshoot. Needs the per-example losses too (``per_example=True`` records them). On the
    arith12 bank it ordered subsets worse than ``unroll`` (+0.11 against +0.29; the target alone,
    whose examples are fitted first, ranked 15th of 26; docs/results.md): a benchmark variant.

The one-step models have the total length ``length`` (parameter-space norm): set it to what
real fine-tunes move (the trust check measures it), or it defaults to
``length_fraction * |theta*|`` over the trainable parameters.

Metrics (``metric``)
--------------------
``functional``
    The estimator's: the mean over dev examples of the logistic loss of each example's output
    value (mean gold-token log-odds by default). It saturates when the model is confident on
    most response tokens.
``token_ce``
    The dev split's response-token cross-entropy, token-weighted (what ``measure_truth`` records as
    ``token_ce`` and the final evaluation reports as test loss). The forward pass measures it
    directly; no linear model can.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from gradselect.errors import ArtifactError, GradselectError

Step = Literal["sign", "normalized", "adam", "unroll", "unroll_saturating"]
STEPS = ("sign", "normalized", "adam", "unroll", "unroll_saturating")
Metric = Literal["functional", "token_ce"]
METRICS = ("functional", "token_ce")
REPLAYS = ("unroll", "unroll_saturating")
TARGET = "__target_train__"


@dataclasses.dataclass
class SourceGradients:
    """Per-source sums of the training-loss gradient at theta* (parameter space).

    Attributes
    ----------
    counts : dict of str to int
        Examples per source (the target's train split under ``__target_train__``).
    sums : dict of str to dict of str to Tensor
        Per source, per trainable parameter: the sum over its examples of the gradient of
        the example's mean response-token cross-entropy (float32, on the CPU).
    """

    counts: dict[str, int]
    sums: dict[str, dict[str, torch.Tensor]]
    squares: dict[str, dict[str, torch.Tensor]] | None = None
    """Per source, per parameter: the sum over its examples of the squared per-example gradient
    (``compute(..., squares=True)``; the ``adam`` step needs them)."""
    examples: dict[str, torch.Tensor] | None = None
    """Per source: every example's gradient, flattened over the parameters in ``named_parameters``
    order, shape (n_examples, n_params), float32 (``compute(..., per_example=True)``; the
    ``unroll`` step needs them)."""
    tokens: dict[str, torch.Tensor] | None = None
    """Per source: each example's number of response tokens, shape (n_examples,) (with ``examples``)."""
    losses: dict[str, torch.Tensor] | None = None
    """Per source: each example's mean response-token cross-entropy at theta*, shape (n_examples,)
    (with ``examples``; the ``unroll_saturating`` step needs them)."""

    @classmethod
    def compute(cls, model, tokenizer, taskset, tokenize_config, *, batch_size: int = 8, squares: bool = False,
                per_example: bool = False, progress: bool = False) -> "SourceGradients":
        """One batched backward pass per batch of each source's examples (and the target's train split);
        with ``squares`` or ``per_example``, one backward pass per example instead, to sum squared
        per-example gradients or keep every example's gradient too."""
        from gradselect.data.tokenize import IGNORE_INDEX, pad_right, tokenize_examples

        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise GradselectError("the model has no trainable parameters to take a step in")
        device = next(model.parameters()).device
        groups = {s.name: s.examples for s in taskset.sources} | {TARGET: taskset.target_train.examples}
        counts, sums, sq, rows, n_tokens_of, losses_of = {}, {}, {}, {}, {}, {}
        if squares or per_example:
            batch_size = 1
        was_training = model.training
        model.eval()  # no dropout: the gradient at theta* itself
        with tqdm(total=sum(map(len, groups.values())), desc="source gradients", disable=not progress) as bar:
            for name, examples in groups.items():
                tokens = tokenize_examples(examples, tokenizer, tokenize_config)
                acc = {n: torch.zeros_like(p, dtype=torch.float32, device="cpu") for n, p in params.items()}
                acc_sq = {n: torch.zeros_like(a) for n, a in acc.items()} if squares else None
                kept, n_tokens, losses = [], [], []
                for s in range(0, len(tokens), batch_size):
                    ids, mask, labels = pad_right(tokens.input_ids[s:s + batch_size], tokens.labels[s:s + batch_size],
                                                  tokenizer.pad_token_id, device)
                    model.zero_grad(set_to_none=True)
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
                    target = labels[:, 1:]
                    nll = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                        reduction="none").view(target.shape)  # [n_batch, seq-1]
                    valid = (target != IGNORE_INDEX).float()
                    example_loss = (nll * valid).sum(1) / valid.sum(1).clamp(min=1)
                    example_loss.sum().backward()
                    flat = []  # this example's gradient, every parameter in order (per_example)
                    for n, p in params.items():
                        g = None if p.grad is None else p.grad.detach().float().cpu()
                        if g is not None:
                            acc[n] += g
                            if squares:
                                acc_sq[n] += g * g
                        if per_example:
                            flat.append(torch.zeros(p.numel()) if g is None else g.reshape(-1))
                    if per_example:
                        kept.append(torch.cat(flat))
                        n_tokens.append(float(valid.sum()))
                        losses.append(float(example_loss.detach()))
                    bar.update(len(ids))
                counts[name], sums[name] = len(tokens), acc
                if squares:
                    sq[name] = acc_sq
                if per_example:
                    rows[name] = torch.stack(kept) if kept else torch.zeros(0, sum(p.numel() for p in params.values()))
                    n_tokens_of[name] = torch.tensor(n_tokens, dtype=torch.float32)
                    losses_of[name] = torch.tensor(losses, dtype=torch.float32)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        return cls(counts, sums, sq if squares else None, rows if per_example else None,
                   n_tokens_of if per_example else None, losses_of if per_example else None)

    def save(self, path: Path) -> None:
        """One safetensors file (``<source>::<param>`` keys) and a JSON beside it with the counts."""
        from safetensors.torch import save_file

        from gradselect.io import write_bytes_atomic, write_json_atomic

        path = Path(path)
        flat = {f"{s}::{n}": t.contiguous() for s, d in self.sums.items() for n, t in d.items()}
        flat |= {f"{s}::squares::{n}": t.contiguous() for s, d in (self.squares or {}).items() for n, t in d.items()}
        flat |= {f"{s}::examples::": t.contiguous() for s, t in (self.examples or {}).items()}
        flat |= {f"{s}::tokens::": t.contiguous() for s, t in (self.tokens or {}).items()}
        flat |= {f"{s}::losses::": t.contiguous() for s, t in (self.losses or {}).items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(flat, str(tmp))
        write_bytes_atomic(path, tmp.read_bytes())
        tmp.unlink()
        write_json_atomic(path.with_suffix(".json"), {"counts": self.counts})

    @classmethod
    def load(cls, path: Path) -> "SourceGradients":
        from safetensors.torch import load_file

        path = Path(path)
        try:
            flat = load_file(str(path))
            counts = json.loads(path.with_suffix(".json").read_text())["counts"]
        except Exception as err:  # safetensors raises its own types for a corrupt header
            raise ArtifactError(f"{path} is corrupt ({err}); delete it to recompute the source gradients") from None
        sums: dict[str, dict[str, torch.Tensor]] = {}
        squares: dict[str, dict[str, torch.Tensor]] = {}
        examples, tokens, losses = {}, {}, {}
        for key, t in flat.items():
            source, param = key.split("::", 1)
            if param.startswith("squares::"):
                squares.setdefault(source, {})[param[len("squares::"):]] = t
            elif param == "examples::":
                examples[source] = t
            elif param == "tokens::":
                tokens[source] = t
            elif param == "losses::":
                losses[source] = t
            else:
                sums.setdefault(source, {})[param] = t
        return cls(counts, sums, squares or None, examples or None, tokens or None, losses or None)


class ForwardPassEstimator:
    """Estimated target dev loss of subsets: a parameter-space step from theta*, scored by a forward pass.

    Parameters
    ----------
    step : {"sign", "normalized", "adam", "unroll", "unroll_saturating"}
    length : float, optional
        Norm of the step over the trainable parameters (default ``length_fraction * |theta*|``;
        for ``unroll``, the replay's own displacement).
    length_fraction : float
    include_target_train : bool
        Count the target's train split in every subset's mean gradient.
    target_share : float, optional
        Count it as many times as a fine-tune with ``[train] target_share`` repeats it.
    output : str
        The output function (the estimator's functional is the logistic loss of its mean).
    skip_special_tokens : bool
        Leave the tokenizer's special tokens out of the output function (``[features]
        skip_special_tokens``; the ``token_ce`` metric counts every response token).
    metric : {"functional", "token_ce"}
        What a subset's dev loss is measured in (see the module's docstring).
    train_config : TrainConfig, optional
        The fine-tune the ``unroll`` step replays (optimizer, schedule, batch size, clipping,
        seed); its ``max_steps`` or ``train_steps`` sets the number of steps.
    train_steps : int, optional
        Steps replayed by ``unroll`` (default ``train_config.max_steps``).

    Attributes
    ----------
    base_loss_ : float
        The dev loss at theta* by the same forward pass, in ``metric``.
    param_norm_ : float
        |theta*| over the trainable parameters.
    length_ : float or None
        The step's norm; None (``unroll`` without ``length``): each step as replayed.
    """

    def __init__(self, step: Step = "sign", *, length: float | None = None, length_fraction: float = 0.1,
                 include_target_train: bool = True, target_share: float | None = None, output: str = "log_odds",
                 skip_special_tokens: bool = False, metric: Metric = "functional", batch_size: int = 8,
                 train_batch_size: int = 8, train_config=None, train_steps: int | None = None):
        self.step, self.length, self.length_fraction = step, length, length_fraction
        self.metric = metric
        self.include_target_train, self.output, self.batch_size = include_target_train, output, batch_size
        self.skip_special_tokens = skip_special_tokens
        self.target_share = target_share
        self.train_batch_size = train_batch_size
        self.train_config, self.train_steps = train_config, train_steps

    def fit(self, model, tokenizer, gradients: SourceGradients, dev_examples, tokenize_config) -> "ForwardPassEstimator":
        from gradselect.data.tokenize import tokenize_examples

        if self.metric not in METRICS:
            raise GradselectError(f"unknown metric {self.metric!r}; metrics are {', '.join(METRICS)}")
        if self.step not in STEPS:
            raise GradselectError(f"unknown step {self.step!r}; steps are {', '.join(STEPS)}")
        if self.step == "adam" and not gradients.squares:
            raise GradselectError("the adam step needs per-example squared gradients: compute the source gradients "
                                  "with squares=True")
        if self.step in REPLAYS:
            if not gradients.examples or (self.step == "unroll_saturating" and not gradients.losses):
                raise GradselectError(f"the {self.step} step needs per-example gradients (and losses): compute the "
                                      "source gradients with per_example=True")
            if self.train_config is None:
                from gradselect.train import TrainConfig

                self.train_config = TrainConfig(batch_size=self.train_batch_size)
            self.train_steps_ = self.train_steps or self.train_config.max_steps
            if not self.train_steps_:
                raise GradselectError("the unroll step needs the number of steps: train_steps or "
                                      "train_config.max_steps")
        self.model_, self.tokenizer_, self.gradients_ = model, tokenizer, gradients
        self.dev_, self.tokenize_config_ = list(dev_examples), tokenize_config
        # token_ce weights each example's mean by its response tokens
        self.dev_tokens_ = (tokenize_examples(self.dev_, tokenizer, tokenize_config).response_tokens()
                            if self.metric == "token_ce" else None)
        self.params_ = {n: p for n, p in model.named_parameters() if p.requires_grad}
        missing = [n for n in self.params_ if any(n not in d for d in gradients.sums.values())]
        if missing:
            raise GradselectError(f"the source gradients lack parameter(s) {missing[:3]}: computed for another model")
        self.source_names_ = [s for s in gradients.sums if s != TARGET]
        self.param_norm_ = float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in self.params_.values())))
        # None for unroll without a set length: its step is the replay's own displacement.
        self.length_ = (self.length if self.length is not None or self.step in REPLAYS
                        else self.length_fraction * self.param_norm_)
        self.base_loss_ = float(np.mean(self.example_losses(self._measure())))
        return self

    def direction(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The unit-free step of a subset (before scaling to ``length_``), by parameter."""
        groups = list(names) + ([TARGET] if self.include_target_train else [])
        unknown = [n for n in names if n not in self.gradients_.sums]
        if unknown:
            raise GradselectError(f"unknown source(s) {unknown}; sources are {self.source_names_}")
        if not groups:
            raise GradselectError("an empty subset has no training rows when include_target_train is false")
        copies = self._copies(names)
        if self.step in REPLAYS:
            return self.replay(groups, saturating=self.step == "unroll_saturating", copies=copies)
        n = sum(copies.get(g, 1) * self.gradients_.counts[g] for g in groups)
        mean = {p: sum(copies.get(g, 1) * self.gradients_.sums[g][p] for g in groups) / n for p in self.params_}
        if self.step == "adam":
            out = {}
            for p, m in mean.items():
                m = m.double()  # squares of tiny gradients underflow in float32
                second = sum(copies.get(g, 1) * self.gradients_.squares[g][p].double() for g in groups) / n
                # E[g_batch^2] = m^2 + var / B, the per-example variance var = E[g^2] - m^2.
                v = m * m + (second - m * m).clamp(min=0) / self.train_batch_size
                root = v.sqrt()
                out[p] = -torch.where(root > 0, m / root.clamp(min=1e-300), torch.zeros_like(m)).float()
            return out
        return {p: -(torch.sign(m) if self.step == "sign" else m) for p, m in mean.items()}

    def _copies(self, names: list[str]) -> dict[str, int]:
        """``{TARGET: copies}`` of the target's train split in this subset's fine-tune (``target_share``)."""
        from gradselect.data.examples import target_repeats

        if self.target_share is None or not self.include_target_train:
            return {}
        n_sources = sum(self.gradients_.counts[g] for g in names)
        return {TARGET: target_repeats(self.gradients_.counts[TARGET], n_sources, self.target_share)}

    def replay(self, groups: list[str], *, saturating: bool = False,
               copies: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """The displacement of the fine-tune on ``groups``' examples replayed with frozen gradients, by parameter.

        ``train_steps_`` AdamW steps (``torch.optim.AdamW`` and the ``transformers`` schedule the
        trainer uses) on minibatches of ``train_config.batch_size`` drawn without replacement,
        reshuffled each epoch (seeded by ``train_config.seed``); a minibatch's gradient is the
        token-weighted mean of its examples' gradients (the trainer's loss is the mean over all of
        the minibatch's response tokens), clipped to ``max_grad_norm``. ``saturating``: each
        example's gradient scaled as it is fitted (the ``unroll_saturating`` step).
        """
        from transformers import get_scheduler

        cfg = self.train_config
        # The fine-tune's rows: the target's train split repeated as [train] target_share repeats it.
        groups = [g for g in groups for _ in range((copies or {}).get(g, 1))]
        rows = torch.cat([self.gradients_.examples[g] for g in groups])
        tokens = torch.cat([self.gradients_.tokens[g] for g in groups])
        if saturating:
            loss0 = torch.cat([self.gradients_.losses[g] for g in groups]).double()
            scale0 = (-torch.expm1(-loss0)).clamp(min=1e-12)  # 1 - exp(-L0): the gradient's size at theta*
        start = torch.cat([p.detach().float().cpu().reshape(-1) for p in self.params_.values()])
        theta = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.AdamW([theta], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps = self.train_steps_
        warmup = int(np.ceil(cfg.warmup * steps)) if cfg.warmup < 1 else int(cfg.warmup)
        schedule = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
        generator = torch.Generator().manual_seed(cfg.seed)
        order = torch.zeros(0, dtype=torch.long)
        bs = cfg.batch_size * cfg.grad_accum
        for _ in range(steps):
            if len(order) < bs:  # the epoch's last partial minibatch is kept, then a new epoch is shuffled
                order = order if len(order) else torch.randperm(len(rows), generator=generator)
            batch, order = order[:bs], order[bs:]
            w = tokens[batch] / tokens[batch].sum().clamp(min=1)
            if saturating:  # first-order loss of each example at the current point, and its gradient's shrinkage
                loss = (loss0[batch] + (rows[batch] @ (theta.detach() - start)).double()).clamp(min=0)
                w = w * (-torch.expm1(-loss) / scale0[batch]).float()
            theta.grad = (w[:, None] * rows[batch]).sum(0)
            torch.nn.utils.clip_grad_norm_([theta], cfg.max_grad_norm)
            optimizer.step()
            schedule.step()
        delta = (theta.detach() - start).split([p.numel() for p in self.params_.values()])
        return {n: d.view(p.shape) for (n, p), d in zip(self.params_.items(), delta)}

    def outputs(self, names: list[str], *, length: float | None = None) -> np.ndarray:
        """The output value of each dev example at ``theta* + step`` of a subset, shape (n_dev,)."""
        return self.outputs_along(self.direction(names), length=length)

    def outputs_along(self, d: dict[str, torch.Tensor], *, length: float | None = None) -> np.ndarray:
        """The output value of each dev example at ``theta* + length * d / |d|``, shape (n_dev,).

        ``d``: a direction by trainable parameter (any step model's, e.g. a projected-space step
        taken back by :meth:`gradselect.features.Projector.lift`). With ``length`` and ``length_``
        both None, ``theta* + d`` itself."""
        return self._along(d, length, "functional")

    def values(self, names: list[str], *, length: float | None = None) -> np.ndarray:
        """What one forward pass at a subset's step measures per dev example, shape (n_dev,): the output
        values (metric ``functional``) or each example's share of the token-weighted cross-entropy
        (``token_ce``); :meth:`example_losses` turns them into per-example losses."""
        return self.values_along(self.direction(names), length=length)

    def values_along(self, d: dict[str, torch.Tensor], *, length: float | None = None) -> np.ndarray:
        """:meth:`values` at ``theta* + length * d / |d|`` (as :meth:`outputs_along`)."""
        return self._along(d, length, self.metric)

    def example_losses(self, values) -> np.ndarray:
        """Per dev example, the loss whose mean over examples is the dev loss in ``metric``, shape (..., n_dev).

        ``functional``: the logistic loss of the output value. ``token_ce``: the example's mean response-token
        cross-entropy times its tokens over the mean tokens per example, so that the plain mean is the
        token-weighted cross-entropy and paired differences between subsets keep the token weights."""
        v = np.asarray(values, dtype=float)
        return np.logaddexp(0.0, -v) if self.metric == "functional" else v

    def _measure(self, metric: str | None = None) -> np.ndarray:
        """One dev forward pass at the current parameters: output values or weighted token CE (see :meth:`values`)."""
        from gradselect.features.extract import output_values
        from gradselect.features.output import token_weighted

        if (metric or self.metric) == "functional":
            return np.asarray(output_values(self.model_, self.tokenizer_, self.dev_, self.tokenize_config_,
                                            output=self.output, skip_special_tokens=self.skip_special_tokens,
                                            batch_size=self.batch_size), dtype=float)
        # The mean gold-token log-probability over an example's response is minus its token cross-entropy.
        loglik = output_values(self.model_, self.tokenizer_, self.dev_, self.tokenize_config_,
                               output="log_likelihood", batch_size=self.batch_size)
        return token_weighted(-np.asarray(loglik, dtype=float), self.dev_tokens_)

    @torch.no_grad()
    def _along(self, d: dict[str, torch.Tensor], length: float | None, metric: str) -> np.ndarray:
        length = self.length_ if length is None else length
        missing = [p for p in self.params_ if p not in d]
        if missing:
            raise GradselectError(f"the direction lacks parameter(s) {missing[:3]}")
        if length is None:
            scale = 1.0
        else:
            norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in d.values())))
            scale = length / norm if norm > 0 else 0.0
        saved = {p: t.detach().clone() for p, t in self.params_.items()}
        try:
            for p, t in self.params_.items():
                t.add_((d[p] * scale).to(t.device, t.dtype))
            return self._measure(metric)
        finally:
            for p, t in self.params_.items():
                t.copy_(saved[p])

    def estimate(self, subsets, *, length: float | None = None, progress: bool = False) -> np.ndarray:
        """Dev loss in ``metric`` at ``theta* + step`` for each subset (lists of names), shape (n_subsets,)."""
        return np.array([float(np.mean(self.example_losses(self.values(names, length=length))))
                         for names in tqdm(subsets, desc="forward passes", disable=not progress)])


class ForwardScoredEstimator:
    """A fitted :class:`~gradselect.estimate.SubsetEstimator` whose subset estimates are forward passes.

    Everything but the scores is the wrapped estimator's (its features, sources, config), so every
    selector and baseline runs on it unchanged: the estimate-based selectors (ensemble, stepwise)
    rank and choose by forward passes, the feature baselines (grad-sim, KMM, LESS) still read the
    features. Each subset is passed forward once (cached by its sources), so a rule that estimates
    the same subset twice (the evidence check re-estimating the choice) costs nothing more.

    Parameters
    ----------
    estimator : SubsetEstimator
        Fitted on the features at theta*.
    forward : ForwardPassEstimator
        Fitted on the model at theta* and the per-source gradients there.

    Attributes
    ----------
    base_loss_ : float
        theta*'s dev loss by the forward pass.
    gain_error_ : float or None
        The measured RMS error of the forward-scored gain over the target alone on the trust
        check's subsets (:func:`gradselect.validate.trust.gain_error`), when one ran; the linear
        estimator's own measured error is not this scorer's, so it is never inherited.
    length_choice_ : dict or None
        How the trust check chose the step's length (:func:`gradselect.validate.trust.trust_forward_scorer`).
    n_forward_passes_ : int
        Distinct (subset, step length) pairs scored so far (passed forward, or read back from ``cache_file``).
    """

    def __init__(self, estimator, forward: ForwardPassEstimator, *, cache_file: Path | None = None,
                 cache_identity: dict | None = None):
        if set(forward.source_names_) != set(estimator.source_names_):
            raise GradselectError(f"the source gradients hold sources {forward.source_names_}, the features "
                                  f"{estimator.source_names_}: computed for other data")
        if forward.include_target_train != estimator.config_.include_target_train:
            raise GradselectError("the forward scorer and the estimator disagree on include_target_train")
        if forward.target_share != estimator.config_.target_share:
            raise GradselectError("the forward scorer and the estimator disagree on target_share")
        self.estimator, self.forward_ = estimator, forward
        self.base_loss_ = forward.base_loss_
        self.gain_error_: float | None = None
        self.length_choice_: dict | None = None
        # Keyed by (step length, sources): the trust check scores its subsets at several lengths.
        self._outputs: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        self._used: set[tuple[str, tuple[str, ...]]] = set()
        self.progress = False
        # Passes of an earlier call with the same theta*, gradients, step and dev split: a rerun that only
        # changes the rule or margin passes nothing forward again.
        self.cache_file, self.cache_identity = (Path(cache_file) if cache_file else None), cache_identity
        if self.cache_file is not None and self.cache_file.exists():
            try:
                saved = json.loads(self.cache_file.read_text())
                if saved.get("identity") == cache_identity:
                    for k, v in saved["outputs"].items():
                        length, names = k.split("|", 1)
                        self._outputs[length, tuple(names.split(";")) if names else ()] = np.asarray(v, dtype=float)
            except (OSError, ValueError, KeyError, AttributeError):
                self._outputs = {}  # a corrupt cache is recomputed

    def __getattr__(self, name):
        if name in ("estimator", "forward_", "_outputs", "_used"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.estimator, name)

    @property
    def length_(self) -> float:
        """The step's norm every estimate uses (``set_length`` changes it)."""
        return self.forward_.length_

    def set_length(self, length: float) -> None:
        """Score every later estimate at steps of norm ``length`` (passes at other lengths stay cached)."""
        if not np.isfinite(length) or length <= 0:
            raise GradselectError(f"the forward step's length must be positive, got {length}")
        self.forward_.length_ = float(length)

    @property
    def n_forward_passes_(self) -> int:
        """Distinct (subset, length) pairs scored by this estimator (passed forward now or read back from the cache)."""
        return len(self._used)

    def _names(self, subsets) -> list[tuple[str, ...]]:
        masks = self.estimator.subset_masks(subsets)
        names = self.estimator.source_names_
        return [tuple(n for n, m in zip(names, row) if m) for row in masks]

    @property
    def metric_(self) -> str:
        """What the estimates are measured in: ``functional`` or ``token_ce`` (the forward scorer's ``metric``)."""
        return self.forward_.metric

    def _values(self, subsets, length: float | None, progress: bool) -> np.ndarray:
        """The forward scorer's per-dev-example values at each subset's step, shape (n_subsets, n_dev), cached."""
        length = self.length_ if length is None else float(length)
        tag = f"{length:.9g}"
        keys = [(tag, k) for k in self._names(subsets)]
        self._used.update(keys)
        todo = [k for k in dict.fromkeys(keys) if k not in self._outputs]
        for key in tqdm(todo, desc="forward passes", disable=not (self.progress or progress)):
            self._outputs[key] = self.forward_.values(list(key[1]), length=length)
            if self.cache_file is not None:
                from gradselect.io import write_json_atomic

                write_json_atomic(self.cache_file, {"identity": self.cache_identity, "outputs": {
                    f"{t}|{';'.join(n)}": v.tolist() for (t, n), v in self._outputs.items()}})
        return np.stack([self._outputs[k] for k in keys]) if keys else np.zeros((0, len(self.forward_.dev_)))

    def predict_logodds(self, subsets, *, length: float | None = None, progress: bool = False) -> np.ndarray:
        """Output values of the dev examples at each subset's step, shape (n_subsets, n_dev); ``length``: the
        step's norm (default ``length_``). Only with the ``functional`` metric (a ``token_ce`` pass keeps
        no output values)."""
        if self.metric_ != "functional":
            raise GradselectError(f"the forward scorer measures {self.metric_}, not output values: use "
                                  "predict_example_losses")
        return self._values(subsets, length, progress)

    def predict_example_losses(self, subsets, *, length: float | None = None, progress: bool = False) -> np.ndarray:
        """Per dev example, the loss whose mean is the subset's estimate, shape (n_subsets, n_dev)."""
        return self.forward_.example_losses(self._values(subsets, length, progress))

    def estimate(self, subsets, *, length: float | None = None, progress: bool = False) -> np.ndarray:
        """Forward-pass target dev loss of each subset in ``metric_``, shape (n_subsets,); ``length`` as in
        :meth:`predict_logodds`."""
        return self.predict_example_losses(subsets, length=length, progress=progress).mean(axis=1)
