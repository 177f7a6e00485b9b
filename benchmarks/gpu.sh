#!/usr/bin/env bash
# GPU featurization benchmark (issue 17): one prepared run of under 8 minutes on one GPU.
#
# Featurization against a plain training step of the same batches, on CUDA in bf16, for
# models of SmolLM2-135M's and Gemma-3-270M's shapes with random weights (built on the GPU:
# the device machine can neither fetch nor hold the real checkpoints; throughput does not
# depend on the weights):
#   1. LoRA r=8 on the attention projections: training step (full and response-only logits),
#      hook featurization with the blockwise projection, and the Kronecker-factored projector;
#   2. every linear weight of the blocks (full fine-tuning, 106M weights): response-only
#      training step against the Kronecker-factored projector (dense per-example gradients
#      of 106M weights do not fit);
#   3. the CUDA tests of tests/test_features.py (a GPU store against the CPU one);
#   4. LoRA r=8 on Gemma-3-270M's shape (a 262k vocabulary: where response-only logits matter);
#   5. the estimator's subset solves on the GPU beside the CPU ([estimate] device).
# Prints examples/s and tokens/s per method, the ratios to the training step, GPU memory.
#
# On the device machine (its image has torch, transformers, peft; not pydantic), from the
# repository root. Once, here (wheels travel; .whl is ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection tomli-w
# then run (carry [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:src bash benchmarks/gpu.sh
set -uo pipefail  # each section runs on when another fails: one lease, every figure it can give
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-}:src" PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-runs/gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"

{
  date -u +"# %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" - <<'PY'
import torch, transformers, peft
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, peft {peft.__version__}")
import gradselect.features, gradselect.model  # noqa: F401  (fails here if a dependency is missing)
PY
  # One repeat per method: each method runs in its own process, and a process's start (CUDA,
  # model built on the GPU) takes about 20 s there, more than its timed work; 2026-12-04's run
  # with 3 repeats timed out. Timeouts sum to 10 minutes; the first five sections took about 5.5
  # (the estimator's section is new since: not yet run on a GPU).
  common=(--device "$DEVICE" --dtype bfloat16 --threads 8 --repeats 1)
  echo; echo "## LoRA r=8 (SmolLM2-135M shape), 256 examples x 128 tokens (32 response), batch 16"
  timeout 120 "$PY" benchmarks/featurize.py --model smollm2-shape "${common[@]}" --n-examples 256 \
    --batch-size 16 --project-batch 64 --methods train,train-response,hooks,kronecker || echo "(failed or timed out)"
  echo; echo "## the same at batch 64, 512 examples"
  timeout 90 "$PY" benchmarks/featurize.py --model smollm2-shape "${common[@]}" --n-examples 512 \
    --batch-size 64 --project-batch 64 --methods train-response,hooks,kronecker || echo "(failed or timed out)"
  echo; echo "## GPU store equals the CPU store; batched gradients equal the per-example loop; GPU subset solves"
  timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_features.py tests/test_estimate.py \
    -k "cuda or batched_gradients or every_row or batch_mates" || echo "(failed or timed out)"
  echo; echo "## every linear weight of the blocks (full fine-tuning), 128 examples, batch 8"
  timeout 90 "$PY" benchmarks/featurize.py --model smollm2-shape "${common[@]}" --adapter full \
    --n-examples 128 --batch-size 8 --methods train-response,kronecker || echo "(failed or timed out)"
  echo; echo "## LoRA r=8 (Gemma-3-270M shape: 262k vocabulary), 256 examples, batch 16"
  timeout 120 "$PY" benchmarks/featurize.py --model gemma3-shape "${common[@]}" --n-examples 256 \
    --batch-size 16 --project-batch 64 --methods train,train-response,hooks,kronecker || echo "(failed or timed out)"
  echo; echo "## the estimator on the GPU beside the CPU (fast and lowrank solvers, 10,000 subsets; FLAN's shape)"
  timeout 90 "$PY" benchmarks/estimate.py --device "$DEVICE" --threads 8 || echo "(failed or timed out)"
} 2>&1 | tee "$OUT_DIR/gpu.log"
