"""Assemble a :class:`~gradselect.data.examples.TaskSet` from a DataConfig."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from gradselect.data.config import DataConfig, SourceSpec
from gradselect.data.examples import Example, Source, TaskSet
from gradselect.data.sources import load_sources
from gradselect.errors import DataError

log = logging.getLogger(__name__)


def load_taskset(config: DataConfig, *, base_dir: Path | None = None) -> TaskSet:
    """Load the target (split into train/dev/test) and every auxiliary source.

    Parameters
    ----------
    config : DataConfig
    base_dir : Path, optional
        Folder that relative paths are resolved against (the config file's).

    Raises
    ------
    DataError
        On any bad file or record, duplicate source names, or an empty split.
    """
    for what in ("target_dev", "target_test"):
        spec = getattr(config, what)
        if spec is not None and spec.model_dump(exclude={"name"}) == config.target.model_dump(exclude={"name"}):
            raise DataError(f"{what} is the same data as target (same spec); give the held-out split its own "
                            "file or drop it to split the target", field=what)
    target = _single(config.target, "target", base_dir)
    dev = _single(config.target_dev, "target_dev", base_dir) if config.target_dev else None
    test = _single(config.target_test, "target_test", base_dir) if config.target_test else None
    train_ex, dev_ex, test_ex = split_examples(
        target.examples,
        dev_fraction=None if dev else config.dev_fraction,
        test_fraction=None if test else config.test_fraction,
        seed=config.split_seed,
    )
    checker = target.checker
    splits = {
        "train": Source(f"{target.name}/train", train_ex, checker),
        "dev": dev or Source(f"{target.name}/dev", dev_ex, checker),
        "test": test or Source(f"{target.name}/test", test_ex, checker),
    }
    for split, src in splits.items():
        if not src.examples:
            raise DataError(f"target {split} split is empty; give the target more examples or change the fractions")
        if src.checker is None:
            src.checker = checker

    sources: list[Source] = []
    names: dict[str, int] = {}
    for i, spec in enumerate(config.sources):
        for src in load_sources(spec, base_dir=base_dir):
            if src.name in names:
                raise DataError(
                    f"duplicate source name {src.name!r} (sources[{names[src.name]}] and sources[{i}]); "
                    "set distinct 'name's",
                    field="name",
                )
            names[src.name] = i
            sources.append(src)
    if config.drop_overlap:
        splits, sources = _drop_overlap(splits, sources)
    _warn_overlap(splits, sources)
    return TaskSet(splits["train"], splits["dev"], splits["test"], sources)


def _drop_overlap(splits: dict[str, Source], sources: list[Source]):
    """Remove repeats of held-out examples: test wins over dev, dev over train, the target over the sources.

    An example is its (prompt, response) pair. Small generated tasks repeat pairs by chance;
    a repeat in a later split would make its metrics optimistic.
    """
    seen: set = set()
    kept: dict[str, Source] = {}
    for name in ("test", "dev", "train"):
        src = splits[name]
        examples = [e for e in src.examples if (e.prompt, e.response) not in seen]
        seen |= {(e.prompt, e.response) for e in src.examples}
        if not examples:
            raise DataError(f"target {name} split is empty once the examples it shares with the held-out splits are "
                            "dropped ([data] drop_overlap); give the target more distinct examples")
        if len(examples) < len(src.examples):
            log.info("drop_overlap: %d of %d target %s example(s) repeat a held-out one; dropped",
                     len(src.examples) - len(examples), len(src.examples), name)
        kept[name] = Source(src.name, examples, src.checker)
    cleaned = []
    for src in sources:
        examples = [e for e in src.examples if (e.prompt, e.response) not in seen]
        if not examples:
            raise DataError(f"source {src.name!r} holds only examples of the target's splits; nothing is left once "
                            "they are dropped ([data] drop_overlap)")
        if len(examples) < len(src.examples):
            log.info("drop_overlap: %d of %d example(s) of source %r repeat the target's; dropped",
                     len(src.examples) - len(examples), len(src.examples), src.name)
        cleaned.append(Source(src.name, examples, src.checker))
    return kept, cleaned


def _single(spec: SourceSpec, what: str, base_dir: Path | None) -> Source:
    loaded = load_sources(spec, base_dir=base_dir)
    if len(loaded) != 1:
        raise DataError(
            f"{what} must be one source, but its spec yields {len(loaded)} "
            f"({', '.join(s.name for s in loaded[:5])}{', ...' if len(loaded) > 5 else ''})"
        )
    return loaded[0]


def split_examples(
    examples: list[Example], *, dev_fraction: float | None, test_fraction: float | None, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Seeded split into (train, dev, test); a fraction of None means "given elsewhere".

    Held-out splits get ``max(1, round(fraction * n))`` examples, drawn by a
    permutation seeded by ``seed``; each split keeps the original order.
    """
    n = len(examples)
    perm = np.random.default_rng([seed, 3]).permutation(n)
    sizes = [0 if f is None else max(1, int(round(f * n))) for f in (dev_fraction, test_fraction)]
    if sum(sizes) >= n:
        raise DataError(
            f"target has {n} examples, too few to hold out {sizes[0]} for dev and {sizes[1]} for test "
            "and still train on some"
        )
    dev_idx = np.sort(perm[: sizes[0]])
    test_idx = np.sort(perm[sizes[0] : sizes[0] + sizes[1]])
    train_idx = np.sort(perm[sizes[0] + sizes[1] :])
    pick = lambda idx: [examples[i] for i in idx]  # noqa: E731
    return pick(train_idx), pick(dev_idx), pick(test_idx)


def _warn_overlap(splits: dict[str, Source], sources: list[Source]) -> None:
    """Leakage between the target's splits and into the sources: warn, naming what it makes optimistic."""
    pairs = {name: {(e.prompt, e.response) for e in src.examples} for name, src in splits.items()}
    for a, b in (("train", "test"), ("train", "dev"), ("dev", "test")):
        shared = len(pairs[a] & pairs[b])
        if shared:
            what = "test metrics" if b == "test" else "dev estimates"
            warnings.warn(
                f"{shared} identical example(s) are in both the target's {a} and {b} splits: the {what} are "
                "optimistic; deduplicate the target (or its explicit target_dev / target_test files)",
                stacklevel=3,
            )
    for src in sources:
        leaked = sum((e.prompt, e.response) in pairs["test"] for e in src.examples)
        if leaked:
            # A warning, not an error: tiny closed-vocabulary tasks (lookups, yes/no) repeat pairs by design.
            warnings.warn(
                f"source {src.name!r} contains {leaked} of the target's test example(s): fine-tunes on it train on "
                "test examples, so its test metrics measure memory, not transfer; remove them from the source",
                stacklevel=3,
            )
        shared = sum((e.prompt, e.response) in pairs["train"] | pairs["dev"] for e in src.examples)
        if shared:
            warnings.warn(
                f"source {src.name!r} contains {shared} example(s) that also appear in the target's train or dev "
                "split; estimates of its benefit will be optimistic",
                stacklevel=3,
            )
