"""``gradselect export``: a run's selected training set, for training with any stack.

Writes, into one folder (built beside and swapped in complete):

- ``train.jsonl`` (``--format jsonl``) or ``dataset/`` (``--format hf``, a folder
  ``datasets.load_from_disk`` reads): every example the final fine-tune on the
  selection trained on, i.e. the chosen sources' (or clusters') examples plus the
  target's train split, each with ``id``, ``source``, ``prompt``, ``response`` (and
  ``messages`` for chat data);
- ``scores.csv``: every source or cluster with its score, interval, size and whether
  it was chosen.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Literal

from gradselect.errors import GradselectError
from gradselect.io import atomic_dir, read_json_artifact


def export_selection(run_dir: Path, out: Path, *, fmt: Literal["jsonl", "hf"] = "jsonl",
                     include_target_train: bool = True) -> dict:
    """Export ``run_dir``'s selected training set and scores to the folder ``out``.

    Returns
    -------
    dict
        ``n_examples``, ``chosen``, ``files``.
    """
    from gradselect.config import load_config
    from gradselect.data import load_taskset
    from gradselect.select import Selection, clustered_taskset

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.toml").exists():
        raise GradselectError(f"{run_dir}: not a gradselect run folder (no config.toml); run gradselect run first")
    config = load_config(run_dir / "config.toml")
    if config.data is None:
        raise GradselectError(f"{run_dir / 'config.toml'}: no [data] section to export from")
    selection = Selection.load(run_dir / "selection.json")
    taskset = load_taskset(config.data, base_dir=run_dir)
    clusters_file = run_dir / "clusters.json"
    if clusters_file.exists() and config.select.pseudo_sources:
        taskset = clustered_taskset(taskset, read_json_artifact(clusters_file, redo="rerun with --force select")
                                    ["clusters"])
    sizes = {s.name: len(s) for s in taskset.sources}
    unknown = [n for n in selection.chosen if n not in sizes]
    if unknown:
        raise GradselectError(f"{run_dir / 'selection.json'} chooses {unknown}, which the run's data does not hold")
    from gradselect.data.examples import target_repeats

    rows = []
    # What the final fine-tune trains on: the target's train split repeated as [train] target_share repeats it.
    copies = target_repeats(len(taskset.target_train), sum(sizes[n] for n in selection.chosen), config.train.target_share)
    groups = ([("target/train", list(taskset.target_train.examples) * copies)] if include_target_train else []) + \
        [(name, taskset.source(name).examples) for name in selection.chosen]
    for source, examples in groups:
        for e in examples:
            row = {"id": e.id, "source": source, "prompt": e.prompt, "response": e.response}
            if e.messages is not None:
                row["messages"] = [dict(m) for m in e.messages]
            rows.append(row)
    with atomic_dir(out) as part:
        if fmt == "jsonl":
            (part / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
            files = ["train.jsonl"]
        elif fmt == "hf":
            import datasets

            datasets.Dataset.from_list(rows).save_to_disk(str(part / "dataset"))
            files = ["dataset/"]
        else:
            raise GradselectError(f"unknown export format {fmt!r}; formats are jsonl, hf")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["rank", "source", "score", "interval_low", "interval_high", "examples", "chosen"])
        for rank, name in enumerate(selection.ranking(), 1):
            lo, hi = (selection.intervals or {}).get(name, (None, None))
            writer.writerow([rank, name, selection.scores[name], lo, hi, sizes.get(name), name in selection.chosen])
        (part / "scores.csv").write_text(buf.getvalue(), encoding="utf-8")
    return {"n_examples": len(rows), "chosen": list(selection.chosen), "files": files + ["scores.csv"]}
