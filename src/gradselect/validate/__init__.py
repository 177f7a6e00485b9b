"""Validate: estimates checked against real fine-tunes.

:mod:`~gradselect.validate.truth` (fine-tune a subset, measure its dev loss, cached by
content), :mod:`~gradselect.validate.trust` (the trust check: real fine-tunes from
theta* against the estimates), :mod:`~gradselect.validate.calibration` (the step's
calibration, the residual surrogate and the ``calibration.json`` artifact), and
:mod:`~gradselect.validate.conventional` (the baseline gradselect replaces: forward
selection with one real fine-tune per candidate).
"""

from gradselect.validate.calibration import (apply_calibration, apply_surrogate, calibrate, features_identity,
                                            write_calibration)
from gradselect.validate.conventional import conventional_forward
from gradselect.validate.trust import (compare, correct_forward_scorer, fit_surrogate, trust_forward_scorer,
                                      validate, validation_subsets)
from gradselect.validate.truth import measure_truth, truth_key

__all__ = [
    "apply_calibration",
    "apply_surrogate",
    "calibrate",
    "compare",
    "conventional_forward",
    "correct_forward_scorer",
    "features_identity",
    "fit_surrogate",
    "measure_truth",
    "truth_key",
    "trust_forward_scorer",
    "validate",
    "validation_subsets",
    "write_calibration",
]
