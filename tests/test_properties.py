"""Property-based tests (hypothesis): invariances of the estimator, finiteness, loader robustness."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import reorder_sources
from gradselect.data import SourceSpec, load_sources
from gradselect.errors import GradselectError
from gradselect.estimate import EstimateConfig, FeatureArrays, SubsetEstimator

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODES = st.sampled_from([("trust_region", "fast"), ("l2", "fast"), ("reference", "fast"), ("trust_region", "exact"),
                         ("l2", "exact")])


def features(seed, n_sources, d, scale=1.0, offset_scale=1.0):
    rng = np.random.default_rng(seed)
    per = 12
    n_rows = 20 + n_sources * per
    g = rng.normal(size=(n_rows, d)) * scale
    b = rng.normal(0.5, 1.0, size=n_rows) * offset_scale
    sources = {f"s{i}": np.arange(20 + i * per, 20 + (i + 1) * per) for i in range(n_sources)}
    return FeatureArrays(g, b, sources, np.arange(0, 10), np.arange(10, 20), param_norm=2.0)


@SETTINGS
@given(seed=st.integers(0, 10_000), n_sources=st.integers(2, 6), d=st.integers(1, 8), mode=MODES, data=st.data())
def test_estimates_are_invariant_to_source_order(seed, n_sources, d, mode, data):
    arr = features(seed, n_sources, d)
    perm = data.draw(st.permutations(range(n_sources)))
    shuffled = reorder_sources(arr, perm)
    cfg = EstimateConfig(mode=mode[0], solver=mode[1], lam=1e-2, radius=0.3)
    masks = np.random.default_rng(seed).random((5, n_sources)) < 0.5
    a = SubsetEstimator(cfg).fit(arr).estimate(masks)
    b = SubsetEstimator(cfg).fit(shuffled).estimate(masks[:, perm])
    assert np.allclose(a, b, rtol=1e-8, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), n_sources=st.integers(2, 5), d=st.integers(1, 8), mode=MODES)
def test_an_exact_duplicate_source_is_interchangeable_with_its_original(seed, n_sources, d, mode):
    arr = features(seed, n_sources, d)
    with_copy = FeatureArrays(arr.g, arr.b, {**arr.source_rows, "copy": arr.source_rows["s0"]}, arr.train_rows,
                              arr.dev_rows, arr.param_norm)
    cfg = EstimateConfig(mode=mode[0], solver=mode[1], lam=1e-2, radius=0.3)
    est, est_copy = SubsetEstimator(cfg).fit(arr), SubsetEstimator(cfg).fit(with_copy)
    subsets = [["s0"], ["s0", "s1"], ["s1"], []]
    swapped = [["copy"], ["copy", "s1"], ["s1"], []]
    assert np.allclose(est.estimate(subsets), est_copy.estimate(subsets), rtol=1e-8, atol=1e-12)
    assert np.allclose(est.estimate(subsets), est_copy.estimate(swapped), rtol=1e-8, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), d=st.integers(1, 6), scale=st.sampled_from([1e-6, 1.0, 1e3]),
       offset_scale=st.sampled_from([0.0, 1.0, 40.0]), mode=MODES)
def test_estimates_are_finite_for_any_finite_features(seed, d, scale, offset_scale, mode):
    arr = features(seed, 3, d, scale, offset_scale)
    cfg = EstimateConfig(mode=mode[0], solver=mode[1], lam=1e-3, radius=0.5)
    out = SubsetEstimator(cfg).fit(arr).estimate(np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=bool))
    assert np.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@SETTINGS
@given(payload=st.binary(max_size=300))
def test_loaders_fed_random_bytes_fail_only_with_our_error(tmp_path, suffix, payload):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(payload)
    try:
        load_sources(SourceSpec(path=str(path)))
    except GradselectError:
        pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(rows=st.lists(JSON_VALUES, max_size=6))
def test_loaders_fed_random_structures_fail_only_with_our_error(tmp_path, rows):
    jsonl = tmp_path / "random.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    whole = tmp_path / "random.json"
    whole.write_text(json.dumps(rows if len(rows) % 2 else {"examples": rows}))
    for path in (jsonl, whole):
        try:
            load_sources(SourceSpec(path=str(path)))
        except GradselectError:
            pass


@SETTINGS
@given(seed=st.integers(0, 10_000), n_sources=st.integers(2, 6), d=st.integers(1, 6),
       method=st.sampled_from(["forward", "backward", "grad-sim", "ensemble"]), data=st.data())
def test_selection_is_invariant_to_source_order(seed, n_sources, d, method, data):
    from gradselect.select import SELECTORS, EnsembleSelector

    arr = features(seed, n_sources, d)
    perm = data.draw(st.permutations(range(n_sources)))
    names = arr.source_names
    shuffled = reorder_sources(arr, perm)
    cfg = EstimateConfig(radius=0.3)
    if method == "ensemble":
        # The sampled subsets depend on source positions; scoring the same subsets must not.
        masks = EnsembleSelector(n_subsets=12, seed=seed).sample_subsets(n_sources)
        a = SubsetEstimator(cfg).fit(arr).estimate(masks)
        b = SubsetEstimator(cfg).fit(shuffled).estimate(masks[:, perm])
        assert np.allclose(a, b, rtol=1e-9)
        return
    a = SELECTORS[method]().select(SubsetEstimator(cfg).fit(arr))
    b = SELECTORS[method]().select(SubsetEstimator(cfg).fit(shuffled))
    assert set(a.chosen) == set(b.chosen)
    assert all(np.isclose(a.scores[n], b.scores[n], rtol=1e-9, atol=1e-12) for n in names)
