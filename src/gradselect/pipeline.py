"""``gradselect run``: every stage of a run, each cached by the hash of its inputs.

Stages, in order, each writing into the run folder (the writer of each artifact
is the stage function named beside it)::

    meta_init/        fine-tune the base model on all sources (+ target train)   train.train
                      (or, [run] estimate_at = "base", the final fine-tunes'     train.save_initial_adapter
                      untrained adapter: no meta-training)
    features/         output values and projected gradients at theta*             features.featurize
    validation/       optional trust check ([run] validate_k): real fine-tunes     validate.validate
    calibration.json    from theta*, and the calibration selection then uses
    clusters.json     with [select] pseudo_sources: the clusters, as example ids  select.write_clusters
    source_gradients/ [estimate] scorer = "forward": per-source gradient sums    select.forward_scored
    selection.json    estimate subsets and choose sources (or clusters)           select.select_sources
    comparisons.json  the baseline subsets of [run] compare                       select.compare_subsets
    conventional/     optional baseline ([run] conventional_budget)               validate.conventional_forward
    final/<label>/    fine-tune the base model on the selection and comparisons   train.train
                      (or theta*: [run] final_init = "meta")
    metrics.json      target test metrics of every final model                    evaluate.evaluate_models
    evaluations/        each model's per-example scores, keyed by its adapter's bytes (adding a
                        comparison to a run scores only the new model)
    report.md         a readable report with plots                                report.write_report
    config.toml       the run's config, replayable (config.dump_config)

A stage's key is a hash of its slice of the config and of its upstream keys
(the final fine-tunes hash the *chosen sources*, so a selection change that
picks the same sources retrains nothing, and two labels that train the same data
-- gradient similarity keeping every source beside ``all`` -- share one fine-tune
and one evaluation: the later label's record names the first one's folder; a
fine-tune that another label finished in an earlier run is copied, not retrained).
``stages/<name>.json`` records the key of the last completed run of a stage and a
digest of each output; a stage whose key is unchanged and whose outputs are as it
wrote them is skipped, ``force`` redoes named stages, and an output changed by hand makes its stage
stale (redone, with a warning).

Folder outputs are built beside the old result (``<name>.build/``) and swapped
in only on success, and file outputs are replaced atomically, so a failed redo
leaves the last good result and the stage records as they were. A stage
interrupted midway resumes its build if its key is unchanged and starts the
build clean otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from gradselect.errors import ConfigError, GradselectError
from gradselect.io import (content_key, file_digest, path_digest, read_json_artifact, replace_dir, write_json_atomic,
                           write_text_atomic)

log = logging.getLogger(__name__)

STAGES = ("meta_init", "features", "validate", "select", "conventional", "final", "evaluate", "report")


def _dump(model) -> dict | None:
    return None if model is None else model.model_dump(mode="json")


def build_dir(final: Path) -> Path:
    """Where a folder output is built before it replaces ``final``."""
    return final.with_name(final.name + ".build")


class Stage:
    """Bookkeeping for one stage: its key, its record, and whether it must run.

    Parameters
    ----------
    run_dir : Path
    name : str
    key : str
        Hash of the stage's inputs.
    outputs : list of Path
        What the stage leaves when it succeeds (digested into its record).
    staging : list of Path
        Where it builds them (cleared when a build of other inputs was interrupted).
    """

    def __init__(self, run_dir: Path, name: str, key: str, outputs: Sequence[Path], staging: Sequence[Path] = ()):
        self.run_dir, self.name, self.key = Path(run_dir), name, key
        self.outputs, self.staging = [Path(p) for p in outputs], [Path(p) for p in staging]
        self.record = self.run_dir / "stages" / f"{name}.json"
        self.running = self.run_dir / "stages" / f"{name}.running.json"
        self.stale_reason: str | None = None

    def _record_name(self, path: Path) -> str:
        """How an output is named in the stage record: relative to the run folder when inside it."""
        return str(path.relative_to(self.run_dir)) if path.is_relative_to(self.run_dir) else str(path)

    def is_current(self) -> bool:
        """Finished with this key, and every output is as the stage wrote it."""
        self.stale_reason = None
        try:
            done = json.loads(self.record.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if done.get("key") != self.key or not all(p.exists() for p in self.outputs):
            return False
        recorded = done.get("outputs", {})
        for p in self.outputs:
            rel = self._record_name(p)
            if rel in recorded and recorded[rel] != path_digest(p):
                self.stale_reason = f"{p} changed since stage {self.name} wrote it"
                return False
        return True

    def begin(self, *, fresh: bool = False) -> None:
        """Mark the stage as running; clear builds left by a run with other inputs (or all, if ``fresh``).

        The previous result and its record stay until :meth:`finish`.
        """
        previous = None
        if self.running.exists():
            try:
                previous = json.loads(self.running.read_text()).get("key")
            except (OSError, json.JSONDecodeError):
                previous = None
        if previous != self.key or fresh:
            for p in self.staging:
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        write_json_atomic(self.running, {"key": self.key})

    def finish(self, seconds: float) -> None:
        outputs = {self._record_name(p): path_digest(p) for p in self.outputs}
        write_json_atomic(self.record, {"key": self.key, "seconds": seconds, "outputs": outputs})
        self.running.unlink(missing_ok=True)


def _finished_fine_tunes(run_dir: Path) -> dict[str, Path]:
    """Final fine-tunes finished in earlier runs, by stage key: each record's own folder, when it is
    still as the stage wrote it."""
    found = {}
    for record in sorted((run_dir / "stages").glob("final*.json")):
        if record.name.endswith(".running.json"):
            continue
        try:
            done = json.loads(record.read_text())
            (rel, digest), = done["outputs"].items()
        except (OSError, json.JSONDecodeError, KeyError, ValueError, AttributeError):
            continue
        folder = run_dir / rel
        if folder.is_dir() and path_digest(folder) == digest:
            found.setdefault(done["key"], folder)
    return found


def check_against_data(config, taskset) -> None:
    """Rules that need the data (and the tokenizer), checked before any training."""
    from gradselect.data.tokenize import tokenize_examples
    from gradselect.model import load_tokenizer

    names = taskset.source_names
    if not names:
        raise ConfigError("[data] sources: no auxiliary source; gradselect chooses among sources, give at least one")
    sel = config.select
    if sel.rule == "top_k" and sel.method == "ensemble" and sel.k is not None and sel.k > len(names):
        raise ConfigError(f"[select] k = {sel.k} but there are only {len(names)} sources; lower k")
    # Every response must fit max_length; the train rows are checked when training starts, the held-out
    # splits would only fail at featurization or evaluation, hours later.
    tokenizer = load_tokenizer(config.model)
    for split in (taskset.target_dev, taskset.target_test):
        tokenize_examples(split.examples, tokenizer, config.tokenize)


def run_pipeline(config, *, base_dir: Path | None = None, run_dir: Path | None = None, force: Sequence[str] = (),
                 device: str = "auto", progress: bool = True) -> dict:
    """Run every stage of ``config`` (a RunConfig with ``[data]``), skipping current ones.

    Parameters
    ----------
    base_dir : Path, optional
        The config file's folder: relative data paths are resolved against it.
    run_dir : Path, optional
        Overrides ``[run] run_dir``.

    Returns
    -------
    dict
        ``{"ran": [...], "skipped": [...], "run_dir": str, "metrics": MetricsTable, "selection": Selection}``
    """
    from gradselect.config import dump_config, replay_config, resolve_paths
    from gradselect.data import load_taskset
    from gradselect.evaluate import MetricsTable, evaluate_models
    from gradselect.features import FeatureStore, featurize
    from gradselect.select import (
        Selection,
        clustered_taskset,
        compare_subsets,
        examples_taskset,
        fitted_estimator,
        select_sources,
        write_clusters,
    )
    from gradselect.train import save_initial_adapter, train
    from gradselect.validate import apply_calibration, apply_surrogate
    from gradselect.validate.calibration import read_calibration

    if config.data is None:
        raise GradselectError("gradselect run needs a [data] section with a target")
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise GradselectError(f"unknown stage(s) {unknown} for --force; stages are {list(STAGES)}")
    run_dir = Path(run_dir or config.run.run_dir)
    taskset = load_taskset(config.data, base_dir=base_dir)  # bad data fails before the run folder is touched
    config = resolve_paths(config, base_dir)
    check_against_data(config, taskset)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_config = dump_config(replay_config(config, base_dir=base_dir, run_dir=run_dir))
    fingerprint = taskset.fingerprint()
    ran, skipped = [], []
    common = dict(model_config=config.model, adapter_config=config.adapter, tokenize_config=config.tokenize,
                  device=device, progress=progress)

    def stage(name, key, outputs, work, staging=()):
        st = Stage(run_dir, name, key, outputs, staging)
        if name not in force and st.is_current():
            skipped.append(name)
            log.info("stage %s: current, skipped", name)
            return
        if st.stale_reason:
            log.warning("%s; redoing the stage", st.stale_reason)
        log.info("stage %s: running", name)
        start = time.perf_counter()
        st.begin(fresh=name in force)
        work()
        st.finish(time.perf_counter() - start)
        ran.append(name)
        # The saved config describes what the folder holds: written once a stage built from it succeeds.
        write_text_atomic(run_dir / "config.toml", saved_config)

    def train_into(folder: Path, names, train_config, data=None, save_moments=False, init_adapter=None):
        build = build_dir(folder)
        train(data or taskset, names, build, train_config=train_config, overwrite=True, save_moments=save_moments,
              init_adapter=init_adapter, **common)
        replace_dir(build, folder)

    train_slice = (fingerprint, _dump(config.model), _dump(config.adapter), _dump(config.tokenize))

    # 1. meta-initialization
    meta_dir = run_dir / "meta_init"
    if config.run.estimate_at == "base":
        # No meta-training: the estimates linearize at the untrained adapter the final fine-tunes start from.
        def initial_adapter():
            build = build_dir(meta_dir)
            if build.exists():
                shutil.rmtree(build)
            save_initial_adapter(build, model_config=config.model, adapter_config=config.adapter,
                                 seed=config.final_train_config().seed, device=device)
            replace_dir(build, meta_dir)

        meta_key = content_key("meta_init", *train_slice, "untrained adapter of the final fine-tunes",
                               config.final_train_config().seed)
        stage("meta_init", meta_key, [meta_dir], initial_adapter, staging=[build_dir(meta_dir)])
    else:
        meta_key = content_key("meta_init", *train_slice, _dump(config.train))
        stage("meta_init", meta_key, [meta_dir],
              lambda: train_into(meta_dir, taskset.source_names, config.train, save_moments=True),
              staging=[build_dir(meta_dir)])

    # 2. features (built in features.build/, resumable from its own .part)
    feat_dir = run_dir / "features"

    def do_features():
        build = build_dir(feat_dir)
        featurize(taskset, build, feature_config=config.features, adapter_path=meta_dir / "adapter", force=True,
                  **common)
        replace_dir(build, feat_dir)

    # Options added later count only when set: stores featurized before them stay valid.
    feat_key = content_key("features", meta_key, config.features.model_dump(
        mode="json", exclude={"skip_special_tokens"} if not config.features.skip_special_tokens else None))
    stage("features", feat_key, [feat_dir], do_features,
          staging=[build_dir(feat_dir), build_dir(feat_dir).with_name(build_dir(feat_dir).name + ".part")])

    final_train = config.final_train_config()

    # 3. trust check (optional): its calibration is used by selection in this run
    calibration = run_dir / "calibration.json"
    if config.run.validate_k:
        from gradselect.validate import validate

        # (a theta* start keeps the keys it had before the start was a choice)
        start = [] if config.run.trust_check_start() == "meta" else ["from the base model"]
        val_key = content_key("validate", feat_key, _dump(final_train), _dump(config.estimate),
                              config.run.validate_k, config.run.validate_repeats, config.run.residual_surrogate_mode(),
                              *start, *([] if config.run.surrogate_kernel == "rbf" else [config.run.surrogate_kernel]))
        # Fine-tunes are cached under content keys in validation/runs/: never cleared.
        stage("validate", val_key, [run_dir / "validation" / "validation.json", calibration],
              lambda: validate(config, taskset, FeatureStore.open(feat_dir), meta_dir / "adapter",
                               run_dir / "validation", k=config.run.validate_k, repeats=config.run.validate_repeats,
                               surrogate=config.run.residual_surrogate_mode(), start=config.run.trust_check_start(),
                               device=device, progress=progress))

    # 4. estimate + select. Only this run's own trust check calibrates it.
    manifest = FeatureStore.open(feat_dir).manifest
    estimate_config = apply_calibration(config.estimate, calibration if config.run.validate_k else None, manifest)
    sel_path, cmp_path = run_dir / "selection.json", run_dir / "comparisons.json"
    clusters_path = run_dir / "clusters.json"
    pseudo = bool(config.select.pseudo_sources)
    surrogate = gain_rmse = None
    if config.run.validate_k:  # the trust check's surrogate and measured gain error are part of what selection uses
        trust = read_calibration(calibration, manifest) or {}
        surrogate, gain_rmse = trust.get("residual_surrogate"), trust.get("gain_rmse")
    select_config = config.select_config()
    forward = estimate_config.scorer == "forward"
    validation_file = run_dir / "validation" / "validation.json"
    # The forward scorer's gain error is measured on the trust check's real fine-tunes.
    forward_surrogate = config.run.residual_surrogate_mode(scorer="forward")
    truths = [file_digest(validation_file), forward_surrogate, config.run.surrogate_kernel] \
        if forward and config.run.validate_k else []
    sel_key = content_key("select", feat_key, _dump(estimate_config), _dump(select_config), list(config.run.compare),
                          surrogate, *([gain_rmse] if gain_rmse is not None else []),
                          *([meta_key, config.train.batch_size, *truths] if forward else []))

    def do_select():
        estimator = fitted_estimator(estimate_config, select_config, feat_dir)
        # The surrogate learned the linear estimator's residuals: not the forward scorer's.
        if surrogate is not None and not pseudo and not forward:  # its subsets are of the real sources
            estimator = apply_surrogate(estimator, calibration, manifest)
        clusters = write_clusters(estimator, feat_dir, select_config, clusters_path) if pseudo else None
        if forward:
            from gradselect.select import forward_scored
            from gradselect.select.stage import FORWARD_WITHOUT_TRUST_CHECK

            data = clustered_taskset(taskset, clusters) if pseudo else taskset
            estimator = forward_scored(estimator, config, data, meta_dir / "adapter", feat_dir,
                                       run_dir / "source_gradients" / "gradients.safetensors", device=device,
                                       progress=progress)
            if config.run.validate_k:
                from gradselect.validate import correct_forward_scorer, trust_forward_scorer

                trust_forward_scorer(estimator, validation_file, estimate_config.forward_length_candidates)
                # Then what its real fine-tunes show beyond the forward scores, where that orders them better.
                estimator = correct_forward_scorer(estimator, validation_file, forward_surrogate,
                                                   config.run.surrogate_kernel)
            else:
                log.warning(FORWARD_WITHOUT_TRUST_CHECK.format(why="[run] validate_k = 0", fix="set [run] validate_k"))
        chosen = select_sources(estimator, select_config, sel_path, clusters=clusters,
                                estimated_at=config.run.estimate_at).chosen
        n_examples = sum(len(estimator.arrays_.source_rows[n]) for n in chosen)
        compare_subsets(estimator, config.run.compare, cmp_path, size=len(chosen), n_examples=n_examples,
                        features_dir=feat_dir)

    stage("select", sel_key, [sel_path, cmp_path] + ([clusters_path] if pseudo else []), do_select)
    selection = Selection.load(sel_path)
    compared = read_json_artifact(cmp_path, redo="rerun with --force select")
    comparisons, example_sets = compared["subsets"], compared.get("examples", {})
    # With pseudo-sources the final fine-tunes train on the chosen clusters' examples.
    train_taskset = taskset
    if pseudo:
        train_taskset = clustered_taskset(
            taskset, read_json_artifact(clusters_path, redo="rerun with --force select")["clusters"])
        train_slice = (train_taskset.fingerprint(), *train_slice[1:])

    # 5. final fine-tunes (content-addressed by the chosen sources)
    subsets = {"selection": selection.chosen, **comparisons}

    # (optional) the conventional baseline: trained like the final fine-tunes
    conv_key = None
    if config.run.conventional_budget:
        from gradselect.validate import conventional_forward

        conv_dir = run_dir / "conventional"
        conv_key = content_key("conventional", *train_slice, _dump(final_train), config.run.conventional_budget)
        stage("conventional", conv_key, [conv_dir / "conventional.json"],
              lambda: conventional_forward(config, taskset, conv_dir, train_config=final_train,
                                           budget=config.run.conventional_budget, device=device, progress=progress))
        subsets["conventional"] = read_json_artifact(conv_dir / "conventional.json",
                                                     redo="rerun with --force conventional")["chosen"]
    final_keys, models = {}, {}
    # Identical fine-tunes (e.g. grad-sim keeping every source = all) train once: a repeat's stage
    # record points at the first one's folder.
    trained: dict[str, Path] = {}
    # Fine-tunes an earlier run left under another label (a selection that now picks what a baseline
    # trained before) are copied, not trained again.
    earlier = _finished_fine_tunes(run_dir)

    def train_or_copy(folder, names, seeded, data, key):
        for k, p in list(earlier.items()):
            if p == folder:  # its old content is about to be replaced
                del earlier[k]
        source = earlier.get(key)
        if source is not None and source.exists():
            log.info("%s: the same fine-tune as %s (an earlier run); copied", folder, source)
            build = build_dir(folder)
            if build.exists():
                shutil.rmtree(build)
            shutil.copytree(source, build)  # (copy2: file times kept)
            replace_dir(build, folder)
            return
        train_into(folder, names, seeded, data, init_adapter=init)
    # From theta*, a final fine-tune depends on it too (a base-model start keeps its earlier keys).
    init = meta_dir / "adapter" if config.run.final_init == "meta" else None
    init_key = ["from theta*", meta_key] if init is not None else []
    example_counts = {}
    for label, names in subsets.items():
        data, pairs = train_taskset, example_sets.get(label)
        shown = names
        if pairs is not None:  # an example-level baseline: one source made of the examples it chose
            data = examples_taskset(taskset, label, pairs)
            # (reported as the sources its examples came from, in the task set's order, and their count)
            drawn = {source for source, _ in pairs}
            shown = [s.name for s in taskset.sources if s.name in drawn]
            example_counts[label] = len(pairs)
        for k in range(config.run.final_seeds):
            # Seed 0 keeps the single-seed folder and stage names, so adding seeds retrains nothing done.
            tag = "" if k == 0 else f"-seed{k}"
            seeded = final_train if k == 0 else final_train.model_copy(update={"seed": final_train.seed + k})
            folder = run_dir / "final" / f"{label}{tag}"
            # (pairs only when present: run folders from before example-level baselines keep their keys)
            key = content_key("final", *train_slice, _dump(seeded), sorted(names), *([pairs] if pairs else []),
                              *init_key)
            final_keys[f"{label}{tag}"] = key
            name = f"final-{label}{tag}" if label != "selection" else f"final{tag}"
            if key in trained:
                folder = trained[key]
                stage(name, key, [folder], lambda: None)
            else:
                trained[key] = folder
                stage(name, key, [folder], lambda folder=folder, names=names, data=data, seeded=seeded, key=key:
                      train_or_copy(folder, names, seeded, data, key), staging=[build_dir(folder)])
            models.setdefault(label, (shown, []))[1].append(folder / "adapter")

    # 6. evaluate on the target's test split
    metrics_path = run_dir / "metrics.json"
    eval_key = content_key("evaluate", final_keys, _dump(config.evaluate),
                           *([example_counts] if example_counts else []))
    lm_eval_out = [run_dir / "lm_eval.json"] if config.evaluate.lm_eval_tasks else []
    stage("evaluate", eval_key, [metrics_path, *lm_eval_out],
          lambda: evaluate_models(config, taskset, models, metrics_path, device=device, progress=progress,
                                  cache_dir=run_dir / "evaluations", refresh="evaluate" in force,
                                  example_counts=example_counts))

    # 7. report (cheap: regenerated whenever what it reads changed, a forced stage's new output included)
    from gradselect.report import write_report

    read = [metrics_path, sel_path, run_dir / "validation" / "validation.json"]
    report_key = content_key("report", sel_key, eval_key, meta_key, conv_key,
                             [file_digest(f) for f in read if f.exists()])
    stage("report", report_key, [run_dir / "report.md"], lambda: write_report(run_dir))
    write_text_atomic(run_dir / "config.toml", saved_config)
    return {"ran": ran, "skipped": skipped, "run_dir": str(run_dir), "metrics": MetricsTable.load(metrics_path),
            "selection": selection}
