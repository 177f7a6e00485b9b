"""A residual surrogate: what real fine-tunes taught the trust check, applied to every estimate.

The first-order estimate gets the broad effect of each source but misses interactions
between sources and how far fine-tuning really moves. The trust check measures a few
subsets by real fine-tuning; :class:`ResidualSurrogate` fits kernel ridge regression over
subset indicators (an RBF kernel on which sources a subset holds) to the estimator's
*residuals* on them, true loss minus estimate, and :class:`CorrectedEstimator` adds its
prediction to the estimate of any subset. Far from every validated subset the correction
tends to their mean residual (a shift that changes no ranking); near them it bends the
estimates toward what was measured. This is the data-model of Kernel Surrogate Models
(ICLR 2026) with the first-order estimate as its prior mean.

The surrogate is a handful of numbers (the validated subsets, one dual coefficient each,
the kernel's width and the ridge strength), kept as JSON in ``calibration.json``.
"""

from __future__ import annotations

import numpy as np

from gradselect.errors import ArtifactError

SURROGATE_VERSION = 1


class ResidualSurrogate:
    """RBF kernel ridge on subset indicators, fitted to residuals.

    Parameters
    ----------
    alpha : float
        Ridge strength (sklearn's ``KernelRidge(alpha=...)``); fixed in advance, never tuned on the truth.
    gamma : float, optional
        RBF width per differing source; default ``1 / n_sources`` (two subsets that differ in every
        source have kernel ``e^-1``).

    Attributes
    ----------
    masks_ : ndarray of bool, shape (n_validated, n_sources)
    dual_coef_ : ndarray of shape (n_validated,)
    offset_ : float
        The mean residual (what the correction tends to far from the validated subsets).
    gamma_ : float
    """

    def __init__(self, alpha: float = 1e-2, gamma: float | None = None):
        self.alpha, self.gamma = alpha, gamma

    def fit(self, masks, residuals) -> "ResidualSurrogate":
        """Fit on validated subsets: ``masks`` (n_validated, n_sources) bool, ``residuals`` (n_validated,)."""
        from sklearn.kernel_ridge import KernelRidge

        masks = np.asarray(masks, dtype=bool)
        residuals = np.asarray(residuals, dtype=float)
        if masks.ndim != 2 or len(masks) != len(residuals) or len(masks) < 1:
            raise ValueError(f"masks {masks.shape} and residuals {residuals.shape} must describe the same subsets")
        self.gamma_ = float(self.gamma if self.gamma is not None else 1.0 / masks.shape[1])
        self.offset_ = float(residuals.mean())
        model = KernelRidge(alpha=self.alpha, kernel="rbf", gamma=self.gamma_).fit(
            masks.astype(float), residuals - self.offset_)
        self.masks_, self.dual_coef_ = masks, np.asarray(model.dual_coef_, dtype=float).ravel()
        return self

    def predict(self, masks) -> np.ndarray:
        """The correction of each subset, shape (n_subsets,)."""
        from sklearn.metrics.pairwise import rbf_kernel

        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.masks_.shape[1]:
            raise ValueError(f"subset matrix must have shape (n_subsets, {self.masks_.shape[1]}), got {masks.shape}")
        if not len(masks):
            return np.zeros(0)
        kernel = rbf_kernel(masks.astype(float), self.masks_.astype(float), gamma=self.gamma_)
        return self.offset_ + kernel @ self.dual_coef_

    @classmethod
    def held_out(cls, masks, residuals, **kwargs) -> np.ndarray:
        """Leave-one-out corrections: subset i's from a surrogate fitted on the others (n_validated,)."""
        masks, residuals = np.asarray(masks, dtype=bool), np.asarray(residuals, dtype=float)
        out = np.empty(len(residuals))
        for i in range(len(residuals)):
            keep = np.arange(len(residuals)) != i
            out[i] = cls(**kwargs).fit(masks[keep], residuals[keep]).predict(masks[i : i + 1])[0]
        return out

    # -- JSON ---------------------------------------------------------------------
    def to_dict(self, source_names: list[str]) -> dict:
        return {"surrogate_version": SURROGATE_VERSION, "kernel": "rbf", "alpha": self.alpha, "gamma": self.gamma_,
                "offset": self.offset_, "sources": list(source_names),
                "subsets": [[n for n, x in zip(source_names, m) if x] for m in self.masks_],
                "dual_coef": [float(x) for x in self.dual_coef_]}

    @classmethod
    def from_dict(cls, data: dict, source_names: list[str], *, where: str = "calibration.json") -> "ResidualSurrogate":
        """Rebuild from :meth:`to_dict`; the sources must be the estimator's, in its order."""
        try:
            if data.get("surrogate_version") != SURROGATE_VERSION or data.get("kernel") != "rbf":
                raise ArtifactError(f"{where}: residual_surrogate has version {data.get('surrogate_version')!r}, "
                                    f"kernel {data.get('kernel')!r}; this gradselect reads version "
                                    f"{SURROGATE_VERSION}, rbf; rerun gradselect validate")
            if list(data["sources"]) != list(source_names):
                raise ArtifactError(f"{where}: residual_surrogate was fitted on sources {data['sources']}, "
                                    f"the features hold {source_names}; rerun gradselect validate")
            index = {n: i for i, n in enumerate(source_names)}
            masks = np.zeros((len(data["subsets"]), len(source_names)), dtype=bool)
            for k, subset in enumerate(data["subsets"]):
                masks[k, [index[n] for n in subset]] = True
            dual = np.asarray(data["dual_coef"], dtype=float)
            if dual.shape != (len(masks),) or not np.isfinite(dual).all():
                raise ArtifactError(f"{where}: residual_surrogate.dual_coef must hold one finite number per subset")
            out = cls(alpha=float(data["alpha"]), gamma=float(data["gamma"]))
            out.gamma_, out.offset_ = float(data["gamma"]), float(data["offset"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{where}: residual_surrogate is malformed ({err!r}); rerun gradselect validate") from None
        out.masks_, out.dual_coef_ = masks, dual
        return out


class CorrectedEstimator:
    """A fitted :class:`~gradselect.estimate.SubsetEstimator` whose estimates carry a residual correction.

    Everything but :meth:`estimate` is the wrapped estimator's (its features, sources, config,
    ``base_loss_``), so every selector and baseline works on it unchanged; only estimated
    losses move. ``predict_logodds`` stays the first-order model's own (the correction is
    on the loss, not per example).
    """

    def __init__(self, estimator, surrogate: ResidualSurrogate):
        self.estimator, self.surrogate_ = estimator, surrogate

    def __getattr__(self, name):
        if name in ("estimator", "surrogate_"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.estimator, name)

    def estimate(self, subsets, *, progress: bool = False) -> np.ndarray:
        """Estimated target dev loss of each subset, corrected, shape (n_subsets,)."""
        masks = self.estimator.subset_masks(subsets)
        return self.estimator.estimate(masks, progress=progress) + self.surrogate_.predict(masks)
