"""Output functions: the per-example value ``b_j`` whose gradient is featurized.

Implementations
---------------
MeanLogOdds
    Mean over response tokens of the gold token's log-odds
    ``log p - log(1 - p) = logit_gold - logsumexp(other logits)`` (the default;
    the method's logistic model is exact in this quantity).
MeanLogLikelihood
    Mean over response tokens of ``log p`` of the gold token.

To add one, subclass :class:`OutputFunction`, implement ``token_values`` and
register it in :data:`OUTPUT_FUNCTIONS`.
"""

from __future__ import annotations

import abc

import torch

from gradselect.data.tokenize import IGNORE_INDEX


class OutputFunction(abc.ABC):
    """Maps one example's logits and labels to a scalar."""

    name: str

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
        valid = gold != IGNORE_INDEX
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


class MeanLogLikelihood(OutputFunction):
    """Mean log-probability of the gold token."""

    name = "log_likelihood"

    def token_values(self, logits, gold):
        return logits.gather(-1, gold[..., None])[..., 0] - logits.logsumexp(-1)


OUTPUT_FUNCTIONS: dict[str, type[OutputFunction]] = {"log_odds": MeanLogOdds, "log_likelihood": MeanLogLikelihood}


def get_output_function(name: str) -> OutputFunction:
    return OUTPUT_FUNCTIONS[name]()
