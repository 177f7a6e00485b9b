"""Target metrics: response-token cross-entropy and exact match by greedy generation."""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from gradselect.data.examples import Example, Source
from gradselect.data.tokenize import IGNORE_INDEX, TokenizeConfig, encode_prompt, pad_right, tokenize_examples
from gradselect.evaluate.config import EvalConfig

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclasses.dataclass
class LossResult:
    """Response-token cross-entropy on a set of examples.

    Attributes
    ----------
    loss : float
        Mean over all response tokens (token-weighted).
    example_loss : list of float
        Per example, the mean over its own response tokens (n_examples).
    n_tokens : int
    example_tokens : list of int
        Per example, its response tokens (n_examples).
    """

    loss: float
    example_loss: list[float]
    n_tokens: int
    example_tokens: list[int] = dataclasses.field(default_factory=list)

    def weighted_example_loss(self) -> np.ndarray:
        """Per example, its share of ``loss`` (:func:`gradselect.features.output.token_weighted`), shape
        (n_examples,): their plain mean is ``loss``."""
        from gradselect.features.output import token_weighted

        return token_weighted(self.example_loss, self.example_tokens)


@dataclasses.dataclass
class ExactMatchResult:
    """Accuracy of greedy answers, and the answers themselves (n_examples)."""

    accuracy: float
    predictions: list[str]
    correct: list[bool]


def make_extractor(config: EvalConfig) -> Callable[[str], str]:
    """The configured answer extractor: generated text -> answer string."""
    kind = config.answer_extractor
    if kind == "strip":
        return str.strip
    if kind == "first_line":
        return lambda text: next((line.strip() for line in text.splitlines() if line.strip()), "")
    if kind == "last_number":
        return lambda text: (_NUMBER.findall(text) or [""])[-1]
    pattern = re.compile(config.answer_regex)

    def by_regex(text: str) -> str:
        m = pattern.search(text)
        if m is None:
            return ""
        return (m.group(1) if m.groups() else m.group(0)).strip()

    return by_regex


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def target_loss(
    model, tokenizer, examples: list[Example], tokenize_config: TokenizeConfig | None = None, *, batch_size: int = 16
) -> LossResult:
    """Mean response-token cross-entropy of ``model`` on ``examples``."""
    batch = tokenize_examples(examples, tokenizer, tokenize_config)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    total, count, per_example, per_count = 0.0, 0, [], []
    was_training = model.training
    model.eval()
    for sl in _batches(len(batch), batch_size):
        input_ids, mask, label_t = pad_right(batch.input_ids[sl], batch.labels[sl], pad, device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = label_t[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(target.shape)  # [n_batch, seq-1]
        valid = target != IGNORE_INDEX
        tok_sum = (nll * valid).sum(1)
        tok_count = valid.sum(1)
        total += tok_sum.sum().item()
        count += int(tok_count.sum().item())
        per_example.extend((tok_sum / tok_count.clamp(min=1)).tolist())
        per_count.extend(tok_count.tolist())
    model.train(was_training)
    return LossResult(total / max(count, 1), per_example, count, per_count)


@torch.no_grad()
def exact_match(
    model,
    tokenizer,
    source: Source,
    tokenize_config: TokenizeConfig | None = None,
    eval_config: EvalConfig | None = None,
    *,
    progress: bool = False,
) -> ExactMatchResult:
    """Greedy-decode an answer for each example and score it.

    The source's own checker (reasoning-gym's) scores answers when it has one;
    otherwise an answer is correct when it equals the extracted gold response.
    """
    tokenize_config = tokenize_config or TokenizeConfig()
    eval_config = eval_config or EvalConfig()
    extract = make_extractor(eval_config)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    preds: list[str] = []
    was_training = model.training
    model.eval()
    examples = source.examples
    limit = max(tokenize_config.max_length - eval_config.max_new_tokens, 1)
    shortened = []
    for sl in tqdm(list(_batches(len(examples), eval_config.batch_size)), desc="generate", disable=not progress):
        prompts = []
        for e in examples[sl]:
            ids = encode_prompt(e, tokenizer, tokenize_config)
            if len(ids) > limit:
                shortened.append(e.id)
            prompts.append(ids[-limit:])
        width = max(map(len, prompts))
        # Left padding, so every prompt ends where generation starts.
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=eval_config.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in out[:, width:]:
            preds.append(extract(tokenizer.decode(row, skip_special_tokens=True)))
    model.train(was_training)
    if shortened:
        warnings.warn(
            f"{len(shortened)} prompt(s) were cut to their last {limit} tokens to leave room for "
            f"{eval_config.max_new_tokens} generated ones (e.g. {', '.join(shortened[:3])}); raise "
            "[tokenize] max_length or lower [evaluate] max_new_tokens", UserWarning, stacklevel=2)
    if source.checker is not None:
        correct = [source.checker(p, e) >= 1.0 for p, e in zip(preds, examples)]
    else:
        correct = [p == extract(e.response) for p, e in zip(preds, examples)]
    return ExactMatchResult(sum(correct) / max(len(correct), 1), preds, correct)


@torch.no_grad()
def choice_accuracy(model, tokenizer, source: Source, tokenize_config: TokenizeConfig | None = None, *,
                    batch_size: int = 16) -> tuple[list[bool | None], list[str | None]]:
    """Multiple-choice answers by log-likelihood: each example's choice with the highest summed
    response-token log-probability given its prompt.

    Returns
    -------
    correct : list of bool or None
        Per example (n_examples); None for an example without choices.
    predictions : list of str or None
    """
    variants, owners = [], []
    for i, e in enumerate(source.examples):
        for c in e.choices or ():
            messages = None if e.messages is None else (*e.messages[:-1], {"role": "assistant", "content": c})
            variants.append(Example(e.id, e.prompt, c, messages=messages))
            owners.append(i)
    correct: list[bool | None] = [None] * len(source.examples)
    preds: list[str | None] = [None] * len(source.examples)
    if not variants:
        return correct, preds
    r = target_loss(model, tokenizer, variants, tokenize_config, batch_size=batch_size)
    loglik = -np.asarray(r.example_loss) * np.asarray(r.example_tokens)  # summed log-probability
    best: dict[int, tuple[float, str]] = {}
    for i, v, ll in zip(owners, variants, loglik):
        if i not in best or ll > best[i][0]:
            best[i] = (float(ll), v.response)
    for i, (_, choice) in best.items():
        preds[i], correct[i] = choice, choice == source.examples[i].response
    return correct, preds


# -- the metric registry -------------------------------------------------------------------------------------
@dataclasses.dataclass
class PerExample:
    """A metric as a ratio of per-example sums, so intervals resample examples: value = sum(num) / sum(den).

    Attributes
    ----------
    num, den : ndarray of shape (n_examples,)
        Token cross-entropy: each example's summed token loss and its token count (the value is
        then token-weighted); exact match: 1/0 and 1.
    """

    num: np.ndarray
    den: np.ndarray

    @property
    def value(self) -> float:
        return float(self.num.sum() / max(float(self.den.sum()), 1e-300))


@dataclasses.dataclass(frozen=True)
class Metric:
    """One final-model metric: how it is computed, named and printed.

    Attributes
    ----------
    key : str
        Its name in ``metrics.json`` rows (prefixed by the split: ``test_loss``).
    title : str
        Column title in tables.
    fmt : str
        Format spec of its values.
    compute : callable
        ``compute(model, tokenizer, split, tokenize_config, eval_config, progress) -> PerExample``, or
        None where the metric does not apply to the split.
    enabled : callable
        ``enabled(eval_config) -> bool``: whether the config asks for it.
    lower_is_better : bool
    """

    key: str
    title: str
    fmt: str
    compute: Callable
    enabled: Callable[[EvalConfig], bool] = lambda config: True
    lower_is_better: bool = True


def _loss_metric(model, tokenizer, split, tokenize_config, eval_config, progress) -> PerExample:
    r = target_loss(model, tokenizer, split.examples, tokenize_config, batch_size=eval_config.batch_size)
    counts = np.asarray(r.example_tokens, dtype=float)
    return PerExample(np.asarray(r.example_loss, dtype=float) * counts, counts)


def _exact_match_metric(model, tokenizer, split, tokenize_config, eval_config, progress) -> PerExample:
    r = exact_match(model, tokenizer, split, tokenize_config, eval_config, progress=progress)
    return PerExample(np.asarray(r.correct, dtype=float), np.ones(len(r.correct)))


def _choice_metric(model, tokenizer, split, tokenize_config, eval_config, progress) -> PerExample | None:
    correct, _ = choice_accuracy(model, tokenizer, split, tokenize_config, batch_size=eval_config.batch_size)
    if all(c is None for c in correct):
        return None  # no multiple-choice example in this split
    return PerExample(np.array([float(bool(c)) for c in correct]), np.array([float(c is not None) for c in correct]))


#: Metrics of every final model, in column order. To add one, append a Metric here.
METRICS: list[Metric] = [
    Metric("loss", "test loss", ".4f", _loss_metric),
    Metric("exact_match", "exact match", ".3f", _exact_match_metric, enabled=lambda c: c.exact_match,
           lower_is_better=False),
    Metric("mc_accuracy", "choice accuracy", ".3f", _choice_metric, enabled=lambda c: c.multiple_choice,
           lower_is_better=False),
]


def score_split_examples(model, tokenizer, split: Source, tokenize_config: TokenizeConfig, eval_config: EvalConfig, *,
                         progress: bool = False, skip: tuple[str, ...] = ()) -> dict[str, PerExample]:
    """Every enabled metric of ``model`` on ``split``, per example, by metric key (metrics that do not
    apply to the split, e.g. choice accuracy without choices, are left out)."""
    out = {}
    for m in METRICS:
        if m.enabled(eval_config) and m.key not in skip:
            value = m.compute(model, tokenizer, split, tokenize_config, eval_config, progress)
            if value is not None:
                out[m.key] = value
    return out


def score_split(model, tokenizer, split: Source, tokenize_config: TokenizeConfig, eval_config: EvalConfig, *,
                progress: bool = False, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Every enabled metric of ``model`` on ``split``, by metric key."""
    values = score_split_examples(model, tokenizer, split, tokenize_config, eval_config, progress=progress, skip=skip)
    return {k: v.value for k, v in values.items()}


def bootstrap_interval(values: PerExample, *, n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the metric over test examples resampled with replacement."""
    rng = np.random.default_rng([seed, 7])
    idx = rng.integers(0, len(values.num), size=(n, len(values.num)))
    stats = values.num[idx].sum(1) / np.maximum(values.den[idx].sum(1), 1e-300)
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def paired_difference(a: PerExample, b: PerExample, *, n: int = 2000, seed: int = 0) -> dict:
    """``a - b`` on the same test examples, with a 95% interval from resampling the examples jointly."""
    if len(a.num) != len(b.num):
        raise ValueError("paired metrics need the same test examples")
    rng = np.random.default_rng([seed, 7])
    idx = rng.integers(0, len(a.num), size=(n, len(a.num)))
    diff = (a.num[idx].sum(1) / np.maximum(a.den[idx].sum(1), 1e-300)
            - b.num[idx].sum(1) / np.maximum(b.den[idx].sum(1), 1e-300))
    return {"difference": a.value - b.value,
            "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]}
