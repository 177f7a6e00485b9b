"""A residual surrogate: what real fine-tunes taught the trust check, applied to every estimate.

The first-order estimate gets the broad effect of each source but misses interactions
between sources and how far fine-tuning really moves. The trust check measures a few
subsets by real fine-tuning; :class:`ResidualSurrogate` fits kernel ridge regression over
subset indicators to the estimator's *residuals* on them, true loss minus estimate, and
:class:`CorrectedEstimator` adds its prediction to the estimate of any subset. This is the
data-model of Kernel Surrogate Models (ICLR 2026) with the first-order estimate as its prior mean.

Kernels (``kernel``)
--------------------
``additive``
    A linear kernel on the centred indicators: ridge regression of the residuals on which sources
    a subset holds, one shrunk effect per source. Real fine-tuning is close to additive over
    sources on our three truth banks (an additive model fitted to the other subsets' truths predicts
    a held-out subset at Spearman 0.82, 0.96 and 0.81, at or near each bank's noise ceiling), so a
    per-source correction is the shape the residuals have; far from the validated subsets it still
    corrects each source's effect.
``rbf``
    An RBF kernel on the indicators (the earlier default). Far from every validated subset the
    correction tends to their mean residual (a shift that changes no ranking); near them it bends
    the estimates toward what was measured. On the same banks it lowered the order of forward
    scores that were already good (docs/results.md).

The surrogate is a handful of numbers (the validated subsets, one dual coefficient each,
the kernel and the ridge strength), kept as JSON in ``calibration.json``.
"""

from __future__ import annotations

import numpy as np

from gradselect.errors import ArtifactError

SURROGATE_VERSION = 1


class ResidualSurrogate:
    """Kernel ridge on subset indicators, fitted to residuals.

    Parameters
    ----------
    kernel : {"additive", "rbf"}
        See the module docstring.
    alpha : float, optional
        Ridge strength (sklearn's ``KernelRidge(alpha=...)``); fixed in advance, never tuned on a
        user's truth. Default: 3 for ``additive`` (in units of the centred indicators, whose squared
        norm per source is about n_validated / 4: a source seen in half of 12 validated subsets keeps
        half its measured effect), 1e-2 for ``rbf``.
    gamma : float, optional
        RBF width per differing source; default ``1 / n_sources`` (two subsets that differ in every
        source have kernel ``e^-1``). ``rbf`` only.

    Attributes
    ----------
    masks_ : ndarray of bool, shape (n_validated, n_sources)
    dual_coef_ : ndarray of shape (n_validated,)
    offset_ : float
        The mean residual (the ``rbf`` correction tends to it far from the validated subsets).
    gamma_ : float or None
        ``None`` for the additive kernel.
    """

    KERNELS = ("additive", "rbf")
    DEFAULT_ALPHA = {"additive": 3.0, "rbf": 1e-2}

    def __init__(self, kernel: str = "additive", alpha: float | None = None, gamma: float | None = None):
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {self.KERNELS}, got {kernel!r}")
        self.kernel, self.gamma = kernel, gamma
        self.alpha = float(self.DEFAULT_ALPHA[kernel] if alpha is None else alpha)

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Kernel matrix between subset matrices ``a`` (m, n_sources) and ``b`` (k, n_sources)."""
        if self.kernel == "rbf":
            from sklearn.metrics.pairwise import rbf_kernel

            return rbf_kernel(a.astype(float), b.astype(float), gamma=self.gamma_)
        centre = self.masks_.mean(axis=0)  # the validated subsets' share holding each source
        return (a.astype(float) - centre) @ (b.astype(float) - centre).T

    def fit(self, masks, residuals) -> "ResidualSurrogate":
        """Fit on validated subsets: ``masks`` (n_validated, n_sources) bool, ``residuals`` (n_validated,)."""
        masks = np.asarray(masks, dtype=bool)
        residuals = np.asarray(residuals, dtype=float)
        if masks.ndim != 2 or len(masks) != len(residuals) or len(masks) < 1:
            raise ValueError(f"masks {masks.shape} and residuals {residuals.shape} must describe the same subsets")
        self.gamma_ = float(self.gamma if self.gamma is not None else 1.0 / masks.shape[1]) \
            if self.kernel == "rbf" else None
        self.masks_ = masks
        self.offset_ = float(residuals.mean())
        from sklearn.kernel_ridge import KernelRidge

        model = KernelRidge(alpha=self.alpha, kernel="precomputed").fit(self._kernel(masks, masks),
                                                                         residuals - self.offset_)
        self.dual_coef_ = np.asarray(model.dual_coef_, dtype=float).ravel()
        return self

    def predict(self, masks) -> np.ndarray:
        """The correction of each subset, shape (n_subsets,)."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.masks_.shape[1]:
            raise ValueError(f"subset matrix must have shape (n_subsets, {self.masks_.shape[1]}), got {masks.shape}")
        if not len(masks):
            return np.zeros(0)
        return self.offset_ + self._kernel(masks, self.masks_) @ self.dual_coef_

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
        return {"surrogate_version": SURROGATE_VERSION, "kernel": self.kernel, "alpha": self.alpha,
                "gamma": self.gamma_, "offset": self.offset_, "sources": list(source_names),
                "subsets": [[n for n, x in zip(source_names, m) if x] for m in self.masks_],
                "dual_coef": [float(x) for x in self.dual_coef_]}

    @classmethod
    def from_dict(cls, data: dict, source_names: list[str], *, where: str = "calibration.json") -> "ResidualSurrogate":
        """Rebuild from :meth:`to_dict`; the sources must be the estimator's, in its order."""
        try:
            if data.get("surrogate_version") != SURROGATE_VERSION or data.get("kernel") not in cls.KERNELS:
                raise ArtifactError(f"{where}: residual_surrogate has version {data.get('surrogate_version')!r}, "
                                    f"kernel {data.get('kernel')!r}; this gradselect reads version "
                                    f"{SURROGATE_VERSION}, kernels {', '.join(cls.KERNELS)}; rerun gradselect validate")
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
            rbf = data["kernel"] == "rbf"
            out = cls(kernel=data["kernel"], alpha=float(data["alpha"]), gamma=float(data["gamma"]) if rbf else None)
            out.gamma_ = float(data["gamma"]) if rbf else None
            out.offset_ = float(data["offset"])
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
