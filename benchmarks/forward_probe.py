"""Is the target alone's first direction at theta* a better dev descent than all sources'? (planted12 bank)

Short steps (0.005 and 0.02 x |theta*|) along the normalized and sign directions of the target's
train gradient alone and of all sources' (with the target's), each scored by a dev forward pass.
Needs the bank's run folder (theta* and the product's source gradients, from ``truthbank.py choose``):

    python benchmarks/forward_probe.py
"""
import sys, json, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
torch.set_num_threads(1)
from truthbank import planted12_config
from gradselect.data import load_taskset
from gradselect.model import load_model, apply_adapter
from gradselect.estimate.forward import ForwardPassEstimator, SourceGradients
config = planted12_config(); taskset = load_taskset(config.data)
run = "runs/bank-planted12"
model, tok = load_model(config.model, device="cpu")
model = apply_adapter(model, config.adapter, init_adapter=f"{run}/meta_init/adapter")
grads = SourceGradients.load(f"{run}/source_gradients/product.safetensors")
names = taskset.source_names
out = {}
for step in ("normalized", "sign"):
    est = ForwardPassEstimator(step).fit(model, tok, grads, taskset.target_dev.examples, config.tokenize)
    out["base"] = est.base_loss_
    for f in (0.005, 0.02):
        for label, sub in (("alone", []), ("all", list(names))):
            out[f"{step} {f} {label}"] = float(est.estimate([sub], length=f * est.param_norm_)[0])
            print(step, f, label, out[f"{step} {f} {label}"], flush=True)
print(json.dumps(out))
