"""Every bad input gets a DataError naming the file, the place and the field."""

import json

import pytest

from gradselect.data import DataConfig, SourceSpec, load_sources, load_taskset
from gradselect.errors import DataError

from conftest import write_jsonl


def load(path, **kw):
    return load_sources(SourceSpec(path=str(path), **kw))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load(tmp_path / "nope.jsonl")


def test_unknown_format(tmp_path):
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(DataError, match=r"data\.xml: unknown data format '\.xml'"):
        load(tmp_path / "data.xml")


def test_malformed_jsonl_names_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", \n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: malformed JSON"):
        load(tmp_path / "bad.jsonl")


def test_non_utf8_names_line(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"bin\.jsonl, line 2: not valid UTF-8"):
        load(tmp_path / "bin.jsonl")


def test_missing_column_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(DataError, match=r"no response column.*columns are \['question', 'reply'\]"):
        load(path)
    with pytest.raises(DataError, match=r"field 'answer': missing column; columns are \['question', 'reply'\]"):
        load(path, response_column="answer")
    with pytest.raises(DataError, match=r"field 'task': missing column"):
        load(path, response_column="reply", source_column="task")


def test_missing_field_in_one_record(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"m\.jsonl, line 2, field 'response': missing field"):
        load(path)


def test_empty_source(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        load(tmp_path / "empty.jsonl")


@pytest.mark.parametrize("field", ["prompt", "response"])
def test_empty_prompt_or_response(tmp_path, field):
    row = {"prompt": "p", "response": "r", field: "   "}
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "response": "r"}, row])
    with pytest.raises(DataError, match=rf"e\.jsonl, line 2, field '{field}': empty value"):
        load(path)


def test_non_string_value(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "response": 42}])
    with pytest.raises(DataError, match=r"line 1, field 'response': expected a string, got int"):
        load(path)


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "prompt": "p", "response": "r"}] * 2)
    with pytest.raises(DataError, match=r"duplicate example id 'x'"):
        load(path, id_column="id")


def test_duplicate_source_names(tmp_path, qa_rows):
    write_jsonl(tmp_path / "t.jsonl", qa_rows)
    write_jsonl(tmp_path / "s.jsonl", qa_rows[:2])
    cfg = DataConfig(
        target=SourceSpec(path="t.jsonl"),
        sources=[SourceSpec(path="s.jsonl", name="same"), SourceSpec(path="s.jsonl", name="same")],
    )
    with pytest.raises(DataError, match=r"duplicate source name 'same' \(sources\[0\] and sources\[1\]\)"):
        load_taskset(cfg, base_dir=tmp_path)


def test_csv_ragged_row(tmp_path):
    (tmp_path / "r.csv").write_text("prompt,response\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"r\.csv, line 3: row has 3 fields, header has 2"):
        load(tmp_path / "r.csv")


def test_bad_messages(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError, match=r"line 1, field 'messages': the last turn must be the assistant's"):
        load(path, messages_column="messages")


def test_json_wrong_shape(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps({"data": []}))
    with pytest.raises(DataError, match=r"w\.json: expected a list of records or an object with an 'examples' list"):
        load(tmp_path / "w.json")


def test_unknown_reasoning_gym_generator():
    with pytest.raises(DataError, match=r"unknown reasoning-gym generator 'no_such_task'"):
        load_sources(SourceSpec(reasoning_gym="no_such_task"))


def test_target_too_small_to_split(tmp_path, qa_rows):
    write_jsonl(tmp_path / "t.jsonl", qa_rows[:2])
    with pytest.raises(DataError, match="too few to hold out"):
        load_taskset(DataConfig(target=SourceSpec(path="t.jsonl")), base_dir=tmp_path)
