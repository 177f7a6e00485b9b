"""Estimate: the fine-tuned target loss of any subset of sources, from features alone."""

from gradselect.estimate.config import EstimateConfig
from gradselect.estimate.estimator import FeatureArrays, SubsetEstimator

__all__ = ["EstimateConfig", "FeatureArrays", "SubsetEstimator"]
