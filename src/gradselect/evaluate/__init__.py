"""Evaluate: target loss and exact-match accuracy."""

from gradselect.evaluate.config import EvalConfig
from gradselect.evaluate.metrics import ExactMatchResult, LossResult, exact_match, make_extractor, target_loss

__all__ = ["EvalConfig", "ExactMatchResult", "LossResult", "exact_match", "make_extractor", "target_loss"]
