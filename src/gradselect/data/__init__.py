"""Data: sources, the target's splits, loaders, and tokenization.

Public entry points: :func:`load_taskset` (a whole run's data from a
:class:`DataConfig`), :func:`load_sources` (one spec), and
:func:`tokenize_examples` (prompt + response with a response mask).
"""

from gradselect.data.config import DataConfig, SourceSpec
from gradselect.data.examples import AnswerChecker, Example, Source, TaskSet
from gradselect.data.sources import load_sources, plant_label_noise
from gradselect.data.taskset import load_taskset, split_examples
from gradselect.data.tokenize import TokenizeConfig, TokenizedBatch, tokenize_examples

__all__ = [
    "AnswerChecker",
    "DataConfig",
    "Example",
    "Source",
    "SourceSpec",
    "TaskSet",
    "TokenizeConfig",
    "TokenizedBatch",
    "load_sources",
    "load_taskset",
    "plant_label_noise",
    "split_examples",
    "tokenize_examples",
]
