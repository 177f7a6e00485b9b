"""The subset estimator against independent solvers, and its invariances."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from conftest import reorder_sources
from gradselect.errors import GradselectError
from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator
from gradselect.estimate.solvers import (
    mean_logistic_loss,
    newton_l2,
    quadratic_step,
    quadratic_trust_region,
    refine_on_rows,
    trust_region_exact,
)


def synthetic(seed=0, n_sources=5, per_source=80, d=12):
    rng = np.random.default_rng(seed)
    n_rows = 100 + n_sources * per_source
    g = rng.normal(size=(n_rows, d))
    b = rng.normal(1.0, 1.0, size=n_rows)
    sources = {f"s{i}": np.arange(100 + i * per_source, 100 + (i + 1) * per_source) for i in range(n_sources)}
    return FeatureArrays(g, b, sources, np.arange(0, 60), np.arange(60, 100), param_norm=10.0)


def rows_of(arr, names):
    return np.concatenate([arr.source_rows[n] for n in names] + [arr.train_rows])


def test_exact_l2_agrees_with_lbfgs():
    arr = synthetic()
    rows = rows_of(arr, ["s0", "s3"])
    g, b, lam = arr.g[rows], arr.b[rows], 1e-2
    v, _ = newton_l2(g, b, lam, tol=1e-12)
    objective = lambda v: mean_logistic_loss(b + g @ v) + lam * v @ v  # noqa: E731
    gradient = lambda v: -(g.T @ (1 / (1 + np.exp(b + g @ v)))) / len(b) + 2 * lam * v  # noqa: E731
    ref = minimize(objective, np.zeros(g.shape[1]), jac=gradient, method="L-BFGS-B",
                   options=dict(gtol=1e-13, ftol=1e-16, maxiter=10_000)).x
    assert np.abs(v - ref).max() < 1e-6
    est = SubsetEstimator(EstimateConfig(mode="l2", solver="exact", lam=lam)).fit(arr)
    assert np.allclose(est.solve([["s0", "s3"]])[0], v, atol=1e-9)
    dev = arr.dev_rows
    assert np.isclose(est.estimate([["s0", "s3"]])[0], mean_logistic_loss(arr.b[dev] + arr.g[dev] @ v))


def test_trust_region_binds_at_radius_and_matches_constrained_solver():
    arr = synthetic(1)
    rows = rows_of(arr, ["s1", "s2"])
    g, b, r = arr.g[rows], arr.b[rows], 0.25
    v = trust_region_exact(g, b, r)
    assert np.isclose(np.linalg.norm(v), r, rtol=1e-9)
    ref = minimize(
        lambda v: mean_logistic_loss(b + g @ v), np.zeros(g.shape[1]), method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda v: r**2 - v @ v}], options=dict(ftol=1e-15, maxiter=1000),
    ).x
    assert np.abs(v - ref).max() < 1e-6
    # With a radius larger than the ridge solution's norm, the constraint does not bind.
    big = trust_region_exact(g, b, 1e6, ridge=1e-1)
    assert np.allclose(big, newton_l2(g, b, 1e-1)[0])


def test_fast_equals_one_exact_newton_step():
    arr = synthetic(2)
    subsets = [["s0"], ["s1", "s2", "s4"], []]
    fast = SubsetEstimator(EstimateConfig(mode="l2", solver="fast", lam=1e-2)).fit(arr)
    one_step = np.stack([newton_l2(arr.g[rows_of(arr, s)], arr.b[rows_of(arr, s)], 1e-2, max_iter=1)[0] for s in subsets])
    assert np.allclose(fast.solve(subsets), one_step, rtol=1e-10, atol=1e-12)
    # Strong regularisation keeps v tiny, where one step is (nearly) the whole solution.
    fast = SubsetEstimator(EstimateConfig(mode="l2", solver="fast", lam=1e3)).fit(arr)
    exact = SubsetEstimator(EstimateConfig(mode="l2", solver="exact", lam=1e3)).fit(arr)
    assert np.allclose(fast.estimate(subsets), exact.estimate(subsets), rtol=1e-9)


@pytest.mark.parametrize("mode", ["l2", "trust_region", "reference"])
def test_lowrank_at_full_rank_equals_fast(mode):
    arr = synthetic(6)
    masks = np.random.default_rng(1).random((8, 5)) < 0.5
    cfg = EstimateConfig(mode=mode, lam=1e-2, radius=0.5)
    fast = SubsetEstimator(cfg).fit(arr).solve(masks)
    full = SubsetEstimator(cfg.model_copy(update={"solver": "lowrank", "rank": 12})).fit(arr).solve(masks)
    assert np.allclose(full, fast, rtol=1e-8, atol=1e-12)


def test_lowrank_is_exact_when_gradients_share_a_low_dimensional_subspace():
    # Rows in a common 4-dim subspace of R^12: every Hessian lives there, so rank 4 loses nothing.
    arr = synthetic(7)
    basis = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 4)))[0]
    arr.g = arr.g @ basis @ basis.T
    masks = np.random.default_rng(3).random((8, 5)) < 0.5
    for mode in ("trust_region", "l2"):
        cfg = EstimateConfig(mode=mode, lam=1e-2, radius=0.3)
        fast = SubsetEstimator(cfg).fit(arr).estimate(masks)
        low = SubsetEstimator(cfg.model_copy(update={"solver": "lowrank", "rank": 4})).fit(arr).estimate(masks)
        assert np.allclose(low, fast, rtol=1e-9)


def test_block_trust_region_equals_the_dense_block_diagonal_problem():
    rng = np.random.default_rng(4)
    m, k, d = 5, 3, 7
    x = rng.normal(size=(m, k, 2 * k))
    a = torch.as_tensor(x @ x.transpose(0, 2, 1) + 0.1 * np.eye(k))
    tail = torch.as_tensor(rng.uniform(0.1, 3.0, size=(m, d - k)))
    g = torch.as_tensor(rng.normal(size=(m, d)))
    dense = torch.zeros(m, d, d, dtype=torch.float64)
    dense[:, :k, :k] = a
    dense[:, k:, k:] = torch.diag_embed(tail)
    for radius in (1e-3, 0.3, 1e3):
        block = quadratic_trust_region(a.clone(), tail, g, radius)
        ref = quadratic_trust_region(dense.clone(), None, g, radius)
        assert np.allclose(block, ref, rtol=1e-9, atol=1e-13)
    assert np.allclose(quadratic_step(a, tail, g), quadratic_step(dense, None, g), rtol=1e-10)
    assert np.allclose(quadratic_trust_region(a.clone(), tail, g, 1e3), quadratic_step(a, tail, g), rtol=1e-9)


def test_small_radius_is_a_normalised_mean_gradient_step():
    arr = synthetic(3)
    r = 1e-6
    for solver in ("fast", "lowrank", "exact"):
        est = SubsetEstimator(EstimateConfig(solver=solver, radius=r)).fit(arr)
        v = est.solve([["s2"]])[0]
        rows = rows_of(arr, ["s2"])
        mean_grad = -(arr.g[rows].T @ (1 / (1 + np.exp(arr.b[rows])))) / len(rows)
        assert np.isclose(np.linalg.norm(v), r, rtol=1e-6)
        assert np.allclose(v, -r * mean_grad / np.linalg.norm(mean_grad), rtol=1e-4, atol=1e-12)


def test_reference_mode_matches_sklearn_direction():
    from sklearn.linear_model import LogisticRegression

    arr = synthetic(4)
    est = SubsetEstimator(EstimateConfig(mode="reference", solver="exact", reference_c=1e-2)).fit(arr)
    v = est.solve([["s0", "s1"]])[0]
    assert np.isclose(np.linalg.norm(v), 0.1 * arr.param_norm)
    rows = rows_of(arr, ["s0", "s1"])
    x = arr.g[rows].copy()
    y = np.ones(len(rows))
    x[::2] *= -1  # the authors' sign-flip trick: gives sklearn two classes, same loss
    y[::2] = 0
    clf = LogisticRegression(C=1e-2, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(x, y)
    coef = clf.coef_[0]
    assert np.allclose(v / np.linalg.norm(v), coef / np.linalg.norm(coef), atol=1e-6)
    fast = SubsetEstimator(EstimateConfig(mode="reference", solver="fast", reference_c=1e-2)).fit(arr)
    assert np.isclose(np.dot(fast.solve([["s0", "s1"]])[0], v) / np.linalg.norm(v) ** 2, 1.0, atol=1e-3)


@pytest.mark.parametrize("mode", ["l2", "trust_region", "reference"])
@pytest.mark.parametrize("solver", ["fast", "lowrank", "exact"])
def test_reordering_sources_changes_nothing(mode, solver):
    arr = synthetic(5)
    perm = [3, 0, 4, 1, 2]
    shuffled = reorder_sources(arr, perm)
    cfg = EstimateConfig(mode=mode, solver=solver, lam=1e-2, radius=0.5)
    masks = np.random.default_rng(0).random((6, 5)) < 0.5
    a = SubsetEstimator(cfg).fit(arr).estimate(masks)
    b = SubsetEstimator(cfg).fit(shuffled).estimate(masks[:, perm])
    assert np.allclose(a, b, rtol=1e-10)


def test_input_errors():
    arr = synthetic()
    with pytest.raises(GradselectError, match="not fitted"):
        SubsetEstimator().estimate([["s0"]])
    est = SubsetEstimator().fit(arr)
    with pytest.raises(GradselectError, match=r"subset 1 names unknown source\(s\) \['nope'\]"):
        est.estimate([["s0"], ["nope"]])
    with pytest.raises(GradselectError, match=r"shape \(n_subsets, 5\)"):
        est.estimate(np.ones((2, 3), dtype=bool))
    est = SubsetEstimator(EstimateConfig(include_target_train=False)).fit(arr)
    with pytest.raises(GradselectError, match="empty subset"):
        est.estimate([[]])
    assert est.base_loss_ == pytest.approx(mean_logistic_loss(arr.b[arr.dev_rows]))


def test_kkt_newton_and_the_bracketed_fallback_agree():
    from gradselect.estimate.solvers import _kkt_newton, _trust_region_bracketed

    arr = synthetic(8)
    rows = rows_of(arr, ["s0", "s2"])
    g, b = arr.g[rows], arr.b[rows]
    for r in (0.05, 0.2):  # both bind: the unconstrained minimiser has norm 0.44
        fast_path = _kkt_newton(g, b, r, 1e-8, tol=1e-11, max_iter=100)
        assert fast_path is not None and np.isclose(np.linalg.norm(fast_path), r, rtol=1e-10)
        assert np.allclose(fast_path, _trust_region_bracketed(g, b, r, ridge=1e-8, tol=1e-11, max_iter=100), atol=1e-8)


@pytest.mark.parametrize("mode", ["l2", "trust_region", "reference"])
def test_batched_exact_with_a_low_rank_start_equals_plain_newton_per_subset(mode):
    # Rank 2 of d = 12: a poor model Hessian, so the rows have to do the work. Radius 0.25
    # binds for every subset here (the unconstrained solutions have norms 0.33-0.54).
    arr = synthetic(9)
    masks = np.random.default_rng(5).random((7, 5)) < 0.5
    cfg = EstimateConfig(mode=mode, solver="exact", rank=2, lam=1e-2, radius=0.25, reference_c=1e-2, tol=1e-12)
    est = SubsetEstimator(cfg).fit(arr)
    stats = est.stats_.summed(masks, est.base_stats_)
    ridge = 1e-2 if mode == "l2" else (1e-8 if mode == "trust_region" else 1 / (2e-2 * stats.counts))
    v, converged = refine_on_rows(est.rows_, masks, stats, ridge=ridge, radius=0.25 if mode == "trust_region" else None,
                                  tol=1e-12)
    assert converged.all()  # no subset needed the per-subset fallback
    plain = np.stack([est._solve_one(m) for m in masks])
    assert np.allclose(v, plain, rtol=1e-8, atol=1e-11)
    if mode == "trust_region":
        assert np.allclose(np.linalg.norm(v, axis=1), 0.25, rtol=1e-12)
    assert np.allclose(est.solve(masks), est.step_model_.finish(v), rtol=1e-12, atol=1e-15)


def test_batched_exact_hands_non_binding_radii_to_the_fallback():
    arr = synthetic(10)
    masks = np.random.default_rng(6).random((4, 5)) < 0.5
    est = SubsetEstimator(EstimateConfig(solver="exact", radius=1e6, lam=1e5)).fit(arr)  # ridge 0.1
    stats = est.stats_.summed(masks, est.base_stats_)
    _, converged = refine_on_rows(est.rows_, masks, stats, ridge=0.1, radius=1e6)
    assert not converged.any()  # the ridge solution lies inside the ball: the multiplier went negative
    ridge_solutions = [newton_l2(arr.g[r], arr.b[r], 0.1)[0] for r in (est._rows(m) for m in masks)]
    assert np.allclose(est.solve(masks), np.stack(ridge_solutions), rtol=1e-9)


def test_batched_exact_where_the_chord_stalls_still_returns_the_newton_solution():
    # Fewer rows than dimensions and a weak ridge: long steps, the model Hessian is a poor
    # Jacobian, and the stalled subsets are finished by per-subset Newton.
    arr = synthetic(11, per_source=4, d=200)
    masks = np.random.default_rng(7).random((5, 5)) < 0.5
    est = SubsetEstimator(EstimateConfig(mode="l2", solver="exact", lam=1e-5)).fit(arr)
    stats = est.stats_.summed(masks, est.base_stats_)
    _, converged = refine_on_rows(est.rows_, masks, stats, ridge=1e-5)
    plain = np.stack([est._solve_one(m) for m in masks])
    assert np.allclose(est.solve(masks), plain, rtol=1e-8, atol=1e-10)
    assert not converged.any()  # here every subset went to the fallback


def test_progress_bar_over_batches_changes_nothing(capsys):
    arr = synthetic(12)
    masks = np.random.default_rng(8).random((10, 5)) < 0.5
    est = SubsetEstimator(EstimateConfig(solver="exact")).fit(arr)
    quiet = est.estimate(masks)
    est.solve(masks, batch_size=3, progress=True)
    assert "estimate" in capsys.readouterr().err
    assert np.allclose(est.predict_logodds(masks, progress=True), est.predict_logodds(masks))
    assert np.allclose(est.estimate(masks, progress=True), quiet)


@pytest.mark.parametrize("mode", ["l2", "trust_region", "reference"])
def test_batched_exact_without_target_train_rows(mode):
    arr = synthetic(13)
    masks = np.random.default_rng(9).random((6, 5)) < 0.6
    masks[masks.sum(1) == 0, 0] = True
    cfg = EstimateConfig(mode=mode, solver="exact", include_target_train=False, radius=0.2, lam=1e-2,
                         reference_c=1e-2, tol=1e-12)
    est = SubsetEstimator(cfg).fit(arr)
    plain = np.stack([est._solve_one(m) for m in masks])
    assert np.allclose(est.solve(masks), est.step_model_.finish(plain), rtol=1e-8, atol=1e-10)


def test_streaming_lowrank_statistics_equal_the_dense_path_and_accept_float32():
    from gradselect.estimate.solvers import (
        SufficientStatistics,
        lowrank_statistics,
        quadratic_trust_region,
        source_statistics,
    )

    rng = np.random.default_rng(3)
    g = rng.normal(size=(600, 12)).astype(np.float32).astype(np.float64)
    b = rng.normal(1.0, 0.5, size=600)
    groups = [np.arange(i * 100, (i + 1) * 100) for i in range(6)]
    masks = rng.random((20, 6)) < 0.5
    masks[:, 0] = True
    dense = SufficientStatistics.lowrank(*source_statistics(g, b, groups), 4)
    streamed = lowrank_statistics(g.astype(np.float32), b, groups, 4, block_rows=37)  # float32 in, blocks

    def steps(stats):  # in projected coordinates: independent of the signs of the basis columns
        return stats.to_parameters(quadratic_trust_region(*stats.summed(masks).system(1e-9), 0.3))

    assert np.allclose(steps(dense), steps(streamed), rtol=1e-8, atol=1e-10)


def test_a_saturated_functional_is_said():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(60, 4))
    b = np.full(60, 12.0)  # every gold token already near-certain at theta*
    arrays = FeatureArrays(g, b, {"a": np.arange(20, 40), "b": np.arange(40, 60)}, np.arange(0, 10), np.arange(10, 20))
    with pytest.warns(UserWarning, match="functional saturates"):
        SubsetEstimator(EstimateConfig()).fit(arrays)


@pytest.mark.parametrize("solver", ["fast", "lowrank", "exact"])
def test_with_config_shares_statistics_and_equals_a_fresh_fit(solver):
    arrays = synthetic()
    subsets = [["s0", "s1"], ["s2"], ["s1", "s3", "s4"]]
    fitted = SubsetEstimator(EstimateConfig(solver=solver, rank=6)).fit(arrays)
    for change in ({"radius": 0.3}, {"mode": "l2", "lam": 1e-2}, {"mode": "reference"}):
        cfg = EstimateConfig(solver=solver, rank=6, **change)
        shared = fitted.with_config(cfg)
        fresh = SubsetEstimator(cfg).fit(arrays)
        assert np.allclose(shared.estimate(subsets), fresh.estimate(subsets), rtol=1e-9, atol=1e-12), change
        # Statistics are shared unless the step model drops the offsets (reference): then refitted.
        assert (shared.stats_ is fitted.stats_) == (change.get("mode") != "reference")
        assert shared.config_ is cfg and fitted.config_.radius is None  # the original is untouched


def test_small_batched_systems_run_on_one_thread_and_restore_the_setting(monkeypatch):
    from gradselect.estimate import solvers

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        original = solvers.quadratic_trust_region
        monkeypatch.setattr("gradselect.estimate.estimator.quadratic_trust_region",
                            lambda *a, **k: seen.append(torch.get_num_threads()) or original(*a, **k))
        arrays = synthetic(d=12)
        SubsetEstimator(EstimateConfig(solver="lowrank", rank=6)).fit(arrays).estimate([["s0"], ["s1", "s2"]])
        assert seen == [1] and torch.get_num_threads() == 2  # pinned for the small systems, then restored
        with solvers.small_system_threads(solvers.SMALL_SYSTEM + 1):
            assert torch.get_num_threads() == 2  # large systems keep the threads
    finally:
        torch.set_num_threads(before)


def test_device_names_are_checked_and_a_missing_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="device must be cpu, cuda"):
        EstimateConfig(device="tpu")
    with pytest.warns(UserWarning, match="device is ignored by solver 'exact'"):
        EstimateConfig(solver="exact", device="auto")
    assert EstimateConfig(device="auto").solver_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(GradselectError, match="no CUDA GPU"):
            SubsetEstimator(EstimateConfig(device="cuda")).fit(synthetic())


def _on_device_and_cpu(device):
    arrays = synthetic(4, d=12)
    subsets = [["s0", "s1"], ["s2"], ["s1", "s3", "s4"], []]
    for cfg in (EstimateConfig(), EstimateConfig(mode="l2", lam=1e-2), EstimateConfig(mode="reference"),
                EstimateConfig(solver="lowrank", rank=6, radius=0.3)):
        on_cpu = SubsetEstimator(cfg).fit(arrays)
        there = SubsetEstimator(cfg.model_copy(update={"device": device})).fit(arrays)
        assert there.stats_.grads.device.type == torch.device(device).type
        assert np.allclose(there.estimate(subsets), on_cpu.estimate(subsets), rtol=1e-9, atol=1e-12), cfg


def test_auto_device_without_a_gpu_solves_on_the_cpu_alike():
    _on_device_and_cpu("cpu")
    if not torch.cuda.is_available():
        est = SubsetEstimator(EstimateConfig(device="auto")).fit(synthetic())
        assert est.stats_.grads.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_subsets_solved_on_cuda_equal_the_cpu_solves():
    _on_device_and_cpu("cuda")


@pytest.mark.parametrize("solver", ["fast", "lowrank", "exact"])
@pytest.mark.parametrize("mode", ["trust_region", "l2"])
def test_target_share_equals_training_on_the_repeated_target_rows(solver, mode):
    """``target_share`` counts the target's train rows as often as the fine-tune repeats them: the same
    estimate as features whose target rows are copied that many times, per subset."""
    from gradselect.data.examples import target_repeats

    arr = synthetic(3, per_source=40)
    n_target = len(arr.train_rows)  # 60 target rows, 40 per source
    subsets = [[], ["s0"], ["s1", "s2"], ["s0", "s2", "s3", "s4"]]
    share = 0.8
    est = SubsetEstimator(EstimateConfig(mode=mode, solver=solver, target_share=share)).fit(arr)
    copies = [target_repeats(n_target, 40 * len(s), share) for s in subsets]
    assert copies == [1, 3, 5, 11]
    assert list(est.target_copies(est.subset_masks(subsets))) == copies
    got = est.estimate(subsets)
    for s, c, value in zip(subsets, copies, got):
        repeated = FeatureArrays(arr.g, arr.b, arr.source_rows, np.tile(arr.train_rows, c), arr.dev_rows,
                                 param_norm=arr.param_norm)
        plain = SubsetEstimator(EstimateConfig(mode=mode, solver=solver)).fit(repeated)
        assert np.isclose(value, plain.estimate([s])[0], rtol=1e-7, atol=1e-9)
    # the share changes the estimate of a mixture, never that of the target alone
    natural = SubsetEstimator(EstimateConfig(mode=mode, solver=solver)).fit(arr).estimate(subsets)
    assert np.isclose(got[0], natural[0]) and not np.isclose(got[3], natural[3])
