"""Per-example gradients, projection, the feature store, resume and sharding."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradselect.data.tokenize import IGNORE_INDEX
from gradselect.features import (
    FeatureConfig,
    FeatureStore,
    FuncGradientComputer,
    GaussianProjector,
    HookGradientComputer,
    LoopGradientComputer,
    ManifestMismatch,
    MeanLogLikelihood,
    MeanLogOdds,
    RademacherProjector,
    featurize,
)
from gradselect.model import AdapterConfig, apply_adapter, make_tiny_model

from conftest import write_jsonl


def lora_model(arch, dtype=torch.float64):
    model, tok = make_tiny_model(arch)
    model = apply_adapter(model.to(dtype), AdapterConfig(r=4))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B != 0, so A's gradient is not zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return model.eval(), tok


def padded_batch(tok, lengths=(12, 7, 9), n_prompt=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(0, 256, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, n_prompt:n] = ids[i, n_prompt:n]
    return ids, mask, labels


def test_log_odds_is_exact_and_stable():
    logits = torch.tensor([[0.0, 1.0, 2.0], [50.0, -50.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([IGNORE_INDEX, 2, 0])  # position t's label is scored from logits[t-1]
    value = MeanLogOdds()(logits, labels)
    p = torch.softmax(logits[:2], -1)
    expected = (torch.log(p[0, 2]) - torch.log1p(-p[0, 2]) + 50.0 - torch.logsumexp(torch.tensor([-50.0, 0.0], dtype=torch.float64), 0)) / 2
    assert torch.isfinite(value) and math.isclose(value.item(), expected.item(), rel_tol=1e-12)
    ll = MeanLogLikelihood()(logits, labels)
    assert math.isclose(ll.item(), (torch.log(p[0, 2]) + torch.log(p[1, 0])).item() / 2, rel_tol=1e-12)


@pytest.mark.parametrize("computer", [FuncGradientComputer, HookGradientComputer])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_gradients_equal_naive_loop(arch, computer):
    model, tok = lora_model(arch)
    ids, mask, labels = padded_batch(tok)
    fast = computer(model, MeanLogOdds(), with_hidden=True).compute(ids, mask, labels)
    slow = LoopGradientComputer(model, MeanLogOdds(), with_hidden=True).compute(ids, mask, labels)
    assert torch.allclose(fast.values, slow.values, rtol=1e-10)
    # transformers' eager attention takes its softmax in float32 even for a float64 model, so a batch's
    # last-bit GEMM differences can flip a float32 rounding (1e-7 relative, seen on AMD/AVX2 CPUs): float32
    # tolerances here and below, far under what a batch-mate leaking into an example would do.
    assert torch.allclose(fast.hidden, slow.hidden, rtol=1e-5, atol=1e-6)
    for name, g in slow.grads.items():
        assert g.abs().max() > 0, name
        rel = (fast.grads[name] - g).norm() / g.norm()
        assert rel < 1e-5, (name, rel.item())


@pytest.mark.parametrize("computer", [FuncGradientComputer, HookGradientComputer])
def test_gradients_are_per_example_where_transformers_indexes_every_row_with_all_positions(computer, monkeypatch):
    """transformers 5.17 (the GPU image's) reads a 2-D ``logits_to_keep`` as one index for every row and
    returns (n, n, k, vocab) logits; features must still be each example's own."""
    from transformers.models.llama import modeling_llama

    from gradselect.features import gradients

    def every_row_with_all_positions(hidden, keep):  # transformers 5.17's slicing, verbatim
        return hidden[:, slice(-keep, None) if isinstance(keep, int) else keep, :]

    # raising=False: releases that slice inline (5.17) have no such function and behave so already.
    monkeypatch.setattr(modeling_llama, "slice_logits_to_keep", every_row_with_all_positions, raising=False)
    monkeypatch.setattr(gradients, "_KEEPS_EVERY_ROW", set())
    model, tok = lora_model("llama")
    ids, mask, labels = padded_batch(tok)
    slow = LoopGradientComputer(model, MeanLogOdds()).compute(ids, mask, labels)
    for _ in range(2):  # the first call finds the (n, n, k) logits; the second hands over the union
        fast = computer(model, MeanLogOdds()).compute(ids, mask, labels)
        assert torch.allclose(fast.values, slow.values, rtol=1e-10)
        for name, g in slow.grads.items():
            assert (fast.grads[name] - g).norm() / g.norm() < 1e-5, name
    assert gradients._KEEPS_EVERY_ROW == ({type(model.get_base_model())} if computer is HookGradientComputer else set())


@pytest.mark.parametrize("computer", [FuncGradientComputer, HookGradientComputer])
def test_gradient_does_not_depend_on_batch_mates(computer):
    model, tok = lora_model("llama")
    ids, mask, labels = padded_batch(tok, lengths=(6, 14, 10))
    comp = computer(model, MeanLogOdds())
    together = comp.compute(ids, mask, labels)
    alone = comp.compute(ids[:1, :6], mask[:1, :6], labels[:1, :6])
    for name in together.grads:  # float32 softmax inside (see above): relative error of float32's order
        g = alone.grads[name][0]
        assert (together.grads[name][0] - g).norm() / g.norm() < 1e-5, name


def test_auto_picks_hooks_for_linear_layers_and_func_otherwise():
    from gradselect.errors import ModelError
    from gradselect.features import make_gradient_computer

    model, tok = lora_model("llama")
    assert isinstance(make_gradient_computer("auto", model, MeanLogOdds()), HookGradientComputer)
    auto = make_gradient_computer("auto", model, MeanLogOdds(), ["norm"])
    assert isinstance(auto, FuncGradientComputer) and all("norm" in n for n in auto.params)
    with pytest.raises(ModelError, match="not a linear layer's weight or bias"):
        HookGradientComputer(model, MeanLogOdds(), ["norm"])
    ids, mask, labels = padded_batch(tok)
    slow = LoopGradientComputer(model, MeanLogOdds(), ["norm"]).compute(ids, mask, labels)
    for name, g in auto.compute(ids, mask, labels).grads.items():  # float32 softmax inside (see above)
        assert (g - slow.grads[name]).norm() / slow.grads[name].norm() < 1e-5, name


def test_blockwise_projection_equals_dense_matrix():
    shapes = {"a": (3000,), "b": (7, 300)}  # "a" spans three blocks
    grads = {"a": torch.randn(4, 3000), "b": torch.randn(4, 7, 300)}
    for cls in (RademacherProjector, GaussianProjector):
        proj = cls(shapes, 64, seed=3)
        dense = proj.matrix()
        assert dense.shape == (3000 + 2100, 64)
        flat = torch.cat([grads["a"], grads["b"].reshape(4, -1)], 1)
        assert torch.allclose(proj.project(grads), flat @ dense, rtol=1e-5, atol=1e-5)
        # No cache (blocks regenerated each call) and another process order give the same P.
        uncached = cls(dict(reversed(list(shapes.items()))), 64, seed=3, max_cache_mb=0)
        assert torch.equal(uncached.block("a", 2, 3000 - 2048), proj.block("a", 2, 3000 - 2048))
        assert not torch.equal(cls(shapes, 64, seed=4).block("a", 0, 1024), proj.block("a", 0, 1024))
    values = RademacherProjector(shapes, 64).matrix().unique()
    assert torch.allclose(values.abs(), torch.tensor(1 / 8.0))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "kronecker", "identity"])
def test_lift_is_the_transpose_of_the_projection(kind):
    # (P^T g) . v = g . (P v) for every gradient g: a projected-space step scored linearly is the lifted step.
    from gradselect.features.projector import make_projector

    shapes = {"a": (3000,), "b": (7, 30), "c": (4, 2, 3)}  # "a" spans three blocks
    proj = make_projector(kind, shapes, 16, seed=5, **({"factor_dim": 3} if kind == "kronecker" else {}))
    grads = {n: torch.randn(3, *s) for n, s in shapes.items()}
    v = torch.randn(proj.proj_dim)
    lifted = proj.lift(v)
    assert {n: tuple(t.shape) for n, t in lifted.items()} == shapes
    flat = torch.cat([lifted[n].reshape(-1) for n in shapes])
    by_grads = torch.stack([sum((grads[n][i] * lifted[n]).sum() for n in shapes) for i in range(3)])
    assert torch.allclose(proj.project(grads) @ v, by_grads, rtol=1e-4, atol=1e-4)
    if kind != "identity":
        assert torch.allclose(proj.matrix() @ v, flat, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        proj.lift(torch.zeros(proj.proj_dim + 1))


def _splitmix64_reference(key: int, n: int) -> np.ndarray:
    """SplitMix64 (Steele, Lea and Flood 2014) in numpy's unsigned 64-bit arithmetic, one word at a time."""
    state, out = np.uint64(key), []
    with np.errstate(over="ignore"):
        for _ in range(n):
            state = state + np.uint64(0x9E3779B97F4A7C15)
            z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            out.append(z ^ (z >> np.uint64(31)))
    return np.array(out, dtype=np.uint64)


def test_rademacher_blocks_are_the_bits_of_splitmix64():
    from gradselect.features.projector import block_seed, splitmix64

    assert int(_splitmix64_reference(1234567, 1)[0]) == 6457827717110365317  # the generator's published vector
    for key in (0, 1234567, (1 << 63) - 1):
        assert np.array_equal(splitmix64(key, 40).numpy().view(np.uint64), _splitmix64_reference(key, 40))
    proj = RademacherProjector({"w": (50,)}, 24, seed=3)
    words = _splitmix64_reference(block_seed(3, "w", 0), -(-50 * 24 // 64))
    bits = ((words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).reshape(-1)[: 50 * 24]
    block = proj.block("w", 0, 50).numpy()
    assert np.array_equal(np.sign(block), np.where(bits.reshape(50, 24), 1.0, -1.0))
    assert np.allclose(np.abs(block), 1 / np.sqrt(24), rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rademacher_blocks_drawn_on_cuda_equal_the_cpu_blocks():
    shapes = {"a": (3000,), "b": (7, 300)}
    cpu, gpu = RademacherProjector(shapes, 64, seed=3), RademacherProjector(shapes, 64, seed=3, device="cuda")
    assert torch.equal(gpu.matrix().cpu(), cpu.matrix())


def test_jl_inner_products_preserved():
    torch.manual_seed(0)
    p, d = 20_000, 512
    x = torch.randn(6, p) / math.sqrt(p)
    proj = RademacherProjector({"w": (p,)}, d, seed=1)
    y = proj.project({"w": x})
    exact, approx = x @ x.T, y @ y.T
    # Each entry's error has standard deviation about sqrt(2 / d) for unit vectors: allow 5 sigma.
    assert (approx - exact).abs().max() < 5 * math.sqrt(2 / d)


# -- the stage: store, resume, manifests, shards ------------------------------------------


FCFG = FeatureConfig(proj_dim=32, chunk_size=8, batch_size=4, hidden_states=True)


def test_store_layout_and_rows(tmp_path, small_task):
    taskset, adapter = small_task
    store = featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    n = len(taskset.target_train) + len(taskset.target_dev) + 22
    assert store.g.shape == (n, 32) and store.b.shape == (n,) and store.hidden.shape == (n, 64)
    assert store.complete and not (tmp_path / "f.part").exists()
    assert store.source_names == ["sums", "legs"]
    assert list(store.rows_of(split="dev")) == list(range(12, 16))
    assert len(store.rows_of(source="legs")) == 10
    assert np.abs(store.g).sum() > 0 and np.isfinite(store.b).all()
    assert store.manifest["projector"] == {"kind": "rademacher", "seed": 0, "dim": 32, "block_rows": 1024}
    again = featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    assert np.array_equal(again.g, store.g)  # complete and current: reused


def test_resume_after_interruption_is_bitwise_identical(tmp_path, small_task, monkeypatch):
    taskset, adapter = small_task
    full = featurize(taskset, tmp_path / "full", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    original = FeatureStore.write_chunk
    calls = {"n": 0}

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        featurize(taskset, tmp_path / "r", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    assert not (tmp_path / "r").exists()
    assert np.load(tmp_path / "r.part" / "done.npy").sum() == 2
    monkeypatch.setattr(FeatureStore, "write_chunk", original)
    resumed = featurize(taskset, tmp_path / "r", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    assert np.array_equal(resumed.g, full.g) and np.array_equal(resumed.b, full.b)
    assert np.array_equal(resumed.hidden, full.hidden)


def test_mismatched_manifest_is_refused(tmp_path, small_task):
    taskset, adapter = small_task
    featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    other = FCFG.model_copy(update={"seed": 1})
    with pytest.raises(ManifestMismatch, match=r"different 'projector'.*--force"):
        featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=other, progress=False, device="cpu")
    with pytest.raises(ManifestMismatch, match=r"different 'adapter'"):
        featurize(taskset, tmp_path / "f", adapter_path=None, feature_config=FCFG, progress=False, device="cpu")
    redone = featurize(
        taskset, tmp_path / "f", adapter_path=adapter, feature_config=other, progress=False, device="cpu", force=True
    )
    assert redone.manifest["projector"]["seed"] == 1
    with pytest.raises(ManifestMismatch, match="different 'projector'"):
        FeatureStore.open(tmp_path / "f", expected={**redone.manifest, "projector": {"seed": 2}})


SHARD_SCRIPT = r"""
import os, sys
sys.path.insert(0, {tests!r})
from gradselect.data import DataConfig, SourceSpec, load_taskset
from gradselect.features import FeatureConfig, featurize
import torch
torch.set_num_threads(1)
cfg = DataConfig(
    target=SourceSpec(reasoning_gym="chain_sum", size=20, seed=1),
    sources=[SourceSpec(name="sums", reasoning_gym="chain_sum", size=12, seed=2),
             SourceSpec(name="legs", reasoning_gym="leg_counting", size=10, seed=3)],
)
fc = FeatureConfig(proj_dim=32, chunk_size=8, batch_size=4, hidden_states=True)
featurize(load_taskset(cfg), sys.argv[1], adapter_path=sys.argv[2], feature_config=fc, progress=False, device="cpu")
"""


def test_two_process_shards_equal_one_process(tmp_path, small_task):
    taskset, adapter = small_task
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "sharded"), str(adapter)], env={**env, "RANK": str(r)})
        for r in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    single_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), str(adapter)], env=single_env, check=True)
    a, b = FeatureStore.open(tmp_path / "sharded"), FeatureStore.open(tmp_path / "single")
    assert a.ids == b.ids and a.sources == b.sources
    assert np.array_equal(a.g, b.g) and np.array_equal(a.b, b.b) and np.array_equal(a.hidden, b.hidden)
    assert not list(tmp_path.glob("sharded.shard-*"))


def test_a_rank_that_cannot_join_fails_before_computing_its_shard(tmp_path, jsonl_task, monkeypatch):
    from gradselect.errors import GradselectError

    taskset, adapter = jsonl_task
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(GradselectError, match="could not join the process group.*MASTER_ADDR"):
        featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu",
                  rank=1, world_size=2)
    assert not list(tmp_path.iterdir())  # no shard begun


def test_non_finite_features_are_refused_naming_examples(tmp_path, small_task):
    from gradselect.errors import GradselectError
    from gradselect.estimate import FeatureArrays

    taskset, adapter = small_task
    store = featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    writable = FeatureStore.open(tmp_path / "f", writable=True)
    g = np.array(writable.g[0:8])
    g[3, 0] = np.nan
    with pytest.raises(GradselectError, match=rf"non-finite features .* {store.ids[3]}"):
        writable.write_chunk(0, g, np.array(writable.b[0:8]))
    # A store damaged on disk is refused when read for estimation, naming the example.
    writable.b[5] = np.inf
    writable.b.flush()
    with pytest.raises(GradselectError, match=rf"non-finite features for example\(s\) {store.ids[5]}"):
        FeatureArrays.from_store(FeatureStore.open(tmp_path / "f"))


def test_softmin_log_odds_follows_the_hard_tokens_where_the_mean_saturates():
    from gradselect.estimate.solvers import mean_logistic_loss
    from gradselect.features import SoftminLogOdds

    # Two-token vocabulary: the gold token's log-odds is exactly its logit minus the other's.
    z = torch.tensor([12.0] * 19 + [1.0], dtype=torch.float64)
    logits = torch.stack([z, torch.zeros_like(z)], -1)[None]  # (1, 20, 2), gold token 0 everywhere
    gold = torch.zeros(1, 20, dtype=torch.long)
    mean = MeanLogOdds().mean_over(logits, gold)
    soft = SoftminLogOdds().mean_over(logits, gold)
    assert math.isclose(soft.item(), -math.log(torch.exp(-z).mean().item()), rel_tol=1e-12)
    per_token = torch.nn.functional.softplus(-z).mean().item()  # mean_t log(1 + e^-z_t)
    mean_loss, soft_loss = mean_logistic_loss(mean.numpy()), mean_logistic_loss(soft.numpy())
    assert mean_loss < 1e-4 and abs(soft_loss - per_token) < 0.2 * per_token  # saturated vs led by the hard token
    # Masked positions are skipped; a sequence with no response token is 0 with a finite gradient.
    masked = torch.cat([gold, torch.full_like(gold, IGNORE_INDEX)])
    both = torch.cat([logits, logits]).requires_grad_(True)
    out = SoftminLogOdds().mean_over(both, masked)
    out.sum().backward()
    assert out[1].item() == 0.0 and torch.isfinite(both.grad).all() and both.grad[1].abs().sum() == 0
    assert math.isclose(out[0].item(), soft.item(), rel_tol=1e-12)


@pytest.mark.parametrize("computer", [FuncGradientComputer, HookGradientComputer])
def test_softmin_gradients_equal_naive_loop(computer):
    from gradselect.features import SoftminLogOdds

    model, tok = lora_model("llama")
    ids, mask, labels = padded_batch(tok)
    fast = computer(model, SoftminLogOdds()).compute(ids, mask, labels)
    slow = LoopGradientComputer(model, SoftminLogOdds()).compute(ids, mask, labels)
    assert torch.allclose(fast.values, slow.values, rtol=1e-10)
    for name, g in slow.grads.items():
        assert (fast.grads[name] - g).norm() / g.norm() < 1e-5, name


@pytest.mark.parametrize("fn", [MeanLogOdds, "softmin"])
def test_skipped_token_ids_are_left_out_like_masked_positions(fn):
    from gradselect.features import SoftminLogOdds

    fn = SoftminLogOdds if fn == "softmin" else fn
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    gold = torch.tensor([[1, 2, 9, 3, 9, IGNORE_INDEX], [4, 9, 5, 6, 7, 8], [9, 9, IGNORE_INDEX] + [IGNORE_INDEX] * 3])
    masked = torch.where(gold == 9, torch.full_like(gold, IGNORE_INDEX), gold)
    skipping = fn(skip_ids=[9]).mean_over(logits, gold)
    assert torch.allclose(skipping, fn().mean_over(logits, masked), rtol=1e-12)
    assert not torch.allclose(skipping[:2], fn().mean_over(logits, gold)[:2])
    # A response of skipped tokens only: the value 0 and no gradient.
    skipping.sum().backward()
    assert skipping[2].item() == 0.0 and logits.grad[2].abs().sum() == 0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("computer", [FuncGradientComputer, HookGradientComputer])
def test_gradients_with_skipped_tokens_equal_naive_loop(computer):
    model, tok = lora_model("llama")
    ids, mask, labels = padded_batch(tok)
    skip = [int(labels[0, 5]), int(labels[2, 4])]  # two tokens that are gold somewhere
    fast = computer(model, MeanLogOdds(skip)).compute(ids, mask, labels)
    slow = LoopGradientComputer(model, MeanLogOdds(skip)).compute(ids, mask, labels)
    plain = LoopGradientComputer(model, MeanLogOdds()).compute(ids, mask, labels)
    assert torch.allclose(fast.values, slow.values, rtol=1e-10) and not torch.allclose(fast.values, plain.values)
    for name, g in slow.grads.items():
        assert (fast.grads[name] - g).norm() / g.norm() < 1e-5, name


def test_skip_special_tokens_featurizes_without_the_end_of_sequence_token(tmp_path, small_task):
    """``[features] skip_special_tokens``: the store's values are the output function without EOS (the
    same values the truths and forward passes compute), recorded in the manifest, and a store made
    without the option is refused for it."""
    from gradselect.features import output_values
    from gradselect.model import load_trained
    from gradselect.model.config import ModelConfig

    taskset, adapter = small_task
    cfg = FCFG.model_copy(update={"skip_special_tokens": True})
    plain = featurize(taskset, tmp_path / "plain", adapter_path=adapter, feature_config=FCFG, progress=False,
                      device="cpu")
    store = featurize(taskset, tmp_path / "skip", adapter_path=adapter, feature_config=cfg, progress=False, device="cpu")
    assert store.manifest["skip_special_tokens"] is True and "skip_special_tokens" not in plain.manifest
    assert store.functional == {"output": "log_odds", "skip_special_tokens": True}
    assert plain.functional == {"output": "log_odds", "skip_special_tokens": False}
    model, tok = load_trained(ModelConfig(), AdapterConfig(), adapter, device="cpu")
    dev = taskset.target_dev.examples
    rows = store.rows_of(split="dev")
    with_eos = output_values(model, tok, dev)
    without = output_values(model, tok, dev, skip_special_tokens=True)
    assert np.allclose(store.b[rows], without, rtol=1e-4, atol=1e-5)
    assert np.allclose(plain.b[rows], with_eos, rtol=1e-4, atol=1e-5)
    assert np.abs(without - with_eos).max() > 1e-3  # the EOS token counted in one, not the other
    assert not np.allclose(store.g, plain.g)
    with pytest.raises(ManifestMismatch, match="skip_special_tokens"):
        featurize(taskset, tmp_path / "skip", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")


def test_rows_by_source_equals_rows_of_each_source(tmp_path, small_task):
    taskset, adapter = small_task
    store = featurize(taskset, tmp_path / "f", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu")
    grouped = store.rows_by_source()
    assert list(grouped) == store.source_names
    for name, rows in grouped.items():
        assert np.array_equal(rows, store.rows_of(source=name, split="source"))


@pytest.fixture(scope="module")
def jsonl_task(tmp_path_factory):
    """Like ``small_task`` from JSONL files, so it runs where reasoning-gym is not installed (the GPU image)."""
    from gradselect.data import DataConfig, SourceSpec, load_taskset
    from gradselect.train import TrainConfig, train

    root = tmp_path_factory.mktemp("jsonl")
    sum_rows = [{"prompt": f"What is {i} + {3 * i % 17}?", "response": f" {i + 3 * i % 17}"} for i in range(30)]
    legs_rows = [{"prompt": f"How many legs do {i} cats have?", "response": f" {4 * i}"} for i in range(12)]
    write_jsonl(root / "target.jsonl", sum_rows[:20])
    write_jsonl(root / "sums.jsonl", sum_rows[20:])
    write_jsonl(root / "legs.jsonl", legs_rows)
    cfg = DataConfig(target=SourceSpec(path=str(root / "target.jsonl")),
                     sources=[SourceSpec(name="sums", path=str(root / "sums.jsonl")),
                              SourceSpec(name="legs", path=str(root / "legs.jsonl"))])
    taskset = load_taskset(cfg)
    meta = train(taskset, taskset.source_names, root / "meta", train_config=TrainConfig(max_steps=3, batch_size=8),
                 progress=False, device="cpu")
    return taskset, meta.adapter_dir


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_cuda_match_the_cpu_store(tmp_path, jsonl_task):
    """The same store on a GPU: the projection blocks are the same bits on every device, so only float
    summation order differs."""
    from gradselect.model import ModelConfig

    taskset, adapter = jsonl_task
    f32 = ModelConfig(dtype="float32")
    cpu = featurize(taskset, tmp_path / "cpu", adapter_path=adapter, feature_config=FCFG, progress=False, device="cpu",
                    model_config=f32)
    gpu = featurize(taskset, tmp_path / "gpu", adapter_path=adapter, feature_config=FCFG, progress=False,
                    device="cuda", model_config=f32)
    assert np.allclose(gpu.b, cpu.b, rtol=1e-4, atol=1e-5)
    assert np.allclose(gpu.g, cpu.g, rtol=1e-3, atol=1e-4 * float(np.abs(cpu.g).max()))
    # bf16 weights (the GPU default): features still close in direction.
    bf16 = featurize(taskset, tmp_path / "bf16", adapter_path=adapter, feature_config=FCFG, progress=False,
                     device="cuda", model_config=ModelConfig(dtype="bfloat16"))
    cos = (bf16.g * cpu.g).sum(1) / (np.linalg.norm(bf16.g, axis=1) * np.linalg.norm(cpu.g, axis=1) + 1e-30)
    assert np.median(cos) > 0.95 and np.isfinite(bf16.g).all()


def test_a_batch_that_runs_out_of_memory_is_halved_and_redone(tmp_path, small_task, monkeypatch, caplog):
    """Batch size chosen by memory: out-of-memory batches are halved (the features equal a store made
    at the size that fits); one example that does not fit is a clear error."""
    from gradselect.errors import GradselectError
    from gradselect.features.gradients import HookGradientComputer

    taskset, adapter = small_task
    cfg = FCFG.model_copy(update={"batch_size": 2})
    fits = featurize(taskset, tmp_path / "fits", adapter_path=adapter, feature_config=cfg, progress=False, device="cpu")
    original = HookGradientComputer.compute
    seen = []

    def limited(limit):
        def compute(self, input_ids, attention_mask, labels):
            seen.append(len(input_ids))
            if len(input_ids) > limit:
                raise torch.OutOfMemoryError("simulated: CUDA out of memory")
            return original(self, input_ids, attention_mask, labels)
        return compute

    monkeypatch.setattr(HookGradientComputer, "compute", limited(2))
    with caplog.at_level("WARNING", logger="gradselect.features.extract"):
        halved = featurize(taskset, tmp_path / "halved", adapter_path=adapter,
                           feature_config=FCFG.model_copy(update={"batch_size": 8}), progress=False, device="cpu")
    assert seen[:3] == [8, 4, 2] and max(seen[3:]) == 2  # halved twice, then kept
    assert "featurizing 4 at a time" in caplog.text and "featurizing 2 at a time" in caplog.text
    assert np.allclose(halved.g, fits.g, rtol=1e-5, atol=1e-6 * float(np.abs(fits.g).max()))
    assert np.allclose(halved.b, fits.b, rtol=1e-6)
    monkeypatch.setattr(HookGradientComputer, "compute", limited(0))
    with pytest.raises(GradselectError, match="does not fit in the cpu memory"):
        featurize(taskset, tmp_path / "none", adapter_path=adapter, feature_config=cfg, progress=False, device="cpu")
    assert not (tmp_path / "none").exists()
