"""Evaluation with the ecosystem's harness: EleutherAI's lm-evaluation-harness (``lm-eval``), optional.

:func:`lm_eval_scores` hands a loaded model (a LoRA adapter is merged first) to
``lm_eval.simple_evaluate`` on named tasks: the harness's own (which download their data
from the hub) or local ones from an include folder of task YAML files.
:func:`write_target_task` writes the target's test split as such a local task
(``gradselect_target``: greedy generation scored by exact match, and
``gradselect_target_mc`` by the log-likelihood of each choice when the split has
choices), so the harness can score the target offline exactly as gradselect's own
metrics do, and a user can run the same task with ``lm_eval --include_path``.

Install with ``pip install 'gradselect[lmeval]'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from gradselect.errors import GradselectError

#: The local task names :func:`write_target_task` defines.
TARGET_TASK = "gradselect_target"
TARGET_MC_TASK = "gradselect_target_mc"


def _require():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise GradselectError("lm-evaluation-harness is not installed: pip install 'gradselect[lmeval]' "
                              "(or pip install lm-eval)") from None


def write_target_task(split, folder: Path, *, max_new_tokens: int = 32) -> list[str]:
    """Write ``split`` (a Source) as local lm-eval tasks in ``folder``; returns the task names written.

    ``folder/gradselect_target.jsonl`` holds one ``{"prompt", "response"}`` per example (plus
    ``choices`` and ``label`` when every example has choices); the YAML files beside it
    define the tasks over that file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = list(split.examples)
    if not examples:
        raise GradselectError(f"the {split.name!r} split has no examples to evaluate")
    with_choices = all(e.choices for e in examples)
    rows = []
    for e in examples:
        row = {"prompt": e.prompt, "response": e.response.strip()}  # generations are compared stripped
        if with_choices:
            row.update(choices=list(e.choices), label=list(e.choices).index(e.response))
        rows.append(row)
    data = folder / f"{TARGET_TASK}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
              "test_split: test\ndoc_to_text: \"{{prompt}}\"\n")
    (folder / f"{TARGET_TASK}.yaml").write_text(
        f"task: {TARGET_TASK}\n{common}output_type: generate_until\ndoc_to_target: \"{{{{response}}}}\"\n"
        f"generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: {int(max_new_tokens)}\n  do_sample: false\n"
        "filter_list:\n  - name: strip\n    filter:\n      - function: regex\n        regex_pattern: \"\\\\s*(.*\\\\S)\"\n"
        "      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    names = [TARGET_TASK]
    if with_choices:
        (folder / f"{TARGET_MC_TASK}.yaml").write_text(
            f"task: {TARGET_MC_TASK}\n{common}output_type: multiple_choice\ndoc_to_choice: \"{{{{choices}}}}\"\n"
            # No delimiter: each choice is scored as the response itself, as gradselect's choice accuracy does.
            "doc_to_target: label\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\n", encoding="utf-8")
        names.append(TARGET_MC_TASK)
    return names


def include_paths(tasks: Sequence[str], split, folder: Path, include=None, *, max_new_tokens: int = 32) -> list:
    """The include folders ``tasks`` need: ``include`` (the user's), plus ``folder`` with the target's local
    tasks written into it when a ``gradselect_target*`` task is asked for."""
    paths = [include] if include else []
    if any(t.startswith(TARGET_TASK) for t in tasks):
        write_target_task(split, folder, max_new_tokens=max_new_tokens)
        paths.append(Path(folder))
    return paths


def lm_eval_scores(model, tokenizer, tasks: Sequence[str], *, include_path=None,
                   limit: int | None = None, batch_size: int = 8, chat_template: bool = False) -> dict:
    """Scores of ``model`` on lm-eval ``tasks``: ``{task: {metric: value, metric_stderr: value}}``.

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        A LoRA model is merged into its base first (the harness takes plain HF models).
    tokenizer : the model's tokenizer
    tasks : sequence of str
        Harness task names; local ones are found in ``include_path``.
    include_path : path or list of paths, optional
        Folders of task YAML files (e.g. the one :func:`write_target_task` wrote).
    limit : int, optional
        Examples per task at most (for smoke tests; figures on a limit are not comparable).
    chat_template : bool
        Render prompts with the tokenizer's chat template (as ``[tokenize] chat_template`` does).

    Raises
    ------
    GradselectError
        lm-eval is not installed, or a task name is unknown (the message lists close ones).
    """
    _require()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    manager = TaskManager(include_path=[str(p) for p in paths] or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib

        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        raise GradselectError(f"unknown lm-eval task(s) {unknown}"
                              + (f" in {include_path} or the harness" if include_path else " (no include folder)")
                              + f"; close names: {hints}")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
                              bootstrap_iters=1000, apply_chat_template=chat_template)
    out = {}
    for task, values in results["results"].items():
        # lm-eval names metrics "<metric>,<filter>"; keep the metric, drop the filter when it is the only one.
        metrics = {}
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "," in key:
                metric, _, filt = key.partition(",")
                metrics[metric if filt in ("none", "strip") else f"{metric}[{filt}]"] = float(value)
        out[task] = {"n_examples": int(values.get("sample_len", 0)) or None, **metrics}
    return out
