"""The Kronecker-structured projector: exact against its dense matrix, and from layer factors."""

import math

import numpy as np
import pytest
import torch

from gradselect.features import FeatureConfig, HookGradientComputer, KroneckerProjector, MeanLogOdds, featurize
from gradselect.features.projector import make_projector
from gradselect.model import AdapterConfig, ModelConfig, apply_adapter, make_tiny_model

SHAPES = {"w": (40, 30), "narrow": (6, 50), "small": (5, 7), "bias": (40,), "conv": (8, 3, 5)}


def test_projection_equals_its_dense_kronecker_matrix():
    torch.manual_seed(0)
    proj = KroneckerProjector(SHAPES, 24, seed=3, factor_dim=8)
    grads = {n: torch.randn(4, *s, dtype=torch.float32) for n, s in SHAPES.items()}
    dense = proj.matrix()
    assert dense.shape == (sum(math.prod(s) for s in SHAPES.values()), 24)
    flat = torch.cat([grads[n].reshape(4, -1) for n in SHAPES], 1)
    assert torch.allclose(proj.project(grads), flat @ dense, rtol=1e-4, atol=1e-5)
    # The matrix of one weight is (A kron B) R: rank at most k_out k_in, the identity on a side <= factor_dim.
    a, b, r = proj.factors("w")
    assert a.shape == (40, 8) and b.shape == (30, 8) and r.shape == (64, 24)
    a, b, r = proj.factors("narrow")
    assert a is None and b.shape == (50, 8) and r.shape == (48, 24)
    # Stable names, not order: another process listing the parameters the other way round draws the same P.
    other = KroneckerProjector(dict(reversed(list(SHAPES.items()))), 24, seed=3, factor_dim=8)
    assert torch.equal(other.factors("w")[2], proj.factors("w")[2])
    assert not torch.equal(KroneckerProjector(SHAPES, 24, seed=4, factor_dim=8).factors("w")[2], r)


def test_factors_give_the_projection_of_the_gradient_they_never_form():
    torch.manual_seed(1)
    proj = KroneckerProjector({"w": (40, 30), "v": (6, 50)}, 16, seed=0, factor_dim=8)
    dy, x = torch.randn(3, 11, 40), torch.randn(3, 11, 30)
    dy2, x2 = torch.randn(3, 11, 6), torch.randn(3, 11, 50)
    formed = {"w": torch.einsum("bto,bti->boi", dy, x), "v": torch.einsum("bto,bti->boi", dy2, x2)}
    whole = proj.project(formed)
    assert torch.allclose(proj.project_factors("w", dy, x) + proj.project_factors("v", dy2, x2), whole,
                          rtol=1e-4, atol=1e-4)
    mixed = proj.project({"v": formed["v"]}, {"w": (dy, x)})  # some weights as factors, others whole
    assert torch.allclose(mixed, whole, rtol=1e-4, atol=1e-4)


def test_inner_products_are_preserved_in_expectation():
    torch.manual_seed(0)
    out, inp, d = 200, 150, 512
    x = torch.randn(5, out, inp) / math.sqrt(out * inp)
    exact = x.reshape(5, -1) @ x.reshape(5, -1).T
    # Averaged over independent projections the Gram matrix is unbiased (E[P P^T] = I) ...
    approx = torch.stack([
        (lambda y: y @ y.T)(KroneckerProjector({"w": (out, inp)}, d, seed=s, factor_dim=16).project({"w": x}))
        for s in range(20)]).mean(0)
    assert (approx - exact).abs().max() < 0.15
    # ... and one projection keeps norms within the spread of a rank-256 sketch.
    y = KroneckerProjector({"w": (out, inp)}, d, seed=0, factor_dim=16).project({"w": x})
    ratio = (y.norm(dim=1) / x.reshape(5, -1).norm(dim=1)).numpy()
    assert np.all((ratio > 0.6) & (ratio < 1.4))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_featurize_with_factors_equals_the_formed_gradients(tmp_path, small_task, method):
    taskset, adapter = small_task
    common = dict(progress=False, device="cpu")
    if method == "lora":
        kw = dict(adapter_path=adapter)
    else:  # full fine-tuning of two layers' linear weights: per-example gradients of 64 x 64 matrices
        kw = dict(adapter_config=AdapterConfig(method="full"), model_config=ModelConfig(name_or_path="tiny-llama"))
    cfg = FeatureConfig(proj_dim=32, chunk_size=8, batch_size=4, projector="kronecker", factor_dim=4,
                        params=[r"layers\.1\..*proj"] if method == "full" else None)
    factored = featurize(taskset, tmp_path / "factored", feature_config=cfg, **kw, **common)
    formed = featurize(taskset, tmp_path / "formed", feature_config=cfg.model_copy(update={"gradients": "loop"}),
                       **kw, **common)
    assert factored.manifest["projector"]["factor_dim"] == 4
    assert np.abs(factored.g).sum() > 0
    assert np.allclose(factored.g, formed.g, rtol=1e-3, atol=1e-5 * np.abs(formed.g).max())


def test_hooks_leave_weights_as_factors_only_when_asked():
    model, _ = make_tiny_model("llama")
    model = apply_adapter(model.double(), AdapterConfig(r=4)).eval()
    ids = torch.randint(0, 200, (2, 9))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :4] = -100
    computer = HookGradientComputer(model, MeanLogOdds())
    whole = computer.compute(ids, mask, labels)
    computer.factored = True
    split = computer.compute(ids, mask, labels)
    assert not whole.factors and set(split.factors) == set(whole.grads) and not split.grads
    proj = make_projector("kronecker", computer.param_shapes, 16, 0, factor_dim=4)
    assert torch.allclose(proj.project(whole.grads), proj.project(split.grads, split.factors), rtol=1e-4, atol=1e-6)
