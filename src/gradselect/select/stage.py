"""The select stage: fit the estimator on a feature store, choose sources, write ``selection.json``.

:func:`select_sources` is the one writer of ``selection.json`` (the CLI's
``gradselect select`` and ``gradselect run`` both call it, so the file has one
schema); :func:`compare_subsets` is the one writer of ``comparisons.json``, the
baseline subsets that ``gradselect run`` fine-tunes beside the selection.
"""

from __future__ import annotations

from pathlib import Path

from gradselect.estimate import FeatureArrays, SubsetEstimator
from gradselect.features import FeatureStore
from gradselect.io import write_json_atomic
from gradselect.select.pseudo import pseudo_sources
from gradselect.select.result import Selection
from gradselect.select.selectors import SELECTORS

COMPARISONS_VERSION = 1


def fitted_estimator(estimate_config, select_config, features_dir: Path) -> SubsetEstimator:
    """A SubsetEstimator fitted on a feature store, with ``[select] pseudo_sources`` applied.

    ``estimate_config`` is used as given: apply a calibration first
    (:func:`gradselect.validate.apply_calibration`).
    """
    arrays = FeatureArrays.from_store(FeatureStore.open(features_dir))
    if select_config.pseudo_sources:
        arrays = pseudo_sources(arrays, select_config.pseudo_sources, seed=select_config.seed)
    return SubsetEstimator(estimate_config).fit(arrays)


def select_sources(estimator: SubsetEstimator, select_config, out: Path) -> Selection:
    """Choose sources with ``[select]``'s method on a fitted estimator; write ``out`` (selection.json)."""
    selection = select_config.make_selector().select(estimator)
    selection.params["base_loss"] = estimator.base_loss_
    selection.params["estimator"] = estimator.config_.model_dump(mode="json")
    selection.save(out)
    return selection


#: Baselines that take a number of sources: compared at the selection's size (equal budgets).
SIZED = {"grad-sim": "k", "repr-sim": "k", "random": "k", "kmm": "k", "forward": "max_size"}


def compare_subsets(estimator: SubsetEstimator, methods, out: Path, *, size: int | None = None) -> dict[str, list[str]]:
    """The sources each baseline method picks on the same estimator; write ``out`` (comparisons.json).

    With ``size`` (the selection's number of sources), every baseline that can be told how
    many sources to keep keeps that many, so a comparison differs in *which* sources, not
    in how many; ``all`` and ``target-only`` are sizes of their own.
    """
    subsets = {}
    for name in methods:
        kwargs = {SIZED[name]: size} if size is not None and name in SIZED and (size > 0 or name != "forward") else {}
        subsets[name] = SELECTORS[name](**kwargs).select(estimator).chosen
    write_json_atomic(Path(out), {"comparisons_version": COMPARISONS_VERSION, "size": size, "subsets": subsets})
    return subsets
