"""gradselect: choose auxiliary data sources for fine-tuning a language model.

The pipeline reads as the package layout: ``data -> model -> train -> features
-> estimate -> select -> evaluate -> validate -> report``, each package importing
only those before it (``validate`` scores its real fine-tunes with ``evaluate``'s
metrics, so it comes after it); ``config`` composes the stage configs, and
``pipeline`` (``gradselect run``), ``demo`` and ``cli`` sit on top. Stages run in
the order meta_init, features, validate, select, final fine-tunes, evaluate, report.
"""

from gradselect.errors import ArtifactError, ConfigError, DataError, GradselectError, ModelError

__version__ = "0.1.0"

__all__ = ["ArtifactError", "ConfigError", "DataError", "GradselectError", "ModelError", "__version__"]
