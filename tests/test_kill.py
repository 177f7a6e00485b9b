"""SIGKILL a real featurization or training process, rerun the same command, and check the result."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from gradselect.features import FeatureStore

from conftest import TINY_RUN_TOML

CLI = [sys.executable, "-m", "gradselect"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args, check=True):
    return subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, check=check, timeout=600)


def kill_when(args, ready, timeout=300):
    """Start the CLI, SIGKILL it as soon as ``ready()`` holds; return True if it was killed mid-run."""
    proc = subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    while proc.poll() is None and time.time() - start < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


def some_chunks_done(done_file):
    """A kill trigger: a few, not all, chunks of a feature store written."""
    def ready():
        try:
            return 2 <= int(np.load(done_file).sum()) < 10
        except (OSError, ValueError, EOFError):
            return False

    return ready


def test_featurize_survives_sigkill_bitwise(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN_TOML.replace("proj_dim = 32", "proj_dim = 32\nchunk_size = 4\nbatch_size = 1"))
    run_cli("train", str(cfg), "-o", str(tmp_path / "meta"), "-q")
    adapter = str(tmp_path / "meta" / "adapter")
    run_cli("featurize", str(cfg), "--adapter", adapter, "-o", str(tmp_path / "whole"), "-q")

    assert kill_when(["featurize", str(cfg), "--adapter", adapter, "-o", str(tmp_path / "killed"), "-q"],
                     some_chunks_done(tmp_path / "killed.part" / "done.npy")), \
        "featurization finished before it could be killed"
    assert not (tmp_path / "killed").exists() and (tmp_path / "killed.part").exists()
    run_cli("featurize", str(cfg), "--adapter", adapter, "-o", str(tmp_path / "killed"), "-q")
    a, b = FeatureStore.open(tmp_path / "whole"), FeatureStore.open(tmp_path / "killed")
    assert np.array_equal(a.g, b.g) and np.array_equal(a.b, b.b) and a.ids == b.ids


def test_training_survives_sigkill_and_resumes(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN_TOML.replace("max_steps = 3", "max_steps = 40"))
    out = tmp_path / "meta"
    first_checkpoint = out / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    assert kill_when(["train", str(cfg), "-o", str(out), "-q"],
                     lambda: first_checkpoint.exists() and not (out / "train_result.json").exists()), \
        "training finished before it could be killed"
    assert not (out / "adapter").exists() and not (out / "train_result.json").exists()
    rerun = run_cli("train", str(cfg), "-o", str(out), "-q")
    assert "resuming training from" in rerun.stderr and "checkpoint-" in rerun.stderr
    assert (out / "adapter" / "model.safetensors").exists()
    import json

    assert json.loads((out / "train_result.json").read_text())["n_steps"] == 40


def test_featurization_under_run_resumes_after_sigkill(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN_TOML.replace("proj_dim = 32", "proj_dim = 32\nchunk_size = 4\nbatch_size = 1")
                   + f'\n[run]\nrun_dir = "{run_dir}"\ncompare = []\nfinal_steps = 2\n')
    assert kill_when(["run", str(cfg), "-q"], some_chunks_done(run_dir / "features.build.part" / "done.npy")), \
        "featurization finished before it could be killed"
    rerun = run_cli("run", str(cfg), "-q")
    assert "resuming" in rerun.stderr and "chunks done" in rerun.stderr
    run_cli("featurize", str(cfg), "--adapter", str(run_dir / "meta_init" / "adapter"), "-o", str(tmp_path / "whole"),
            "-q")
    a, b = FeatureStore.open(tmp_path / "whole"), FeatureStore.open(run_dir / "features")
    assert np.array_equal(a.g, b.g) and np.array_equal(a.b, b.b) and a.ids == b.ids
