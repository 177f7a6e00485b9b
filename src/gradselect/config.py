"""The run configuration: one TOML file drives a whole run.

Sections map one-to-one onto stage configs::

    [model]     ModelConfig      [adapter]   AdapterConfig
    [tokenize]  TokenizeConfig   [train]     TrainConfig
    [evaluate]  EvalConfig       [features]  FeatureConfig
    [estimate]  EstimateConfig   [select]    SelectConfig
    [run]       RunSection (gradselect run: run folder, comparisons)
    [data]      DataConfig (target + [[data.sources]])

Every section is optional (``[data]`` is needed by the stages that read data);
missing keys take documented defaults, unknown keys are errors that list the
valid ones.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pydantic

from gradselect.configbase import StrictConfig, validate_config
from gradselect.data.config import DataConfig
from gradselect.data.tokenize import TokenizeConfig
from gradselect.errors import ConfigError
from gradselect.estimate.config import EstimateConfig
from gradselect.evaluate.config import EvalConfig
from gradselect.features.config import FeatureConfig
from gradselect.model.config import AdapterConfig, ModelConfig
from gradselect.pipeline import RunSection
from gradselect.select.config import SelectConfig
from gradselect.train.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
    run: "RunSection" = pydantic.Field(default_factory=lambda: RunSection())


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


def dump_config(config: RunConfig) -> str:
    """TOML text of ``config`` (None values omitted), with a provenance header."""
    import tomli_w

    header = "".join(f"# {k}: {v}\n" for k, v in provenance().items())
    return header + tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
