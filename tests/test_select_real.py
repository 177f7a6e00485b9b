"""End to end on real features: a tiny model meta-trained on data with planted noisy-label sources.

The task is a lookup table (a 3-letter key -> a digit) that the tiny model
learns in seconds; noisy sources give random digits, which contradict the
table, so they really hurt. The default estimator must rank them last.
"""

import json

import numpy as np

from gradselect.data import DataConfig, SourceSpec, load_taskset
from gradselect.estimate import EstimateConfig, SubsetEstimator
from gradselect.features import FeatureConfig, featurize
from gradselect.model import AdapterConfig, ModelConfig
from gradselect.select import EnsembleSelector
from gradselect.train import TrainConfig, train


def lookup_task(folder, n_clean=4, n_noisy=4, seed=0):
    rng = np.random.default_rng(seed)
    keys = ["".join(rng.choice(list("abcdefghij"), 3)) for _ in range(16)]
    table = {k: str(rng.integers(0, 4)) for k in keys}

    def write(name, n, noisy, seed):
        r = np.random.default_rng(seed)
        rows = []
        for _ in range(n):
            k = keys[r.integers(len(keys))]
            rows.append({"prompt": f"{k}=", "response": str(r.integers(0, 4)) if noisy else table[k]})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        return SourceSpec(path=str(folder / f"{name}.jsonl"))

    target = write("target", 80, False, 1)
    sources = [write(f"clean{i}", 40, False, 10 + i) for i in range(n_clean)]
    sources += [write(f"noisy{i}", 40, True, 20 + i) for i in range(n_noisy)]
    return DataConfig(target=target, sources=sources)


def test_default_mode_ranks_planted_noisy_sources_last(tmp_path):
    taskset = load_taskset(lookup_task(tmp_path))
    model = ModelConfig(name_or_path="tiny-llama")
    full = AdapterConfig(method="full")  # a random tiny model has nothing for LoRA to adapt
    meta = train(
        taskset, taskset.source_names, tmp_path / "meta", model_config=model, adapter_config=full,
        train_config=TrainConfig(epochs=10, learning_rate=3e-3, batch_size=16), progress=False, device="cpu",
    )
    store = featurize(
        taskset, tmp_path / "features", model_config=model, adapter_config=full, adapter_path=meta.adapter_dir,
        feature_config=FeatureConfig(proj_dim=128, params=[r"layers\.1\..*proj"]), progress=False, device="cpu",
    )
    estimator = SubsetEstimator(EstimateConfig()).fit(store)  # the default mode
    assert estimator.config_.mode == "trust_region" and estimator.config_.solver == "fast"
    selection = EnsembleSelector(n_subsets=100).select(estimator)
    ranking = selection.ranking()
    assert all(name.startswith("clean") for name in ranking[:4]), ranking
    assert selection.chosen and all(name.startswith("clean") for name in selection.chosen)
    clean = [selection.scores[f"clean{i}"] for i in range(4)]
    noisy = [selection.scores[f"noisy{i}"] for i in range(4)]
    assert max(clean) < min(noisy)
