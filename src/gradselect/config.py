"""The run configuration: one TOML file drives a whole run.

Sections map one-to-one onto stage configs::

    [model]     ModelConfig      [adapter]   AdapterConfig
    [tokenize]  TokenizeConfig   [train]     TrainConfig
    [evaluate]  EvalConfig       [features]  FeatureConfig
    [estimate]  EstimateConfig   [select]    SelectConfig
    [run]       RunSection (gradselect run: run folder, comparisons)
    [data]      DataConfig (target + [[data.sources]])
    [provenance] Provenance (written into saved configs; informational)

Every section is optional (``[data]`` is needed by the stages that read data);
missing keys take documented defaults, unknown keys are errors that list the
valid ones. Rules that span sections are checked when the config loads, before
any work; options that the chosen mode or method ignores warn.

A run folder's ``config.toml`` (:func:`replay_config` + :func:`dump_config`) holds
only the keys the user set, with data paths and the run folder made absolute, so
``gradselect run RUN/config.toml`` reproduces the run from any working directory.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pydantic

from gradselect.configbase import StrictConfig, validate_config
from gradselect.data.config import DataConfig
from gradselect.data.tokenize import TokenizeConfig
from gradselect.errors import ConfigError
from gradselect.estimate.config import EstimateConfig
from gradselect.evaluate.config import EvalConfig
from gradselect.features.config import FeatureConfig
from gradselect.model.config import AdapterConfig, ModelConfig
from gradselect.select.config import SelectConfig
from gradselect.train.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


Comparison = Literal["all", "target-only", "grad-sim", "repr-sim", "kmm", "less", "uniform", "stratified", "random",
                     "forward"]


class RunSection(StrictConfig):
    """The ``[run]`` section: where a run lives and what the final model is compared with."""

    run_dir: str = "runs/gradselect"
    """Run folder (a relative path is taken from the current directory; saved configs store it absolute)."""
    compare: list[Comparison] = pydantic.Field(default_factory=lambda: ["all", "target-only"])
    """Also fine-tune and evaluate these subsets next to the selection (sized baselines keep as many
    sources as the selection; ``less``, ``uniform`` and ``stratified`` keep as many examples)."""
    final_steps: int | None = pydantic.Field(default=None, ge=1)
    """Optimizer steps of every final fine-tune (equal budgets); default: [train]'s epochs."""
    final_seeds: int = pydantic.Field(default=1, ge=1)
    """Fine-tune every final model with this many training seeds ([train] seed, seed + 1, ...); metrics
    are then the mean over seeds, with the spread across seeds beside them."""
    final_init: Literal["base", "meta"] = "base"
    """Where every final fine-tune (selection and comparisons alike) starts: ``base``, the base
    model, as in the paper; ``meta``, the meta-initialization theta* (trained on all sources),
    which is the point the estimates linearize around, so the final fine-tune is the one they
    predict. The conventional baseline always starts from the base model."""
    estimate_at: Literal["meta", "base"] = "meta"
    """Where the estimates linearize (features, source gradients, forward passes): ``meta``
    (default), the meta-initialization theta* trained on all sources, as in the paper; ``base``,
    the base model with the untrained LoRA adapter the final fine-tunes start from (B = 0, A
    drawn under [train] seed): no meta-training, and first-order effects measured where the
    final fine-tunes begin. LoRA only, and no Adam-preconditioned features (no meta-training
    optimizer). Measured on the planted12 truth bank's 20 subsets fine-tuned from the base model
    (docs/results.md, 2026-12-03): forward-scored sign steps at the base model (0.2-1 |theta|)
    ordered them at Spearman 0.63-0.66 [~0.3, ~0.9] and put the target alone first, as the truth
    does; the same scorer at theta* reached 0.37 and put it last, the linear default at theta*
    0.55 (2nd). One bank of 20 subsets: intervals overlap."""
    validate_k: int = pydantic.Field(default=0, ge=0)
    """Trust check before selecting: fine-tune on this many subsets (0: skip; >= 3 to run), from
    where ``validate_init`` says. Its calibration and measured gain error are then used by selection."""
    validate_init: Literal["auto", "meta", "base"] = "auto"
    """Where the trust check's fine-tunes start: ``auto`` (default), where the final fine-tunes
    start (``final_init``), so its calibrated level, measured gain error and evidence margin
    describe the fine-tune the user gets; ``meta``, theta* (the point the estimates linearize
    around: it measures the estimator against what it models; the fidelity benchmarks use it);
    ``base``, the base model. Measured (benchmarks/README.md, 2026-12-03): on a scarce target
    theta* misjudged the target alone (dev loss 0.836 fine-tuned from theta*, 0.471 from the
    base model) and certified a mixture that lost 8.3 points of exact match to it; the
    base-model check chose no source. On BIG-bench arithmetic both starts chose no source.
    Step-length candidates centred on the measured displacement need a theta* start; from the
    base model the grid is centred on the default step."""
    validate_repeats: int = pydantic.Field(default=2, ge=0)
    """Trust check: subsets fine-tuned again with another seed (noise floor)."""
    residual_surrogate: Literal["auto", "on", "off"] | None = None
    """Trust check: correct selection's estimates by kernel ridge on the validated subsets' residuals
    (true minus estimated loss; kernel: ``surrogate_kernel``). ``on`` always; ``auto`` when its
    held-out order of the validated subsets (each corrected by a surrogate fitted on the others)
    beats the uncorrected estimates'
    (for the linear scorer: the calibrated step's); ``off`` never. Default: ``on`` with the linear
    scorer, ``auto`` with the forward scorer (:meth:`residual_surrogate_mode`).
    Linear scorer: on the planted12 truth bank (29 subsets) ``on`` ordered unseen subsets better
    than ``auto`` and than the calibrated step alone at every trust-check size from 6 to 12, and
    on the bbh12 and arith12 base-model banks by 0.02-0.21 (simulated checks of 8 and 12,
    docs/results.md); on the demo's data ``auto`` left it out (the estimates ordered the 8
    validated subsets better, Spearman 0.93 against 0.74), and the selection kept a
    planted-noisy source that the surrogate drops. Forward scorer
    (:func:`gradselect.validate.trust.correct_forward_scorer`): ``on`` lowered the unseen
    subsets' order by 0.04-0.27 where the forward scores already ordered them well (planted12,
    bbh12) and raised it by 0.20-0.23 where they did not (arith12); ``auto`` kept within 0.03
    of the better on the first two and gained 0.15 on arith12 (figures of the RBF kernel; the
    additive kernel's are under ``surrogate_kernel``)."""
    surrogate_kernel: Literal["additive", "rbf"] = "additive"
    """The residual surrogate's kernel over subset indicators
    (:class:`gradselect.estimate.surrogate.ResidualSurrogate`): ``additive``, one shrunk correction
    per source (ridge on the centred indicators, alpha 3), or ``rbf`` (RBF kernel ridge, the default
    before 2026-12-07). Real fine-tuning is close to additive over sources on our three truth banks
    (an additive model on the other subsets' truths: Spearman 0.82 / 0.96 / 0.81 held out); in
    simulated trust checks of 8 and 12 subsets on them, the additive kernel ordered the unseen
    subsets as well as ``rbf`` or better with the forward scorer's ``auto`` (arith12 0.53-0.56 ->
    0.58-0.61; bbh12 and planted12 unchanged) and within 0.03 of it with the linear scorer's ``on``,
    and with ``on`` it lowered already good forward scores far less (bbh12: by 0.11-0.14 instead of
    0.36-0.38; docs/results.md)."""
    conventional_budget: int = pydantic.Field(default=0, ge=0)
    """Also run the conventional baseline, forward selection with one real fine-tune (from the
    base model, trained like the final fine-tunes) per candidate, with at most this many
    fine-tunes (0: skip). Its choice is fine-tuned and evaluated beside the selection and the
    report gives the cost ratio."""

    def trust_check_start(self) -> str:
        """``meta`` or ``base``: where the trust check's fine-tunes start (``validate_init`` resolved)."""
        return self.final_init if self.validate_init == "auto" else self.validate_init

    def residual_surrogate_mode(self, scorer: str = "linear") -> str:
        """``residual_surrogate`` as set, else its measured default for ``scorer`` (``[estimate] scorer``):
        ``on`` for the linear scorer, ``auto`` for the forward scorer."""
        if self.residual_surrogate is not None:
            return self.residual_surrogate
        return "auto" if scorer == "forward" else "on"

    @pydantic.field_validator("validate_k")
    @classmethod
    def _enough_subsets(cls, v: int) -> int:
        if v in (1, 2):
            raise ValueError("the trust check compares ranks and needs >= 3 subsets; set validate_k >= 3, or 0 to skip")
        return v


class Provenance(StrictConfig):
    """Who wrote a saved config, and when (data, not comments: it survives a reload)."""

    gradselect_version: str | None = None
    git_sha: str | None = None
    created: str | None = None


#: The ensemble's default number of subsets with the forward scorer (one dev forward pass each).
FORWARD_N_SUBSETS = 64


class RunConfig(StrictConfig):
    """Everything a run needs, section by section."""

    data: DataConfig | None = None
    model: ModelConfig = pydantic.Field(default_factory=ModelConfig)
    adapter: AdapterConfig = pydantic.Field(default_factory=AdapterConfig)
    tokenize: TokenizeConfig = pydantic.Field(default_factory=TokenizeConfig)
    train: TrainConfig = pydantic.Field(default_factory=TrainConfig)
    evaluate: EvalConfig = pydantic.Field(default_factory=EvalConfig)
    features: FeatureConfig = pydantic.Field(default_factory=FeatureConfig)
    estimate: EstimateConfig = pydantic.Field(default_factory=EstimateConfig)
    select: SelectConfig = pydantic.Field(default_factory=SelectConfig)
    run: RunSection = pydantic.Field(default_factory=RunSection)
    provenance: Provenance | None = None

    @pydantic.model_validator(mode="after")
    def _cross_section(self) -> "RunConfig":
        # Rules that span sections: all knowable before any training.
        if self.train.include_target_train != self.estimate.include_target_train:
            raise ValueError(
                f"[train] include_target_train = {str(self.train.include_target_train).lower()} but [estimate] "
                f"include_target_train = {str(self.estimate.include_target_train).lower()}: the estimate must model "
                "the rows the fine-tunes train on; set both the same")
        if self.train.target_share != self.estimate.target_share:
            raise ValueError(
                f"[train] target_share = {self.train.target_share} but [estimate] target_share = "
                f"{self.estimate.target_share}: the estimate must model the rows the fine-tunes train on; set both "
                "the same")
        if not self.train.include_target_train and "target-only" in self.run.compare:
            raise ValueError("[run] compare has 'target-only' but [train] include_target_train = false leaves it "
                             "nothing to train on; remove it from compare")
        if self.evaluate.exact_match and self.tokenize.max_length <= self.evaluate.max_new_tokens:
            raise ValueError(
                f"[tokenize] max_length = {self.tokenize.max_length} leaves no room for a prompt before "
                f"[evaluate] max_new_tokens = {self.evaluate.max_new_tokens} generated tokens; raise max_length "
                "or lower max_new_tokens")
        if self.select.pseudo_sources and (self.run.validate_k or self.run.conventional_budget):
            raise ValueError("[select] pseudo_sources with [run] validate_k or conventional_budget: the trust check "
                             "and the conventional baseline do not run on clusters yet; set them to 0")
        if self.run.estimate_at == "base":
            if self.adapter.method != "lora":
                raise ValueError("[run] estimate_at = \"base\" estimates at the untrained LoRA adapter of the final "
                                 "fine-tunes: it needs [adapter] method = \"lora\"")
            if self.features.precondition == "adam":
                raise ValueError("[run] estimate_at = \"base\" skips meta-training, so there are no Adam moments for "
                                 "[features] precondition = \"adam\"; use estimate_at = \"meta\" or precondition = "
                                 "\"none\"")
        needs_hidden = self.select.method == "repr-sim" or "repr-sim" in self.run.compare
        if needs_hidden and not self.features.hidden_states:
            raise ValueError("repr-sim compares mean hidden states: set [features] hidden_states = true")
        return self

    def select_config(self):
        """How selection runs: ``[select]``, with ``n_subsets`` = 64 for the ensemble when ``[estimate] scorer
        = "forward"`` and the config does not set it (each subset costs a dev forward pass there, where the
        linear default is 200; two 32-subset ensembles on our 12-source bank ranked the sources alike at
        Spearman only 0.49, Monte-Carlo noise as much as signal)."""
        sel = self.select
        if self.estimate.scorer == "forward" and "n_subsets" not in sel.model_fields_set:
            return sel.model_copy(update={"n_subsets": FORWARD_N_SUBSETS})
        return sel

    def final_train_config(self):
        """How every final fine-tune (and every trust-check fine-tune) trains: ``[train]``, with
        ``[run] final_steps`` optimizer steps when set.

        With equal steps, subsets differ in *what* they train on, not in how long: the
        estimator models a step of fixed length on the subset's mean loss, whatever its
        size. With epochs instead, a subset twice as large trains twice as long.
        """
        steps = self.run.final_steps
        return self.train if steps is None else self.train.model_copy(update={"max_steps": steps})


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run config; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: malformed TOML: {err}") from None
    return validate_config(RunConfig, data, str(path))


def provenance() -> dict:
    """Version, git commit (when run from a checkout) and time, stamped on saved configs."""
    from gradselect import __version__

    sha = None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "gradselect_version": __version__,
        "git_sha": sha,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _absolute(path: str, base_dir: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def resolve_paths(config: RunConfig, base_dir: Path | None) -> RunConfig:
    """Path options outside ``[data]`` (``[features] optimizer_state``, ``[evaluate] lm_eval_include``)
    resolved against ``base_dir``, the config file's folder, as data paths are."""
    base = Path(base_dir or ".").resolve()
    update = {}
    if config.features.optimizer_state:
        update["features"] = config.features.model_copy(
            update={"optimizer_state": _absolute(config.features.optimizer_state, base)})
    if config.evaluate.lm_eval_include:
        update["evaluate"] = config.evaluate.model_copy(
            update={"lm_eval_include": _absolute(config.evaluate.lm_eval_include, base)})
    return config.model_copy(update=update) if update else config


def replay_config(config: RunConfig, *, base_dir: Path | None, run_dir: Path | None = None) -> RunConfig:
    """``config`` as a run folder saves it: data paths absolute (resolved against ``base_dir``,
    the original config file's folder) and ``[run] run_dir`` the absolute folder actually used."""
    base = Path(base_dir or ".").resolve()
    data = config.data
    if data is not None:
        def fix(spec):
            if spec is None:
                return None
            update = {}
            if spec.path is not None:
                update["path"] = _absolute(spec.path, base)
            if spec.hf_dataset is not None and (base / spec.hf_dataset).exists():
                update["hf_dataset"] = _absolute(spec.hf_dataset, base)
            return spec.model_copy(update=update) if update else spec

        update = {k: fix(getattr(data, k)) for k in ("target", "target_dev", "target_test") if getattr(data, k)}
        if data.sources:
            update["sources"] = [fix(s) for s in data.sources]
        data = data.model_copy(update=update)
    config = resolve_paths(config, base)
    update = {"data": data}
    if run_dir is not None:
        update["run"] = config.run.model_copy(update={"run_dir": str(Path(run_dir).resolve())})
    return config.model_copy(update=update)


def dump_config(config: RunConfig) -> str:
    """TOML text of ``config``: only the keys that were set (defaults stay defaults on reload), with a
    fresh ``[provenance]`` table."""
    import tomli_w

    data = config.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    data.pop("provenance", None)
    data["provenance"] = provenance()
    return tomli_w.dumps(data)
