"""Featurize a task set: one forward+backward per example at the meta-initialization.

:func:`featurize` is the stage's entry point. Rows are the target's train
split, then its dev split, then every auxiliary source in order (the target's
test split is never featurized). Under ``torchrun`` (or with ``rank`` and
``world_size`` given) each rank computes a contiguous range of chunks into its
own shard; rank 0 then merges the shards in row order (:func:`merge_shards`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gradselect.data.examples import TaskSet
from gradselect.data.tokenize import TokenizeConfig, pad_right, tokenize_examples
from gradselect.errors import GradselectError
from gradselect.features.config import FeatureConfig
from gradselect.features.gradients import HookGradientComputer, make_gradient_computer
from gradselect.features.output import get_output_function, skipped_token_ids
from gradselect.features.projector import BLOCK_ROWS, KroneckerProjector, make_projector
from gradselect.features.store import FORMAT_VERSION, FeatureStore, ManifestMismatch, compare_manifests, finalize
from gradselect.model.adapters import apply_adapter
from gradselect.model.config import AdapterConfig, ModelConfig
from gradselect.model.loading import load_model

log = logging.getLogger(__name__)


def store_rows(taskset: TaskSet) -> tuple[list, dict]:
    """Examples in store order and the index (ids, sources, splits)."""
    examples, ids, sources, splits = [], [], [], []
    parts = [(taskset.target_train, "train"), (taskset.target_dev, "dev")]
    parts += [(s, "source") for s in taskset.sources]
    for source, split in parts:
        for e in source.examples:
            examples.append(e)
            ids.append(e.id)
            sources.append(source.name)
            splits.append(split)
    return examples, {"ids": ids, "sources": sources, "splits": splits}


def weights_digest(model) -> str:
    """SHA-256 over parameter names, shapes, dtypes and bytes (the base model's identity)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def folder_digest(folder: Path | None) -> str | None:
    """SHA-256 over the weight and config files of a trained adapter folder."""
    if folder is None:
        return None
    h = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".json"))
    if not files:
        raise GradselectError(f"{folder}: no adapter files (.safetensors) to featurize from")
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _versions() -> dict:
    import peft
    import transformers

    from gradselect import __version__

    return {"gradselect": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    return int(rank or 0), int(world_size)


def shard_path(out_dir: Path, rank: int, world_size: int) -> Path:
    return out_dir.with_name(f"{out_dir.name}.shard-{rank}-of-{world_size}")


def featurize(
    taskset: TaskSet,
    out_dir: str | Path,
    *,
    model_config: ModelConfig | None = None,
    adapter_config: AdapterConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    feature_config: FeatureConfig | None = None,
    adapter_path: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    force: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> FeatureStore | None:
    """Compute and store output values and projected gradients for every row.

    Parameters
    ----------
    taskset : TaskSet
    out_dir : path
        The store folder (written as ``<out_dir>.part`` until complete).
    model_config, adapter_config, tokenize_config, feature_config : configs
    adapter_path : path, optional
        The meta-initialization (a trained adapter folder). Without it, LoRA
        features are taken at a fresh adapter, where B = 0 makes every
        gradient w.r.t. A exactly zero.
    device : str
    progress : bool
        Show a progress bar with ETA.
    force : bool
        Recompute even if a store made from other inputs exists.
    rank, world_size : int, optional
        Data-parallel shard to compute; default from ``RANK`` / ``WORLD_SIZE``.

    Returns
    -------
    FeatureStore or None
        The complete store (read-only); None on ranks other than 0 when sharded.
    """
    model_config = model_config or ModelConfig()
    adapter_config = adapter_config or AdapterConfig()
    tokenize_config = tokenize_config or TokenizeConfig()
    config = feature_config or FeatureConfig()
    out_dir = Path(out_dir)
    rank, world_size = _dist_info(rank, world_size)
    if adapter_path is None and adapter_config.method == "lora":
        log.warning("no meta-initialization adapter given: at a fresh LoRA adapter B = 0, so gradients w.r.t. A are zero")

    examples, index = store_rows(taskset)
    if world_size > 1 and device == "auto" and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    if world_size > 1:  # before any work: a rank that cannot join fails now, not after its shard
        _init_distributed(device, rank, world_size)
    model, tokenizer = load_model(model_config, device=device)
    base_digest = weights_digest(model)
    model = apply_adapter(model, adapter_config, init_adapter=adapter_path)
    model.eval()
    computer = make_gradient_computer(
        config.gradients, model, get_output_function(config.output, skipped_token_ids(tokenizer, config.skip_special_tokens)),
        config.params, with_hidden=config.hidden_states,
    )
    param_shapes = computer.param_shapes
    scales = _preconditioner(config, model, adapter_path, param_shapes)
    projector = make_projector(config.projector, param_shapes, config.proj_dim, config.seed,
                               **_projector_options(config, next(model.parameters()).device))
    # Kronecker projections take a linear layer's inputs and output gradients: the per-example weight
    # gradient is never formed (a per-coordinate preconditioner needs it formed, so not then).
    computer.factored = (isinstance(projector, KroneckerProjector) and isinstance(computer, HookGradientComputer)
                         and scales is None)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {"name_or_path": model_config.name_or_path, "weights_sha256": base_digest, "dtype": str(next(model.parameters()).dtype)},
        "adapter": {"method": adapter_config.method, "sha256": folder_digest(adapter_path)},
        "params": [[n, list(s)] for n, s in param_shapes.items()],
        # |theta*| over the differentiated parameters, in the features' metric (D^-1 theta* when preconditioned):
        # the scale of step lengths.
        "param_norm": float(torch.sqrt(sum(((p.detach().double() / (1 if scales is None else scales[n].double()))
                                            ** 2).sum() for n, p in computer.params.items()))),
        "projector": {"kind": config.projector, "seed": config.seed, "dim": projector.proj_dim, "block_rows": BLOCK_ROWS,
                      **({"factor_dim": config.factor_dim} if config.projector == "kronecker" else {})},
        "output_function": config.output,
        # only when set: manifests (and the identities made from them) of earlier stores stay as they were
        **({"skip_special_tokens": True} if config.skip_special_tokens else {}),
        **({} if scales is None else {"precondition": {"kind": config.precondition, "sha256": _tensors_digest(scales)}}),
        "dataset_fingerprint": taskset.fingerprint(),
        "tokenize": json.loads(tokenize_config.model_dump_json()),
        "dtype": config.dtype,
        "chunk_size": config.chunk_size,
        "hidden_dim": int(model.config.hidden_size) if config.hidden_states else None,
        "n_rows": len(examples),
        "versions": _versions(),
    }

    n_chunks = -(-len(examples) // config.chunk_size)
    if world_size > 1:
        per = -(-n_chunks // world_size)
        first, last = min(n_chunks, rank * per), min(n_chunks, (rank + 1) * per)
        target = shard_path(out_dir, rank, world_size)
        manifest["shard"] = {"rank": rank, "world_size": world_size}
    else:
        first, last, target = 0, n_chunks, out_dir
    row_start = first * config.chunk_size
    row_stop = min(len(examples), last * config.chunk_size)
    manifest.update(row_start=row_start, row_stop=row_stop)
    shard_index = {k: v[row_start:row_stop] for k, v in index.items()}

    store = _open_or_create(target, manifest, shard_index, config, force, scales)
    if store is not None and not store.complete:
        _fill(store, examples[row_start:row_stop], tokenizer, tokenize_config, computer, projector, config, progress,
              scales)
        del store
        finalize(target.with_name(target.name + ".part"), target)

    if world_size > 1:
        _barrier()
        if rank != 0:
            return None
        merge_shards(out_dir, world_size, force=force)
    return FeatureStore.open(out_dir)


def _projector_options(config: FeatureConfig, device) -> dict:
    """Keyword options of the configured projector kind."""
    if config.projector == "identity":
        return {}
    if config.projector == "kronecker":
        return {"factor_dim": config.factor_dim, "device": device}
    return {"max_cache_mb": config.max_cache_mb, "device": device}


def _preconditioner(config: FeatureConfig, model, adapter_path, param_shapes) -> dict | None:
    """Per-coordinate gradient scales for ``config.precondition`` (None for ``none``)."""
    if config.precondition == "none":
        return None
    from gradselect.train.moments import adam_scales, read_moments

    source = config.optimizer_state or (Path(adapter_path).parent if adapter_path is not None else None)
    if source is None:
        raise GradselectError("[features] precondition = 'adam' reads the meta-initialization's optimizer state: "
                              "give the meta-initialization adapter, or set [features] optimizer_state")
    moments, eps = read_moments(source, model)
    return {n: t.to(next(model.parameters()).device) for n, t in adam_scales(moments, eps, param_shapes).items()}


def _tensors_digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _open_or_create(target: Path, manifest: dict, index: dict, config: FeatureConfig, force: bool,
                    scales: dict | None = None) -> FeatureStore | None:
    """The store to fill (None if ``target`` is already complete and current)."""
    if target.exists():
        try:
            FeatureStore.open(target, expected=manifest)
            return None
        except ManifestMismatch:
            if not force:
                raise
    part = target.with_name(target.name + ".part")
    if part.exists():
        # An interrupted run of the same inputs resumes (force or not); one of other inputs needs force.
        try:
            store = FeatureStore.open(part, expected=manifest, writable=True)
            log.warning("resuming %s: %d of %d chunks done", part, int(store.done.sum()), len(store.done))
            return store
        except ManifestMismatch as err:
            if not force:
                raise ManifestMismatch(f"{err} (an interrupted run with other inputs)") from None
        except GradselectError:
            log.warning("%s is unreadable; starting it again", part)
    return FeatureStore.create(part, manifest, index, dtype=config.dtype, hidden_dim=manifest["hidden_dim"],
                               precondition=None if scales is None else {n: t.cpu() for n, t in scales.items()})


#: First batch size on a GPU when ``[features] batch_size`` is unset: halved whenever a batch runs out
#: of memory (on an H200, SmolLM2-135M LoRA gradients at batch 64 ran at 30k tokens/s against 11k at 16).
GPU_START_BATCH = 64


def _fill(store, examples, tokenizer, tokenize_config, computer, projector, config, progress, scales=None) -> None:
    tokens = tokenize_examples(examples, tokenizer, tokenize_config)
    if tokens.n_truncated:
        log.warning("%d example(s) had their prompt shortened to max_length=%d", tokens.n_truncated, tokenize_config.max_length)
    device = next(computer.model.parameters()).device
    pad = tokenizer.pad_token_id
    todo = [c for c in range(len(store.done)) if not store.done[c]]
    start = time.perf_counter()
    n_weights = sum(p.numel() for p in computer.model.parameters())
    batch_size = config.batch_size or (GPU_START_BATCH if device.type == "cuda"
                                       else 1 if n_weights > 50_000_000 else 8)
    bar = tqdm(total=sum(store.chunk_rows(c).stop - store.chunk_rows(c).start for c in todo), desc="featurize", unit="ex", disable=not progress)
    for chunk in todo:
        rows = store.chunk_rows(chunk)
        g_parts, b_parts, h_parts, pending = [], [], [], []

        def project_pending():
            if pending:
                grads = {name: torch.cat([p[name] for p in pending]) for name in pending[0]}
                g_parts.append(projector.project(grads).cpu().numpy())
                pending.clear()

        s = rows.start
        while s < rows.stop:
            e = min(rows.stop, s + batch_size)
            input_ids, mask, label_t = pad_right(tokens.input_ids[s:e], tokens.labels[s:e], pad, device)
            try:
                out = computer.compute(input_ids, mask, label_t)
            except torch.OutOfMemoryError:
                # Batch size chosen by memory: halve it for the rest of the run and redo this batch
                # (a batch's features do not depend on its batch mates).
                del input_ids, mask, label_t
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if e - s == 1:
                    raise GradselectError(f"one example ({examples[s].id}) does not fit in the {device} memory for "
                                          "its forward and backward pass; shorten [tokenize] max_length or "
                                          "differentiate fewer parameters") from None
                batch_size = max(1, (e - s) // 2)
                log.warning("a batch of %d examples ran out of %s memory; featurizing %d at a time from here",
                            e - s, device, batch_size)
                continue
            if out.factors:  # projected now: its factors are small, and its matrix is never read whole
                g_parts.append(projector.project(out.grads, out.factors).cpu().numpy())
            else:
                # Preconditioned features: P^T D grad, D the per-coordinate scales (broadcast over examples).
                pending.append(out.grads if scales is None else {n: g * scales[n] for n, g in out.grads.items()})
                if sum(next(iter(p.values())).shape[0] for p in pending) >= config.project_batch_size:
                    project_pending()
            b_parts.append(out.values.detach().double().cpu().numpy())
            if out.hidden is not None:
                h_parts.append(out.hidden.float().cpu().numpy())
            bar.update(e - s)
            s = e
        project_pending()
        store.write_chunk(
            chunk,
            np.concatenate(g_parts).astype(store.g.dtype),
            np.concatenate(b_parts),
            np.concatenate(h_parts) if h_parts else None,
        )
    bar.close()
    log.info("featurized %d rows in %.1f s", store.n_rows, time.perf_counter() - start)


def _init_distributed(device, rank: int, world_size: int) -> None:
    """Join the process group of a sharded run: NCCL when each local rank has its own CUDA device,
    gloo otherwise (CPU, or ranks sharing a GPU, which NCCL refuses)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise GradselectError("sharded featurization (WORLD_SIZE > 1) needs torch.distributed, which this "
                              "torch build lacks")
    if dist.is_initialized():
        return
    dev = torch.device(device) if device != "auto" else torch.device("cpu")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nccl = dev.type == "cuda" and dist.is_nccl_available() and local <= torch.cuda.device_count()
    if nccl:
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group("nccl" if nccl else "gloo", rank=rank, world_size=world_size)
    except (ValueError, RuntimeError) as err:
        raise GradselectError(f"rank {rank} of {world_size} could not join the process group ({err}); run the "
                              "shards under torchrun, or set MASTER_ADDR and MASTER_PORT") from None


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def merge_shards(out_dir: str | Path, world_size: int, *, force: bool = False) -> FeatureStore:
    """Join ``<out_dir>.shard-<r>-of-<world_size>`` stores, checked and in row order."""
    out_dir = Path(out_dir)
    shards = []
    for r in range(world_size):
        p = shard_path(out_dir, r, world_size)
        if not p.exists():
            raise GradselectError(f"{p}: shard missing or incomplete; rerun featurization on rank {r}")
        shards.append(FeatureStore.open(p))
    ref = shards[0].manifest
    for s in shards[1:]:
        compare_manifests(s.manifest, ref, s.path)
    expected_start = 0
    for s in shards:
        if s.manifest["row_start"] != expected_start:
            raise GradselectError(f"{s.path}: rows start at {s.manifest['row_start']}, expected {expected_start}")
        expected_start = s.manifest["row_stop"]
    if expected_start != ref["n_rows"]:
        raise GradselectError(f"shards cover {expected_start} of {ref['n_rows']} rows")
    manifest = {k: v for k, v in ref.items() if k != "shard"}
    manifest.update(row_start=0, row_stop=ref["n_rows"])
    index = {k: [x for s in shards for x in getattr(s, k)] for k in ("ids", "sources", "splits")}
    part = out_dir.with_name(out_dir.name + ".part")
    merged = FeatureStore.create(part, manifest, index, dtype=str(shards[0].g.dtype), hidden_dim=ref["hidden_dim"],
                                 precondition=shards[0].preconditioner())
    start = 0
    for s in shards:
        stop = start + s.n_rows
        merged.g[start:stop] = s.g
        merged.b[start:stop] = s.b
        if merged.hidden is not None:
            merged.hidden[start:stop] = s.hidden
        start = stop
    merged.g.flush()
    merged.b.flush()
    if merged.hidden is not None:
        merged.hidden.flush()
    merged.done[:] = True
    np.save(part / "done.npy", merged.done)
    del merged
    if out_dir.exists() and not force:
        FeatureStore.open(out_dir, expected=manifest)  # refuse to replace a different store
    finalize(part, out_dir)
    import shutil

    for s in shards:
        shutil.rmtree(s.path)
    return FeatureStore.open(out_dir)


@torch.no_grad()
def output_values(model, tokenizer, examples, tokenize_config: TokenizeConfig | None = None, *, output: str = "log_odds",
                  skip_special_tokens: bool = False, batch_size: int = 8) -> np.ndarray:
    """The output function's value for each example under ``model`` (forward passes only), leaving the
    tokenizer's special tokens out with ``skip_special_tokens`` (as ``[features] skip_special_tokens``).

    Returns
    -------
    ndarray of shape (n_examples,), float64
    """
    from gradselect.features.gradients import accepts_logits_to_keep, forward_at_positions, response_positions

    fn = get_output_function(output, skipped_token_ids(tokenizer, skip_special_tokens))
    tokens = tokenize_examples(examples, tokenizer, tokenize_config)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    values = []
    for s in range(0, len(tokens), batch_size):
        input_ids, mask, label_t = pad_right(tokens.input_ids[s : s + batch_size],
                                             tokens.labels[s : s + batch_size], pad, device)
        if accepts_logits_to_keep(model):
            positions, gold = response_positions(label_t)
            _, logits = forward_at_positions(model, positions, input_ids=input_ids, attention_mask=mask,
                                             use_cache=False)
            values.append(fn.mean_over(logits, gold).double().cpu().numpy())
        else:
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            values.append(fn(logits, label_t).double().cpu().numpy())
    return np.concatenate(values) if values else np.zeros(0)
