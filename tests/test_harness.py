"""lm-evaluation-harness as an optional evaluator, offline, on local tasks over our own data files."""

import json

import pytest

from conftest import write_jsonl
from gradselect.cli import main
from gradselect.errors import GradselectError

pytest.importorskip("lm_eval")  # an optional extra; the test extras install it, so CI runs this file


@pytest.fixture
def yes_no(tmp_path):
    """A yes/no target (a closed answer set, so multiple choice) and its run config on the tiny model."""
    rows = [{"prompt": f"Is {i} even?", "response": "yes" if i % 2 == 0 else "no"} for i in range(40)]
    write_jsonl(tmp_path / "target.jsonl", rows)
    write_jsonl(tmp_path / "src.jsonl", rows[:10])
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[data]
test_fraction = 0.5
[data.target]
path = "{tmp_path / 'target.jsonl'}"
[[data.sources]]
path = "{tmp_path / 'src.jsonl'}"
[model]
name_or_path = "tiny-llama"
[tokenize]
chat_template = false
[evaluate]
max_new_tokens = 3
""")
    return cfg


def test_the_harness_scores_the_target_as_gradselect_does(yes_no, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(yes_no), "--lm-eval", "gradselect_target,gradselect_target_mc",
                 "-o", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())
    harness = metrics["lm_eval"]
    assert harness["gradselect_target"]["n_examples"] == metrics["n_examples"] == 20
    # Both score each choice by its log-likelihood after the prompt: the same accuracy, example for example.
    assert harness["gradselect_target_mc"]["acc"] == pytest.approx(metrics["mc_accuracy"], abs=1e-9)
    assert 0.0 <= harness["gradselect_target"]["exact_match"] <= 1.0
    assert "exact_match_stderr" in harness["gradselect_target"]


def test_local_tasks_from_an_include_folder_and_unknown_names(yes_no, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "parity.jsonl", [{"q": f"Is {i} odd?", "a": ["no", "yes"][i % 2]} for i in range(6)])
    (tasks / "parity.yaml").write_text(f"""task: parity_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{tasks / 'parity.jsonl'}"
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 3
metric_list:
  - metric: exact_match
""")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(yes_no), "--no-exact-match", "--lm-eval", "parity_gen", "--lm-eval-include",
                 str(tasks), "--lm-eval-limit", "4", "-o", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["lm_eval"]["parity_gen"]["n_examples"] == 4
    assert main(["evaluate", str(yes_no), "--no-exact-match", "--lm-eval", "parity_gne", "--lm-eval-include",
                 str(tasks), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s) ['parity_gne']" in err and "parity_gen" in err


def test_write_target_task_refuses_an_empty_split(tmp_path):
    from gradselect.data.examples import Source
    from gradselect.evaluate.harness import write_target_task

    with pytest.raises(GradselectError, match="no examples"):
        write_target_task(Source("empty", []), tmp_path)
