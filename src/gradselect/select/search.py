"""Greedy forward search over subsets of sources, for any loss oracle.

One routine serves forward selection on estimates (the oracle is the fitted
estimator: a batch of subsets costs milliseconds) and the conventional baseline
(the oracle fine-tunes once per subset), so "ours vs conventional" differs only
in the oracle: same start, same tie-break, same stop rule.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

#: Loss oracle: boolean masks of shape (n_subsets, n_sources) -> losses of shape (n_subsets,).
Oracle = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class SearchResult:
    """Outcome of :func:`greedy_forward`.

    Attributes
    ----------
    chosen : ndarray of bool, shape (n_sources,)
    loss : float
        The oracle's loss of ``chosen`` (inf when the empty start cannot be scored and nothing was added).
    path : list of dict
        ``{"added": name or None, "loss": float or None}`` after each step, starting from the empty subset.
    gains : dict of str to float
        Per source: loss after adding it minus loss before, at the step it was added; for sources never
        added, what adding it to the final subset would change (the loss itself when the start had none).
    finished : bool
        False when ``budget`` stopped the search before its stop rule did.
    n_evaluations : int
        Subsets the oracle scored.
    """

    chosen: np.ndarray
    loss: float
    path: list[dict]
    gains: dict[str, float]
    finished: bool
    n_evaluations: int


def argmin_by_name(losses: np.ndarray, names: list[str]) -> int:
    """Index of the smallest loss; ties within rounding go to the first name alphabetically,
    so a choice never depends on the order the sources were listed in."""
    low = float(np.min(losses))
    tied = np.flatnonzero(losses <= low + 1e-9 * abs(low) + 1e-12)
    return int(min(tied, key=lambda i: names[i]))


def greedy_forward(names: list[str], oracle: Oracle, *, empty_ok: bool = True, max_size: int | None = None,
                   tol: float = 0.0, budget: int | None = None) -> SearchResult:
    """Start from no source; add the remaining source with the lowest loss while it lowers the loss by > ``tol``.

    Parameters
    ----------
    names : list of str
        Source names (n_sources), in source order.
    oracle : callable
        Scores a batch of subsets (boolean masks) at once.
    empty_ok : bool
        Whether the empty subset (target train only) can be scored; if not, the search
        starts at an infinite loss and the first source is always added.
    max_size : int, optional
        Stop at this many sources.
    tol : float
        Stop when the best addition lowers the loss by no more than this.
    budget : int, optional
        Oracle evaluations at most, the start included: a step that would exceed it is
        not begun (``finished`` is then False).
    """
    n = len(names)
    current = np.zeros(n, dtype=bool)
    evaluations = 0
    loss = np.inf
    if empty_ok:
        loss = float(oracle(current[None])[0])
        evaluations = 1
    path = [{"added": None, "loss": loss if empty_ok else None}]
    gains: dict[str, float] = {}
    cap = n if max_size is None else min(n, max_size)
    finished = True
    while True:
        remaining = np.flatnonzero(~current)
        if not len(remaining):
            break
        if budget is not None and evaluations + len(remaining) > budget:
            finished = bool(current.sum() >= cap)  # a numpy bool would reach JSON as the string "False"
            break
        trial = np.repeat(current[None], len(remaining), 0)
        trial[np.arange(len(remaining)), remaining] = True
        losses = np.asarray(oracle(trial), dtype=float)
        evaluations += len(remaining)
        best = argmin_by_name(losses, [names[i] for i in remaining])
        # At the size cap the remaining sources are still scored, so every source has a gain.
        if current.sum() >= cap or loss - losses[best] <= tol:
            gains.update({names[i]: float(l - loss) if np.isfinite(loss) else float(l)
                          for i, l in zip(remaining, losses)})
            break
        gains[names[remaining[best]]] = float(losses[best] - loss) if np.isfinite(loss) else float(losses[best])
        current[remaining[best]] = True
        loss = float(losses[best])
        path.append({"added": names[remaining[best]], "loss": loss})
    return SearchResult(current, loss, path, gains, finished, evaluations)
