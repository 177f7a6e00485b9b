import json

import pytest
import torch

from gradselect.errors import ModelError
from gradselect.model import (
    AdapterConfig,
    ModelConfig,
    apply_adapter,
    default_lora_targets,
    load_model,
    make_tiny_model,
    trainable_parameters,
)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_models_are_small_and_deterministic(arch):
    m1, tok = make_tiny_model(arch, seed=0)
    m2, _ = make_tiny_model(arch, seed=0)
    m3, _ = make_tiny_model(arch, seed=1)
    n = sum(p.numel() for p in m1.parameters())
    assert 50_000 < n < 500_000
    p1, p2, p3 = (next(iter(m.parameters())) for m in (m1, m2, m3))
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)
    out = m1(**tok(["hello"], return_tensors="pt"))
    assert out.logits.shape == (1, 5, len(tok))


def test_lora_targets_attention_on_both_architectures():
    gpt2, _ = make_tiny_model("gpt2")
    peft_gpt2 = apply_adapter(gpt2, AdapterConfig(r=4))
    names = list(trainable_parameters(peft_gpt2))
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"c_attn", "c_proj"}
    assert all(".attn." in n for n in names)  # not the MLP's c_proj

    llama, _ = make_tiny_model("llama")
    names = list(trainable_parameters(apply_adapter(llama, AdapterConfig(r=4))))
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert default_lora_targets(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_lora_b_starts_at_zero_and_custom_targets():
    llama, _ = make_tiny_model("llama")
    model = apply_adapter(llama, AdapterConfig(r=2, target_modules=["gate_proj"]))
    params = trainable_parameters(model)
    assert all("gate_proj" in n for n in params)
    assert all(torch.count_nonzero(p) == 0 for n, p in params.items() if "lora_B" in n)


def test_full_finetuning_trains_everything():
    gpt2, _ = make_tiny_model("gpt2")
    model = apply_adapter(gpt2, AdapterConfig(method="full"))
    assert len(trainable_parameters(model)) == len(list(model.parameters()))


def test_unknown_architecture_lists_linear_layers():
    class Cfg:
        model_type = "mystery"

    class Mystery(torch.nn.Module):
        config = Cfg()

        def __init__(self):
            super().__init__()
            self.mix = torch.nn.Linear(2, 2)

    with pytest.raises(ModelError, match=r"no default LoRA targets for model type 'mystery'.*\['mix'\]"):
        default_lora_targets(Mystery())


def test_load_from_local_folder(tmp_path):
    model, tok = make_tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_model(ModelConfig(name_or_path=str(tmp_path / "m")), device="cpu")
    assert ltok("abc")["input_ids"] == tok("abc")["input_ids"]
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(ModelError, match="cannot load model 'no-such-org/no-such-model'"):
        load_model(ModelConfig(name_or_path="no-such-org/no-such-model"), device="cpu")


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(device="cuda")


def test_bad_model_inputs_are_one_clear_model_error(tmp_path):
    from gradselect.errors import ModelError
    from gradselect.model import make_tiny_model

    def fails(name, match, device="cpu"):
        with pytest.raises(ModelError, match=match):
            load_model(ModelConfig(name_or_path=str(name)), device=device)

    fails(tmp_path / "nowhere", "model folder not found")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no config.json")
    model, tok = make_tiny_model("llama")
    model.save_pretrained(tmp_path / "no_tok")
    fails(tmp_path / "no_tok", "no tokenizer files")
    remote = tmp_path / "remote"
    model.save_pretrained(remote)
    tok.save_pretrained(remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps(cfg | {"auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    fails(remote, "auto_map")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    fails(fake, "not a readable GGUF model")
    fails("tiny-llama", "is not a device", device="gpu0")
