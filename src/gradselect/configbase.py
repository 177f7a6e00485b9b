"""Shared base for configuration models: strict keys, readable errors.

Configs are pydantic models with ``extra="forbid"`` so a misspelled key is an
error, not a silently ignored setting. :func:`format_validation_error` turns
pydantic's report into one message naming the key path and, for unknown keys,
the valid ones.
"""

from __future__ import annotations

from typing import Any

import pydantic

from gradselect.errors import ConfigError


def _numeric(annotation: Any) -> bool:
    """Whether a field takes numbers and not booleans (``int``, ``float``, ``int | None``, ...)."""
    args = getattr(annotation, "__args__", None) or (annotation,)
    return bool(set(args) & {int, float}) and bool not in args


class StrictConfig(pydantic.BaseModel):
    """Base of every gradselect config: unknown keys are errors, and booleans are not numbers."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value, info):
        # pydantic reads `epochs = true` as 1.0; a typo like that must not train for one epoch.
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, got a boolean")
        return value


def _model_at(model_cls: type[pydantic.BaseModel], loc: tuple) -> type[pydantic.BaseModel] | None:
    """The config class that owns the key at ``loc`` (for listing valid keys)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        inner = _first_model(ann)
        if inner is None:
            return None
        cls = inner
    return cls if hasattr(cls, "model_fields") else None


def _first_model(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    err: pydantic.ValidationError, model_cls: type[pydantic.BaseModel], origin: str
) -> ConfigError:
    """Turn a pydantic ValidationError into a ConfigError naming each bad key."""
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if item["type"] == "extra_forbidden":
            owner = _model_at(model_cls, loc)
            valid = sorted(owner.model_fields) if owner is not None else []
            lines.append(f"unknown key {key!r}; valid keys here: {', '.join(valid)}")
        else:
            value = item.get("input")
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"{key or '(top level)'}: {item['msg']} (got {shown})")
    return ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(lines))


def validate_config(model_cls, data: dict, origin: str):
    """Build ``model_cls`` from ``data``; raise ConfigError naming bad keys."""
    try:
        return model_cls.model_validate(data)
    except pydantic.ValidationError as err:
        raise format_validation_error(err, model_cls, origin) from None
