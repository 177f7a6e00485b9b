"""Error types raised for bad user input.

Every error a user can cause derives from :class:`GradselectError`; the CLI
prints its message and exits non-zero. Internal invariants use ``assert``.
"""

from __future__ import annotations


class GradselectError(Exception):
    """Base class of every error caused by user input (files, configs, arguments)."""


class DataError(GradselectError):
    """A data file or record is missing, malformed or inconsistent.

    Parameters
    ----------
    message : str
        What is wrong and how to fix it.
    path : str, optional
        The file concerned.
    location : str, optional
        Where in the file: ``"line 12"``, ``"row 3"``.
    field : str, optional
        The field (column) concerned.
    """

    def __init__(self, message: str, *, path=None, location=None, field=None):
        self.path = None if path is None else str(path)
        self.location = location
        self.field = field
        where = ", ".join(
            part
            for part in (
                self.path,
                location,
                None if field is None else f"field {field!r}",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(GradselectError):
    """A configuration value or key is invalid."""


class ModelError(GradselectError):
    """A model or tokenizer cannot be loaded or adapted as asked."""


class ArtifactError(GradselectError):
    """A run artifact (feature store, selection, metrics, ...) is missing, corrupt or stale."""
