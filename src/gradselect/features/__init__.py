"""Features: per-example output values and projected gradients at the meta-initialization.

One module per role: :mod:`~gradselect.features.output` (output functions),
:mod:`~gradselect.features.gradients` (per-example gradient computers),
:mod:`~gradselect.features.projector` (random projections),
:mod:`~gradselect.features.store` (the on-disk store) and
:mod:`~gradselect.features.extract` (the stage entry point, :func:`featurize`).
"""

from gradselect.features.config import FeatureConfig
from gradselect.features.extract import featurize, merge_shards, output_values, store_rows
from gradselect.features.gradients import (
    GRADIENT_COMPUTERS,
    FuncGradientComputer,
    GradientComputer,
    HookGradientComputer,
    LoopGradientComputer,
    make_gradient_computer,
    select_parameters,
)
from gradselect.features.output import MeanLogLikelihood, MeanLogOdds, OutputFunction, SoftminLogOdds, get_output_function
from gradselect.features.projector import (
    GaussianProjector,
    IdentityProjector,
    KroneckerProjector,
    Projector,
    RademacherProjector,
    make_projector,
)
from gradselect.features.store import FeatureStore, ManifestMismatch

__all__ = [
    "GRADIENT_COMPUTERS",
    "FeatureConfig",
    "FeatureStore",
    "FuncGradientComputer",
    "GaussianProjector",
    "GradientComputer",
    "HookGradientComputer",
    "IdentityProjector",
    "LoopGradientComputer",
    "ManifestMismatch",
    "MeanLogLikelihood",
    "SoftminLogOdds",
    "MeanLogOdds",
    "OutputFunction",
    "Projector",
    "KroneckerProjector",
    "RademacherProjector",
    "featurize",
    "get_output_function",
    "make_gradient_computer",
    "make_projector",
    "merge_shards",
    "output_values",
    "select_parameters",
    "store_rows",
]
