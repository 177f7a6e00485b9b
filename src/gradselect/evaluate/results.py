"""Typed metric rows and the ``metrics.json`` artifact of a run's final models.

:func:`evaluate_models` is the evaluate stage: it scores every final model on the
target's test split with every registered metric (:data:`~gradselect.evaluate.metrics.METRICS`)
and writes one :class:`MetricsTable`. The CLI, the report and the benchmarks read
and render that table; none of them builds metric rows of its own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from gradselect.errors import ArtifactError
from gradselect.evaluate.metrics import (
    METRICS,
    LossResult,
    PerExample,
    bootstrap_interval,
    paired_difference,
    score_split_examples,
    target_loss,
)
from gradselect.io import content_key, file_digest, read_json_artifact, write_json_atomic

METRICS_VERSION = 1


@dataclasses.dataclass
class MetricRow:
    """One final model's metrics.

    Attributes
    ----------
    label : str
        What it was fine-tuned on: ``selection``, ``all``, ``target-only``, ...
    sources : list of str
    values : dict of str to float
        By metric key (``loss``, ``exact_match``, ...).
    per_example : dict of str to PerExample, optional
        The same metrics per test example (for intervals and paired differences); with several
        seeds, each example's value averaged over them.
    seed_values : dict of str to list of float, optional
        With several training seeds, each seed's value.
    n_examples : int, optional
        An example-level baseline (``less``, ``uniform``, ``stratified``): how many examples it
        trained on, drawn from ``sources``; None for a model trained on whole sources.
    """

    label: str
    sources: list[str]
    values: dict[str, float]
    per_example: dict[str, PerExample] | None = None
    seed_values: dict[str, list[float]] | None = None
    """With several training seeds: each seed's value (``values`` holds their mean)."""
    n_examples: int | None = None

    def size_text(self) -> str:
        """The training data's size as a table shows it: ``5`` sources, or ``150 ex. of 12`` sources."""
        if self.n_examples is None:
            return str(len(self.sources))
        return f"{self.n_examples} ex. of {len(self.sources)}"

    def get(self, key: str) -> float | None:
        return self.values.get(key)

    def interval(self, key: str) -> list[float] | None:
        """95% bootstrap interval over test examples."""
        if not self.per_example or key not in self.per_example:
            return None
        return bootstrap_interval(self.per_example[key])


def seed_differences(row: MetricRow, reference: MetricRow, key: str) -> list[float] | None:
    """``row``'s metric minus ``reference``'s for each training seed, seed i against seed i (the same adapter
    initialisation and data-order seed, so a seed that is bad for every model cancels); None without the
    same number (2+) of seeds on both. The paired bootstrap interval covers the test examples of the seed
    means; this shows what it leaves out, the training seed."""
    a = (row.seed_values or {}).get(key)
    b = (reference.seed_values or {}).get(key)
    if not a or not b or len(a) < 2 or len(a) != len(b):
        return None
    return [float(x - y) for x, y in zip(a, b)]


@dataclasses.dataclass
class MetricsTable:
    """Metrics of every final model on one split (``metrics.json``)."""

    split: str
    n_examples: int
    rows: dict[str, MetricRow]
    dev_loss: dict[str, float] | None = None
    """Each final model's token cross-entropy on the target's *dev* split (mean over seeds): a check
    of the choice against its comparisons that never looks at the test split."""
    final_init: str | None = None
    """Where every final fine-tune started: ``base`` (the base model) or ``meta`` (theta*); None in
    tables written before it was recorded."""
    dev_per_example: dict[str, PerExample] | None = None
    """Each final model's dev token cross-entropy per dev example (token-weighted; mean over seeds),
    for paired intervals of the dev check; None in tables written before it was recorded."""

    def dev_versus(self, label: str, reference: str = "selection") -> dict | None:
        """``label``'s dev loss minus the reference's on the same dev examples, with its 95% interval."""
        per = self.dev_per_example or {}
        if label not in per or reference not in per:
            return None
        return paired_difference(per[label], per[reference])

    def dev_preferred(self) -> str | None:
        """The label with the lowest dev loss (the selection on a tie: a baseline that chose the same
        data trains the same model), when the dev losses are known."""
        if not self.dev_loss:
            return None
        best = min(self.dev_loss, key=self.dev_loss.get)
        if self.dev_loss.get("selection", np.inf) <= self.dev_loss[best]:
            return "selection"
        return best

    def versus(self, label: str, key: str, reference: str = "selection") -> dict | None:
        """``label``'s metric minus the reference row's on the same examples, with its 95% interval."""
        a, b = self.rows.get(label), self.rows.get(reference)
        if a is None or b is None or not a.per_example or not b.per_example or key not in a.per_example \
                or key not in b.per_example:
            return None
        return paired_difference(a.per_example[key], b.per_example[key])

    def seed_versus(self, label: str, key: str, reference: str = "selection") -> list[float] | None:
        """``label``'s metric minus the reference row's, seed by seed (:func:`seed_differences`)."""
        a, b = self.rows.get(label), self.rows.get(reference)
        return None if a is None or b is None else seed_differences(a, b, key)

    def to_json(self) -> dict:
        rows = {}
        for label, r in self.rows.items():
            row = {"sources": list(r.sources), **{f"{self.split}_{k}": v for k, v in r.values.items()}}
            if r.n_examples is not None:
                row["n_examples"] = r.n_examples
            if r.seed_values:
                row["seeds"] = r.seed_values
            if r.per_example:
                row["ci95"] = {k: r.interval(k) for k in r.per_example}
                row["vs_selection"] = {k: self.versus(label, k) for k in r.per_example} if label != "selection" \
                    else {}
                row["per_example"] = {k: {"num": v.num.tolist(), "den": v.den.tolist()}
                                      for k, v in r.per_example.items()}
            rows[label] = row
        return {"metrics_version": METRICS_VERSION, "split": self.split, "n_examples": self.n_examples,
                "interval": "95% bootstrap over test examples (2000 resamples); vs_selection: paired difference "
                            "row - selection on the same examples",
                "rows": rows,
                **({"dev_loss": self.dev_loss, "dev_preferred": self.dev_preferred()} if self.dev_loss else {}),
                **({"final_init": self.final_init} if self.final_init else {}),
                **({"dev_vs_selection": {k: self.dev_versus(k) for k in self.dev_per_example if k != "selection"},
                    "dev_per_example": {k: {"num": v.num.tolist(), "den": v.den.tolist()}
                                        for k, v in self.dev_per_example.items()}}
                   if self.dev_per_example else {})}

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path, *, redo: str = "rerun with --force evaluate") -> "MetricsTable":
        data = read_json_artifact(path, redo=redo)
        try:
            split = data["split"]
            prefix = f"{split}_"
            rows = {}
            for label, r in data["rows"].items():
                per = {k: PerExample(np.asarray(v["num"], float), np.asarray(v["den"], float))
                       for k, v in (r.get("per_example") or {}).items()} or None
                rows[label] = MetricRow(label, list(r["sources"]),
                                        {k[len(prefix):]: float(v) for k, v in r.items() if k.startswith(prefix)},
                                        per, r.get("seeds"),
                                        None if r.get("n_examples") is None else int(r["n_examples"]))
            dev = {k: float(v) for k, v in data["dev_loss"].items()} if data.get("dev_loss") else None
            init = data.get("final_init")
            if init not in (None, "base", "meta"):
                raise ValueError("final_init")
            dev_per = {k: PerExample(np.asarray(v["num"], float), np.asarray(v["den"], float))
                       for k, v in (data.get("dev_per_example") or {}).items()} or None
            return cls(split, int(data["n_examples"]), rows, dev, init, dev_per)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArtifactError(f"{path} is corrupt (bad field {err}); {redo}") from None

    def columns(self):
        """The registered metrics that some row holds, in registry order."""
        return [m for m in METRICS if any(m.key in r.values for r in self.rows.values())]


def evaluate_models(config, taskset, models: dict[str, tuple[list[str], list[Path]]], out: Path, *,
                    device: str = "auto", progress: bool = True, cache_dir: Path | None = None,
                    example_counts: dict[str, int] | None = None,
                    refresh: bool = False) -> MetricsTable:
    """The evaluate stage: score each final model on the target's test split; write ``out`` (metrics.json).

    Each model's token cross-entropy on the target's dev split is recorded too
    (``MetricsTable.dev_loss``): which model the dev split prefers is a check of the choice
    made without looking at the test split.

    Parameters
    ----------
    config : RunConfig
    taskset : TaskSet
    models : dict of label to (sources, adapter folders)
        One adapter folder per training seed; with several, the row holds the mean over seeds
        (per example too, for intervals) and each seed's value.
    cache_dir : Path, optional
        Keep each model's per-example scores here, keyed by the adapter's bytes, the splits and
        the configs that shape them, so adding a model to a run scores only that model.
    refresh : bool
        Score every model again and rewrite its cache entry (``--force evaluate``).
    example_counts : dict of str to int, optional
        Example-level baselines: how many examples each label trained on (its ``sources`` are
        the sources they came from).
    """
    rows, dev_loss, dev_per = {}, {}, {}
    scored = {}  # adapter folder -> (test scores, dev loss): one model shared by several labels is scored once
    for label, (names, adapters) in models.items():
        adapters = [adapters] if isinstance(adapters, (str, Path)) else list(adapters)
        per_seed, dev = [], []
        for adapter in adapters:
            where = Path(adapter).resolve()
            if where not in scored:
                scored[where] = _scores_of(config, taskset, where, cache_dir, device, progress, refresh)
            per_seed.append(scored[where][0])
            dev.append(scored[where][1])
        dev_loss[label] = float(np.mean([d.loss for d in dev]))
        tokens = np.asarray(dev[0].example_tokens, float)
        dev_per[label] = PerExample(np.mean([np.asarray(d.example_loss) * tokens for d in dev], axis=0), tokens)
        per = {k: PerExample(np.mean([p[k].num for p in per_seed], axis=0), per_seed[0][k].den) for k in per_seed[0]}
        seeds = {k: [p[k].value for p in per_seed] for k in per_seed[0]} if len(per_seed) > 1 else None
        rows[label] = MetricRow(label, list(names), {k: v.value for k, v in per.items()}, per, seeds,
                                (example_counts or {}).get(label))
    table = MetricsTable("test", len(taskset.target_test), rows, dev_loss, config.run.final_init, dev_per)
    if config.evaluate.lm_eval_tasks:
        write_lm_eval(config, taskset, models, Path(out).with_name(LM_EVAL_FILE), device=device)
    table.save(out)
    return table


SCORES_VERSION = 1


def _scores_of(config, taskset, adapter: Path, cache_dir: Path | None, device: str, progress: bool,
               refresh: bool = False):
    """One model's per-example test scores and dev loss, from ``cache_dir`` when it scored this model before."""
    from gradselect.model import load_trained

    path = None
    if cache_dir is not None:
        files = sorted(f for f in adapter.rglob("*") if f.is_file())
        ev = config.evaluate.model_dump(mode="json", exclude={"lm_eval_tasks", "lm_eval_include", "lm_eval_limit"})
        key = content_key(SCORES_VERSION, [[str(f.relative_to(adapter)), file_digest(f)] for f in files],
                          config.model.model_dump(mode="json"), config.adapter.model_dump(mode="json"),
                          config.tokenize.model_dump(mode="json"), ev,
                          taskset.target_test.fingerprint(), taskset.target_dev.fingerprint())
        path = Path(cache_dir) / f"{key}.json"
        if path.exists() and not refresh:
            try:
                data = json.loads(path.read_text())
                test = {k: PerExample(np.asarray(v["num"], float), np.asarray(v["den"], float))
                        for k, v in data["test"].items()}
                d = data["dev"]
                return test, LossResult(float(d["loss"]), list(d["example_loss"]), int(d["n_tokens"]),
                                        list(d["example_tokens"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged cache entry: score again and rewrite it
    model, tok = load_trained(config.model, config.adapter, adapter, device=device)
    test = score_split_examples(model, tok, taskset.target_test, config.tokenize, config.evaluate, progress=progress)
    dev = target_loss(model, tok, taskset.target_dev.examples, config.tokenize, batch_size=config.evaluate.batch_size)
    if path is not None:
        write_json_atomic(path, {"scores_version": SCORES_VERSION, "adapter": str(adapter),
                                 "test": {k: {"num": v.num.tolist(), "den": v.den.tolist()} for k, v in test.items()},
                                 "dev": {"loss": dev.loss, "example_loss": list(map(float, dev.example_loss)),
                                         "n_tokens": int(dev.n_tokens),
                                         "example_tokens": list(map(int, dev.example_tokens))}})
    return test, dev


#: The harness's scores of every final model, beside metrics.json (written by the evaluate stage).
LM_EVAL_FILE = "lm_eval.json"


def write_lm_eval(config, taskset, models: dict[str, tuple[list[str], list[Path]]], out: Path, *,
                  device: str = "auto") -> dict:
    """Score each final model (its first seed) on ``config.evaluate.lm_eval_tasks``; write ``out``."""
    from gradselect.evaluate.harness import include_paths, lm_eval_scores
    from gradselect.io import write_json_atomic
    from gradselect.model import load_trained

    ev = config.evaluate
    include = include_paths(ev.lm_eval_tasks, taskset.target_test, Path(out).with_name("lm_eval_tasks"),
                            ev.lm_eval_include, max_new_tokens=ev.max_new_tokens)
    scores = {}
    for label, (_, adapters) in models.items():
        adapters = [adapters] if isinstance(adapters, (str, Path)) else list(adapters)
        model, tok = load_trained(config.model, config.adapter, adapters[0], device=device)
        scores[label] = lm_eval_scores(model, tok, ev.lm_eval_tasks, include_path=include, limit=ev.lm_eval_limit,
                                       batch_size=ev.batch_size, chat_template=config.tokenize.chat_template)
    result = {"lm_eval_version": 1, "tasks": list(ev.lm_eval_tasks), "limit": ev.lm_eval_limit, "models": scores}
    write_json_atomic(out, result)
    return result
