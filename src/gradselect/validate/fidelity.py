"""Figures of estimates against real fine-tunes, the truth's own noise ceiling, and held-out calibration.

Every figure here is computed across subsets (n_subsets values each):

- ``spearman`` / ``pearson`` / ``kendall`` with bootstrap 95% intervals over subsets;
- ``pairwise_accuracy``: the share of subset pairs whose true order the estimates get
  right (pairs tied in truth are skipped) — what a selection rule relies on;
- ``skill_of_change``: ``1 - sum (d_est - d_true)^2 / sum d_true^2`` with ``d = loss -
  loss(theta*)``: how much better than the zero-order baseline (predict no change) the
  estimates are, 1 at best, 0 for no better, negative for worse. (The ordinary R^2 of
  the losses is ``r2_losses``; shifting both by theta*'s loss does not change it.)
- ``mean_relative_error`` and the zero-order baseline's;
- :func:`size_baseline`: how well the number of sources alone orders the truth.

:func:`noise_ceiling` measures how well one seed of the truth predicts another;
:func:`loo_affine` and :func:`loo_select` give leave-one-out predictions, in which a
held-out subset never influences its own prediction.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import kendalltau, pearsonr, spearmanr


def bootstrap_ci(fn: Callable, x, y, *, n: int = 1000, seed: int = 0) -> list[float] | None:
    """95% percentile interval of ``fn(x, y)`` over subsets resampled with replacement."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(set(idx)) < 3:
            continue
        with np.errstate(all="ignore"):
            v = fn(x[idx], y[idx])
        if np.isfinite(v):
            vals.append(v)
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else None


def pairwise_accuracy(estimated, true) -> float:
    """Share of subset pairs ordered as in truth (pairs tied in truth skipped; ties in the estimate count half)."""
    e, t = np.asarray(estimated, float), np.asarray(true, float)
    i, j = np.triu_indices(len(t), 1)
    dt, de = np.sign(t[i] - t[j]), np.sign(e[i] - e[j])
    keep = dt != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.where(de[keep] == 0, 0.5, de[keep] == dt[keep])))


def one_se_choice(candidates, true, *, usable=None, default: int = 0, n_boot: int = 200, seed: int = 0) -> int:
    """The candidate that orders ``true`` best by pairwise accuracy, unless it beats ``default`` by less
    than one standard error of their difference: then ``default`` (the one-standard-error rule).

    Choosing among many steps by how they order a few validated subsets rewards noise: with 10
    subsets (45 pairs) the best of 75 candidates is ahead of the configured step by chance alone.
    The standard error comes from resampling the subsets (``n_boot`` bootstrap draws; a pair is
    counted once per draw of each of its subsets).

    Parameters
    ----------
    candidates : array of shape (n_candidates, n_subsets)
    true : array of shape (n_subsets,)
    usable : bool array of shape (n_candidates,), optional
        Candidates allowed to be chosen (all by default).
    default : int
        The candidate kept unless another is clearly better (the configured step).
    n_boot : int
        Bootstrap draws for the standard error; 0 turns the rule off (the best candidate wins).
    """
    e, t = np.asarray(candidates, float), np.asarray(true, float)
    usable = np.ones(len(e), bool) if usable is None else np.asarray(usable, bool)
    i, j = np.triu_indices(len(t), 1)
    dt = np.sign(t[i] - t[j])
    valid = dt != 0
    if not valid.any() or not usable.any():
        return default
    i, j, dt = i[valid], j[valid], dt[valid]
    de = np.sign(e[:, i] - e[:, j])  # (n_candidates, n_pairs)
    concordant = np.where(de == 0, 0.5, (de == dt).astype(float))
    marks = np.where(usable, concordant.mean(1), -np.inf)
    best = int(np.argmax(marks))  # ties: the lower index, the default first
    if best == default or not usable[default] or n_boot == 0:  # n_boot = 0: no guard, the best
        return best
    diff = concordant[best] - concordant[default]
    rng = np.random.default_rng([seed, 11])
    counts = np.stack([np.bincount(rng.integers(0, len(t), len(t)), minlength=len(t)) for _ in range(n_boot)])
    weights = counts[:, i] * counts[:, j]  # (n_boot, n_pairs)
    total = weights.sum(1)
    ok = total > 0
    boot = (weights[ok] * diff).sum(1) / total[ok]
    se = float(boot.std(ddof=1)) if ok.sum() > 1 else np.inf
    return best if marks[best] - marks[default] > se else default


def skill_of_change(estimated, true, base_estimated: float, base_true: float) -> float:
    """``1 - sum (d_est - d_true)^2 / sum d_true^2``: the estimates' skill over predicting no change."""
    d_true = np.asarray(true, float) - base_true
    d_est = np.asarray(estimated, float) - base_estimated
    denom = float((d_true ** 2).sum())
    return float(1 - ((d_est - d_true) ** 2).sum() / denom) if denom > 0 else float("nan")


def _rho(a, b):
    return spearmanr(a, b)[0]


def _tau(a, b):
    return kendalltau(a, b)[0]


def _pearson(a, b):
    return pearsonr(a, b)[0] if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def score(estimated, true, *, base_estimated: float, base_true: float | None = None, seed: int = 0,
          n_boot: int = 1000) -> dict:
    """Every figure of ``estimated`` against ``true`` (both of shape (n_subsets,)).

    ``base_estimated``: the estimator's loss at theta* (its v = 0); ``base_true``: theta*'s
    measured loss (default: the same); ``n_boot``: bootstrap draws of the intervals (0: none,
    for benchmarks that score thousands of draws).
    """
    e, t = np.asarray(estimated, float), np.asarray(true, float)
    base_true = base_estimated if base_true is None else base_true
    n = len(t)
    rel = np.abs(e - t) / t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    out = {
        "n_subsets": int(n),
        "mean_relative_error": float(rel.mean()),
        "max_relative_error": float(rel.max()),
        "zero_order_mean_relative_error": float((np.abs(base_true - t) / t).mean()),
        "skill_of_change": skill_of_change(e, t, base_estimated, base_true),
        "r2_losses": float(1 - ((e - t) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "pairwise_accuracy": pairwise_accuracy(e, t),
    }
    for name, fn in (("spearman", _rho), ("kendall", _tau), ("pearson", _pearson)):
        with np.errstate(all="ignore"):
            out[name] = float(fn(e, t)) if n > 2 else float("nan")
        out[f"{name}_ci95"] = bootstrap_ci(fn, e, t, n=n_boot, seed=seed) if n > 2 and n_boot else None
    out["pairwise_accuracy_ci95"] = (bootstrap_ci(pairwise_accuracy, e, t, n=n_boot, seed=seed)
                                     if n > 2 and n_boot else None)
    return out


def size_baseline(subsets: list[list[str]], true, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """How well the number of sources alone (fewer = lower loss) orders ``true`` (shape (n_subsets,)).

    The trivial rival of every estimate: at a fixed step budget each added source dilutes the target,
    so a count of sources often orders real fine-tunes (Spearman 0.58 on our arith12 bank, above every
    estimate made there; 0.19 on planted12). Estimates that do not beat it have not shown they know
    *which* sources matter. ``spearman`` (with ``spearman_ci95``) and ``pairwise_accuracy``; nan where
    every subset has the same size.
    """
    size = np.array([len(s) for s in subsets], dtype=float)
    t = np.asarray(true, float)
    if len(t) < 3 or np.ptp(size) == 0:
        return {"spearman": float("nan"), "spearman_ci95": None, "pairwise_accuracy": float("nan")}
    with np.errstate(all="ignore"):
        rho = float(_rho(size, t))
    return {"spearman": rho, "spearman_ci95": bootstrap_ci(_rho, size, t, n=n_boot, seed=seed) if n_boot else None,
            "pairwise_accuracy": pairwise_accuracy(size, t)}


def spearman_brown(r: float, k: float) -> float:
    """Reliability of the mean of ``k`` measurements from the reliability ``r`` of one."""
    return float(k * r / (1 + (k - 1) * r)) if np.isfinite(r) and 1 + (k - 1) * r != 0 else float("nan")


def noise_ceiling(losses_by_seed: list[list[float]], *, k: int | None = None) -> dict:
    """How well one seed's truth predicts another's, across subsets.

    Parameters
    ----------
    losses_by_seed : list of list of float
        Per subset, its true losses (one per seed); subsets with fewer than 2 seeds are skipped.
    k : int, optional
        Seeds averaged in the truth (default: the most common count), for the Spearman-Brown ceiling.

    Returns
    -------
    dict
        ``spearman_seed_to_seed`` (seed A vs seed B: the reliability r of one seed) with its
        interval; ``ceiling_spearman``, the Spearman an estimator that knew each subset's expected
        loss exactly would reach against the k-seed mean: sqrt of the Spearman-Brown reliability
        k r / (1 + (k - 1) r); ``r2_seed_to_seed``,
        ``mean_relative_difference`` (|a - b| / mean(a, b)), ``n_subsets``.
    """
    pairs = np.array([[s[0], s[1]] for s in losses_by_seed if len(s) >= 2], dtype=float)
    if k is None:
        k = int(np.bincount([len(s) for s in losses_by_seed]).argmax()) if losses_by_seed else 1
    if len(pairs) < 3:
        return {"n_subsets": int(len(pairs)), "spearman_seed_to_seed": float("nan"), "ceiling_spearman": float("nan"),
                "r2_seed_to_seed": float("nan"), "mean_relative_difference": float("nan"), "seeds": k}
    a, b = pairs[:, 0], pairs[:, 1]
    rho = float(_rho(a, b))
    ss = float(((b - b.mean()) ** 2).sum())
    return {
        "n_subsets": int(len(pairs)),
        "seeds": k,
        "spearman_seed_to_seed": rho,
        "spearman_seed_to_seed_ci95": bootstrap_ci(_rho, a, b),
        "pairwise_accuracy_seed_to_seed": pairwise_accuracy(a, b),
        "r2_seed_to_seed": float(1 - ((a - b) ** 2).sum() / ss) if ss > 0 else float("nan"),
        "mean_relative_difference": float(np.mean(np.abs(a - b) / ((a + b) / 2))),
        # The truth is a k-seed mean: its reliability is the Spearman-Brown step-up of one seed's, and
        # an exact estimator correlates with it at the root of that (k = 1 too: sqrt(r), not r).
        "ceiling_spearman": float(np.sqrt(max(spearman_brown(rho, k), 0.0))),
    }


def fit_level(d_est, d_true) -> tuple[float, float]:
    """Least-squares ``d_true ~ intercept + slope * d_est``; ``(intercept, slope)``.

    With fewer than two points or constant ``d_est`` the slope is 0 and the intercept the
    mean of ``d_true`` (a level without a scale).
    """
    d_est, d_true = np.asarray(d_est, float), np.asarray(d_true, float)
    if len(d_est) >= 2 and np.ptp(d_est) > 0:
        slope, intercept = np.polyfit(d_est, d_true, 1)
        return float(intercept), float(slope)
    return float(d_true.mean()), 0.0


def loo_affine(estimated, true, base_estimated: float, base_true: float) -> np.ndarray:
    """Leave-one-out level fit: ``d_true ~ a + b d_est``, fitted without subset i, predicts subset i.

    Two parameters, so the order of the estimates is kept (for b > 0) and only their level
    and scale change. Returns the held-out predicted losses (n_subsets,).
    """
    d_est = np.asarray(estimated, float) - base_estimated
    d_true = np.asarray(true, float) - base_true
    out = np.empty_like(d_est)
    for i in range(len(d_est)):
        keep = np.arange(len(d_est)) != i
        intercept, slope = fit_level(d_est[keep], d_true[keep])
        out[i] = base_true + intercept + slope * d_est[i]
    return out


def loo_select(candidates: dict[str, np.ndarray], true, criterion: Callable[[np.ndarray, np.ndarray], float]):
    """Leave-one-out choice among candidate estimates: for each subset i, the candidate scoring best by
    ``criterion(est, true)`` (higher is better) on the other subsets predicts subset i.

    Returns
    -------
    predictions : ndarray of shape (n_subsets,)
    chosen : list of str
        The candidate used for each subset.
    """
    true = np.asarray(true, float)
    names = list(candidates)
    stack = np.array([np.asarray(candidates[n], float) for n in names])
    preds, chosen = np.empty(len(true)), []
    for i in range(len(true)):
        keep = np.arange(len(true)) != i
        with np.errstate(all="ignore"):
            marks = [criterion(stack[c, keep], true[keep]) for c in range(len(names))]
        best = int(np.nanargmax(marks)) if np.isfinite(marks).any() else 0
        preds[i] = stack[best, i]
        chosen.append(names[best])
    return preds, chosen
