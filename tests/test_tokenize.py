import pytest

from gradselect.data import Example, TokenizeConfig, tokenize_examples
from gradselect.data.tokenize import IGNORE_INDEX
from gradselect.errors import DataError
from gradselect.model import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def test_labels_mask_prompt_and_keep_response_and_eos(tok):
    batch = tokenize_examples([Example("a", "Q: 2+2?", " 4")], tok)
    ids, labels = batch.input_ids[0], batch.labels[0]
    n_prompt = len("Q: 2+2?")  # one token per byte
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:-1]) == " 4" and ids[-1] == tok.eos_token_id
    row = batch.rows()[0]
    assert row["attention_mask"] == [1] * len(ids)
    # The response tokens the cross-entropy averages over: " 4" and the end of sequence.
    assert batch.response_tokens() == [len(" 4") + 1]


def test_truncation_cuts_prompt_start_and_is_counted(tok):
    long = Example("long", "x" * 30 + "END", " yes")
    short = Example("short", "hi", " ok")
    batch = tokenize_examples([long, short], tok, TokenizeConfig(max_length=12))
    assert batch.n_truncated == 1 and batch.truncated_ids == ["long"]
    assert len(batch.input_ids[0]) == 12
    assert tok.decode(batch.input_ids[0][:-1]).endswith("END yes")
    assert sum(label != IGNORE_INDEX for label in batch.labels[0]) == len(" yes") + 1


def test_response_that_cannot_fit_is_an_error_listing_ids(tok):
    with pytest.raises(DataError, match=r"response does not fit in max_length=8 tokens for: big \(11 response tokens\)"):
        tokenize_examples([Example("big", "p", " ten bytes"), Example("ok", "p", "a")], tok, TokenizeConfig(max_length=8))


def test_chat_template_renders_messages(tok):
    e = Example(
        "c", "hi", "hello", messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    )
    batch = tokenize_examples([e], tok)
    text = tok.decode(batch.input_ids[0][:-1])
    assert text == "<|user|>hi\n<|assistant|>hello"
    plain = tokenize_examples([Example("p", "hi", "hello")], tok, TokenizeConfig(chat_template=True))
    assert plain.input_ids == batch.input_ids
