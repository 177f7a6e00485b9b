"""Adam-preconditioned features: the optimizer's moments, the scales, the store and the displacement."""

import numpy as np
import pytest
import torch

from gradselect.errors import GradselectError
from gradselect.features import FeatureConfig, FeatureStore, ManifestMismatch, featurize
from gradselect.features.projector import make_projector
from gradselect.model import AdapterConfig, ModelConfig, apply_adapter, load_model
from gradselect.train import MOMENTS_FILE, adam_scales, read_moments
from gradselect.train.moments import trainer_order

ADAM = FeatureConfig(proj_dim=32, chunk_size=8, batch_size=4, precondition="adam")
PLAIN = FeatureConfig(proj_dim=32, chunk_size=8, batch_size=4)


def meta_model(adapter):
    model, _ = load_model(ModelConfig(), device="cpu")
    return apply_adapter(model, AdapterConfig(), init_adapter=adapter)


def test_training_writes_moments_and_a_trainer_checkpoint_gives_the_same(small_task):
    _, adapter = small_task
    run = adapter.parent
    named, eps = read_moments(run)  # the file train() writes, by parameter name
    assert (run / MOMENTS_FILE).exists() and eps == pytest.approx(1e-8)
    model = meta_model(adapter)
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert set(named) == set(trainable) and all(tuple(named[n].shape) == s for n, s in trainable.items())
    assert all((v >= 0).all() and v.abs().sum() > 0 for v in named.values())
    # A plain HF Trainer checkpoint numbers its parameters: read in Trainer's order, it names the same moments.
    checkpoint = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    numbered, _ = read_moments(checkpoint / "optimizer.pt", model)
    assert set(numbered) == set(named)
    assert all(torch.allclose(numbered[n], named[n]) for n in named)
    assert trainer_order(model)[0] in named


def test_an_optimizer_state_of_another_model_is_refused(small_task, tmp_path):
    _, adapter = small_task
    checkpoint = sorted((adapter.parent / "checkpoints").glob("checkpoint-*"))[-1]
    model, _ = load_model(ModelConfig(), device="cpu")
    other = apply_adapter(model, AdapterConfig(r=2))  # other shapes
    with pytest.raises(GradselectError, match="not this model's training run"):
        read_moments(checkpoint / "optimizer.pt", other)
    with pytest.raises(GradselectError, match="model is needed"):
        read_moments(checkpoint / "optimizer.pt")
    (tmp_path / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(GradselectError, match="not a readable optimizer state"):
        read_moments(tmp_path / "optimizer.pt", other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradselectError, match="no optimizer_moments.safetensors and no checkpoint"):
        read_moments(tmp_path / "empty")


def test_scales_are_adams_step_scale_normalized():
    v = {"a": torch.tensor([1e-4, 4e-4]), "b": torch.tensor([[1e-6]])}
    d = adam_scales(v, 1e-8, ["a", "b"])
    s = np.array([1 / (1e-2 + 1e-8), 1 / (2e-2 + 1e-8), 1 / (1e-3 + 1e-8)])
    expected = np.sqrt(s / s.mean())
    got = np.concatenate([d["a"].numpy(), d["b"].numpy().ravel()])
    assert np.allclose(got, expected, rtol=1e-6) and np.mean(got**2) == pytest.approx(1.0)
    with pytest.raises(GradselectError, match="no Adam second moments"):
        adam_scales(v, 1e-8, ["a", "c"])


def test_preconditioned_features_are_projections_of_scaled_gradients(small_task, tmp_path):
    taskset, adapter = small_task
    plain = featurize(taskset, tmp_path / "plain", adapter_path=adapter, feature_config=PLAIN.model_copy(
        update={"projector": "identity"}), progress=False, device="cpu")
    adam = featurize(taskset, tmp_path / "adam", adapter_path=adapter, feature_config=ADAM.model_copy(
        update={"projector": "identity"}), progress=False, device="cpu")
    scales = adam.preconditioner()
    assert plain.preconditioner() is None and adam.manifest["precondition"]["kind"] == "adam"
    d = torch.cat([scales[n].reshape(-1) for n, _ in adam.manifest["params"]]).numpy()
    # With no projection the feature is the gradient itself: preconditioned = D * plain, row by row.
    assert np.allclose(adam.g, plain.g * d, rtol=1e-4, atol=1e-7)
    assert np.array_equal(adam.b, plain.b)
    # |theta*| is measured in the features' metric, D^-1 theta*.
    model = meta_model(adapter)
    params = dict(model.named_parameters())
    expected = np.sqrt(sum(((params[n].detach().double() / scales[n].double()) ** 2).sum().item()
                           for n, _ in adam.manifest["params"]))
    assert adam.manifest["param_norm"] == pytest.approx(expected, rel=1e-6)
    # Switching the preconditioner on an existing store needs --force, like any other input.
    with pytest.raises(ManifestMismatch, match="precondition"):
        featurize(taskset, tmp_path / "plain", adapter_path=adapter, feature_config=ADAM.model_copy(
            update={"projector": "identity"}), progress=False, device="cpu")


def test_precondition_needs_an_optimizer_state(small_task, tmp_path):
    taskset, _ = small_task
    with pytest.raises(GradselectError, match="optimizer state"):
        featurize(taskset, tmp_path / "f", adapter_path=None, feature_config=ADAM, progress=False, device="cpu")


@pytest.mark.parametrize("config", [PLAIN, ADAM], ids=["plain", "adam"])
def test_displacement_of_a_known_delta_in_the_features_coordinates(small_task, tmp_path, config):
    from gradselect.model import read_weights_folder
    from gradselect.validate.truth import displacement

    taskset, adapter = small_task
    featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=config, progress=False, device="cpu")
    store = FeatureStore.open(tmp_path / "f")
    scales = store.preconditioner() or {n: torch.ones(s) for n, s in store.manifest["params"]}
    model = meta_model(adapter)
    shapes = {n: tuple(s) for n, s in store.manifest["params"]}
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(s, generator=gen, dtype=torch.float64) * 1e-2 for n, s in shapes.items()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in delta:
                p.add_(delta[n].to(p.dtype))
    moved = displacement(model, adapter, store)
    proj = make_projector("rademacher", shapes, 32, 0)
    want = proj.project({n: (delta[n] / scales[n].double()).float()[None] for n in shapes})[0].norm()
    assert moved["projected_norm"] == pytest.approx(float(want), rel=1e-3)
    assert moved["param_norm"] == pytest.approx(float(torch.sqrt(sum((x**2).sum() for x in delta.values()))), rel=1e-4)
    assert set(read_weights_folder(adapter)) and moved["projected_norm"] > 0
