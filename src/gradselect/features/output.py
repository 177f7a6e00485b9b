"""Output functions: the per-example value ``b_j`` whose gradient is featurized.

Implementations
---------------
MeanLogOdds
    Mean over response tokens of the gold token's log-odds
    ``log p - log(1 - p) = logit_gold - logsumexp(other logits)`` (the default;
    the method's logistic model is exact in this quantity).
SoftminLogOdds
    Soft minimum of the response tokens' log-odds, ``-log mean_t exp(-z_t)``: its
    logistic loss ``log(1 + mean_t e^-z_t)`` follows the hardest tokens, where the
    mean log-odds saturates once most tokens are confident.
MeanLogLikelihood
    Mean over response tokens of ``log p`` of the gold token.

Each can skip given token ids (``skip_ids``: the tokenizer's special tokens, with
``[features] skip_special_tokens``), so that a response's end-of-turn token, which a
fine-tune on the target alone learns to predict with near certainty, does not decide
the value: on BIG-Bench-Hard (a one-token answer plus ``<|im_end|>``) it made the mean
log-odds' loss 8-13x lower for the target alone where the answer token's differed
1.4-1.6x (benchmarks/pertoken.py).

To add one, subclass :class:`OutputFunction`, implement ``token_values`` and
register it in :data:`OUTPUT_FUNCTIONS`.
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from gradselect.data.tokenize import IGNORE_INDEX


class OutputFunction(abc.ABC):
    """Maps one example's logits and labels to a scalar.

    Parameters
    ----------
    skip_ids : iterable of int, optional
        Token ids left out of the value wherever they are gold (as if masked); an example whose
        response holds only such tokens gets the value 0 and no gradient.
    """

    name: str

    def __init__(self, skip_ids=()):
        self.skip_ids = tuple(sorted({int(i) for i in skip_ids}))

    def scored(self, gold: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the positions that count: gold is neither -100 nor a skipped id."""
        valid = gold != IGNORE_INDEX
        if self.skip_ids:
            # a comparison, not torch.isin: vmap (the func gradient computer) has no batching rule for isin
            skip = torch.tensor(self.skip_ids, device=gold.device, dtype=gold.dtype)
            valid &= ~(gold[..., None] == skip).any(-1)
        return valid

    @abc.abstractmethod
    def token_values(self, logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        r"""Per-token values.

        Parameters
        ----------
        logits : Tensor of shape (\*batch, seq_len, vocab)
        gold : Tensor of shape (\*batch, seq_len)
            Gold next-token ids (any valid id where masked).

        Returns
        -------
        Tensor of shape (\*batch, seq_len)
        """

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        r"""Mean of the token values over the response positions of each sequence.

        Parameters
        ----------
        logits : Tensor of shape (\*batch, seq_len, vocab)
            The model's logits for (possibly right-padded) sequences.
        labels : Tensor of shape (\*batch, seq_len)
            Token labels, -100 outside the response (prompt and padding).

        Returns
        -------
        Tensor of shape (\*batch,)
        """
        return self.mean_over(logits[..., :-1, :], labels[..., 1:])

    def mean_over(self, logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        r"""Mean token value where ``gold != -100``, logits already aligned with gold.

        Parameters
        ----------
        logits : Tensor of shape (\*batch, n_positions, vocab)
        gold : Tensor of shape (\*batch, n_positions)
            The token each row of logits predicts; -100 to skip a row.

        Returns
        -------
        Tensor of shape (\*batch,)
        """
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # half-precision logsumexp loses the small log-odds
        valid = self.scored(gold)
        values = self.token_values(logits, gold.clamp(min=0))
        # where(), not multiplication: a masked position's value may be inf.
        return torch.where(valid, values, torch.zeros_like(values)).sum(-1) / valid.sum(-1).clamp(min=1)


class MeanLogOdds(OutputFunction):
    """Mean log-odds of the gold token, ``logit_gold - logsumexp(other logits)``."""

    name = "log_odds"

    def token_values(self, logits, gold):
        gold_logit = logits.gather(-1, gold[..., None])[..., 0]
        # Exact and stable for any p: the gold logit is excluded, not subtracted.
        others = logits.scatter(-1, gold[..., None], float("-inf")).logsumexp(-1)
        return gold_logit - others


class SoftminLogOdds(MeanLogOdds):
    r"""Soft minimum of the gold tokens' log-odds, ``z = -log mean_t exp(-z_t)``.

    The method's loss of this value, ``log(1 + e^-z) = log(1 + mean_t e^-z_t)``, is close
    to the mean per-token logistic loss ``mean_t log(1 + e^-z_t)`` when every token is
    confident (``log(1 + x) ~ x``) and is led by the hardest token otherwise. The mean
    log-odds instead averages a few hard tokens away: with 19 tokens at log-odds 12 and
    one at 1, its loss is 1e-5 (saturated: every subset looks alike), this one's 0.018,
    the per-token mean 0.016. Still one scalar per example, so one backward pass.
    """

    name = "log_odds_softmin"

    def mean_over(self, logits, gold):
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        valid = self.scored(gold)
        values = self.token_values(logits, gold.clamp(min=0))
        # A finite floor, not -inf, at masked positions: logsumexp's gradient stays finite even for a
        # sequence with no response token (whose value is 0, like the mean's).
        floor = torch.finfo(values.dtype).min
        count = valid.sum(-1)
        lse = torch.where(valid, -values, torch.full_like(values, floor)).logsumexp(-1)
        z = torch.log(count.clamp(min=1).to(values.dtype)) - lse
        return torch.where(count > 0, z, torch.zeros_like(z))


class MeanLogLikelihood(OutputFunction):
    """Mean log-probability of the gold token."""

    name = "log_likelihood"

    def token_values(self, logits, gold):
        return logits.gather(-1, gold[..., None])[..., 0] - logits.logsumexp(-1)


OUTPUT_FUNCTIONS: dict[str, type[OutputFunction]] = {
    "log_odds": MeanLogOdds,
    "log_odds_softmin": SoftminLogOdds,
    "log_likelihood": MeanLogLikelihood,
}


def get_output_function(name: str, skip_ids=()) -> OutputFunction:
    """The registered output function ``name``, leaving out the token ids ``skip_ids``."""
    return OUTPUT_FUNCTIONS[name](skip_ids)


def skipped_token_ids(tokenizer, skip_special_tokens: bool) -> tuple[int, ...]:
    """The ids an output function leaves out under ``[features] skip_special_tokens``: the tokenizer's
    special tokens (EOS, end of turn, padding), or none."""
    return tuple(sorted(set(tokenizer.all_special_ids))) if skip_special_tokens else ()


def token_weighted(example_means, tokens) -> np.ndarray:
    """Per example, its mean over response tokens times its tokens over the mean tokens per example, shape
    (n_examples,): their plain mean is the token-weighted mean over every response token, and paired
    differences between two models keep the token weights."""
    tokens = np.asarray(tokens, dtype=float)
    return np.asarray(example_means, dtype=float) * tokens / max(float(tokens.mean()), 1.0)
