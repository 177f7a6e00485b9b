"""Configuration of the data stage: where sources and the target come from."""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from gradselect.configbase import StrictConfig

FileFormat = Literal["auto", "jsonl", "json", "csv", "parquet", "hf"]


class SourceSpec(StrictConfig):
    """Where one source (or several, via ``source_column`` or a folder) comes from.

    Exactly one of ``path``, ``hf_dataset`` or ``reasoning_gym`` is set.
    """

    name: str | None = None
    """Source name. Defaults to the file stem; ignored with ``source_column``."""
    path: str | None = None
    """A file (.jsonl, .json, .csv, .parquet), a folder of such files (one source
    per file), or a folder written by ``datasets.save_to_disk``."""
    format: FileFormat = "auto"
    """File format; ``auto`` decides from the extension (``hf`` for a saved dataset folder)."""
    hf_dataset: str | None = None
    """Name or local folder passed to ``datasets.load_dataset`` (honours HF_HUB_OFFLINE)."""
    hf_split: str = "train"
    """Split to read from a dataset dictionary."""
    reasoning_gym: str | None = None
    """A reasoning-gym generator name, e.g. ``basic_arithmetic``."""
    reasoning_gym_args: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Extra keyword arguments for ``reasoning_gym.create_dataset``."""
    size: int = pydantic.Field(default=200, ge=1)
    """Number of examples to generate (reasoning-gym only)."""
    seed: int = 0
    """Seed of generation, capping and label noise."""
    source_column: str | None = None
    """Column whose value names each row's source (one file holding many sources)."""
    prompt_column: str | None = None
    """Prompt column; by default the first of prompt, input, question, instruction."""
    response_column: str | None = None
    """Response column; by default the first of response, target, answer, output, completion."""
    messages_column: str | None = None
    """Column of chat turns ``[{"role", "content"}, ...]``; the last turn is the response."""
    id_column: str | None = None
    """Column of example ids (unique per source); by default ``<source>:<row>``."""
    max_examples: int | None = pydantic.Field(default=None, ge=1)
    """Cap: keep a seeded random sample of at most this many examples."""
    label_noise: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of responses to corrupt (seeded), to plant a harmful source."""

    @pydantic.model_validator(mode="after")
    def _one_origin(self) -> "SourceSpec":
        given = [k for k in ("path", "hf_dataset", "reasoning_gym") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of 'path', 'hf_dataset', 'reasoning_gym' "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.messages_column and (self.prompt_column or self.response_column):
            raise ValueError("'messages_column' replaces 'prompt_column'/'response_column'; set one or the other")
        return self


class DataConfig(StrictConfig):
    """The target task and the auxiliary sources of a run."""

    target: SourceSpec
    """The target task. Split into train/dev/test unless ``target_dev``/``target_test`` are given."""
    target_dev: SourceSpec | None = None
    """Explicit dev split of the target (used for estimation and model selection)."""
    target_test: SourceSpec | None = None
    """Explicit test split of the target (used only by the final evaluation)."""
    dev_fraction: float = pydantic.Field(default=0.2, gt=0.0, lt=1.0)
    """Share of the target held out as dev when no ``target_dev`` is given."""
    test_fraction: float = pydantic.Field(default=0.2, gt=0.0, lt=1.0)
    """Share of the target held out as test when no ``target_test`` is given."""
    split_seed: int = 0
    """Seed of the target's train/dev/test split."""
    drop_overlap: bool = False
    """Drop repeated examples (same prompt and response) instead of warning about them: from the target's
    dev split those in its test split, from its train split those in dev or test, and from every source
    those in any target split. Small generated tasks repeat examples by chance."""
    sources: list[SourceSpec] = pydantic.Field(default_factory=list)
    """Auxiliary sources, in order."""

    @pydantic.model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        held_out = (self.target_dev is None) * self.dev_fraction + (self.target_test is None) * self.test_fraction
        if held_out >= 1.0:
            raise ValueError(
                f"dev_fraction + test_fraction must leave target examples for training (got {held_out:.2f})"
            )
        return self
