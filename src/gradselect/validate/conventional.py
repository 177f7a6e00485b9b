"""The conventional baseline: forward stepwise selection with one real fine-tune per candidate.

What gradselect replaces: start from the target alone; at every step fine-tune
the base model on the current subset plus each remaining source, keep the
source whose fine-tune reaches the lowest target dev loss, stop when no
candidate improves (or at a size cap): :func:`gradselect.select.search.greedy_forward`,
the routine forward selection on estimates uses, with real fine-tunes as the oracle. Every fine-tune is cached under
``out_dir/runs/<key>/``, so an interrupted search resumes, and its wall time
is recorded, which gives the cost ratio against gradselect's own stages.

With a ``budget`` (fine-tunes at most) the search stops early; the result then
says so, and how many fine-tunes the unfinished step needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from gradselect.errors import GradselectError
from gradselect.io import write_json_atomic


def conventional_forward(config, taskset, out_dir: Path, *, train_config=None, budget: int | None = None,
                         max_size: int | None = None, metric: Literal["loss", "token_ce"] = "loss",
                         device: str = "auto", progress: bool = True) -> dict:
    """Forward stepwise selection on real fine-tunes from the base model.

    Parameters
    ----------
    config : RunConfig
    taskset : TaskSet
    out_dir : path
        Cache of fine-tunes (``runs/``) and the result (``conventional.json``).
    train_config : TrainConfig, optional
        Training of every candidate (default ``config.train``); use the final
        fine-tunes' settings so both methods train alike.
    budget : int, optional
        Fine-tunes at most (the first one, the target alone, included).
    max_size : int, optional
        Sources at most in the chosen subset.
    metric : ``loss`` or ``token_ce``
        Target dev loss to minimise: the estimator's functional (logistic loss of
        the mean log-odds, the quantity gradselect estimates) or token cross-entropy.

    Returns
    -------
    dict
        ``chosen``, ``path`` (the loss after each step), ``n_finetunes``,
        ``seconds`` (wall time of all fine-tunes and measurements), ``finished``
        (False when the budget stopped it), ``runs`` (every fine-tune's result);
        also written to ``out_dir/conventional.json``.
    """
    import numpy as np

    from gradselect.select.search import greedy_forward
    from gradselect.validate.truth import measure_truth, truth_key

    if budget is not None and budget < 1:
        raise GradselectError(f"conventional selection needs a budget >= 1 fine-tune, got {budget}")
    out_dir = Path(out_dir)
    train_config = train_config or config.train
    names = list(taskset.source_names)
    runs: list[dict] = []

    def oracle(masks: np.ndarray) -> np.ndarray:
        losses = []
        for mask in masks:
            subset = [n for n, m in zip(names, mask) if m]
            folder = out_dir / "runs" / truth_key(config, taskset, subset, train_config, None)
            truth = measure_truth(config, taskset, subset, folder, train_config=train_config, device=device,
                                  progress=progress)
            runs.append(truth)
            losses.append(truth[metric])
        return np.array(losses)

    search = greedy_forward(names, oracle, max_size=max_size, budget=budget)
    result = {
        "conventional_version": 1,
        "method": "conventional-forward",
        "metric": metric,
        "chosen": [n for n, m in zip(names, search.chosen) if m],
        "loss": search.loss,
        "path": search.path,
        "finished": search.finished,
        "budget": budget,
        "n_finetunes": len(runs),
        "seconds": float(sum(r.get("seconds", 0.0) for r in runs)),
        "runs": runs,
    }
    write_json_atomic(out_dir / "conventional.json", result)
    return result
