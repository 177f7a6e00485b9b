"""Evaluate: metrics of a model on a target split (token cross-entropy, exact match), and metrics.json."""

from gradselect.evaluate.config import EvalConfig
from gradselect.evaluate.metrics import (
    METRICS,
    ExactMatchResult,
    LossResult,
    Metric,
    exact_match,
    make_extractor,
    score_split,
    target_loss,
)
from gradselect.evaluate.results import MetricRow, MetricsTable, evaluate_models

__all__ = [
    "METRICS",
    "EvalConfig",
    "ExactMatchResult",
    "LossResult",
    "Metric",
    "MetricRow",
    "MetricsTable",
    "evaluate_models",
    "exact_match",
    "make_extractor",
    "score_split",
    "target_loss",
]
