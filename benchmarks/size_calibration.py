"""Does a trust check do better fitting the estimate together with the subset's size?

Data only (seconds): reads a truth bank and the forward-pass estimates already kept beside it,
draws simulated trust checks of k subsets (the target alone and all sources always among them,
as the product draws them: ``truthbank._trust_check_draws``), fits on the checked subsets' truths an affine map of

- ``est``: the forward estimate alone (slope kept >= 0: an inverted estimate is not an estimate),
- ``size``: log(1 + number of sources) alone (the label-free dilution count),
- ``est+size``: both (the estimate's slope kept >= 0),

and scores each map's order on the subsets the check did not see (Spearman, mean over draws).

    python benchmarks/size_calibration.py --bank benchmarks/truth/arith12.base.json \
        --scores benchmarks/truth/arith12.base.at-base.steps.scores.json --key "sign|0.2"
    python benchmarks/size_calibration.py --bank benchmarks/truth/planted12.json \
        --forward benchmarks/truth/planted12.forward.json --key "sign|1.87930468"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from truthbank import _trust_check_draws


def load(bank_path, scores_path=None, forward_path=None, key="sign|0.2"):
    """(subsets, seed-mean truths, estimates, number of sources) on the subsets that have an estimate."""
    bank = json.loads(Path(bank_path).read_text())
    if scores_path:
        scores = json.loads(Path(scores_path).read_text())
        idx = scores["judged"]
        est = np.array(scores["forward_estimates"][key])
    else:
        passes = json.loads(Path(forward_path).read_text())["passes"]
        idx = list(range(len(bank["subsets"])))
        est = np.array([passes[f"{key}|" + ";".join(sorted(bank["subsets"][i]["sources"]))] for i in idx])
    subsets = [bank["subsets"][i]["sources"] for i in idx]
    truth = np.array([np.mean(bank["subsets"][i]["losses"]) for i in idx])
    return subsets, truth, est, len(bank["sources"])


def fit_predict(X, y, X_new):
    """Least squares with an intercept; column 0 (the estimate, when present) kept at slope >= 0."""
    A = np.c_[np.ones(len(X)), X]
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    if coef[1] < 0:  # drop the estimate, refit on the rest (or the mean)
        if X.shape[1] == 1:
            coef = np.array([y.mean(), 0.0])
        else:
            rest, *_ = np.linalg.lstsq(np.c_[np.ones(len(X)), X[:, 1:]], y, rcond=None)
            coef = np.r_[rest[0], 0.0, rest[1:]]
    return np.c_[np.ones(len(X_new)), X_new] @ coef


def simulate(subsets, truth, est, n_sources, ks=(8, 12), draws=200, seed=0) -> dict:
    size = np.log1p([len(s) for s in subsets])
    feats = {"est": est[:, None], "size": size[:, None], "est+size": np.c_[est, size]}
    out = {"all_subsets_spearman": {"est": float(spearmanr(est, truth)[0]),
                                    "size": float(spearmanr(size, truth)[0])}}
    for k, checks in _trust_check_draws(subsets, n_sources, ks, draws, seed):
        rhos = {m: [] for m in feats}
        for check, unseen in checks:
            for m, X in feats.items():
                pred = fit_predict(X[check], truth[check], X[unseen])
                # a constant prediction orders nothing: count it as 0, not as a missing draw
                rhos[m].append(0.0 if np.ptp(pred) == 0 else spearmanr(pred, truth[unseen])[0])
        out[f"k={k}"] = {m: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for m, v in rhos.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scores", help="an at-base scores file with forward_estimates and judged")
    g.add_argument("--forward", help="a bank's forward.json cache of theta* passes")
    p.add_argument("--key", default="sign|0.2", help="which kept forward estimate")
    p.add_argument("--draws", type=int, default=200)
    args = p.parse_args(argv)
    try:
        subsets, truth, est, n_sources = load(args.bank, args.scores, args.forward, args.key)
    except (OSError, KeyError, ValueError) as e:
        print(f"{args.scores or args.forward}: cannot read estimate {args.key!r}: {e}", file=sys.stderr)
        return 2
    res = simulate(subsets, truth, est, n_sources, draws=args.draws)
    print(f"{args.bank} ({len(truth)} subsets), estimate {args.key}: all subsets Spearman "
          f"est {res['all_subsets_spearman']['est']:+.2f}, size {res['all_subsets_spearman']['size']:+.2f}")
    for k, v in res.items():
        if k.startswith("k="):
            print(f"  trust check {k}, unseen subsets, mean Spearman over {args.draws} draws: "
                  + "  ".join(f"{m} {x['mean']:+.2f} (sd {x['sd']:.2f})" for m, x in v.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
