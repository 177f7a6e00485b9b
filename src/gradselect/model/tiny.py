"""Tiny causal LMs (GPT-2 and Llama architectures) with a local byte tokenizer.

They have a few hundred thousand parameters, are built deterministically from
a seed with no network, and behave like any HF model (save, load, LoRA), so
the whole pipeline can be tested in seconds.
"""

from __future__ import annotations

from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

TinyArch = Literal["gpt2", "llama"]
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: one token per UTF-8 byte, plus pad/bos/eos.

    Needs no training data and round-trips any text exactly.
    """
    byte_chars = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(byte_chars[b] for b in range(256))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(arch: TinyArch = "gpt2", *, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A randomly initialised tiny causal LM and its tokenizer.

    Parameters
    ----------
    arch : {"gpt2", "llama"}
    seed : int
        Initialisation seed; the same seed gives bitwise-identical weights.
    hidden, layers : int
        Width and depth (defaults: about 180k parameters for GPT-2, 90k for Llama).

    Returns
    -------
    model : transformers.PreTrainedModel
    tokenizer : transformers.PreTrainedTokenizerFast
    """
    tokenizer = make_tiny_tokenizer()
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=1024, n_embd=hidden, n_layer=layers, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids
        )
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            **ids,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'gpt2' or 'llama'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()  # like from_pretrained
    return model, tokenizer
