"""End to end on a tiny model: training really lowers target loss; resume; evaluation."""

import json
import math
import shutil

import pytest
import torch

from gradselect.data import DataConfig, Example, Source, SourceSpec, load_taskset
from gradselect.evaluate import EvalConfig, exact_match, make_extractor, target_loss
from gradselect.model import AdapterConfig, ModelConfig, load_for_inference, load_model, make_tiny_model
from gradselect.train import TrainConfig, train


@pytest.fixture(scope="module")
def taskset():
    cfg = DataConfig(
        target=SourceSpec(reasoning_gym="chain_sum", size=40, seed=1),
        sources=[
            SourceSpec(name="sums", reasoning_gym="chain_sum", size=48, seed=2),
            SourceSpec(name="legs", reasoning_gym="leg_counting", size=16, seed=3),
        ],
    )
    return load_taskset(cfg)


def dev_loss(adapter_dir, taskset, arch="tiny-gpt2", adapter=None):
    model, tok = load_model(ModelConfig(name_or_path=arch), device="cpu")
    model = load_for_inference(model, adapter_dir, adapter)
    return target_loss(model, tok, taskset.target_dev.examples).loss


@pytest.mark.parametrize("arch", ["tiny-gpt2", "tiny-llama"])
def test_lora_finetune_lowers_target_loss(tmp_path, taskset, arch):
    before = dev_loss(None, taskset, arch)
    result = train(
        taskset,
        ["sums"],
        tmp_path / "run",
        model_config=ModelConfig(name_or_path=arch),
        train_config=TrainConfig(epochs=3, learning_rate=5e-3, batch_size=8),
        progress=False,
        device="cpu",
    )
    after = dev_loss(result.adapter_dir, taskset, arch)
    assert after < before - 0.2, (before, after)
    assert result.n_examples == len(taskset.target_train) + 48
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    saved = json.loads((tmp_path / "run" / "train_result.json").read_text())
    assert saved["sources"] == ["sums"] and saved["n_steps"] == result.n_steps
    assert not list(tmp_path.glob("run/*.part"))


def test_same_seed_same_adapter(tmp_path, taskset):
    cfg = TrainConfig(max_steps=3, batch_size=4)
    a = train(taskset, ["legs"], tmp_path / "a", train_config=cfg, progress=False, device="cpu")
    b = train(taskset, ["legs"], tmp_path / "b", train_config=cfg, progress=False, device="cpu")
    from safetensors.torch import load_file

    sa = load_file(a.adapter_dir / "adapter_model.safetensors")
    sb = load_file(b.adapter_dir / "adapter_model.safetensors")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_from_last_checkpoint(tmp_path, taskset):
    cfg = TrainConfig(max_steps=8, batch_size=4, logging_steps=1)
    first = train(taskset, [], tmp_path / "run", train_config=cfg, progress=False, device="cpu")
    uninterrupted = dev_loss(first.adapter_dir, taskset)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert ckpts, "training wrote no checkpoint"
    # Simulate a crash after checkpoint 6: drop everything written later.
    for p in ckpts:
        if int(p.name.split("-")[1]) > 6:
            shutil.rmtree(p)
    shutil.rmtree(first.adapter_dir)
    (tmp_path / "run" / "train_result.json").unlink()
    # ... and a checkpoint whose save was cut short (Trainer writes trainer_state.json last).
    half_written = tmp_path / "run" / "checkpoints" / "checkpoint-7"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"truncated")
    resumed = train(taskset, [], tmp_path / "run", train_config=cfg, progress=False, device="cpu")
    assert not half_written.exists() or (half_written / "trainer_state.json").exists()
    steps_logged = [h["step"] for h in resumed.log_history if "loss" in h]
    assert resumed.n_steps == 8
    assert steps_logged[-2:] == [7, 8]
    # Resuming repeats the data order: the final adapter equals the uninterrupted one.
    assert math.isclose(dev_loss(resumed.adapter_dir, taskset), uninterrupted, rel_tol=1e-5)


def test_finished_run_is_not_silently_redone(tmp_path, taskset):
    from gradselect.errors import GradselectError

    cfg = TrainConfig(max_steps=1, batch_size=4)
    train(taskset, [], tmp_path / "r", train_config=cfg, progress=False, device="cpu")
    with pytest.raises(GradselectError, match="--overwrite"):
        train(taskset, [], tmp_path / "r", train_config=cfg, progress=False, device="cpu")
    train(taskset, [], tmp_path / "r", train_config=cfg, progress=False, device="cpu", overwrite=True)


def test_continue_from_adapter_and_full_finetuning(tmp_path, taskset):
    cfg = TrainConfig(max_steps=4, batch_size=4, learning_rate=5e-3)
    meta = train(taskset, ["sums"], tmp_path / "meta", train_config=cfg, progress=False, device="cpu")
    cont = train(
        taskset, ["legs"], tmp_path / "cont", train_config=cfg, init_adapter=meta.adapter_dir, progress=False, device="cpu"
    )
    assert dev_loss(cont.adapter_dir, taskset) != dev_loss(meta.adapter_dir, taskset)
    full = AdapterConfig(method="full")
    f = train(taskset, [], tmp_path / "full", adapter_config=full, train_config=cfg, progress=False, device="cpu")
    assert (f.adapter_dir / "model.safetensors").exists()
    assert dev_loss(f.adapter_dir, taskset, adapter=full) < dev_loss(None, taskset)


def test_select_best_on_dev_keeps_best_checkpoint(tmp_path, taskset):
    cfg = TrainConfig(epochs=2, batch_size=8, select_best_on_dev=True)
    r = train(taskset, [], tmp_path / "b", train_config=cfg, progress=False, device="cpu")
    evals = [h["eval_loss"] for h in r.log_history if "eval_loss" in h]
    assert len(evals) == 2 and r.best_dev_loss == min(evals)


def test_target_loss_matches_manual_computation():
    model, tok = make_tiny_model("gpt2")
    examples = [Example("a", "ab", "cd"), Example("b", "hello", " w")]
    res = target_loss(model, tok, examples, batch_size=2)
    total, count = 0.0, 0
    for e in examples:
        ids = tok(e.prompt + e.response)["input_ids"] + [tok.eos_token_id]
        n_prompt = len(tok(e.prompt)["input_ids"])
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
        for pos in range(n_prompt - 1, len(ids) - 1):
            total -= logp[pos, ids[pos + 1]].item()
            count += 1
    assert res.n_tokens == count
    assert math.isclose(res.loss, total / count, rel_tol=1e-5)


def test_extractors():
    assert make_extractor(EvalConfig())("\n 42 \nmore") == "42"
    assert make_extractor(EvalConfig(answer_extractor="last_number"))("so 3 then -7.5.") == "-7.5"
    assert make_extractor(EvalConfig(answer_extractor="regex", answer_regex=r"is (\w+)"))("it is yes") == "yes"
    with pytest.raises(ValueError, match="needs 'answer_regex'"):
        EvalConfig(answer_extractor="regex")


def test_exact_match_after_memorising(tmp_path):
    examples = [Example(str(i), f"Q{i}", f" A{i}") for i in range(4)]
    src = Source("t", examples)
    from gradselect.data.examples import TaskSet

    ts = TaskSet(src, src, src, [])
    cfg = TrainConfig(epochs=150, batch_size=4, learning_rate=1e-2, warmup=0, save_total_limit=1)
    r = train(ts, [], tmp_path / "m", adapter_config=AdapterConfig(method="full"), train_config=cfg, progress=False, device="cpu")
    model, tok = load_model(ModelConfig(name_or_path="tiny-gpt2"), device="cpu")
    model = load_for_inference(model, r.adapter_dir, AdapterConfig(method="full"))
    res = exact_match(model, tok, src, eval_config=EvalConfig(max_new_tokens=6))
    assert res.predictions == ["A0", "A1", "A2", "A3"] and res.accuracy == 1.0
    graded = exact_match(model, tok, Source("t", examples, checker=lambda a, e: float(a == "A0")))
    assert graded.correct == [True, False, False, False]


def test_choice_accuracy_picks_the_most_likely_choice(tmp_path):
    import numpy as np

    from gradselect.data import Example, Source
    from gradselect.evaluate.metrics import choice_accuracy
    from gradselect.model import make_tiny_model

    model, tok = make_tiny_model("llama")
    examples = [Example(f"t:{i}", f"Q{i}?", "(B)", choices=("(A)", "(B)", "(C)")) for i in range(3)]
    examples.append(Example("t:3", "no choices", "x"))
    correct, preds = choice_accuracy(model, tok, Source("t", examples))
    for e, pred in zip(examples[:3], preds[:3]):
        lls = [-target_loss(model, tok, [Example(e.id, e.prompt, c)]).example_loss[0]
               * target_loss(model, tok, [Example(e.id, e.prompt, c)]).n_tokens for c in e.choices]
        assert pred == e.choices[int(np.argmax(lls))]
    assert correct[3] is None and preds[3] is None
    assert correct[:3] == [p == "(B)" for p in preds[:3]]


def test_multiple_choice_data_keeps_its_choices(tmp_path):
    import json

    from gradselect.data import DataConfig, load_taskset

    bbh = {"examples": [{"input": f"Q{i}\nOptions:\n(A) x\n(B) y\n(C) z", "target": "(B)" if i % 2 else "(C)"}
                        for i in range(20)]}
    (tmp_path / "bbh.json").write_text(json.dumps(bbh))
    yesno = [{"prompt": f"q{i}", "response": "Yes" if i % 3 else "No"} for i in range(20)]
    (tmp_path / "yesno.jsonl").write_text("".join(json.dumps(r) + "\n" for r in yesno))
    scored = {"examples": [{"input": f"q{i}", "target_scores": {"a": 0, "b": 1, "c": 0}} for i in range(20)]}
    (tmp_path / "scored.json").write_text(json.dumps(scored))
    numbers = [{"prompt": f"q{i}", "response": str(i)} for i in range(20)]
    (tmp_path / "numbers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in numbers))
    for name, choices in (("bbh.json", ("(A)", "(B)", "(C)")), ("yesno.jsonl", ("No", "Yes")),
                          ("scored.json", ("a", "b", "c")), ("numbers.jsonl", None)):
        ts = load_taskset(DataConfig.model_validate({"target": {"path": str(tmp_path / name)}}))
        assert all(e.choices == choices for e in ts.target_test.examples), name
        if choices:
            assert all(e.response in e.choices for e in ts.target_test.examples)


def test_dev_check_names_a_comparison_the_dev_split_prefers(tmp_path):
    import numpy as np

    from gradselect.evaluate.metrics import PerExample
    from gradselect.evaluate.results import MetricRow, MetricsTable
    from gradselect.report import dev_check, format_metrics

    per = {"loss": PerExample(np.array([1.0, 2.0]), np.array([1.0, 1.0]))}
    rows = {k: MetricRow(k, [], {"loss": 1.5}, per, None) for k in ("selection", "target-only")}
    table = MetricsTable("test", 2, rows, {"selection": 0.9, "target-only": 0.7})
    table.save(tmp_path / "m.json")
    back = MetricsTable.load(tmp_path / "m.json")
    assert back.dev_loss == table.dev_loss and back.dev_preferred() == "target-only"
    text = format_metrics(back, {"target-only": "target only"})
    assert "target only 0.7000, selection 0.9000" in text and "the dev split prefers target only" in text
    back.dev_loss["selection"] = 0.5
    assert "prefers" not in dev_check(back) and "selection 0.5000" in dev_check(back)
    back.dev_loss["target-only"] = 0.5  # a tie (a baseline that picked the same data): the selection stands
    assert back.dev_preferred() == "selection" and "prefers" not in dev_check(back)
    assert dev_check(MetricsTable("test", 2, rows)) == ""  # older metrics.json without dev losses


def test_comparisons_show_each_training_seed_beside_the_test_example_interval(tmp_path):
    import numpy as np

    from gradselect.evaluate.metrics import PerExample
    from gradselect.evaluate.results import MetricRow, MetricsTable, seed_differences
    from gradselect.report import format_metrics

    per = {"loss": PerExample(np.array([1.0, 2.0, 1.5]), np.ones(3))}
    seeded = {"selection": [0.50, 0.60], "all": [0.55, 0.65], "kmm": [0.45, 0.70]}
    rows = {k: MetricRow(k, [], {"loss": float(np.mean(v))}, per, {"loss": v}) for k, v in seeded.items()}
    rows["one"] = MetricRow("one", [], {"loss": 1.0}, per, None)  # a single seed: nothing to show
    table = MetricsTable("test", 3, rows)
    table.save(tmp_path / "m.json")
    back = MetricsTable.load(tmp_path / "m.json")
    assert back.seed_versus("all", "loss") == pytest.approx([0.05, 0.05])
    assert back.seed_versus("kmm", "loss") == pytest.approx([-0.05, 0.10])
    assert back.seed_versus("one", "loss") is None
    assert seed_differences(rows["all"], MetricRow("x", [], {}, None, {"loss": [1.0, 2.0, 3.0]}), "loss") is None
    text = format_metrics(back)
    assert "seed i against seed i" in text
    assert "by seed +0.0500 / +0.0500" in text and "by seed -0.0500 / +0.1000" in text
    unseeded = MetricsTable("test", 3, {k: MetricRow(k, [], {"loss": 1.5}, per, None) for k in ("selection", "all")})
    assert "by seed" not in format_metrics(unseeded) and "seed i" not in format_metrics(unseeded)


def test_dev_check_gives_the_paired_dev_interval_and_holds_back_within_noise(tmp_path):
    import numpy as np

    from gradselect.evaluate.metrics import PerExample
    from gradselect.evaluate.results import MetricRow, MetricsTable
    from gradselect.report import dev_check

    rng = np.random.default_rng(0)
    tokens = np.full(200, 4.0)
    sel = rng.uniform(0.5, 1.5, 200)
    per = {"loss": PerExample(np.array([1.0, 2.0]), np.array([1.0, 1.0]))}
    rows = {k: MetricRow(k, [], {"loss": 1.5}, per, None) for k in ("selection", "target-only")}

    def table(shift, noise):
        jitter = rng.normal(0, noise, 200)
        other = sel + shift + jitter - jitter.mean()  # exactly `shift` better on average
        dev = {"selection": PerExample(sel * tokens, tokens), "target-only": PerExample(other * tokens, tokens)}
        return MetricsTable("test", 2, rows, {k: v.value for k, v in dev.items()}, "base", dev)

    clear = table(-0.3, 0.05)  # target only better on every dev example
    clear.save(tmp_path / "m.json")
    back = MetricsTable.load(tmp_path / "m.json")
    saved = __import__("json").loads((tmp_path / "m.json").read_text())
    d = saved["dev_vs_selection"]["target-only"]
    assert d["difference"] == pytest.approx(-0.3, abs=0.02) and d["ci95"][1] < 0
    assert back.dev_versus("target-only")["ci95"] == d["ci95"]
    text = dev_check(back, {"target-only": "target only"})
    assert "beyond the dev split's noise" in text and "consider training on target only's data" in text

    close = table(-0.005, 0.5)  # a hair better on average, noisy per example
    text = dev_check(close, {"target-only": "target only"})
    assert "within the dev split's noise" in text and "cannot tell them apart" in text
    assert "consider training" not in text
