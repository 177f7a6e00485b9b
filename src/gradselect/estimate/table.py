"""The estimate stage's artifact: a table of subsets and their estimated target dev losses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from gradselect.errors import GradselectError
from gradselect.io import write_bytes_atomic


def write_estimates(estimator, masks: np.ndarray, out: Path, *, progress: bool = False):
    """Estimate every subset of ``masks`` (n_subsets, n_sources) and write the table to ``out`` (.parquet or .csv).

    Columns: ``subset`` (names joined by ``;``), ``size``, ``estimated_loss``, ``base_loss``
    (theta*'s, the zero-order baseline) and one boolean ``has:<source>`` per source.

    Returns
    -------
    pyarrow.Table
    """
    import pyarrow as pa

    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise GradselectError(f"{out}: output must end in .parquet or .csv")
    names = estimator.source_names_
    losses = estimator.estimate(masks, progress=progress) if len(masks) else np.zeros(0)
    table = pa.table({
        "subset": [";".join(n for n, m in zip(names, row) if m) for row in masks],
        "size": masks.sum(1).astype(np.int64),
        "estimated_loss": losses,
        "base_loss": np.full(len(losses), estimator.base_loss_),
        **{f"has:{n}": masks[:, i] for i, n in enumerate(names)},
    })
    buf = io.BytesIO()
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buf)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    write_bytes_atomic(out, buf.getvalue())
    return table
