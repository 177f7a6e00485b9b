"""Where a fine-tune's functional comes from, token by token: the gold token's log-odds at each response
position on the target's dev split, for trust-check fine-tunes of a run folder.

The estimator's functional is the logistic loss of the *mean* gold-token log-odds over an example's
response tokens. On short answers the response is the answer plus the chat template's end-of-turn token,
so a model sure of where the turn ends can have a low functional while its answer is wrong. This prints,
per fine-tune, the mean and minimum log-odds at each response position, on how many examples the first
(answer) token is below even odds, and the example-mean of three losses: the functional, the per-token
logistic loss (``log(1 + e^-z) = -log p`` per token, so its token-weighted mean is the token
cross-entropy), the first token's alone, and the functional with the special tokens left out
(``[features] skip_special_tokens``, computed by the product's ``output_values``):

    python benchmarks/pertoken.py runs/selection-bbh-natural-ce60 --sizes 0,12
    python benchmarks/pertoken.py runs/selection-bbh-natural-ce01-finals --finals --split test

Forward passes only, on the saved adapters under RUN/validation/runs/*/adapter (seed 0), or with
``--finals`` on the final models under RUN/final/*/adapter (every seed).
"""
from __future__ import annotations

import argparse
import glob
import json
import tomllib
from pathlib import Path

import numpy as np
import torch


def gold_log_odds(model, tok, examples, tokenize_config, batch_size: int = 8) -> list[np.ndarray]:
    """Per example, the gold token's log-odds ``logit_gold - logsumexp(other logits)`` (the functional's own
    per-token value, :class:`gradselect.features.output.MeanLogOdds`) at each response position, shape
    (n_response_tokens,) each."""
    from gradselect.data.tokenize import IGNORE_INDEX, pad_right, tokenize_examples
    from gradselect.features.output import MeanLogOdds

    log_odds = MeanLogOdds().token_values
    t = tokenize_examples(examples, tok, tokenize_config)
    out = []
    with torch.no_grad():
        for s in range(0, len(t), batch_size):
            ids, mask, lab = pad_right(t.input_ids[s:s + batch_size], t.labels[s:s + batch_size], tok.pad_token_id)
            logits, lab = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), lab[:, 1:]
            for i in range(ids.shape[0]):
                keep = lab[i] != IGNORE_INDEX
                out.append(log_odds(logits[i, keep], lab[i, keep]).numpy())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--sizes", default="0,12", help="fine-tunes on subsets of these many sources (comma list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--finals", action="store_true", help="the final models (RUN/final/*) instead of the trust check's")
    p.add_argument("--split", choices=("dev", "test"), default="dev", help="the target split measured")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from gradselect.config import RunConfig
    from gradselect.data import load_taskset
    from gradselect.features import output_values
    from gradselect.model import load_trained

    cfg = RunConfig.model_validate(tomllib.loads((args.run_dir / "config.toml").read_text()))
    taskset = load_taskset(cfg.data)
    dev = (taskset.target_dev if args.split == "dev" else taskset.target_test).examples
    sizes = {int(x) for x in args.sizes.split(",")}
    models = []  # (label, adapter folder)
    if args.finals:
        models = [(Path(f).parent.name, Path(f)) for f in sorted(glob.glob(str(args.run_dir / "final" / "*" / "adapter")))]
    for f in ([] if args.finals else sorted(glob.glob(str(args.run_dir / "validation" / "runs" / "*" / "truth.json")))):
        truth = json.loads(Path(f).read_text())
        if truth["seed"] == args.seed and len(truth["sources"]) in sizes:
            models.append((f"{len(truth['sources'])} sources ({Path(f).parent.name})", Path(f).parent / "adapter"))
    for label, adapter in models:
        model, tok = load_trained(cfg.model, cfg.adapter, adapter, device="cpu")
        z = gold_log_odds(model, tok, dev, cfg.tokenize)
        answers = output_values(model, tok, dev, cfg.tokenize, output=cfg.features.output, skip_special_tokens=True)
        width = min(len(x) for x in z)
        head = np.array([x[:width] for x in z])
        print(f"{label}, {len(z)} {args.split} examples, {sorted({len(x) for x in z})} response tokens")
        fmt = lambda v: "[" + ", ".join(f"{x:.2f}" for x in v) + "]"  # noqa: E731
        print(f"  gold log-odds by position: mean {fmt(head.mean(0))}, min {fmt(head.min(0))}")
        print(f"  first token below even odds (log-odds < 0): {int((head[:, 0] < 0).sum())} of {len(z)}; functional "
              f"{np.mean([np.logaddexp(0, -x.mean()) for x in z]):.4f}; per-token logistic "
              f"{np.mean([np.logaddexp(0, -x).mean() for x in z]):.4f}; first token's logistic "
              f"{np.mean(np.logaddexp(0, -head[:, 0])):.4f}; functional without special tokens "
              f"{np.mean(np.logaddexp(0, -answers)):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
