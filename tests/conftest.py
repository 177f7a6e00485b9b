import json
import os
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def reorder_sources(arrays, order):
    """The same features with the sources listed in ``order`` (indices into the current order)."""
    from gradselect.estimate import FeatureArrays

    names = arrays.source_names
    return FeatureArrays(arrays.g, arrays.b, {names[i]: arrays.source_rows[names[i]] for i in order},
                         arrays.train_rows, arrays.dev_rows, arrays.param_norm, arrays.hidden)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_rows():
    return [{"prompt": f"What is {i} + {i}?", "response": f" {2 * i}"} for i in range(10)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Converted models are cached per test session, never in the user's home.
    monkeypatch.setenv("GRADSELECT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


#: A whole run on the tiny Llama model, small enough for CI: a chain_sum target, a related
#: source, an unrelated one and a planted noisy one. Tests append their own sections.
TINY_RUN_TOML = """
[data.target]
reasoning_gym = "chain_sum"
size = 40
seed = 1

[[data.sources]]
name = "more"
reasoning_gym = "chain_sum"
size = 16
seed = 2

[[data.sources]]
name = "legs"
reasoning_gym = "leg_counting"
size = 16
seed = 3

[[data.sources]]
name = "noisy"
reasoning_gym = "chain_sum"
size = 16
seed = 4
label_noise = 1.0

[model]
name_or_path = "tiny-llama"

[adapter]
method = "full"

[tokenize]
max_length = 192

[train]
max_steps = 3
batch_size = 8
learning_rate = 1e-3
logging_steps = 1

[features]
proj_dim = 32
params = ['layers\\.1\\..*proj']
"""


def tiny_run(run_dir, *, k=1, extra_sources: str = "", compare: str = '["all"]') -> str:
    """TINY_RUN_TOML with the sections a whole ``gradselect run`` needs: top-k selection of ``k``
    sources, short generations, and ``[run]`` in ``run_dir`` with 3-step final fine-tunes."""
    return TINY_RUN_TOML + extra_sources + f"""
[select]
rule = "top_k"
k = {k}
n_subsets = 20
n_bootstrap = 50

[evaluate]
max_new_tokens = 4

[run]
run_dir = "{run_dir}"
compare = {compare}
final_steps = 3
"""


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    """A chain_sum target with two small sources and a 3-step LoRA meta-initialization of the tiny
    model: ``(taskset, adapter_dir)``; the training folder (checkpoints, moments) is the adapter's parent."""
    from gradselect.data import DataConfig, SourceSpec, load_taskset
    from gradselect.train import TrainConfig, train

    cfg = DataConfig(
        target=SourceSpec(reasoning_gym="chain_sum", size=20, seed=1),
        sources=[
            SourceSpec(name="sums", reasoning_gym="chain_sum", size=12, seed=2),
            SourceSpec(name="legs", reasoning_gym="leg_counting", size=10, seed=3),
        ],
    )
    taskset = load_taskset(cfg)
    meta = train(
        taskset, taskset.source_names, tmp_path_factory.mktemp("meta"),
        train_config=TrainConfig(max_steps=3, batch_size=8), progress=False, device="cpu", save_moments=True,
    )
    return taskset, meta.adapter_dir
