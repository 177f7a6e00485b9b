"""The select stage: fit the estimator on a feature store, choose sources, write ``selection.json``.

:func:`select_sources` is the one writer of ``selection.json`` (the CLI's
``gradselect select`` and ``gradselect run`` both call it, so the file has one
schema); :func:`compare_subsets` is the one writer of ``comparisons.json``, the
baseline subsets that ``gradselect run`` fine-tunes beside the selection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradselect.estimate import FeatureArrays, SubsetEstimator
from gradselect.features import FeatureStore
from gradselect.io import write_json_atomic
from gradselect.select.pseudo import pseudo_sources
from gradselect.select.result import Selection
from gradselect.select.selectors import SELECTORS

COMPARISONS_VERSION = 1
CLUSTERS_VERSION = 1


def fitted_estimator(estimate_config, select_config, features_dir: Path) -> SubsetEstimator:
    """A SubsetEstimator fitted on a feature store, with ``[select] pseudo_sources`` applied.

    ``estimate_config`` is used as given: apply a calibration first
    (:func:`gradselect.validate.apply_calibration`, then :func:`gradselect.validate.apply_surrogate`
    on the result).
    """
    arrays = FeatureArrays.from_store(FeatureStore.open(features_dir))
    if select_config.pseudo_sources:
        arrays = pseudo_sources(arrays, select_config.pseudo_sources, seed=select_config.seed,
                                method=select_config.pseudo_source_method)
    return SubsetEstimator(estimate_config).fit(arrays)


#: Why the forward scorer wants a trust check (measured on the planted12 bank, docs/results.md); ``why`` says
#: what is missing, ``fix`` how to add it.
FORWARD_WITHOUT_TRUST_CHECK = (
    "[estimate] scorer = 'forward' without a trust check ({why}): the evidence margin then allows only for "
    "dev-example noise, while on our bank the forward scorer estimated the target alone worst where it was second "
    "best (a measured gain error of 0.9-1.0 that only a trust check reveals); {fix}")


def forward_scored(estimator: SubsetEstimator, config, taskset, meta_adapter: Path, features_dir: Path,
                   gradients_file: Path, *, device: str = "auto", progress: bool = False):
    """``estimator`` with its subset estimates replaced by forward passes (``[estimate] scorer = "forward"``).

    Loads the model at theta* (``meta_adapter``, which must be the adapter the features were computed
    at, ``features_dir``), computes the per-source training-loss gradient sums there (one batched backward pass per
    batch of each source; cached in ``gradients_file``, stamped with the adapter's digest) and returns a
    :class:`~gradselect.estimate.forward.ForwardScoredEstimator` whose forward passes are cached beside it
    (``forward_outputs.json``, for the same theta*, gradients, step, metric and dev split).
    """
    import json

    from gradselect.errors import GradselectError
    from gradselect.estimate.forward import ForwardPassEstimator, ForwardScoredEstimator, SourceGradients
    from gradselect.features.extract import folder_digest
    from gradselect.io import write_json_atomic
    from gradselect.model import apply_adapter, load_model

    est_cfg = config.estimate
    digest = folder_digest(meta_adapter)
    store = FeatureStore.open(features_dir)
    if (store.manifest.get("adapter") or {}).get("sha256") != digest:
        raise GradselectError(f"{meta_adapter} is not the adapter the features were computed at (theta*): the "
                              "forward scorer steps from theta*; pass the meta-initialization's adapter")
    model, tokenizer = load_model(config.model, device=device)
    model = apply_adapter(model, config.adapter, init_adapter=meta_adapter)
    gradients_file = Path(gradients_file)
    stamp = gradients_file.with_name(gradients_file.name + ".identity.json")
    squares = est_cfg.forward_step == "adam"
    identity = {"adapter_sha256": digest, "data": taskset.fingerprint(), "squares": squares,
                "tokenize": config.tokenize.model_dump(mode="json"), "model": config.model.model_dump(mode="json"),
                "adapter": config.adapter.model_dump(mode="json")}
    gradients = None
    if gradients_file.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == identity:
                gradients = SourceGradients.load(gradients_file)
        except (OSError, ValueError):
            gradients = None
    if gradients is None:
        gradients = SourceGradients.compute(model, tokenizer, taskset, config.tokenize, squares=squares,
                                            progress=progress)
        gradients_file.parent.mkdir(parents=True, exist_ok=True)
        gradients.save(gradients_file)
        write_json_atomic(stamp, identity)
    forward = ForwardPassEstimator(est_cfg.forward_step, length_fraction=est_cfg.forward_length_fraction,
                                   include_target_train=est_cfg.include_target_train,
                                   target_share=est_cfg.target_share,
                                   **store.functional,
                                   metric=est_cfg.forward_metric, train_batch_size=config.train.batch_size)
    forward.fit(model, tokenizer, gradients, taskset.target_dev.examples, config.tokenize)
    # Passes are cached by step length too (the trust check scores its subsets at several).
    outputs_identity = identity | {"step": est_cfg.forward_step, "output": forward.output,
                                   **({"skip_special_tokens": True} if forward.skip_special_tokens else {}),
                                   # only when not the default: caches written before the option stay valid
                                   **({"metric": forward.metric} if forward.metric != "functional" else {}),
                                   "include_target_train": forward.include_target_train,
                                   **({"target_share": forward.target_share} if forward.target_share else {}),
                                   "train_batch_size": forward.train_batch_size}
    scored = ForwardScoredEstimator(estimator, forward, cache_file=gradients_file.with_name("forward_outputs.json"),
                                    cache_identity=outputs_identity)
    scored.progress = progress
    return scored


def select_sources(estimator: SubsetEstimator, select_config, out: Path, *, clusters: dict | None = None,
                   estimated_at: str = "meta") -> Selection:
    """Choose sources with ``[select]``'s method on a fitted estimator; write ``out`` (selection.json).

    ``estimated_at``: where the features were taken (``[run] estimate_at``); ``base`` is recorded
    (``params["estimated_at"]``) so outputs name the start the estimates' base loss belongs to.

    With ``clusters`` (from :func:`write_clusters`), the selection also lists the chosen
    clusters' examples (``params["chosen_examples"]``, ``[source, id]`` pairs).
    """
    selection = select_config.make_selector().select(estimator)
    selection.params["base_loss"] = estimator.base_loss_
    selection.params["estimator"] = estimator.config_.model_dump(mode="json")
    if estimated_at == "base":
        selection.params["estimated_at"] = "base"
    if hasattr(estimator, "forward_"):
        selection.params["forward_passes"] = estimator.n_forward_passes_
        selection.params["forward_step_length"] = estimator.forward_.length_
        if estimator.length_choice_ is not None:
            selection.params["forward_length_choice"] = estimator.length_choice_
        if getattr(estimator, "surrogate_choice_", None):
            selection.params["forward_surrogate_choice"] = estimator.surrogate_choice_
    if hasattr(estimator, "surrogate_"):
        selection.params["residual_surrogate"] = {"validated_subsets": len(estimator.surrogate_.masks_)}
    if clusters is not None:
        selection.params["chosen_examples"] = [pair for name in selection.chosen for pair in clusters[name]]
    selection.save(out)
    return selection


def write_clusters(estimator: SubsetEstimator, features_dir: Path, select_config, out: Path) -> dict[str, list]:
    """The pseudo-sources of a clustered estimator as ``[source, example id]`` lists; write ``out`` (clusters.json)."""
    store = FeatureStore.open(features_dir)
    clusters = {name: [[store.sources[r], store.ids[r]] for r in rows.tolist()]
                for name, rows in estimator.arrays_.source_rows.items()}
    write_json_atomic(Path(out), {"clusters_version": CLUSTERS_VERSION, "k": select_config.pseudo_sources,
                                  "method": select_config.pseudo_source_method, "seed": select_config.seed,
                                  "clusters": clusters})
    return clusters


def clustered_taskset(taskset, clusters: dict[str, list]):
    """The task set with its sources replaced by the clusters (each a Source of the examples it holds)."""
    from gradselect.data.examples import Source, TaskSet
    from gradselect.errors import ArtifactError

    by_key = {(s.name, e.id): e for s in taskset.sources for e in s.examples}
    sources = []
    for name, pairs in clusters.items():
        try:
            sources.append(Source(name, [by_key[(src, ex)] for src, ex in pairs]))
        except KeyError as err:
            raise ArtifactError(f"clusters.json names example {err} that the data no longer holds; "
                                "rerun with --force select") from None
    return TaskSet(taskset.target_train, taskset.target_dev, taskset.target_test, sources)


#: Baselines that take a number of sources: compared at the selection's size (equal budgets).
SIZED = {"grad-sim": "k", "repr-sim": "k", "random": "k", "kmm": "k", "forward": "max_size"}


#: Example-level baselines: they choose examples, not sources (comparisons.json ``examples``):
#: ``less`` by gradient alignment, ``uniform`` / ``stratified`` at random from the pooled sources.
EXAMPLE_LEVEL = ("less", "uniform", "stratified")


def compare_subsets(estimator: SubsetEstimator, methods, out: Path, *, size: int | None = None,
                    n_examples: int | None = None, features_dir: Path | None = None) -> dict:
    """The sources each baseline method picks on the same estimator; write ``out`` (comparisons.json).

    With ``size`` (the selection's number of sources), every baseline that can be told how
    many sources to keep keeps that many, so a comparison differs in *which* sources, not
    in how many; ``all`` and ``target-only`` are sizes of their own. Example-level
    baselines (``less``, ``uniform``, ``stratified``) keep ``n_examples`` examples (the selection's), listed as
    ``[source, id]`` pairs under ``examples``; their subset is named after themselves.
    When the selection chose no source (size 0), a baseline held to it would be the target
    alone again: each then keeps what its own rule picks (example-level ones, as many
    examples as the median source holds).

    Returns
    -------
    dict
        ``{"subsets": {method: [names]}, "examples": {method: [[source, id], ...]}}``
    """
    from gradselect.select.selectors import less_examples, sampled_examples

    example_rules = {"less": less_examples,
                     "uniform": lambda est, n: sampled_examples(est, n),
                     "stratified": lambda est, n: sampled_examples(est, n, stratified=True)}

    subsets, examples = {}, {}
    if size == 0:
        size = None
        n_examples = int(np.median([len(r) for r in estimator.arrays_.source_rows.values()]))
    for name in methods:
        if name in EXAMPLE_LEVEL:
            if features_dir is None or n_examples is None:
                raise ValueError("example-level comparisons need features_dir and n_examples")
            store = FeatureStore.open(features_dir)
            rows = example_rules[name](estimator, n_examples)
            examples[name] = [[store.sources[r], store.ids[r]] for r in rows.tolist()]
            subsets[name] = [name]
            continue
        kwargs = {SIZED[name]: size} if size is not None and name in SIZED else {}
        subsets[name] = SELECTORS[name](**kwargs).select(estimator).chosen
    write_json_atomic(Path(out), {"comparisons_version": COMPARISONS_VERSION, "size": size, "n_examples": n_examples,
                                  "subsets": subsets, "examples": examples})
    return {"subsets": subsets, "examples": examples}


def examples_taskset(taskset, name: str, pairs: list):
    """The task set with one source, ``name``, holding the listed ``[source, id]`` examples."""
    return clustered_taskset(taskset, {name: pairs})
