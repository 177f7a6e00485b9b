"""The subset estimator: fine-tuned target loss of any subset of sources, from features.

Follows the scikit-learn contract: ``__init__`` stores the config, ``fit``
reads the features and computes per-source sufficient statistics (and, for the
exact solver, the per-source row blocks) and returns self; fitted state ends in ``_``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from tqdm.auto import tqdm

from gradselect.errors import GradselectError
from gradselect.estimate.config import EstimateConfig
from gradselect.estimate.solvers import (
    RowBlocks,
    SufficientStatistics,
    lowrank_statistics,
    mean_logistic_loss,
    newton_l2,
    quadratic_step,
    quadratic_trust_region,
    refine_on_rows,
    small_system_threads,
    source_statistics,
    trust_region_exact,
)


@dataclasses.dataclass
class FeatureArrays:
    """Features in memory, grouped for estimation.

    Attributes
    ----------
    g : ndarray of shape (n_rows, proj_dim)
        float32 (the feature store's memmap, never copied whole) or float64; solvers cast
        blocks of rows to float64 as they read them.
    b : ndarray of shape (n_rows,), float64
    source_rows : dict of str to int array
        Rows of each auxiliary source, in source order (n_sources).
    train_rows, dev_rows : int arrays
        Rows of the target's train and dev splits.
    param_norm : float
        |theta*| over the differentiated parameters (scale of default step lengths).
    hidden : ndarray of shape (n_rows, hidden_size), optional
        Mean last-layer hidden states (representation-similarity baseline).
    """

    g: np.ndarray
    b: np.ndarray
    source_rows: dict[str, np.ndarray]
    train_rows: np.ndarray
    dev_rows: np.ndarray
    param_norm: float = 1.0
    hidden: np.ndarray | None = None

    @classmethod
    def from_store(cls, store) -> "FeatureArrays":
        g = store.g  # the memmap itself: a float64 copy of every row would double memory at FLAN scale
        b = np.asarray(store.b, dtype=np.float64)
        bad = ~(np.isfinite(g).all(1) & np.isfinite(b))
        if bad.any():
            ids = [store.ids[i] for i in np.flatnonzero(bad)[:10]]
            raise GradselectError(f"{store.path}: non-finite features for example(s) {', '.join(ids)}")
        sources = store.rows_by_source()
        return cls(
            g=g,
            b=b,
            source_rows=sources,
            train_rows=store.rows_of(split="train"),
            dev_rows=store.rows_of(split="dev"),
            param_norm=float(store.manifest.get("param_norm", 1.0)),
            hidden=None if store.hidden is None else np.asarray(store.hidden, dtype=np.float64),
        )

    @property
    def source_names(self) -> list[str]:
        return list(self.source_rows)


#: Below this dev loss at theta* (the logistic loss of the mean log-odds) the functional saturates:
#: the few hard tokens that decide an answer are averaged away (seen on a suite where it was 0.0007).
SATURATED_LOSS = 0.01


class SubsetEstimator:
    """Estimate the target dev loss after fine-tuning on subsets of sources.

    Parameters
    ----------
    config : EstimateConfig, optional
        Mode, solver and their parameters.

    Attributes
    ----------
    source_names_ : list of str
    step_model_ : StepModel
        The mode's step model (:mod:`gradselect.estimate.modes`).
    radius_ : float or None
        Bound on the step length (the trust-region mode; None otherwise).
    base_loss_ : float
        Estimated dev loss at v = 0 (the meta-initialization itself): the
        zero-order baseline every estimate should be compared with.
    gain_error_ : float or None
        RMS error of the estimated gain over the target alone (estimate of the target alone
        minus a subset's), measured by the trust check on subsets it fine-tuned for real
        (set by :func:`gradselect.validate.apply_surrogate`; None without a trust check):
        the error selection's evidence margin allows for.

    Examples
    --------
    >>> est = SubsetEstimator(EstimateConfig(mode="l2", lam=1e-2)).fit(arrays)  # doctest: +SKIP
    >>> est.estimate([["a", "b"], ["c"]])  # doctest: +SKIP
    array([0.41, 0.47])
    """

    def __init__(self, config: EstimateConfig | None = None):
        self.config = config

    # -- fitting ------------------------------------------------------------------
    def fit(self, features) -> "SubsetEstimator":
        """Read features (a FeatureStore or FeatureArrays) and precompute statistics."""
        cfg = self.config or EstimateConfig()
        arrays = features if isinstance(features, FeatureArrays) else FeatureArrays.from_store(features)
        if not len(arrays.dev_rows):
            raise GradselectError("the features hold no target dev rows; estimation needs them")
        if not arrays.source_rows:
            raise GradselectError("the features hold no auxiliary sources")
        if cfg.include_target_train and not len(arrays.train_rows):
            raise GradselectError("include_target_train is set but the features hold no target train rows")
        self.config_ = cfg
        self.arrays_ = arrays
        self.source_names_ = arrays.source_names
        self.n_sources_ = len(self.source_names_)
        self.step_model_ = cfg.step_model(arrays.param_norm)
        self.radius_ = self.step_model_.radius
        g_dev = np.asarray(arrays.g[arrays.dev_rows], dtype=np.float64)
        b_dev = np.asarray(arrays.b[arrays.dev_rows], dtype=np.float64)
        self._g_dev, self._b_dev = g_dev, b_dev
        self.base_loss_ = float(mean_logistic_loss(b_dev))
        self.gain_error_ = None
        if self.base_loss_ < SATURATED_LOSS:
            warnings.warn(
                f"the meta-initialization is already confident on the target dev split (its loss in the estimator's "
                f"functional is {self.base_loss_:.2g} < {SATURATED_LOSS}): the functional saturates there, so "
                "estimates barely separate subsets and their ranking may be close to chance; meta-train for less "
                "(fewer epochs, [train] select_best_on_dev) or check the ranking with gradselect validate",
                UserWarning, stacklevel=2)
        b = arrays.b if self.step_model_.offsets else np.zeros_like(arrays.b)
        groups = [arrays.source_rows[n] for n in self.source_names_]
        base = arrays.train_rows if cfg.include_target_train else None
        all_groups = groups + ([base] if base is not None else [])
        # The exact solver starts from (and is preconditioned by) the low-rank model, which is built
        # without per-source d x d matrices (what makes thousands of sources fit in memory).
        if cfg.solver == "fast":
            stats = SufficientStatistics.plain(*source_statistics(arrays.g, b, all_groups))
        else:
            stats = lowrank_statistics(arrays.g, b, all_groups, cfg.rank)
        stats = stats.to(cfg.solver_device())
        self.stats_ = stats[: self.n_sources_]
        self.base_stats_ = stats[self.n_sources_ :] if base is not None else None
        if cfg.solver == "exact":
            self.rows_ = RowBlocks(arrays.g, b, groups, base)
        return self

    def with_config(self, config: EstimateConfig) -> "SubsetEstimator":
        """This estimator with another config, fitted; its statistics are shared when only the step differs.

        The statistics depend on the solver, its rank, the target train rows and whether the
        step model uses offsets, not on the step's parameter (radius, lam): a calibration grid
        over steps then costs one fit, not one per value.
        """
        from gradselect.estimate.modes import STEP_MODELS

        self._check_fitted()
        old = self.config_
        shared = ((config.solver, config.rank, config.include_target_train, config.device)
                  == (old.solver, old.rank, old.include_target_train, old.device)
                  and STEP_MODELS[config.mode].offsets == self.step_model_.offsets)
        if not shared:
            return SubsetEstimator(config).fit(self.arrays_)
        new = SubsetEstimator(config)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "config"})
        new.config_ = config
        new.step_model_ = config.step_model(self.arrays_.param_norm)
        new.radius_ = new.step_model_.radius
        return new

    def _check_fitted(self):
        if not hasattr(self, "config_"):
            raise GradselectError("this SubsetEstimator is not fitted yet; call fit(features) first")

    # -- subsets ------------------------------------------------------------------
    def subset_masks(self, subsets) -> np.ndarray:
        """Subsets as a boolean matrix of shape (n_subsets, n_sources).

        Parameters
        ----------
        subsets : array-like of bool, shape (n_subsets, n_sources), or sequence of sequences of names
        """
        self._check_fitted()
        if isinstance(subsets, np.ndarray) and subsets.dtype == bool:
            masks = subsets
        elif len(subsets) and all(isinstance(s, (list, tuple, set, frozenset)) for s in subsets):
            index = {n: i for i, n in enumerate(self.source_names_)}
            masks = np.zeros((len(subsets), self.n_sources_), dtype=bool)
            for k, names in enumerate(subsets):
                unknown = [n for n in names if n not in index]
                if unknown:
                    raise GradselectError(f"subset {k} names unknown source(s) {unknown}; sources are {self.source_names_}")
                masks[k, [index[n] for n in names]] = True
        else:
            masks = np.asarray(subsets)
            if masks.dtype != bool:
                raise GradselectError("subsets must be a boolean matrix or lists of source names")
        if masks.ndim != 2 or masks.shape[1] != self.n_sources_:
            raise GradselectError(f"subset matrix must have shape (n_subsets, {self.n_sources_}), got {masks.shape}")
        if not self.config_.include_target_train and not masks.any(1).all():
            raise GradselectError("an empty subset has no training rows when include_target_train is false")
        return masks

    # -- solving ------------------------------------------------------------------
    def solve(self, subsets, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """The fitted step ``v_S`` of each subset, shape (n_subsets, proj_dim).

        ``progress``: a progress bar over the batches (when there is more than one).
        """
        masks = self.subset_masks(subsets)
        exact = self.config_.solver == "exact"
        # Batches of about 4M system entries (64 subsets at d = 256 in the full-rank form);
        # exact batches are capped where per-source GEMMs stop gaining from width.
        batch_size = batch_size or int(np.clip(2**22 // max(self.stats_.dense.shape[1] ** 2, 1), 1, 256 if exact else 4096))
        solve = self._solve_exact if exact else self._solve_fast
        parts = []
        with tqdm(total=len(masks), unit="subset", desc="estimate", disable=not progress or len(masks) <= batch_size) as bar:
            for i in range(0, len(masks), batch_size):
                parts.append(solve(masks[i : i + batch_size]))
                bar.update(len(parts[-1]))
        return np.concatenate(parts) if parts else np.zeros((0, self.arrays_.g.shape[1]))

    def _solve_fast(self, masks: np.ndarray) -> np.ndarray:
        with small_system_threads(self.stats_.dense.shape[1]):
            return self._solve_fast_batch(masks)

    def _solve_fast_batch(self, masks: np.ndarray) -> np.ndarray:
        stats = self.stats_.summed(masks, self.base_stats_, self.target_copies(masks))
        system = stats.system(self.step_model_.ridge(stats.counts))
        if self.radius_ is not None:
            return self.step_model_.finish(stats.to_parameters(quadratic_trust_region(*system, self.radius_)))
        return self.step_model_.finish(stats.to_parameters(quadratic_step(*system)))

    def _solve_exact(self, masks: np.ndarray) -> np.ndarray:
        cfg = self.config_
        copies = self.target_copies(masks)
        stats = self.stats_.summed(masks, self.base_stats_, copies)
        v, converged = refine_on_rows(self.rows_, masks, stats, ridge=self.step_model_.ridge(stats.counts),
                                      radius=self.radius_, tol=cfg.tol, max_iter=cfg.max_iter, base_copies=copies)
        for i in np.flatnonzero(~converged):  # stalled, or the radius does not bind: plain Newton
            v[i] = self._solve_one(masks[i])
        return self.step_model_.finish(v)

    def _rows(self, mask: np.ndarray) -> np.ndarray:
        parts = [self.arrays_.source_rows[self.source_names_[i]] for i in np.flatnonzero(mask)]
        if self.config_.include_target_train:
            copies = self.target_copies(mask[None])
            parts += [self.arrays_.train_rows] * (1 if copies is None else int(copies[0]))
        return np.concatenate(parts)

    def target_copies(self, masks: np.ndarray) -> np.ndarray | None:
        """How many times each subset's fine-tune repeats the target's train rows, shape (n_subsets,)
        (``target_share``, :func:`~gradselect.data.examples.target_repeats`); None: once each."""
        from gradselect.data.examples import target_repeats

        share = self.config_.target_share
        if share is None or not self.config_.include_target_train:
            return None
        sizes = np.asarray(masks, dtype=np.int64) @ np.array([len(self.arrays_.source_rows[n]) for n in self.source_names_])
        n_target = len(self.arrays_.train_rows)
        return np.array([target_repeats(n_target, int(n), share) for n in sizes], dtype=np.float64)

    def _solve_one(self, mask: np.ndarray) -> np.ndarray:
        """One subset by plain Newton on its rows (before any rescaling)."""
        cfg = self.config_
        rows = self._rows(mask)
        g, b = np.asarray(self.arrays_.g[rows], dtype=np.float64), self.arrays_.b[rows]
        if not self.step_model_.offsets:
            b = np.zeros_like(b)
        ridge = self.step_model_.ridge(len(rows))
        if self.radius_ is not None:
            return trust_region_exact(g, b, self.radius_, ridge=ridge, tol=cfg.tol, max_iter=cfg.max_iter)
        return newton_l2(g, b, ridge, tol=cfg.tol, max_iter=cfg.max_iter)[0]

    # -- predicting ---------------------------------------------------------------
    def predict_logodds(self, subsets, *, progress: bool = False) -> np.ndarray:
        """Predicted dev log-odds ``b + g . v_S``, shape (n_subsets, n_dev)."""
        v = self.solve(subsets, progress=progress)
        return self._b_dev[None, :] + v @ self._g_dev.T

    def predict_example_losses(self, subsets, *, progress: bool = False) -> np.ndarray:
        """Per dev example, the predicted logistic loss of its log-odds, shape (n_subsets, n_dev); the mean over
        examples is :meth:`estimate`."""
        return np.logaddexp(0.0, -self.predict_logodds(subsets, progress=progress))

    def estimate(self, subsets, *, progress: bool = False) -> np.ndarray:
        """Estimated target dev loss of each subset, shape (n_subsets,)."""
        z = self.predict_logodds(subsets, progress=progress)
        return mean_logistic_loss(z, axis=1)
