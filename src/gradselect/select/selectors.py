"""Selection methods: one class per method behind one interface, registered by name.

Implementations
---------------
EnsembleSelector (``ensemble``)
    Estimate m random subsets of size ceil(alpha n); score each source by the
    mean estimate over subsets containing it (bootstrap intervals) and by ridge
    coefficients of the estimates on subset indicators; then a decision rule.
ForwardSelector (``forward``) / BackwardSelector (``backward``)
    Stepwise selection on the estimates: best of the remaining at every step.
GradientSimilarity (``grad-sim``) / RepresentationSimilarity (``repr-sim``)
    Baselines: cosine between each source's mean projected gradient (mean
    hidden state) and the target dev split's.
KernelMeanMatching (``kmm``)
    Baseline: a non-negative lasso matching the target's mean gradient with the
    sources' (accounts for redundancy between sources).
RandomSelector (``random``), AllSources (``all``), TargetOnly (``target-only``)
    Baselines.

To add a method, subclass :class:`Selector` (copy :class:`ForwardSelector`),
implement ``select`` and add it to :data:`SELECTORS`.
"""

from __future__ import annotations

import abc
import math
from typing import Literal

import numpy as np

from gradselect.errors import GradselectError
from gradselect.estimate.estimator import SubsetEstimator
from gradselect.select.result import Selection
from gradselect.select.search import argmin_by_name, greedy_forward

Rule = Literal["best_prefix", "top_k", "threshold"]

#: A gain smaller than this many standard errors of the estimate is not evidence (two-sided 95%).
EVIDENCE_Z = 1.96


def evidence(estimator: SubsetEstimator, chosen, *, margin: float | str = "auto") -> dict:
    """Whether the estimated gain of ``chosen`` over the target alone exceeds the estimate's own error.

    Every rule's last step: a fixed-length step lowers the linearized loss for any data, and on
    every suite we measured the target alone beat selections whose estimated gain was inside the
    estimate's error. The gain is ``estimate([]) - estimate([chosen])``; with ``margin = "auto"``
    it must exceed ``EVIDENCE_Z * sqrt(se^2 + e^2)``, where ``se`` is the standard error of the
    gain over the target dev examples (the per-example losses of the first-order model, paired;
    a residual surrogate shifts a subset's loss, not its spread over examples) and ``e`` the RMS
    error of the estimated gain the trust check measured on its real fine-tunes
    (``estimator.gain_error_``; 0 when no trust check ran). A number is a fixed margin
    (0: any estimated gain).

    Parameters
    ----------
    estimator : SubsetEstimator or CorrectedEstimator
        Fitted, with ``include_target_train`` (else there is no target-alone candidate).
    chosen : sequence of str or bool array of shape (n_sources,)
    margin : "auto" or float >= 0

    Returns
    -------
    dict
        ``gain``, ``target_only_loss``, ``dev_standard_error``, ``measured_error`` (None without
        a trust check), ``margin`` and ``sufficient`` (the gain exceeds the margin).
    """
    names = estimator.source_names_
    mask = np.asarray(chosen, dtype=bool) if isinstance(chosen, np.ndarray) else np.isin(names, list(chosen))
    masks = np.stack([np.zeros(len(names), dtype=bool), mask])
    alone, loss = (float(x) for x in estimator.estimate(masks))
    gain = alone - loss
    # Paired over dev examples: the same questions, with and without the sources (in the estimate's own
    # metric: the functional, or token cross-entropy for a forward scorer measuring it).
    per_example = estimator.predict_example_losses(masks)
    diff = per_example[0] - per_example[1]
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    measured = getattr(estimator, "gain_error_", None)
    if margin == "auto":
        value = EVIDENCE_Z * float(np.hypot(se, measured or 0.0))
    else:
        value = float(margin)
        if not np.isfinite(value) or value < 0:
            raise GradselectError(f"margin must be 'auto' or a number >= 0, got {margin!r}")
    return {"gain": gain, "target_only_loss": alone, "dev_standard_error": se, "measured_error": measured,
            "margin": value, "margin_rule": "auto" if margin == "auto" else "fixed", "sufficient": bool(gain > value)}


def _keep_if_evident(estimator, picked: set[str], margin, extra: dict) -> set[str]:
    """``picked``, or no source when its estimated gain over the target alone is not beyond ``margin``
    (:func:`evidence`; recorded in ``extra``). Without target rows there is no target-alone candidate."""
    if margin is None or not estimator.config_.include_target_train or not picked:
        return picked
    ev = evidence(estimator, sorted(picked), margin=margin)
    extra["evidence"] = ev
    extra["target_only_loss"] = ev["target_only_loss"]
    if not ev["sufficient"]:
        extra["no_source_helps"] = True
        return set()
    return picked


def apply_rule(estimator: SubsetEstimator, scores: dict[str, float], rule: Rule, *, k=None, threshold=None,
               margin: float | str | None = "auto"):
    """Choose sources from scores (lower is better) by a decision rule.

    ``best_prefix`` and ``threshold`` then keep their choice only when its estimated gain over the
    target alone is beyond ``margin`` (:func:`evidence`); ``top_k`` keeps k sources as asked and
    records the evidence for them. ``margin = None``: no evidence check (baselines that do not
    rest on the estimates, such as gradient similarity's threshold).

    Returns
    -------
    chosen : list of str
        In source order.
    extra : dict
        Rule details (prefix losses for ``best_prefix``).
    """
    names = estimator.source_names_
    ranked = sorted(names, key=lambda n: scores[n])
    extra: dict = {"rule": rule}
    if rule == "top_k":
        if k is None:
            raise GradselectError("rule 'top_k' needs k")
        if int(k) > len(names):
            raise GradselectError(f"rule 'top_k' with k = {k} but there are only {len(names)} sources; lower k")
        picked = set(ranked[: int(k)])
        if margin is not None and estimator.config_.include_target_train and picked:
            extra["evidence"] = evidence(estimator, sorted(picked), margin=margin)
    elif rule == "threshold":
        if threshold is None:
            raise GradselectError("rule 'threshold' needs a threshold")
        picked = _keep_if_evident(estimator, {n for n in names if scores[n] < threshold}, margin, extra)
    elif rule == "best_prefix":
        # Estimate the top-1..n prefixes of the ranking and keep the best.
        masks = np.zeros((len(ranked), len(names)), dtype=bool)
        index = {n: i for i, n in enumerate(names)}
        for j in range(len(ranked)):
            masks[j:, index[ranked[j]]] = True
        losses = estimator.estimate(masks)
        best = int(np.argmin(losses))
        extra["prefix_losses"] = [float(x) for x in losses]
        # "No auxiliary source" is a candidate too: a fixed-length step lowers the linearized loss for any
        # data, so a prefix must beat the target alone (not theta*), and by more than the estimate's error.
        picked = _keep_if_evident(estimator, set(ranked[: best + 1]), margin, extra)
    else:
        raise GradselectError(f"unknown rule {rule!r}; rules are best_prefix, top_k, threshold")
    return [n for n in names if n in picked], extra


def check_informative(losses: np.ndarray, estimator: SubsetEstimator, *, ties_allowed: bool = False) -> None:
    """Refuse to rank on estimates that cannot tell subsets apart.

    All subsets estimated alike (within rounding), or every estimate at the floor of
    the loss (a step so long that the linearized loss saturates), rank sources by
    noise; the usual cause is a step the data cannot support (an L2 ``lam`` too small,
    a radius far from what fine-tuning moves) or a meta-initialization already
    confident on nearly every response token. ``ties_allowed``: a few candidates may tie
    (a stepwise step); only saturation is refused then.
    """
    losses = np.asarray(losses, dtype=float)
    if len(losses) < 2:
        return
    scale = max(abs(float(np.mean(losses))), abs(estimator.base_loss_), 1e-300)
    if not ties_allowed and float(np.ptp(losses)) <= 1e-9 * scale:
        raise GradselectError(
            f"all {len(losses)} estimated subsets have the same target dev loss ({float(losses[0]):.6g}; theta*: "
            f"{estimator.base_loss_:.6g}), so the estimates cannot rank sources. The step "
            f"(mode {estimator.config_.mode}) saturates or does nothing here: run gradselect validate to calibrate "
            "it, or set [estimate] radius / lam")
    if float(np.max(losses)) <= 1e-6 * max(estimator.base_loss_, 1e-300):
        raise GradselectError(
            f"every estimated subset loss is ~0 (max {float(np.max(losses)):.3g}, theta*: {estimator.base_loss_:.6g}): "
            f"the step of mode {estimator.config_.mode} is far longer than fine-tuning moves; run gradselect "
            "validate to calibrate it, or raise [estimate] lam / lower radius")


class Selector(abc.ABC):
    """Chooses sources using a fitted :class:`SubsetEstimator` (and its features)."""

    name: str

    @abc.abstractmethod
    def select(self, estimator: SubsetEstimator) -> Selection:
        """Return the :class:`Selection` for the estimator's sources."""

    def _estimated(self, estimator, chosen) -> float:
        return float(estimator.estimate([chosen])[0])


class EnsembleSelector(Selector):
    """Random-ensemble scores with bootstrap intervals.

    Parameters
    ----------
    n_subsets : int
        Number m of random subsets.
    alpha : float
        Subset size as a fraction of the sources: ceil(alpha n).
    seed : int
    n_bootstrap : int
        Bootstrap resamples of the m subsets for 95% intervals.
    rule, k, threshold
        Decision rule (see :func:`apply_rule`); ``threshold`` defaults to the mean
        estimate over all sampled subsets.
    ridge : float
        Strength of the ridge regression of estimates on subset indicators.
    margin : "auto" or float
        How far the choice's estimate must fall below the target alone's (:func:`evidence`).
    """

    name = "ensemble"

    def __init__(self, n_subsets=200, alpha=0.5, seed=0, n_bootstrap=1000, rule: Rule = "best_prefix",
                 k=None, threshold=None, ridge=1e-3, margin="auto"):
        self.n_subsets, self.alpha, self.seed, self.n_bootstrap = n_subsets, alpha, seed, n_bootstrap
        self.rule, self.k, self.threshold, self.ridge, self.margin = rule, k, threshold, ridge, margin

    def sample_subsets(self, n_sources: int) -> np.ndarray:
        """m seeded subsets of size ceil(alpha n), shape (n_subsets, n_sources)."""
        size = min(n_sources, max(1, math.ceil(self.alpha * n_sources)))
        rng = np.random.default_rng([self.seed, 4])
        masks = np.zeros((self.n_subsets, n_sources), dtype=bool)
        for i in range(self.n_subsets):
            masks[i, rng.choice(n_sources, size=size, replace=False)] = True
        return masks

    def select(self, estimator):
        names = estimator.source_names_
        masks = self.sample_subsets(len(names))
        losses = estimator.estimate(masks)
        check_informative(losses, estimator)
        w = masks.astype(np.float64)
        counts = w.sum(0)
        if (counts == 0).any():
            missing = [names[i] for i in np.flatnonzero(counts == 0)]
            raise GradselectError(f"no sampled subset contains {missing}; raise n_subsets or alpha")
        mean_in = (w.T @ losses) / counts
        rng = np.random.default_rng([self.seed, 5])
        boot = np.empty((self.n_bootstrap, len(names)))
        for t in range(self.n_bootstrap):
            idx = rng.integers(0, len(losses), len(losses))
            wc = w[idx]
            c = wc.sum(0)
            boot[t] = np.where(c > 0, (wc.T @ losses[idx]) / np.maximum(c, 1), mean_in)
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        # Ridge regression of the estimates on centred indicators: the additive effect of each source.
        x = w - w.mean(0)
        coef = np.linalg.solve(x.T @ x + self.ridge * len(losses) * np.eye(len(names)), x.T @ (losses - losses.mean()))
        scores = {n: float(s) for n, s in zip(names, mean_in)}
        threshold = self.threshold if self.threshold is not None else float(losses.mean())
        chosen, extra = apply_rule(estimator, scores, self.rule, k=self.k, threshold=threshold, margin=self.margin)
        params = {
            "n_subsets": self.n_subsets, "alpha": self.alpha, "seed": self.seed, "n_bootstrap": self.n_bootstrap,
            "k": self.k, "threshold": threshold, "ridge": self.ridge, "margin": self.margin,
            "ridge_coefficients": {n: float(c) for n, c in zip(names, coef)},
            "mean_subset_loss": float(losses.mean()), "base_loss": estimator.base_loss_, **extra,
        }
        return Selection(self.name, chosen, scores, {n: [float(a), float(b)] for n, a, b in zip(names, lo, hi)},
                         self._estimated(estimator, chosen), params)


class ForwardSelector(Selector):
    """Forward stepwise selection on estimates: add the best remaining source while it helps.

    Scores are minus each source's gain in estimated loss when it was added (for
    sources never added: minus the gain it would bring to the final subset).

    Parameters
    ----------
    max_size : int, optional
        Stop at this many sources.
    tol : float
        Stop when the best addition lowers the estimate by no more than this.
    margin : "auto" or float
        The final subset is kept only when its estimate falls below the target alone's by more than
        this (:func:`evidence`); otherwise no source is chosen.
    """

    name = "forward"

    def __init__(self, max_size=None, tol=0.0, margin="auto"):
        self.max_size, self.tol, self.margin = max_size, tol, margin

    def select(self, estimator):
        names = estimator.source_names_
        # Without target rows the empty subset trains on nothing: any first source is an improvement.
        def oracle(masks):
            losses = estimator.estimate(masks)
            if len(masks) == len(names):  # the first step: every single source
                check_informative(losses, estimator, ties_allowed=True)
            return losses

        result = greedy_forward(names, oracle, empty_ok=estimator.config_.include_target_train,
                                max_size=self.max_size, tol=self.tol)
        params = {"max_size": self.max_size, "tol": self.tol, "margin": self.margin, "path": result.path}
        picked = _keep_if_evident(estimator, {names[i] for i in np.flatnonzero(result.chosen)}, self.margin, params)
        chosen = [n for n in names if n in picked]
        loss = result.loss if chosen or not params.get("no_source_helps") else params["target_only_loss"]
        return Selection(self.name, chosen, {n: result.gains[n] for n in names}, None, loss, params)


class BackwardSelector(Selector):
    """Backward elimination on estimates: drop the source whose removal helps most, while it helps.

    Scores are the gain in estimated loss when a source was removed (for kept
    sources: minus the harm their removal would do to the final subset). The final subset is
    kept only when its gain over the target alone is beyond ``margin`` (:func:`evidence`).
    """

    name = "backward"

    def __init__(self, min_size=0, tol=0.0, margin="auto"):
        self.min_size, self.tol, self.margin = min_size, tol, margin

    def select(self, estimator):
        names = estimator.source_names_
        current = np.ones(len(names), dtype=bool)
        loss = float(estimator.estimate(current[None])[0])
        path, scores = [{"removed": None, "loss": loss}], {}
        # Without target rows an empty subset cannot be estimated: keep at least one source.
        floor = max(self.min_size, 0 if estimator.config_.include_target_train else 1)
        while True:
            present = np.flatnonzero(current)
            if len(present) <= floor:
                scores.update({names[i]: 0.0 for i in present if names[i] not in scores})
                break
            losses = estimator.estimate(_toggled(current, present))
            best = argmin_by_name(losses, [names[i] for i in present])
            if loss - losses[best] <= self.tol:
                scores.update({names[i]: float(loss - l) for i, l in zip(present, losses)})
                break
            scores[names[present[best]]] = float(loss - losses[best])
            current[present[best]] = False
            loss = float(losses[best])
            path.append({"removed": names[present[best]], "loss": loss})
        params = {"min_size": self.min_size, "tol": self.tol, "margin": self.margin, "path": path}
        picked = {names[i] for i in np.flatnonzero(current)}
        if self.min_size == 0:  # a floor the user set is kept
            picked = _keep_if_evident(estimator, picked, self.margin, params)
        chosen = [n for n in names if n in picked]
        if params.get("no_source_helps"):
            loss = params["target_only_loss"]
        return Selection(self.name, chosen, {n: scores[n] for n in names}, None, loss, params)


def _toggled(current: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One copy of ``current`` per index, with that index flipped: shape (len(indices), n_sources)."""
    out = np.repeat(current[None], len(indices), 0)
    out[np.arange(len(indices)), indices] = ~current[indices]
    return out


def _cosine_scores(source_vecs: dict[str, np.ndarray], target: np.ndarray) -> dict[str, float]:
    tn = np.linalg.norm(target)
    out = {}
    for name, v in source_vecs.items():
        denom = np.linalg.norm(v) * tn
        out[name] = -float(v @ target / denom) if denom > 0 else 0.0  # negated: lower is better
    return out


class GradientSimilarity(Selector):
    """Baseline: cosine of each source's mean projected gradient with the target dev split's.

    Chooses sources with positive similarity (score < 0) unless ``k`` is given (top k).
    """

    name = "grad-sim"

    def __init__(self, k=None):
        self.k = k

    def _vectors(self, estimator):
        a = estimator.arrays_
        return {n: a.g[r].mean(0) for n, r in a.source_rows.items()}, a.g[a.dev_rows].mean(0)

    def select(self, estimator):
        vecs, target = self._vectors(estimator)
        scores = _cosine_scores(vecs, target)
        rule, kw = ("top_k", {"k": self.k}) if self.k is not None else ("threshold", {"threshold": 0.0})
        # A baseline's own rule: it does not rest on the estimates, so no evidence margin.
        chosen, extra = apply_rule(estimator, scores, rule, margin=None, **kw)
        return Selection(self.name, chosen, scores, None, self._estimated(estimator, chosen), {"k": self.k, **extra})


class RepresentationSimilarity(GradientSimilarity):
    """Baseline: cosine of mean last-layer hidden states (needs ``hidden_states = true`` features)."""

    name = "repr-sim"

    def _vectors(self, estimator):
        a = estimator.arrays_
        if a.hidden is None:
            raise GradselectError("repr-sim needs hidden states: featurize with [features] hidden_states = true")
        return {n: a.hidden[r].mean(0) for n, r in a.source_rows.items()}, a.hidden[a.dev_rows].mean(0)


class KernelMeanMatching(GradientSimilarity):
    """Baseline: dataset valuation by kernel mean matching in gradient space (linear kernel).

    Weights ``w >= 0`` on the sources' mean projected gradients ``m_s`` that best match the
    target dev split's mean gradient ``t``: ``min_w |t - sum_s w_s m_s|^2 + alpha |w|_1``, a
    non-negative lasso whose normal equations use only the Gram matrix ``<m_s, m_r>`` and
    the alignments ``<m_s, t>`` (Convex Dataset Valuation for Post-Training, ICML 2026).
    Unlike gradient similarity it accounts for redundancy: a source that repeats one
    already in adds nothing to the match. Sources are ranked by when they enter the
    lasso path (LARS); with ``k`` the first ``k`` are chosen, otherwise those with a
    positive weight at ``alpha = alpha_fraction * alpha_max``.
    """

    name = "kmm"

    def __init__(self, k=None, alpha_fraction=0.01):
        self.k, self.alpha_fraction = k, alpha_fraction

    def select(self, estimator):
        from sklearn.linear_model import lars_path

        names = estimator.source_names_
        vecs, target = self._vectors(estimator)
        x = np.stack([vecs[n] for n in names], axis=1)  # (proj_dim, n_sources)
        scale = np.linalg.norm(x, axis=0)
        xs = x / np.where(scale > 0, scale, 1.0)  # the kernel on directions; weights rescaled below
        alphas, active, coefs = lars_path(xs, target, method="lasso", positive=True)
        order = [int(i) for i in active]
        alpha = self.alpha_fraction * float(alphas[0]) if len(alphas) else 0.0
        # Weights at the chosen alpha: interpolate the piecewise-linear path.
        w = np.array([np.interp(alpha, alphas[::-1], coefs[i][::-1]) for i in range(len(names))]) / np.where(
            scale > 0, scale, 1.0)
        cos = _cosine_scores(vecs, target)
        rank = {names[i]: r for r, i in enumerate(order)}
        # Lower is better: entry order first, then (never entered) gradient similarity.
        scores = {n: float(rank[n]) if n in rank else float(len(names) + 1 + cos[n]) for n in names}
        if self.k is not None:
            if int(self.k) > len(names):
                raise GradselectError(f"kmm with k = {self.k} but there are only {len(names)} sources; lower k")
            picked = set(sorted(names, key=scores.get)[: int(self.k)])
        else:
            picked = {n for n, wi in zip(names, w) if wi > 0}
        chosen = [n for n in names if n in picked]
        return Selection(self.name, chosen, scores, None, self._estimated(estimator, chosen),
                         {"k": self.k, "alpha_fraction": self.alpha_fraction, "alpha": alpha,
                          "weights": {n: float(wi) for n, wi in zip(names, w)},
                          "entry_order": [names[i] for i in order]})


def less_examples(estimator: SubsetEstimator, n_examples: int) -> np.ndarray:
    """LESS-style example-level selection: the ``n_examples`` source rows whose projected gradient has the
    highest cosine with the target dev split's mean gradient, best first (row indices).

    LESS (Xia et al., 2024) scores ``cos(S g_train, g_target)`` with ``S`` the warm-up run's
    Adam step scale. On plain features (``[features] precondition = "none"``) this is the
    SGD variant of its score. With ``precondition = "adam"`` every feature is ``P^T S^1/2 g``,
    so the cosine here has LESS's numerator ``g_train^T S g_target`` and differs only in how
    the training gradient is normalized (``|S^1/2 g|`` instead of ``|S g|``).
    """
    a = estimator.arrays_
    rows = np.sort(np.concatenate([a.source_rows[n] for n in estimator.source_names_]))
    g = np.asarray(a.g[rows], dtype=np.float64)
    t = np.asarray(a.g[a.dev_rows], dtype=np.float64).mean(0)
    cos = (g @ t) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(t), 1e-300)
    order = np.argsort(-cos, kind="stable")
    return rows[order[: max(0, min(int(n_examples), len(rows)))]]


def sampled_examples(estimator: SubsetEstimator, n_examples: int, *, stratified: bool = False,
                     seed: int = 0) -> np.ndarray:
    """``n_examples`` source rows drawn at random from all sources (row indices, sorted).

    The baseline a user would try before any selection: subsample the pooled sources to the
    selection's size. ``stratified=False`` draws uniformly from the pool (large sources give
    more); ``stratified=True`` gives every source an equal share (the remainder, and the share
    of sources too small to fill theirs, spread over the others at random). Seeded.
    """
    a = estimator.arrays_
    names = list(estimator.source_names_)
    pools = [np.asarray(a.source_rows[n]) for n in names]
    total = sum(len(p) for p in pools)
    n = max(0, min(int(n_examples), total))
    rng = np.random.default_rng([seed, 23, int(stratified)])
    if not stratified:
        return np.sort(rng.choice(np.concatenate(pools), size=n, replace=False))
    take = np.zeros(len(pools), dtype=int)
    room = np.array([len(p) for p in pools])
    while take.sum() < n:  # equal shares, water-filled: sources that run out pass theirs on
        open_ = np.flatnonzero(take < room)
        share, extra = divmod(n - int(take.sum()), len(open_))
        add = np.full(len(open_), share)
        add[rng.permutation(len(open_))[:extra]] += 1
        take[open_] = np.minimum(take[open_] + add, room[open_])
    return np.sort(np.concatenate([rng.choice(p, size=k, replace=False) for p, k in zip(pools, take)]))


class RandomSelector(Selector):
    """Baseline: k sources drawn at random (seeded); k defaults to half of them."""

    name = "random"

    def __init__(self, k=None, seed=0):
        self.k, self.seed = k, seed

    def select(self, estimator):
        names = estimator.source_names_
        k = len(names) // 2 if self.k is None else min(int(self.k), len(names))
        rng = np.random.default_rng([self.seed, 6])
        order = rng.permutation(len(names))
        scores = {names[i]: float(rank) for rank, i in enumerate(order)}
        chosen = [n for n in names if scores[n] < k]
        return Selection(self.name, chosen, scores, None, self._estimated(estimator, chosen), {"k": k, "seed": self.seed})


class AllSources(Selector):
    """Baseline: every source."""

    name = "all"

    def select(self, estimator):
        names = estimator.source_names_
        return Selection(self.name, list(names), {n: 0.0 for n in names}, None, self._estimated(estimator, names), {})


class TargetOnly(Selector):
    """Baseline: no source (target train only)."""

    name = "target-only"

    def select(self, estimator):
        names = estimator.source_names_
        loss = self._estimated(estimator, []) if estimator.config_.include_target_train else None
        return Selection(self.name, [], {n: 0.0 for n in names}, None, loss, {})


SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (EnsembleSelector, ForwardSelector, BackwardSelector, GradientSimilarity, RepresentationSimilarity,
                KernelMeanMatching, RandomSelector, AllSources, TargetOnly)
}
