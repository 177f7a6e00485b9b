"""On-disk feature store: memmapped arrays, an index and a manifest.

Layout of a store folder::

    manifest.json   what the features were computed from (checked on reopen)
    index.json      per row: example id, source name, split ("train", "dev", "source")
    g.npy           projected gradients, (n_rows, proj_dim), float32 or float16
    b.npy           output values, (n_rows,), float64
    hidden.npy      optional mean last-layer hidden states, (n_rows, hidden_size)
    precondition.safetensors
                    optional per-coordinate gradient scales applied before projection
                    (one tensor per differentiated parameter; ``[features] precondition``)
    done.npy        completion mask, one bool per chunk of rows

A store being written lives in ``<name>.part`` and is renamed to ``<name>``
when every chunk is done, so a folder without ``.part`` is always complete.
Writes go chunk by chunk: rows are flushed to the memmaps first, then the
chunk is marked done (atomically), so an interrupted run resumes at the first
chunk not marked done and recomputes at most one chunk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
import numpy as np

from gradselect.errors import ArtifactError, GradselectError
from gradselect.io import read_json_artifact, write_bytes_atomic, write_json_atomic

#: 2: Rademacher blocks from a counter-based stream generated on the device (1: torch's CPU generator).
FORMAT_VERSION = 2
PRECONDITION_FILE = "precondition.safetensors"
#: Manifest keys that describe the run, not what was computed; never compared.
UNCOMPARED_KEYS = ("versions", "created", "shard", "row_start", "row_stop", "complete")


class ManifestMismatch(GradselectError):
    """A store was computed from different inputs than the ones given now."""


def compare_manifests(found: dict, expected: dict, where: Path) -> None:
    """Raise :class:`ManifestMismatch` naming the first differing field."""
    keys = sorted((set(found) | set(expected)) - set(UNCOMPARED_KEYS))
    for key in keys:
        if found.get(key) != expected.get(key):
            a, b = json.dumps(found.get(key))[:120], json.dumps(expected.get(key))[:120]
            raise ManifestMismatch(
                f"{where}: features were computed with a different {key!r} (stored: {a}; now: {b}); "
                "pass --force to recompute them"
            )


class FeatureStore:
    """A feature store folder (see module docstring). Open with :meth:`open` or :meth:`create`.

    Attributes
    ----------
    path : Path
    manifest : dict
    ids, sources, splits : list of str
        Per row (n_rows).
    """

    def __init__(self, path: Path, manifest: dict, index: dict, mode: str):
        self.path = Path(path)
        self.manifest = manifest
        self.ids: list[str] = index["ids"]
        self.sources: list[str] = index["sources"]
        self.splits: list[str] = index["splits"]
        self._mode = mode
        self.g = self._array("g.npy", mode)
        self.b = self._array("b.npy", mode)
        self.hidden = self._array("hidden.npy", mode) if (self.path / "hidden.npy").exists() else None
        self.done = self._array("done.npy", None)
        n = len(self.ids)
        if not (len(self.sources) == len(self.splits) == n and self.g.shape[0] == n and self.b.shape == (n,)):
            raise ArtifactError(f"{self.path}: arrays and index.json disagree on the number of rows; "
                                "recompute the features (gradselect featurize --force, or run --force features)")

    def _array(self, name: str, mode):
        """One .npy file of the store, never unpickled; a corrupt file is one clear error."""
        try:
            return np.load(self.path / name, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ArtifactError(f"{self.path / name} is corrupt ({err}); recompute the features "
                                "(gradselect featurize --force, or run --force features)") from None

    # -- construction -------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, manifest: dict, index: dict, *, dtype: str = "float32", hidden_dim: int | None = None,
               precondition: dict | None = None):
        """A new, empty store at ``path`` (any previous content is removed).

        ``precondition``: the per-coordinate gradient scales the features were computed
        with (name -> Tensor of the parameter's shape), kept so that a parameter-space
        step can be mapped to the features' coordinates (:meth:`preconditioner`).
        """
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        if precondition is not None:
            from safetensors.torch import save_file

            save_file({n: t.contiguous() for n, t in precondition.items()}, str(path / PRECONDITION_FILE))
        n = len(index["ids"])
        assert len(index["sources"]) == len(index["splits"]) == n
        chunk = manifest["chunk_size"]
        np.lib.format.open_memmap(path / "g.npy", mode="w+", dtype=dtype, shape=(n, manifest["projector"]["dim"])).flush()
        np.lib.format.open_memmap(path / "b.npy", mode="w+", dtype="float64", shape=(n,)).flush()
        if hidden_dim:
            np.lib.format.open_memmap(path / "hidden.npy", mode="w+", dtype="float32", shape=(n, hidden_dim)).flush()
        np.save(path / "done.npy", np.zeros(-(-n // chunk), dtype=bool))
        write_json_atomic(path / "index.json", index)
        write_json_atomic(path / "manifest.json", manifest)
        return cls(path, manifest, index, "r+")

    @classmethod
    def open(cls, path: Path, *, expected: dict | None = None, writable: bool = False) -> "FeatureStore":
        """Open an existing store; with ``expected``, refuse one made from other inputs."""
        path = Path(path)
        manifest_file = path / "manifest.json"
        if not manifest_file.exists():
            raise GradselectError(f"{path}: not a feature store (no manifest.json); run gradselect featurize")
        redo = "recompute the features (gradselect featurize --force, or run --force features)"
        manifest = read_json_artifact(manifest_file, redo=redo)
        if not isinstance(manifest, dict):
            raise ArtifactError(f"{manifest_file} is corrupt (not a JSON object); {redo}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise GradselectError(
                f"{path}: feature store format {manifest.get('format_version')} is not {FORMAT_VERSION} (made by "
                f"another gradselect version, whose projection differs); {redo}"
            )
        if expected is not None:
            compare_manifests(manifest, expected, path)
        index = read_json_artifact(path / "index.json", redo=redo)
        if not isinstance(index, dict) or not all(isinstance(index.get(k), list) for k in ("ids", "sources", "splits")):
            raise ArtifactError(f"{path / 'index.json'} is corrupt (needs lists ids, sources, splits); {redo}")
        return cls(path, manifest, index, "r+" if writable else "r")

    def preconditioner(self) -> dict | None:
        """Per-coordinate gradient scales ``D`` the features were computed with, or None.

        A feature row is ``P^T D grad``; a parameter-space step ``delta`` has the
        features' coordinates ``P^T D^-1 delta`` and a projected step ``v`` moves the
        parameters by ``D P v``.
        """
        if not self.manifest.get("precondition"):
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path / PRECONDITION_FILE))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise ArtifactError(f"{self.path / PRECONDITION_FILE} is missing or corrupt ({err}); recompute the "
                                "features (gradselect featurize --force, or run --force features)") from None

    # -- writing ------------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def functional(self) -> dict:
        """The output function the values ``b`` are in: ``{"output", "skip_special_tokens"}`` (the keyword
        arguments of :func:`~gradselect.features.extract.output_values`; absent from older manifests: the
        defaults)."""
        return {"output": self.manifest.get("output_function", "log_odds"),
                "skip_special_tokens": bool(self.manifest.get("skip_special_tokens", False))}

    def chunk_rows(self, chunk: int) -> slice:
        return slice(chunk * self.chunk_size, min(self.n_rows, (chunk + 1) * self.chunk_size))

    def write_chunk(self, chunk: int, g: np.ndarray, b: np.ndarray, hidden: np.ndarray | None = None) -> None:
        """Write one chunk's rows, flush them, then mark the chunk done."""
        assert self._mode == "r+", "store opened read-only"
        rows = self.chunk_rows(chunk)
        if not (np.isfinite(g).all() and np.isfinite(b).all()):
            bad = sorted(
                {self.ids[rows.start + i] for i in np.flatnonzero(~np.isfinite(g).all(1) | ~np.isfinite(b))}
            )
            raise GradselectError(
                f"non-finite features (NaN or inf) for example(s) {', '.join(bad[:10])}"
                f"{' ...' if len(bad) > 10 else ''}; check these examples and the model's dtype"
            )
        self.g[rows] = g
        self.b[rows] = b
        self.g.flush()
        self.b.flush()
        if self.hidden is not None and hidden is not None:
            self.hidden[rows] = hidden
            self.hidden.flush()
        self.done[chunk] = True
        write_bytes_atomic(self.path / "done.npy", _npy_bytes(self.done))

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    # -- reading ------------------------------------------------------------------
    def rows_of(self, *, source: str | None = None, split: str | None = None) -> np.ndarray:
        """Row indices of one source and/or split, in store order."""
        keep = [
            i
            for i, (s, sp) in enumerate(zip(self.sources, self.splits))
            if (source is None or s == source) and (split is None or sp == split)
        ]
        return np.asarray(keep, dtype=np.int64)

    def rows_by_source(self) -> dict[str, np.ndarray]:
        """Row indices of every auxiliary source (split ``source``), in source order.

        One pass over the index: calling :meth:`rows_of` once per source would scan every
        row once per source (n_rows x n_sources, 170M steps at FLAN scale).
        """
        groups: dict[str, list[int]] = {}
        for i, (s, sp) in enumerate(zip(self.sources, self.splits)):
            if sp == "source":
                groups.setdefault(s, []).append(i)
        return {name: np.asarray(rows, dtype=np.int64) for name, rows in groups.items()}

    @property
    def source_names(self) -> list[str]:
        """Auxiliary source names in store order (split ``source``)."""
        seen: dict[str, None] = {}
        for s, sp in zip(self.sources, self.splits):
            if sp == "source":
                seen.setdefault(s)
        return list(seen)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def finalize(part: Path, final: Path) -> Path:
    """Rename a complete ``.part`` store to its final name (replacing an old one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(part, final)
    return final

