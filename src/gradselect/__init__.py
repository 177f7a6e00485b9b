"""gradselect: choose auxiliary data sources for fine-tuning a language model.

The pipeline reads as the package layout: ``data -> model -> train -> features
-> estimate -> select -> evaluate -> report``.
"""

from gradselect.errors import ArtifactError, ConfigError, DataError, GradselectError, ModelError

__version__ = "0.1.0"

__all__ = ["ArtifactError", "ConfigError", "DataError", "GradselectError", "ModelError", "__version__"]
