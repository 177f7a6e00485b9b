import json
import os
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
