"""Select: choose sources from estimates (ensemble, stepwise) or baselines."""

from gradselect.select.config import SelectConfig
from gradselect.select.pseudo import pseudo_sources
from gradselect.select.result import SELECTION_VERSION, Selection
from gradselect.select.selectors import (
    SELECTORS,
    AllSources,
    BackwardSelector,
    EnsembleSelector,
    ForwardSelector,
    GradientSimilarity,
    RandomSelector,
    RepresentationSimilarity,
    Selector,
    TargetOnly,
    apply_rule,
)
from gradselect.select.search import SearchResult, greedy_forward
from gradselect.select.stage import compare_subsets, fitted_estimator, select_sources

__all__ = [
    "SELECTION_VERSION",
    "SearchResult",
    "compare_subsets",
    "fitted_estimator",
    "greedy_forward",
    "select_sources",
    "SELECTORS",
    "AllSources",
    "BackwardSelector",
    "EnsembleSelector",
    "ForwardSelector",
    "GradientSimilarity",
    "RandomSelector",
    "RepresentationSimilarity",
    "SelectConfig",
    "Selection",
    "Selector",
    "TargetOnly",
    "apply_rule",
    "pseudo_sources",
]
