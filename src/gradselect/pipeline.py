"""``gradselect run``: every stage of a run, each cached by the hash of its inputs.

Stages, in order, each writing into the run folder::

    meta_init/      fine-tune the base model on all sources (+ target train)
    features/       output values and projected gradients at the meta-initialization
    validation/     optional trust check ([run] validate_k): real fine-tunes from theta*,
                    and calibration.json, which selection then uses
    selection.json  estimate subsets and choose sources
    final/<name>/   fine-tune the base model on the selection (and on each comparison subset)
    conventional/   optional baseline ([run] conventional_budget): forward selection with one
                    real fine-tune per candidate; its choice joins the final fine-tunes
    metrics.json    target test metrics of every final model
    report.md       a readable report with plots

A stage's key is a hash of its slice of the config and of its upstream keys
(the final fine-tunes hash the *chosen sources*, so a selection change that
picks the same sources retrains nothing). ``stages/<name>.json`` records the
key of the last completed run of a stage; a stage whose key is unchanged is
skipped, ``force`` redoes named stages. A stage interrupted midway resumes if
its key is unchanged and starts clean otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Literal, Sequence

import pydantic

from gradselect.configbase import StrictConfig
from gradselect.errors import GradselectError
from gradselect.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

STAGES = ("meta_init", "features", "validate", "select", "conventional", "final", "evaluate", "report")
Comparison = Literal["all", "target-only", "grad-sim", "repr-sim", "random", "forward"]


class RunSection(StrictConfig):
    """The ``[run]`` section: where a run lives and what the final model is compared with."""

    run_dir: str = "runs/gradselect"
    """Run folder (relative paths are taken from the current directory)."""
    compare: list[Comparison] = pydantic.Field(default_factory=lambda: ["all", "target-only"])
    """Also fine-tune and evaluate these subsets next to the selection."""
    final_steps: int | None = pydantic.Field(default=None, ge=1)
    """Optimizer steps of every final fine-tune (equal budgets); default: [train]'s epochs."""
    validate_k: int = pydantic.Field(default=0, ge=0)
    """Trust check before selecting: fine-tune from theta* on this many subsets (0: skip; >= 3 to
    run). Its calibrated radius / lam is then used by selection."""
    validate_repeats: int = pydantic.Field(default=2, ge=0)
    """Trust check: subsets fine-tuned again with another seed (noise floor)."""
    conventional_budget: int = pydantic.Field(default=0, ge=0)
    """Also run the conventional baseline, forward selection with one real fine-tune (from the
    base model, trained like the final fine-tunes) per candidate, with at most this many
    fine-tunes (0: skip). Its choice is fine-tuned and evaluated beside the selection and the
    report gives the cost ratio."""


def _key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _dump(model) -> dict | None:
    return None if model is None else model.model_dump(mode="json")


class Stage:
    """Bookkeeping for one stage: its key, its record, and whether it must run."""

    def __init__(self, run_dir: Path, name: str, key: str, outputs: Sequence[Path], workdir: Path | None = None):
        self.run_dir, self.name, self.key, self.outputs = run_dir, name, key, list(outputs)
        # What a run with other inputs may have left (e.g. training checkpoints): cleared on begin().
        self.workdir = [workdir] if workdir is not None else self.outputs
        self.record = run_dir / "stages" / f"{name}.json"
        self.running = run_dir / "stages" / f"{name}.running.json"

    def is_current(self) -> bool:
        if not self.record.exists():
            return False
        try:
            done = json.loads(self.record.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return done.get("key") == self.key and all(p.exists() for p in self.outputs)

    def begin(self) -> None:
        """Mark the stage as running; clear outputs left by a run with other inputs."""
        previous = None
        if self.running.exists():
            try:
                previous = json.loads(self.running.read_text()).get("key")
            except (OSError, json.JSONDecodeError):
                previous = None
        if previous != self.key:
            for p in self.workdir:
                for q in (p, p.with_name(p.name + ".part")):
                    if q.is_dir():
                        shutil.rmtree(q)
                    elif q.exists():
                        q.unlink()
        if self.record.exists():
            self.record.unlink()
        write_json_atomic(self.running, {"key": self.key})

    def finish(self, seconds: float) -> None:
        write_json_atomic(self.record, {"key": self.key, "seconds": seconds})
        self.running.unlink(missing_ok=True)


def fitted_estimator(config, features_dir: Path):
    """A SubsetEstimator fitted on a feature store, with ``[select] pseudo_sources`` applied."""
    from gradselect.estimate import FeatureArrays, SubsetEstimator
    from gradselect.features import FeatureStore
    from gradselect.select import pseudo_sources

    arrays = FeatureArrays.from_store(FeatureStore.open(features_dir))
    if config.select.pseudo_sources:
        arrays = pseudo_sources(arrays, config.select.pseudo_sources, seed=config.select.seed)
    return SubsetEstimator(calibrated(config.estimate, Path(features_dir).parent / "calibration.json")).fit(arrays)


def calibrated(estimate_config, calibration_file: Path):
    """``estimate_config`` with the trust check's mode and step (radius / lam) applied.

    The trust check calibrates both step models and names the one with the lower
    leave-one-out error. A config that sets ``mode`` keeps it (with that mode's
    calibrated step); one that sets the step itself keeps its own.
    """
    if not calibration_file.exists():
        return estimate_config
    calib = json.loads(calibration_file.read_text())
    fields = estimate_config.model_fields_set
    if "mode" in fields:
        mode = estimate_config.mode
        entry = calib.get("candidates", {}).get(mode) or (calib if calib.get("mode") == mode else None)
    else:
        mode, entry = calib.get("mode"), calib
    key = (entry or {}).get("parameter")
    if key not in ("radius", "lam"):
        return estimate_config
    if key in fields or {"radius", "lam"} & fields and mode != estimate_config.mode:
        log.info("config sets its own step; ignoring the calibration in %s", calibration_file)
        return estimate_config
    log.info("using calibrated mode %s, %s = %.4g from %s", mode, key, entry["value"], calibration_file)
    return estimate_config.model_copy(update={"mode": mode, key: entry["value"]})


def run_pipeline(config, *, base_dir: Path | None = None, run_dir: Path | None = None, force: Sequence[str] = (),
                 device: str = "auto", progress: bool = True) -> dict:
    """Run every stage of ``config`` (a RunConfig with ``[data]``), skipping current ones.

    Returns
    -------
    dict
        ``{"ran": [...], "skipped": [...], "run_dir": str, "metrics": {...}}``
    """
    from gradselect.config import dump_config
    from gradselect.data import load_taskset
    from gradselect.features import featurize
    from gradselect.select import Selection
    from gradselect.train import train

    if config.data is None:
        raise GradselectError("gradselect run needs a [data] section with a target")
    if config.select.pseudo_sources:
        raise GradselectError(
            "[select] pseudo_sources: clusters are groups of rows, not named sources, and gradselect run cannot "
            "fine-tune on them yet; use gradselect featurize + gradselect select --pseudo-sources K"
        )
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise GradselectError(f"unknown stage(s) {unknown} for --force; stages are {list(STAGES)}")
    run_dir = Path(run_dir or config.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.toml", dump_config(config))
    taskset = load_taskset(config.data, base_dir=base_dir)
    fingerprint = taskset.fingerprint()
    ran, skipped = [], []
    common = dict(model_config=config.model, adapter_config=config.adapter, tokenize_config=config.tokenize,
                  device=device, progress=progress)

    def stage(name, key, outputs, work, workdir=None):
        st = Stage(run_dir, name, key, outputs, workdir)
        if st.is_current() and name not in force:
            skipped.append(name)
            log.info("stage %s: current, skipped", name)
            return
        log.info("stage %s: running", name)
        start = time.perf_counter()
        st.begin()
        work()
        st.finish(time.perf_counter() - start)
        ran.append(name)

    train_slice = (fingerprint, _dump(config.model), _dump(config.adapter), _dump(config.tokenize))

    # 1. meta-initialization
    meta_dir = run_dir / "meta_init"
    meta_key = _key("meta_init", *train_slice, _dump(config.train))
    stage("meta_init", meta_key, [meta_dir / "adapter"],
          lambda: train(taskset, taskset.source_names, meta_dir, train_config=config.train, overwrite=True, **common),
          workdir=meta_dir)

    # 2. features
    feat_dir = run_dir / "features"
    feat_key = _key("features", meta_key, _dump(config.features))
    stage("features", feat_key, [feat_dir],
          lambda: featurize(taskset, feat_dir, feature_config=config.features, adapter_path=meta_dir / "adapter",
                            force=True, **common))

    # 3. trust check (optional): its calibration is picked up by selection
    if config.run.validate_k:
        from gradselect.evaluate.trust import validate
        from gradselect.features import FeatureStore

        val_key = _key("validate", feat_key, _dump(config.train), config.run.final_steps, _dump(config.estimate),
                       config.run.validate_k,
                       config.run.validate_repeats)
        stage("validate", val_key, [run_dir / "validation" / "validation.json"],
              lambda: validate(config, taskset, FeatureStore.open(feat_dir), meta_dir / "adapter",
                               run_dir / "validation", k=config.run.validate_k, repeats=config.run.validate_repeats,
                               device=device, progress=progress))
    calibration = run_dir / "calibration.json"

    # 4. estimate + select
    sel_path = run_dir / "selection.json"
    sel_key = _key("select", feat_key, _dump(config.estimate), _dump(config.select),
                   calibration.read_text() if calibration.exists() else None)

    def do_select():
        from gradselect.select import SELECTORS

        estimator = fitted_estimator(config, feat_dir)
        selection = config.select.make_selector().select(estimator)
        selection.params["base_loss"] = estimator.base_loss_
        selection.params["estimator"] = _dump(estimator.config_)
        selection.params["comparisons"] = {name: SELECTORS[name]().select(estimator).chosen
                                           for name in config.run.compare}
        selection.save(sel_path)

    stage("select", sel_key, [sel_path], do_select)
    selection = Selection.load(sel_path)

    # 5. final fine-tunes (content-addressed by the chosen sources)
    final_train = config.train
    if config.run.final_steps is not None:
        final_train = config.train.model_copy(update={"max_steps": config.run.final_steps})
    subsets = {"selection": selection.chosen, **selection.params.get("comparisons", {})}

    # (optional) the conventional baseline: trained like the final fine-tunes
    conv_key = None
    if config.run.conventional_budget:
        from gradselect.evaluate.conventional import conventional_forward

        conv_dir = run_dir / "conventional"
        conv_key = _key("conventional", *train_slice, _dump(final_train), config.run.conventional_budget)
        stage("conventional", conv_key, [conv_dir / "conventional.json"],
              lambda: conventional_forward(config, taskset, conv_dir, train_config=final_train,
                                           budget=config.run.conventional_budget, device=device, progress=progress),
              workdir=conv_dir)
        subsets["conventional"] = json.loads((conv_dir / "conventional.json").read_text())["chosen"]
    final_keys = {}
    for label, names in subsets.items():
        folder = run_dir / "final" / label
        key = _key("final", *train_slice, _dump(final_train), sorted(names))
        final_keys[label] = key
        stage(f"final-{label}" if label != "selection" else "final", key, [folder / "adapter"],
              lambda folder=folder, names=names: train(taskset, names, folder, train_config=final_train,
                                                       overwrite=True, **common),
              workdir=folder)

    # 6. evaluate on the target's test split
    metrics_path = run_dir / "metrics.json"
    eval_key = _key("evaluate", final_keys, _dump(config.evaluate))

    def do_evaluate():
        from gradselect.evaluate import exact_match, target_loss
        from gradselect.model import load_for_inference, load_model

        rows = {}
        for label, names in subsets.items():
            base, tok = load_model(config.model, device=device)
            model = load_for_inference(base, run_dir / "final" / label / "adapter", config.adapter)
            row = {"sources": list(names),
                   "test_loss": target_loss(model, tok, taskset.target_test.examples, config.tokenize,
                                            batch_size=config.evaluate.batch_size).loss}
            if config.evaluate.exact_match:
                row["test_exact_match"] = exact_match(model, tok, taskset.target_test, config.tokenize,
                                                      config.evaluate, progress=progress).accuracy
            rows[label] = row
        write_json_atomic(metrics_path, {"split": "test", "n_examples": len(taskset.target_test), "rows": rows})

    stage("evaluate", eval_key, [metrics_path], do_evaluate)

    # 7. report (cheap: regenerated whenever anything upstream ran)
    from gradselect.report import write_report

    report_key = _key("report", sel_key, eval_key, meta_key, conv_key)
    stage("report", report_key, [run_dir / "report.md"], lambda: write_report(run_dir))
    metrics = json.loads(metrics_path.read_text())
    return {"ran": ran, "skipped": skipped, "run_dir": str(run_dir), "metrics": metrics, "selection": selection}
