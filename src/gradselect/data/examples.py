"""The data model: examples, sources, and a task set (target + auxiliary sources)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

#: Scores a generated answer against an example: 1.0 for a correct answer.
AnswerChecker = Callable[[str, "Example"], float]


@dataclass(frozen=True)
class Example:
    """One training or evaluation example.

    Attributes
    ----------
    id : str
        Unique within its source.
    prompt : str
        The model input. For chat data, a plain rendering of the turns before
        the last (the chat template is applied at tokenization).
    response : str
        The gold output whose tokens are trained on and scored.
    messages : tuple of dict, optional
        Chat turns (``{"role", "content"}``), the last one the assistant's
        response; rendered with the tokenizer's chat template.
    meta : mapping
        Free-form, in-memory only (e.g. the reasoning-gym entry its checker
        needs, or ``noisy=True`` for a planted corrupted label).
    choices : tuple of str, optional
        Candidate responses of a multiple-choice example (the gold ``response`` is
        one of them): scored by log-likelihood (the ``mc_accuracy`` metric).
    """

    id: str
    prompt: str
    response: str
    messages: tuple[Mapping[str, str], ...] | None = None
    choices: tuple[str, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Source:
    """A named group of examples: one auxiliary data source, or a target split.

    Attributes
    ----------
    name : str
    examples : list of Example
    checker : callable, optional
        ``checker(answer, example) -> float`` scoring a generated answer
        (1.0 = correct); reasoning-gym sources carry their own.
    """

    name: str
    examples: list[Example]
    checker: AnswerChecker | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def fingerprint(self) -> str:
        """SHA-256 over the name and examples, hashed as :meth:`TaskSet.fingerprint` hashes each part."""
        h = hashlib.sha256()
        self._hash_into(h)
        return h.hexdigest()

    def _hash_into(self, h) -> None:
        h.update(self.name.encode())
        for e in self.examples:
            payload = [e.id, e.prompt, e.response, None if e.messages is None else list(e.messages)]
            if e.choices is not None:  # (appended only when present: older fingerprints stay valid)
                payload.append(list(e.choices))
            h.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())


def target_repeats(n_target: int, n_sources: int, share: float | None) -> int:
    """Copies of the target's train split that make it about ``share`` of a mixture with
    ``n_sources`` source examples: ``round(share n_sources / ((1 - share) n_target))``, at least one.

    A fixed step budget over a large mixture visits a small target's examples a few times at most;
    a mixing ratio (how practitioners keep the target in view) trains on the sources *beside* the
    target rather than instead of it. Whole copies keep every example's weight equal within a copy,
    so the estimator models the same rows by counting the target's statistics this many times.
    """
    if share is None or not n_target or not n_sources:
        return 1
    return max(1, round(share * n_sources / ((1.0 - share) * n_target)))


@dataclass
class TaskSet:
    """A target task with train/dev/test splits and the auxiliary sources.

    Attributes
    ----------
    target_train, target_dev, target_test : Source
        The target task's splits. ``target_test`` is only read by the final
        evaluation, never by estimation or selection.
    sources : list of Source
        Auxiliary sources, in a fixed order (n_sources).
    """

    target_train: Source
    target_dev: Source
    target_test: Source
    sources: list[Source]

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        from gradselect.errors import DataError

        raise DataError(f"unknown source {name!r}; sources are {self.source_names}")

    def training_examples(
        self, source_names: Sequence[str], *, include_target_train: bool = True, target_share: float | None = None
    ) -> list[Example]:
        """Examples of the named sources (+ target train), in source order.

        ``target_share``: with sources chosen, the target's train split is repeated
        :func:`target_repeats` times (whole copies), so that it makes up about this share of the
        examples; None keeps natural proportions.
        """
        chosen = [self.source(n) for n in source_names]
        examples = [e for s in chosen for e in s.examples]
        if include_target_train:
            copies = target_repeats(len(self.target_train), len(examples), target_share)
            examples = list(self.target_train.examples) * copies + examples
        return examples

    def fingerprint(self) -> str:
        """SHA-256 over every split and source (names, ids, prompts, responses)."""
        h = hashlib.sha256()
        for part in [self.target_train, self.target_dev, self.target_test, *self.sources]:
            part._hash_into(h)
        return h.hexdigest()
