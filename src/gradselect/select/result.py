"""The result type every selection method returns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gradselect.errors import ArtifactError
from gradselect.io import read_json_artifact, write_json_atomic

SELECTION_VERSION = 1


@dataclasses.dataclass
class Selection:
    """Chosen sources and the evidence for them.

    Attributes
    ----------
    method : str
        The selector's registered name (``ensemble``, ``forward``, ...).
    chosen : list of str
        Selected source names, in source order.
    scores : dict of str to float
        Per-source score; **lower is better** for every method (an estimated
        loss, or a negated similarity).
    intervals : dict of str to [float, float], optional
        95% bootstrap intervals of the scores.
    estimated_loss : float, optional
        Estimated target dev loss of the chosen subset (methods that estimate).
    params : dict
        The selector's parameters and any method-specific outputs (ridge
        coefficients, the stepwise path, ...).
    """

    method: str
    chosen: list[str]
    scores: dict[str, float]
    intervals: dict[str, list[float]] | None = None
    estimated_loss: float | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def ranking(self) -> list[str]:
        """Sources from best (lowest score) to worst; ties keep source order."""
        return sorted(self.scores, key=lambda n: self.scores[n])

    def to_json(self) -> dict:
        return {"selection_version": SELECTION_VERSION, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path, *, redo: str = "rerun the select stage (--force select)") -> "Selection":
        path = Path(path)
        data = read_json_artifact(path, redo=redo)
        missing = {"method", "chosen", "scores"} - set(data) if isinstance(data, dict) else {"method"}
        if missing:
            raise ArtifactError(f"{path}: not a selection file (missing {sorted(missing)}); {redo}")
        ok = (isinstance(data["chosen"], list) and all(isinstance(n, str) for n in data["chosen"])
              and isinstance(data["scores"], dict)
              and all(isinstance(v, (int, float)) for v in data["scores"].values()))
        if not ok:
            raise ArtifactError(f"{path} is corrupt (chosen must be a list of names, scores a name -> number map); "
                                f"{redo}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})
