"""Is the target alone's first direction at theta* a better dev descent than all sources'? (planted12 bank)

Short steps (``--fractions`` x |theta*|) along the ``--steps`` directions (normalized, sign, adam) of
the target's train gradient alone and of all sources' (with the target's), each scored by a dev
forward pass. Needs the bank's run folder (theta* and source gradients: the product's, from
``truthbank.py choose``, or the bank scorer's with per-example squares, which the adam step needs):

    python benchmarks/forward_probe.py
    python benchmarks/forward_probe.py --steps adam --gradients runs/bank-planted12/source_gradients_squares.safetensors
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bank-planted12")
    p.add_argument("--gradients", help="source gradients file (default RUN/source_gradients/product.safetensors)")
    p.add_argument("--steps", default="normalized,sign")
    p.add_argument("--fractions", default="0.005,0.02")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from truthbank import planted12_config

    from gradselect.data import load_taskset
    from gradselect.estimate.forward import ForwardPassEstimator, SourceGradients
    from gradselect.model import apply_adapter, load_model

    config = planted12_config()
    taskset = load_taskset(config.data)
    run = Path(args.run_dir)
    model, tok = load_model(config.model, device="cpu")
    model = apply_adapter(model, config.adapter, init_adapter=run / "meta_init" / "adapter")
    grads = SourceGradients.load(args.gradients or run / "source_gradients" / "product.safetensors")
    names = taskset.source_names
    out = {}
    for step in args.steps.split(","):
        est = ForwardPassEstimator(step, train_batch_size=config.train.batch_size).fit(
            model, tok, grads, taskset.target_dev.examples, config.tokenize)
        out["base"] = est.base_loss_
        for f in (float(x) for x in args.fractions.split(",")):
            for label, sub in (("alone", []), ("all", list(names))):
                out[f"{step} {f} {label}"] = float(est.estimate([sub], length=f * est.param_norm_)[0])
                print(step, f, label, out[f"{step} {f} {label}"], flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
