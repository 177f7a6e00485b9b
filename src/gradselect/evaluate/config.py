"""Configuration of target evaluation."""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from gradselect.configbase import StrictConfig


class EvalConfig(StrictConfig):
    """How the target is scored: response loss, and exact match by greedy generation."""

    batch_size: int = pydantic.Field(default=16, ge=1)
    """Examples per forward pass."""
    exact_match: bool = True
    """Also generate answers greedily and score them."""
    multiple_choice: bool = True
    """Also score multiple-choice examples (BIG-bench ``target_scores``, BIG-Bench-Hard options, closed
    answer sets) by the log-likelihood of each choice: the ``choice accuracy`` metric."""
    max_new_tokens: int = pydantic.Field(default=32, ge=1)
    """Longest generated answer."""
    answer_extractor: Literal["first_line", "strip", "last_number", "regex"] = "first_line"
    """How the answer is read from the generation: its first non-empty line, the whole
    text stripped, the last number in it, or the ``answer_regex`` match."""
    answer_regex: str | None = None
    """Pattern for ``answer_extractor = "regex"``; group 1 if it has one, else the match."""
    lm_eval_tasks: list[str] = []
    """lm-evaluation-harness tasks to also score every final model on (written to
    ``lm_eval.json``): harness task names, local ones from ``lm_eval_include``, and
    ``gradselect_target`` / ``gradselect_target_mc``, the target's test split as a local
    task. Needs ``pip install 'gradselect[lmeval]'``."""
    lm_eval_include: str | None = None
    """A folder of lm-eval task YAML files (local tasks)."""
    lm_eval_limit: int | None = pydantic.Field(default=None, ge=1)
    """Examples per lm-eval task at most (for smoke tests: figures on a limit are not comparable)."""

    @pydantic.model_validator(mode="after")
    def _regex(self) -> "EvalConfig":
        if self.answer_extractor == "regex":
            if not self.answer_regex:
                raise ValueError("answer_extractor = 'regex' needs 'answer_regex'")
            try:
                re.compile(self.answer_regex)
            except re.error as err:
                raise ValueError(f"answer_regex does not compile: {err}") from None
        return self
