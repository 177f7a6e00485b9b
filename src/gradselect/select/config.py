"""Configuration of source selection."""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import pydantic

from gradselect.configbase import StrictConfig

Method = Literal["ensemble", "forward", "backward", "grad-sim", "repr-sim", "kmm", "random", "all", "target-only"]


class SelectConfig(StrictConfig):
    """Which selection method runs, and its parameters."""

    method: Method = "ensemble"
    """Selection method: estimate-based (ensemble, forward, backward) or a baseline."""
    rule: Literal["best_prefix", "top_k", "threshold"] = "best_prefix"
    """Ensemble decision rule: the best-estimated prefix of the ranking, the top k, or
    every source scoring below ``threshold``."""
    k: int | None = pydantic.Field(default=None, ge=0)
    """Sources to take for ``top_k`` (and for the random / similarity baselines)."""
    threshold: float | None = None
    """Score cut for ``threshold`` (default: the mean estimate over the sampled subsets)."""
    n_subsets: int = pydantic.Field(default=200, ge=2)
    """Ensemble: random subsets estimated."""
    alpha: float = pydantic.Field(default=0.5, gt=0, le=1)
    """Ensemble: subset size as a fraction of the sources."""
    seed: int = 0
    """Seed of subset sampling, bootstrap and the random baseline."""
    n_bootstrap: int = pydantic.Field(default=1000, ge=10)
    """Ensemble: bootstrap resamples for the 95% intervals."""
    max_size: int | None = pydantic.Field(default=None, ge=1)
    """Forward: stop at this many sources."""
    tol: float = pydantic.Field(default=0.0, ge=0)
    """Stepwise: stop when the best step changes the estimate by no more than this."""
    margin: Literal["auto"] | Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)] = "auto"
    """Estimate-based methods choose sources only when the choice's estimated target dev loss
    falls below the target alone's by more than this; ``auto``: 1.96 x the estimate's own error
    (the gain's standard error over dev examples combined with the trust check's measured
    held-out error, when one ran); 0: any estimated gain."""
    pseudo_sources: int | None = pydantic.Field(default=None, ge=1)
    """Cluster all source rows (every source pooled) into this many pseudo-sources by their
    projected gradients before selecting: for data without source labels, e.g. one
    chain-of-thought dataset. ``gradselect run`` then fine-tunes on the chosen clusters' examples."""
    pseudo_source_method: Literal["agglomerative", "kmeans"] = "agglomerative"
    """Clustering: agglomerative (cosine distance, average linkage; the authors' choice) or k-means."""

    @pydantic.model_validator(mode="after")
    def _rules(self) -> "SelectConfig":
        if self.method == "ensemble" and self.rule == "top_k" and self.k is None:
            raise ValueError("rule = 'top_k' needs k (the number of sources to keep)")
        reads = {
            "ensemble": {"rule", "k", "threshold", "n_subsets", "alpha", "seed", "n_bootstrap", "margin"},
            "forward": {"max_size", "tol", "margin"}, "backward": {"tol", "margin"},
            "grad-sim": {"k"}, "repr-sim": {"k"}, "kmm": {"k"}, "random": {"k", "seed"}, "all": set(),
            "target-only": set(),
        }[self.method]
        # seed and pseudo_sources apply whatever the method (clustering is seeded too).
        ignored = sorted(self.model_fields_set - reads - {"method", "seed", "pseudo_sources", "pseudo_source_method"})
        for f in ignored:
            warnings.warn(f"[select] {f} is ignored by method {self.method!r}", UserWarning, stacklevel=2)
        return self

    def make_selector(self):
        from gradselect.select.selectors import SELECTORS

        m = self.method
        if m == "ensemble":
            return SELECTORS[m](n_subsets=self.n_subsets, alpha=self.alpha, seed=self.seed,
                                n_bootstrap=self.n_bootstrap, rule=self.rule, k=self.k, threshold=self.threshold,
                                margin=self.margin)
        if m == "forward":
            return SELECTORS[m](max_size=self.max_size, tol=self.tol, margin=self.margin)
        if m == "backward":
            return SELECTORS[m](tol=self.tol, margin=self.margin)
        if m in ("grad-sim", "repr-sim", "kmm"):
            return SELECTORS[m](k=self.k)
        if m == "random":
            return SELECTORS[m](k=self.k, seed=self.seed)
        return SELECTORS[m]()
