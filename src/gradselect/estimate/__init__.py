"""Estimate: the fine-tuned target loss of any subset of sources, from features alone."""

from gradselect.estimate.config import EstimateConfig
from gradselect.estimate.estimator import FeatureArrays, SubsetEstimator
from gradselect.estimate.modes import STEP_MODELS, StepModel
from gradselect.estimate.table import write_estimates

__all__ = ["STEP_MODELS", "EstimateConfig", "FeatureArrays", "StepModel", "SubsetEstimator", "write_estimates"]
