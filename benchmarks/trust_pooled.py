"""Does the trust check's own evidence say whether mixtures help? Every checked mixture against the target alone.

The product decides from its estimates, checked by the trust check's margin, and reports the best
measured subset (``measured_choice``, Bonferroni over the checked mixtures). This asks a cruder
question of the same real fine-tunes, from committed results only (no model, seconds): how many of the
trust check's mixtures beat the target alone on the dev split (functional and token cross-entropy, seed
means), and their mean gain; beside it, on the test split, the target alone's loss minus that of the best
final model trained on a mixture (all sources, KMM, grad-sim, or the selection when it holds sources), and
whether the selection held any source.

    python benchmarks/trust_pooled.py                 # every benchmarks/results/*.validation.json
    python benchmarks/trust_pooled.py --results DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
MIXTURE_ROWS = ("all", "kmm", "grad-sim", "selection")


def dev_gains(validation_file: Path, metric: str) -> np.ndarray | None:
    """Per checked mixture: the target alone's dev loss minus the mixture's (seed means) in ``metric``
    (``functional`` or ``token_ce``, read as the product reads them: ``trust._validated``), or None when the
    file lacks that metric or a target-alone subset."""
    from gradselect.errors import GradselectError
    from gradselect.validate.trust import _validated

    try:
        subsets, losses = _validated(validation_file, metric)
    except GradselectError:
        return None
    means = [float(np.mean(x)) for x in losses]
    alone = [m for s, m in zip(subsets, means) if not s]
    mixed = [m for s, m in zip(subsets, means) if s]
    if not alone or not mixed:
        return None
    return alone[0] - np.array(mixed)


def test_gain(metrics: dict) -> dict | None:
    """The target alone's test loss minus the best mixture-trained final model's, or None without both."""
    rows = metrics.get("rows", {})
    alone = rows.get("target-only")
    if alone is None:  # a selection of no source is the target alone
        sel = rows.get("selection")
        alone = sel if sel is not None and not sel.get("sources") else None
    mixed = {k: float(rows[k]["test_loss"]) for k in MIXTURE_ROWS if k in rows and rows[k].get("sources")}
    if alone is None or not mixed:
        return None
    best = min(mixed, key=mixed.get)
    return {"best": best, "gain": float(alone["test_loss"]) - mixed[best],
            "selection_sources": len(rows["selection"].get("sources") or []) if "selection" in rows else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    files = sorted(args.results.glob("*.validation.json"))
    if not files:
        print(f"{args.results}: no *.validation.json", file=sys.stderr)
        return 2
    print("run | dev functional: mixtures better, mean gain | dev token CE: mixtures better, mean gain | "
          "test: target alone minus best mixture model (which) | selection's sources")
    for f in files:
        name = f.name[: -len(".validation.json")]
        cells = []
        for metric in ("functional", "token_ce"):
            g = dev_gains(f, metric)
            cells.append("n/a" if g is None else f"{int((g > 0).sum())}/{len(g)}, {g.mean():+.3f}")
        metrics_file = f.with_name(name + ".metrics.json")
        t = test_gain(json.loads(metrics_file.read_text())) if metrics_file.exists() else None
        cells.append("no final models" if t is None else f"{t['gain']:+.3f} ({t['best']})")
        cells.append("" if t is None or t["selection_sources"] is None else str(t["selection_sources"]))
        print(f"{name} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
