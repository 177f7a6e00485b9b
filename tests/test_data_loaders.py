import json

import pytest

from gradselect.data import DataConfig, SourceSpec, load_sources, load_taskset, split_examples
from gradselect.data.examples import Example

from conftest import write_jsonl


def test_jsonl(tmp_path, qa_rows):
    [src] = load_sources(SourceSpec(path=str(write_jsonl(tmp_path / "math.jsonl", qa_rows))))
    assert src.name == "math"
    assert len(src) == 10
    assert src.examples[3] == Example("math:3", "What is 3 + 3?", " 6")


def test_json_list_and_bigbench_shape(tmp_path, qa_rows):
    (tmp_path / "list.json").write_text(json.dumps(qa_rows))
    [src] = load_sources(SourceSpec(path=str(tmp_path / "list.json")))
    assert len(src) == 10
    bb = {
        "canary": "BIG-bench canary",
        "examples": [
            {"input": "not True", "target": "False"},
            {"input": "1+1", "target": ["2", "two"]},
            {"input": "sky?", "target_scores": {"red": 0, "blue": 1}},
            {"input": "What is 2 plus 3?", "target": "5", "target_scores": {"4": 0, "5": 1, "house": 0}},
        ],
    }
    (tmp_path / "task.json").write_text(json.dumps(bb))
    [src] = load_sources(SourceSpec(path=str(tmp_path / "task.json"), name="bb"))
    assert [(e.prompt, e.response) for e in src.examples] == [("not True", "False"), ("1+1", "2"), ("sky?", "blue"),
                                                              ("What is 2 plus 3?", "5")]
    # target_scores make a question multiple choice, also beside a written target (BIG-bench arithmetic).
    assert [e.choices for e in src.examples] == [None, None, ("red", "blue"), ("4", "5", "house")]


def test_csv_parquet_and_custom_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": f"q{i}", "a": f"a{i}", "key": f"k{i}"} for i in range(5)]
    (tmp_path / "d.csv").write_text("q,a,key\n" + "".join(f"{r['q']},{r['a']},{r['key']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        [src] = load_sources(
            SourceSpec(path=str(tmp_path / name), prompt_column="q", response_column="a", id_column="key")
        )
        assert [e.id for e in src.examples] == ["k0", "k1", "k2", "k3", "k4"]
        assert src.examples[2].prompt == "q2" and src.examples[2].response == "a2"


def test_source_column_and_folder(tmp_path):
    rows = [{"input": f"x{i}", "output": f"y{i}", "task": "ab"[i % 2]} for i in range(6)]
    one = write_jsonl(tmp_path / "all.jsonl", rows)
    sources = load_sources(SourceSpec(path=str(one), source_column="task"))
    assert [(s.name, len(s)) for s in sources] == [("a", 3), ("b", 3)]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "first.jsonl", rows[:2])
    (folder / "second.json").write_text(json.dumps(rows[2:]))
    (folder / "notes.txt").write_text("ignored")
    sources = load_sources(SourceSpec(path=str(folder)))
    assert [(s.name, len(s)) for s in sources] == [("first", 2), ("second", 4)]


def test_hf_datasets_saved_and_local(tmp_path, qa_rows):
    import datasets

    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(qa_rows), "validation": datasets.Dataset.from_list(qa_rows[:3])})
    ds.save_to_disk(str(tmp_path / "saved"))
    [src] = load_sources(SourceSpec(path=str(tmp_path / "saved"), hf_split="validation", name="hf"))
    assert len(src) == 3 and src.examples[1].response == " 2"
    local = tmp_path / "local"
    local.mkdir()
    write_jsonl(local / "train.jsonl", qa_rows)
    [src] = load_sources(SourceSpec(hf_dataset=str(local), name="loc"))
    assert len(src) == 10


def test_chat_messages(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
        for i in range(3)
    ]
    [src] = load_sources(SourceSpec(path=str(write_jsonl(tmp_path / "chat.jsonl", rows)), messages_column="messages"))
    assert src.examples[0].response == "hello 0"
    assert src.examples[0].messages[0] == {"role": "user", "content": "hi 0"}


def test_reasoning_gym_adapter_keeps_checker():
    [src] = load_sources(SourceSpec(reasoning_gym="basic_arithmetic", size=5, seed=3))
    assert len(src) == 5 and src.name == "basic_arithmetic"
    e = src.examples[0]
    assert e.prompt.endswith("\nAnswer:")
    assert src.checker(e.response, e) == 1.0
    assert src.checker("not a number", e) == 0.0
    again = load_sources(SourceSpec(reasoning_gym="basic_arithmetic", size=5, seed=3))[0]
    assert again.examples == src.examples
    other = load_sources(SourceSpec(reasoning_gym="basic_arithmetic", size=5, seed=4))[0]
    # Neighbouring seeds must not share examples (reasoning-gym seeds item i with seed + i).
    assert not {e.prompt for e in src.examples} & {e.prompt for e in other.examples}


def test_cap_and_label_noise_are_seeded(tmp_path, qa_rows):
    path = str(write_jsonl(tmp_path / "m.jsonl", qa_rows))
    [a] = load_sources(SourceSpec(path=path, max_examples=4, seed=1))
    [b] = load_sources(SourceSpec(path=path, max_examples=4, seed=1))
    [c] = load_sources(SourceSpec(path=path, max_examples=4, seed=2))
    assert a.examples == b.examples and len(a) == 4
    assert [e.id for e in a.examples] != [e.id for e in c.examples]
    [noisy] = load_sources(SourceSpec(path=path, label_noise=0.5, seed=1))
    flagged = [e for e in noisy.examples if e.meta.get("noisy")]
    assert len(flagged) == 5
    clean = {e.id: e.response for e in load_sources(SourceSpec(path=path))[0].examples}
    assert all(e.response != clean[e.id] for e in flagged)
    assert all(e.response == clean[e.id] for e in noisy.examples if not e.meta.get("noisy"))
    assert sorted(e.response for e in noisy.examples) == sorted(clean.values())


def test_split_is_seeded_and_disjoint():
    ex = [Example(str(i), f"p{i}", f"r{i}") for i in range(50)]
    tr, dv, te = split_examples(ex, dev_fraction=0.2, test_fraction=0.1, seed=0)
    assert (len(tr), len(dv), len(te)) == (35, 10, 5)
    assert not {e.id for e in tr} & {e.id for e in dv} and not {e.id for e in dv} & {e.id for e in te}
    assert split_examples(ex, dev_fraction=0.2, test_fraction=0.1, seed=0) == (tr, dv, te)
    assert split_examples(ex, dev_fraction=0.2, test_fraction=0.1, seed=1)[1] != dv


def test_taskset_with_explicit_splits(tmp_path, qa_rows):
    t = write_jsonl(tmp_path / "t.jsonl", qa_rows)
    d = write_jsonl(tmp_path / "d.jsonl", qa_rows[:2])
    cfg = DataConfig(
        target=SourceSpec(path="t.jsonl"),
        target_dev=SourceSpec(path="d.jsonl"),
        test_fraction=0.3,
        sources=[SourceSpec(reasoning_gym="leg_counting", size=4)],
    )
    ts = load_taskset(cfg, base_dir=tmp_path)
    assert len(ts.target_dev) == 2 and len(ts.target_test) == 3 and len(ts.target_train) == 7
    assert ts.source_names == ["leg_counting"]
    assert ts.fingerprint() == load_taskset(cfg, base_dir=tmp_path).fingerprint()
    assert t.exists() and d.exists()


def test_overlap_with_target_warns(tmp_path, qa_rows):
    write_jsonl(tmp_path / "t.jsonl", qa_rows)
    write_jsonl(tmp_path / "s.jsonl", qa_rows[:3])
    cfg = DataConfig(target=SourceSpec(path="t.jsonl"), sources=[SourceSpec(path="s.jsonl")])
    with pytest.warns(UserWarning, match="3 example"):
        load_taskset(cfg, base_dir=tmp_path)


def test_drop_overlap_keeps_held_out_splits_unseen(tmp_path, qa_rows):
    import warnings

    from gradselect.errors import DataError

    write_jsonl(tmp_path / "t.jsonl", qa_rows + qa_rows[:4])  # four repeats, wherever the split puts them
    write_jsonl(tmp_path / "test.jsonl", qa_rows[8:])
    write_jsonl(tmp_path / "s.jsonl", qa_rows[:3] + [{"prompt": "new?", "response": "yes"}])
    cfg = DataConfig(target=SourceSpec(path="t.jsonl"), target_test=SourceSpec(path="test.jsonl"),
                     sources=[SourceSpec(path="s.jsonl")], drop_overlap=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left to warn about
        ts = load_taskset(cfg, base_dir=tmp_path)
    pair = lambda e: (e.prompt, e.response)  # noqa: E731
    test, dev = set(map(pair, ts.target_test.examples)), set(map(pair, ts.target_dev.examples))
    assert len(ts.target_test) == 2  # test is never thinned
    assert not dev & test and not set(map(pair, ts.target_train.examples)) & (dev | test)
    # Every example not in test is still somewhere (repeats within one split are not the option's business).
    assert set(map(pair, ts.target_train.examples)) | dev == {(r["prompt"], r["response"]) for r in qa_rows[:8]}
    assert [e.prompt for e in ts.sources[0].examples] == ["new?"]
    # Without it, the same data warns.
    with pytest.warns(UserWarning, match="identical|contains"):
        load_taskset(cfg.model_copy(update={"drop_overlap": False}), base_dir=tmp_path)
    write_jsonl(tmp_path / "s.jsonl", qa_rows[:3])
    with pytest.raises(DataError, match="holds only examples of the target"):
        load_taskset(cfg, base_dir=tmp_path)


def test_target_share_repeats_the_target_split_to_its_share_of_the_mixture():
    from gradselect.data.examples import Source, TaskSet, target_repeats
    from gradselect.train import TrainConfig

    def source(name, n):
        return Source(name, [Example(f"{name}:{i}", f"q{i}", f" a{i}") for i in range(n)])

    ts = TaskSet(source("t", 4), source("dev", 2), source("test", 2), [source("a", 30), source("b", 10)])
    # natural proportions: one copy of the 4 target examples beside 40 source examples
    assert len(ts.training_examples(["a", "b"])) == 44
    # half the mixture: 40 source examples need 40 target rows, 10 copies of 4
    mixed = ts.training_examples(["a", "b"], target_share=0.5)
    assert len(mixed) == 80 and sum(e.id.startswith("t:") for e in mixed) == 40
    assert [e.id for e in mixed[:5]] == ["t:0", "t:1", "t:2", "t:3", "t:0"]  # whole copies, in order
    # the target alone is the target once, whatever the share; a small share never drops it
    assert [e.id for e in ts.training_examples([], target_share=0.5)] == ["t:0", "t:1", "t:2", "t:3"]
    assert target_repeats(4, 10, 0.1) == 1 and target_repeats(4, 30, 0.25) == 2 and target_repeats(0, 30, 0.5) == 1
    with pytest.raises(ValueError, match="include_target_train"):
        TrainConfig(target_share=0.5, include_target_train=False)
    with pytest.raises(ValueError):
        TrainConfig(target_share=1.0)
