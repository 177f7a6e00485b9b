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
from gradselect.select.stage import (
    clustered_taskset,
    compare_subsets,
    examples_taskset,
    fitted_estimator,
    forward_scored,
    select_sources,
    write_clusters,
)

__all__ = [
    "SELECTION_VERSION",
    "SearchResult",
    "clustered_taskset",
    "compare_subsets",
    "examples_taskset",
    "fitted_estimator",
    "forward_scored",
    "greedy_forward",
    "select_sources",
    "write_clusters",
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
