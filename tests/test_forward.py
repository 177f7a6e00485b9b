"""Forward-pass estimates on a tiny model: per-source training gradients, parameter-space steps, real dev loss."""

import numpy as np
import pytest
import torch

from gradselect.config import load_config
from gradselect.data import load_taskset
from gradselect.data.tokenize import IGNORE_INDEX, pad_right, tokenize_examples
from gradselect.estimate.forward import TARGET, ForwardPassEstimator, SourceGradients
from gradselect.model import apply_adapter, load_model

from conftest import TINY_RUN_TOML


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("fwd") / "run.toml"
    cfg.write_text(TINY_RUN_TOML)
    config = load_config(cfg)
    taskset = load_taskset(config.data)
    model, tok = load_model(config.model, device="cpu")
    model = apply_adapter(model, config.adapter)
    return config, taskset, model, tok


def test_source_gradients_are_sums_of_per_example_gradients(setup, tmp_path):
    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, batch_size=5)
    assert set(grads.sums) == set(taskset.source_names) | {TARGET}
    assert grads.counts["legs"] == len(taskset.source("legs"))
    # One example at a time, by autograd: the same sum.
    name = next(n for n, p in model.named_parameters() if p.requires_grad)
    param = dict(model.named_parameters())[name]
    tokens = tokenize_examples(taskset.source("legs").examples, tok, config.tokenize)
    total, squared = torch.zeros_like(param), torch.zeros_like(param)
    for ids, labels in zip(tokens.input_ids, tokens.labels):
        i, m, lab = pad_right([ids], [labels], tok.pad_token_id)
        logits = model(input_ids=i, attention_mask=m).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[0], lab[0, 1:], ignore_index=IGNORE_INDEX)
        g = torch.autograd.grad(loss, param)[0]
        total, squared = total + g, squared + g * g
    assert torch.allclose(grads.sums["legs"][name], total, rtol=1e-4, atol=1e-6)
    assert grads.squares is None
    grads.save(tmp_path / "g.safetensors")
    again = SourceGradients.load(tmp_path / "g.safetensors")
    assert again.counts == grads.counts and torch.equal(again.sums["legs"][name], grads.sums["legs"][name])
    # With squares: the same sums, and the sums of squared per-example gradients, through a save and load.
    with_sq = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=True)
    assert torch.allclose(with_sq.sums["legs"][name], total, rtol=1e-4, atol=1e-6)
    assert torch.allclose(with_sq.squares["legs"][name], squared, rtol=1e-4, atol=1e-9)
    with_sq.save(tmp_path / "sq.safetensors")
    again = SourceGradients.load(tmp_path / "sq.safetensors")
    assert set(again.sums) == set(with_sq.sums) and torch.equal(again.squares["legs"][name], with_sq.squares["legs"][name])


def test_adam_step_moves_agreed_coordinates_like_sign_and_noisy_ones_less(setup):
    config, taskset, model, tok = setup
    plain = SourceGradients.compute(model, tok, taskset, config.tokenize)
    with pytest.raises(Exception, match="squares=True"):
        ForwardPassEstimator("adam").fit(model, tok, plain, taskset.target_dev.examples, config.tokenize)
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=True)
    dev = taskset.target_dev.examples
    sign = ForwardPassEstimator("sign").fit(model, tok, grads, dev, config.tokenize).direction(["legs"])
    # An unbounded batch averages the noise away: Adam's first step is the sign step.
    huge = ForwardPassEstimator("adam", train_batch_size=1e30).fit(model, tok, grads, dev, config.tokenize)
    for p, t in huge.direction(["legs"]).items():
        assert torch.allclose(t, sign[p], atol=1e-4)
    # One example per batch: mean over root-mean-square of the per-example gradients, |.| <= 1.
    one = ForwardPassEstimator("adam", train_batch_size=1).fit(model, tok, grads, dev, config.tokenize)
    groups = ["legs", TARGET]
    n = sum(grads.counts[g] for g in groups)
    for p, t in one.direction(["legs"]).items():
        m = sum(grads.sums[g][p].double() for g in groups) / n
        rms = (sum(grads.squares[g][p].double() for g in groups) / n).sqrt()
        expected = -torch.where(rms > 0, m / rms.clamp(min=1e-300), torch.zeros_like(m)).float()
        assert torch.allclose(t, expected, atol=1e-5) and float(t.abs().max()) <= 1 + 1e-5
    moved = one.estimate([["legs"], []])
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, one.base_loss_)


@pytest.mark.parametrize("step", ["sign", "normalized"])
def test_forward_pass_estimates_move_from_theta_star_and_restore_it(setup, step):
    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    est = ForwardPassEstimator(step).fit(model, tok, grads, taskset.target_dev.examples, config.tokenize)
    subsets = [["more"], ["legs", "noisy"], []]
    zero = est.estimate(subsets, length=0.0)
    assert np.allclose(zero, est.base_loss_)  # no step: theta*'s own loss
    moved = est.estimate(subsets)
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, est.base_loss_)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # theta* restored bitwise
    d = est.direction(["more"])
    if step == "sign":
        assert all(set(torch.unique(t).tolist()) <= {-1.0, 0.0, 1.0} for t in d.values())
    with pytest.raises(Exception, match="unknown source"):
        est.estimate([["nope"]])
