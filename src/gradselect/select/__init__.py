"""Select: choose sources from estimates (ensemble, stepwise) or baselines."""

from gradselect.select.config import SelectConfig
from gradselect.select.pseudo import pseudo_sources
from gradselect.select.result import Selection
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

__all__ = [
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
