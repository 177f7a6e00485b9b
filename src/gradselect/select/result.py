"""The result type every selection method returns."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gradselect.errors import GradselectError
from gradselect.io import write_json_atomic


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
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Selection":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GradselectError(f"{path}: cannot read selection: {err}") from None
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = {"method", "chosen", "scores"} - set(data)
        if not isinstance(data, dict) or missing:
            raise GradselectError(f"{path}: not a selection file (missing {sorted(missing)})")
        return cls(**{k: v for k, v in data.items() if k in fields})
