"""Prompt + response tokenization with a response mask.

Each example becomes ``prompt_ids + response_ids + [eos]``; labels copy the
ids on the response (and EOS) and are -100 on the prompt, so only response
tokens are trained on and scored. Over-long examples lose the *start* of the
prompt (the end is what the response depends on most); an example whose
response alone does not fit is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pydantic

from gradselect.configbase import StrictConfig
from gradselect.data.examples import Example
from gradselect.errors import DataError

IGNORE_INDEX = -100


class TokenizeConfig(StrictConfig):
    """How examples become token sequences."""

    max_length: int = pydantic.Field(default=256, ge=8)
    """Longest sequence (prompt + response + EOS) in tokens; prompts are cut from the start."""
    chat_template: bool = False
    """Render plain prompt/response pairs as a user turn and an assistant turn with the
    tokenizer's chat template (chat-style ``messages`` always use it)."""
    add_eos: bool = True
    """Append the EOS token to the response, so the model learns to stop."""


@dataclass
class TokenizedBatch:
    """Token ids and labels of a list of examples (unpadded).

    Attributes
    ----------
    ids : list of str
        Example ids (n_examples).
    input_ids, labels : list of list of int
        Per example; labels are -100 outside the response.
    n_truncated : int
        Examples whose prompt was shortened to fit ``max_length``.
    """

    ids: list[str]
    input_ids: list[list[int]]
    labels: list[list[int]]
    n_truncated: int = 0
    truncated_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def response_tokens(self) -> list[int]:
        """Per example, the positions whose logits predict a response token (labels after the first that are
        not -100): the tokens its response-token cross-entropy averages over."""
        return [sum(1 for x in labels[1:] if x != IGNORE_INDEX) for labels in self.labels]

    def rows(self) -> list[dict[str, list[int]]]:
        """One ``{"input_ids", "attention_mask", "labels"}`` dict per example (for collators)."""
        return [
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
            for ids, labels in zip(self.input_ids, self.labels)
        ]


def pad_right(input_ids: list[list[int]], labels: list[list[int]], pad_id: int, device=None):
    """Right-pad a batch to its longest sequence.

    Returns
    -------
    input_ids, attention_mask, labels : torch tensors of shape (n_examples, max_len)
        Padding gets ``pad_id``, attention 0 and label -100.
    """
    import torch

    width = max(map(len, input_ids))
    ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in input_ids], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in input_ids], device=device)
    lab = torch.tensor([y + [IGNORE_INDEX] * (width - len(y)) for y in labels], device=device)
    return ids, mask, lab


def render_prompt(example: Example, tokenizer, config: TokenizeConfig) -> tuple[str, bool]:
    """The prompt text as the model sees it, and whether it already holds special tokens."""
    messages = example.messages
    if messages is None and config.chat_template:
        messages = ({"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.response})
    if messages is None:
        return example.prompt, False
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"example {example.id!r} needs a chat template, but the tokenizer has none; "
            "use a chat model or plain prompt/response columns (and chat_template = false)"
        )
    text = tokenizer.apply_chat_template(list(messages[:-1]), add_generation_prompt=True, tokenize=False)
    return text, True


def encode_prompt(example: Example, tokenizer, config: TokenizeConfig) -> list[int]:
    """Token ids of the rendered prompt (with BOS where the tokenizer adds one)."""
    text, templated = render_prompt(example, tokenizer, config)
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def tokenize_examples(examples: list[Example], tokenizer, config: TokenizeConfig | None = None) -> TokenizedBatch:
    """Tokenize examples into ids and response-masked labels.

    Parameters
    ----------
    examples : list of Example
    tokenizer : transformers tokenizer
    config : TokenizeConfig, optional

    Returns
    -------
    TokenizedBatch

    Raises
    ------
    DataError
        Listing every example whose response (+ EOS) alone exceeds ``max_length``.
    """
    config = config or TokenizeConfig()
    eos = [tokenizer.eos_token_id] if config.add_eos and tokenizer.eos_token_id is not None else []
    bos = tokenizer.bos_token_id
    out = TokenizedBatch([], [], [])
    too_long = []
    for e in examples:
        prompt_ids = encode_prompt(e, tokenizer, config)
        response_ids = list(tokenizer(e.response, add_special_tokens=False)["input_ids"]) + eos
        budget = config.max_length - len(response_ids)
        keep_bos = bool(prompt_ids) and bos is not None and prompt_ids[0] == bos
        if budget < 1 + keep_bos:
            too_long.append(f"{e.id} ({len(response_ids)} response tokens)")
            continue
        if len(prompt_ids) > budget:
            head = prompt_ids[:1] if keep_bos else []
            prompt_ids = head + prompt_ids[len(prompt_ids) - (budget - len(head)) :]
            out.n_truncated += 1
            out.truncated_ids.append(e.id)
        out.ids.append(e.id)
        out.input_ids.append(prompt_ids + response_ids)
        out.labels.append([IGNORE_INDEX] * len(prompt_ids) + response_ids)
    if too_long:
        shown = ", ".join(too_long[:10]) + (f", ... ({len(too_long)} in all)" if len(too_long) > 10 else "")
        raise DataError(
            f"response does not fit in max_length={config.max_length} tokens for: {shown}; "
            "raise tokenize.max_length or shorten these responses"
        )
    return out
