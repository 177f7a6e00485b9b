"""Every example config parses; those whose data ships with the repo (or in ../shared) load."""

from pathlib import Path

import pytest

from gradselect.config import load_config
from gradselect.data import load_taskset

EXAMPLES = Path(__file__).parent.parent / "examples"
CONFIGS = sorted(EXAMPLES.rglob("*.toml"))


def test_there_are_examples():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_config_is_valid(path):
    config = load_config(path)
    assert config.data is not None and config.data.target is not None


def test_own_jsonl_example_loads():
    path = EXAMPLES / "own_jsonl" / "run.toml"
    taskset = load_taskset(load_config(path).data, base_dir=path.parent)
    assert taskset.source_names == ["arithmetic", "languages", "noisy_capitals"]
    assert len(taskset.target_train) == 10 and len(taskset.target_dev) == 5 and len(taskset.target_test) == 5


def test_bbh_example_loads_when_shared_data_is_present():
    path = EXAMPLES / "bbh_shared_data.toml"
    if not (path.parent / "../../shared/data/bbh").exists():
        pytest.skip("../shared/data/bbh is not present")
    taskset = load_taskset(load_config(path).data, base_dir=path.parent)
    assert len(taskset.sources) == 4 and all(len(s) == 60 for s in taskset.sources)
