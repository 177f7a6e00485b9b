"""Typed metric rows and the ``metrics.json`` artifact of a run's final models.

:func:`evaluate_models` is the evaluate stage: it scores every final model on the
target's test split with every registered metric (:data:`~gradselect.evaluate.metrics.METRICS`)
and writes one :class:`MetricsTable`. The CLI, the report and the benchmarks read
and render that table; none of them builds metric rows of its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gradselect.errors import ArtifactError
from gradselect.evaluate.metrics import METRICS, score_split
from gradselect.io import read_json_artifact, write_json_atomic

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
    """

    label: str
    sources: list[str]
    values: dict[str, float]

    def get(self, key: str) -> float | None:
        return self.values.get(key)


@dataclasses.dataclass
class MetricsTable:
    """Metrics of every final model on one split (``metrics.json``)."""

    split: str
    n_examples: int
    rows: dict[str, MetricRow]

    def to_json(self) -> dict:
        return {
            "metrics_version": METRICS_VERSION, "split": self.split, "n_examples": self.n_examples,
            "rows": {label: {"sources": list(r.sources), **{f"{self.split}_{k}": v for k, v in r.values.items()}}
                     for label, r in self.rows.items()},
        }

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path, *, redo: str = "rerun with --force evaluate") -> "MetricsTable":
        data = read_json_artifact(path, redo=redo)
        try:
            split = data["split"]
            prefix = f"{split}_"
            rows = {label: MetricRow(label, list(r["sources"]),
                                     {k[len(prefix):]: float(v) for k, v in r.items() if k.startswith(prefix)})
                    for label, r in data["rows"].items()}
            return cls(split, int(data["n_examples"]), rows)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArtifactError(f"{path} is corrupt (bad field {err}); {redo}") from None

    def columns(self):
        """The registered metrics that some row holds, in registry order."""
        return [m for m in METRICS if any(m.key in r.values for r in self.rows.values())]


def evaluate_models(config, taskset, models: dict[str, tuple[list[str], Path]], out: Path, *, device: str = "auto",
                    progress: bool = True) -> MetricsTable:
    """The evaluate stage: score each final model on the target's test split; write ``out`` (metrics.json).

    Parameters
    ----------
    config : RunConfig
    taskset : TaskSet
    models : dict of label to (sources, adapter folder)
    """
    from gradselect.model import load_trained

    rows = {}
    for label, (names, adapter) in models.items():
        model, tok = load_trained(config.model, config.adapter, adapter, device=device)
        rows[label] = MetricRow(label, list(names), score_split(model, tok, taskset.target_test, config.tokenize,
                                                                config.evaluate, progress=progress))
    table = MetricsTable("test", len(taskset.target_test), rows)
    table.save(out)
    return table
