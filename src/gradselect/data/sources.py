"""Build sources from a :class:`~gradselect.data.config.SourceSpec`.

Records are validated at this boundary: prompts and responses must be
non-empty strings, ids unique, sources non-empty. Caps and planted label noise
are seeded, so the same spec always yields the same examples.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from gradselect.data.config import SourceSpec
from gradselect.data.examples import Example, Source
from gradselect.data.readers import FORMAT_BY_SUFFIX, Record, detect_format, read_hf_dataset, read_records
from gradselect.errors import DataError

PROMPT_COLUMNS = ("prompt", "input", "question", "instruction")
RESPONSE_COLUMNS = ("response", "target", "answer", "output", "completion")
ROLES = ("system", "user", "assistant")


def load_sources(spec: SourceSpec, *, base_dir: Path | None = None) -> list[Source]:
    """Every source described by ``spec`` (several with a folder or ``source_column``).

    Parameters
    ----------
    spec : SourceSpec
    base_dir : Path, optional
        Folder that relative paths are resolved against (the config file's).
    """
    if spec.reasoning_gym:
        from gradselect.data.reasoning_gym import load_reasoning_gym

        sources = [
            load_reasoning_gym(
                spec.reasoning_gym, size=spec.size, seed=spec.seed, name=spec.name, **spec.reasoning_gym_args
            )
        ]
    elif spec.hf_dataset:
        records = read_hf_dataset(spec.hf_dataset, spec.hf_split)
        sources = _group(records, spec, default_name=spec.name or Path(spec.hf_dataset).name, origin=spec.hf_dataset)
    else:
        path = Path(spec.path)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise DataError("file not found", path=path)
        fmt = detect_format(path, spec.format)
        if fmt == "folder":
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMAT_BY_SUFFIX)
            if not files:
                raise DataError(
                    f"folder holds no data files ({', '.join(sorted(FORMAT_BY_SUFFIX))})", path=path
                )
            sources = []
            for f in files:
                records = read_records(f, detect_format(f))
                sources.extend(_group(records, spec, default_name=f.stem, origin=str(f)))
        else:
            records = read_records(path, fmt, hf_split=spec.hf_split)
            sources = _group(records, spec, default_name=spec.name or path.stem, origin=str(path))
    return [_finish(s, spec) for s in sources]


def _group(records: list[Record], spec: SourceSpec, *, default_name: str, origin: str) -> list[Source]:
    """Split records into sources (by ``source_column``) and parse each record."""
    if not records:
        raise DataError("no records: a source must hold at least one example", path=origin)
    columns = _columns(records)
    prompt_col, response_col = _resolve_columns(spec, columns, origin)
    for col in (spec.source_column, spec.id_column):
        if col and col not in columns:
            raise DataError(f"missing column; columns are {sorted(columns)}", path=origin, field=col)

    groups: dict[str, list[Example]] = {}
    for index, rec in enumerate(records):
        if spec.source_column:
            name = _string(rec, spec.source_column)
        else:
            name = default_name
        examples = groups.setdefault(name, [])
        examples.append(_example(rec, spec, name, len(examples), prompt_col, response_col))
    return [Source(name, _closed_answer_set(examples)) for name, examples in groups.items()]


def _closed_answer_set(examples: list[Example]) -> list[Example]:
    """A source whose answers come from a small closed set (True/False, Yes/No, valid/invalid: at most
    4 distinct responses, each given at least twice, over 10+ examples) is multiple choice over that set."""
    if len(examples) < 10 or any(e.choices for e in examples) or any(e.messages for e in examples):
        return examples
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.response] = counts.get(e.response, 0) + 1
    if not 2 <= len(counts) <= 4 or min(counts.values()) < 2:
        return examples
    choices = tuple(sorted(counts))
    return [dataclasses.replace(e, choices=choices) for e in examples]


def _columns(records: list[Record]) -> set[str]:
    columns: set[str] = set()
    for rec in records:
        columns.update(rec.fields)
    return columns


def _resolve_columns(spec: SourceSpec, columns: set[str], origin: str) -> tuple[str | None, str | None]:
    if spec.messages_column:
        if spec.messages_column not in columns:
            raise DataError(f"missing column; columns are {sorted(columns)}", path=origin, field=spec.messages_column)
        return None, None
    resolved = []
    for given, candidates, key in (
        (spec.prompt_column, PROMPT_COLUMNS, "prompt_column"),
        (spec.response_column, RESPONSE_COLUMNS, "response_column"),
    ):
        if given:
            if given not in columns:
                raise DataError(f"missing column; columns are {sorted(columns)}", path=origin, field=given)
            resolved.append(given)
            continue
        found = next((c for c in candidates if c in columns), None)
        if found is None:
            raise DataError(
                f"no {key.split('_')[0]} column: none of {list(candidates)} exists; columns are "
                f"{sorted(columns)} (set {key!r})",
                path=origin,
            )
        resolved.append(found)
    return resolved[0], resolved[1]


def _string(rec: Record, column: str) -> str:
    if column not in rec.fields:
        raise DataError("missing field", path=rec.path, location=rec.location, field=column)
    value = rec.fields[column]
    if not isinstance(value, str):
        raise DataError(
            f"expected a string, got {type(value).__name__} {value!r:.60}",
            path=rec.path,
            location=rec.location,
            field=column,
        )
    if not value.strip():
        raise DataError("empty value", path=rec.path, location=rec.location, field=column)
    return value


def _example(rec: Record, spec: SourceSpec, source: str, index: int, prompt_col, response_col) -> Example:
    ex_id = _id(rec, spec.id_column) if spec.id_column else f"{source}:{index}"
    if spec.messages_column:
        messages = _messages(rec, spec.messages_column)
        prompt = "\n".join(m["content"] for m in messages[:-1])
        return Example(ex_id, prompt, messages[-1]["content"], messages=messages)
    prompt, response = _string(rec, prompt_col), _string(rec, response_col)
    return Example(ex_id, prompt, response, choices=_choices(rec, prompt, response))


_OPTION = re.compile(r"^\s*\(([A-Z])\)\s", re.MULTILINE)


def _choices(rec: Record, prompt: str, response: str) -> tuple[str, ...] | None:
    """A record's candidate answers: BIG-bench ``target_scores``, a ``choices`` list field, or
    BIG-Bench-Hard's lettered options (``Options:`` lines ``(A) ...``, answered ``(B)``)."""
    given = rec.fields.get("_choices", rec.fields.get("choices"))
    if isinstance(given, list) and len(given) > 1 and all(isinstance(c, str) for c in given):
        return tuple(given) if response in given else None
    if re.fullmatch(r"\([A-Z]\)", response.strip()) and "Options:" in prompt:
        letters = _OPTION.findall(prompt.split("Options:", 1)[1])
        if len(letters) > 1 and f"({response.strip()[1]})" in {f"({x})" for x in letters}:
            return tuple(f"({x})" for x in letters)
    return None


def _id(rec: Record, column: str) -> str:
    value = rec.fields.get(column)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise DataError(
            f"example id must be a non-empty string or an integer, got {value!r:.60}",
            path=rec.path,
            location=rec.location,
            field=column,
        )
    return str(value)


def _messages(rec: Record, column: str) -> tuple[dict[str, str], ...]:
    value = rec.fields.get(column)
    if isinstance(value, str):  # CSV cells hold JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    where = dict(path=rec.path, location=rec.location, field=column)
    if not isinstance(value, list) or len(value) < 2:
        raise DataError("expected a list of at least two chat turns ({'role', 'content'})", **where)
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise DataError(f"turn {i} must be an object with string 'role' and 'content'", **where)
        if turn["role"] not in ROLES:
            raise DataError(f"turn {i} has role {turn['role']!r}; roles are {list(ROLES)}", **where)
        if not turn["content"].strip():
            raise DataError(f"turn {i} has empty content", **where)
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "assistant":
        raise DataError("the last turn must be the assistant's response", **where)
    return tuple(turns)


def _finish(source: Source, spec: SourceSpec) -> Source:
    """Check ids, then apply the cap and the planted label noise (both seeded)."""
    if not source.examples:
        raise DataError(f"source {source.name!r} is empty")
    seen: dict[str, int] = {}
    for i, e in enumerate(source.examples):
        if e.id in seen:
            raise DataError(
                f"duplicate example id {e.id!r} in source {source.name!r} (examples {seen[e.id]} and {i})",
                field=spec.id_column,
            )
        seen[e.id] = i
    examples = source.examples
    if spec.max_examples is not None and len(examples) > spec.max_examples:
        rng = np.random.default_rng([spec.seed, 1])
        keep = np.sort(rng.choice(len(examples), size=spec.max_examples, replace=False))
        examples = [examples[i] for i in keep]
    if spec.label_noise > 0:
        examples = plant_label_noise(examples, spec.label_noise, seed=spec.seed)
    return Source(source.name, examples, checker=source.checker)


def plant_label_noise(examples: list[Example], fraction: float, *, seed: int) -> list[Example]:
    """Corrupt ``round(fraction * n)`` responses by giving each another example's response.

    The chosen examples' responses are permuted cyclically among themselves
    (so none keeps its own), seeded by ``seed``. Corrupted examples carry
    ``meta["noisy"] = True``. With fewer than two chosen examples, or all of
    them sharing one response, responses are taken from outside the chosen set.
    """
    n = len(examples)
    k = int(round(fraction * n))
    if k == 0 or n < 2:
        return list(examples)
    rng = np.random.default_rng([seed, 2])
    chosen = rng.choice(n, size=k, replace=False)
    if k >= 2:
        donors = np.roll(chosen, 1)
    else:
        donors = np.array([(chosen[0] + 1 + rng.integers(n - 1)) % n])
    out = list(examples)
    for i, d in zip(chosen, donors):
        e = examples[i]
        new_response = examples[d].response
        if new_response == e.response:
            # Pick any example whose response differs, deterministically.
            others = [x.response for x in examples if x.response != e.response]
            if not others:
                continue
            new_response = others[int(rng.integers(len(others)))]
        messages = None
        if e.messages is not None:
            messages = e.messages[:-1] + ({"role": "assistant", "content": new_response},)
        out[i] = Example(e.id, e.prompt, new_response, messages=messages, meta={**e.meta, "noisy": True})
    return out
