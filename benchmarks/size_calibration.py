"""Does a trust check do better fitting the estimate together with the subset's size?

Data only (seconds): reads a truth bank and the forward-pass estimates already kept beside it,
draws simulated trust checks of k subsets (the target alone and all sources always among them,
as the product draws them: ``truthbank._trust_check_draws``), fits on the checked subsets' truths an affine map of

- ``est``: the forward estimate alone (slope kept >= 0: an inverted estimate is not an estimate),
- ``size``: log(1 + number of sources) alone (the label-free dilution count),
- ``est+size``: both (the estimate's slope kept >= 0),

and, as the product corrects its estimates, the residual surrogate
(:class:`gradselect.estimate.surrogate.ResidualSurrogate`, RBF kernel ridge on subset indicators) fitted on

- ``raw``: the estimate itself, uncorrected (what selection orders with the surrogate off),
- ``raw+krr``: the estimate plus the surrogate on its residuals (``[run] residual_surrogate = "on"``),
- ``est+size+krr``: the ``est+size`` map plus the surrogate on its residuals,
- ``raw+additive``: the estimate plus the surrogate with the additive kernel (``[run] surrogate_kernel``'s
  default since 2026-12-07: one shrunk correction per source; ``--additive-alphas`` sweeps its ridge),

then the trust check's automatic choice (``auto``: the candidate whose leave-one-out predictions on the
checked subsets order them best by pairwise accuracy, ties to the earlier one) among ``raw, raw+krr``
(the product's ``residual_surrogate = "auto"`` with the RBF kernel), among ``raw, raw+additive`` (with the
additive kernel) and among ``raw, raw+krr, est+size+krr`` (the size map as a third candidate), and scores
each on the subsets the check did not see (Spearman, mean over draws). ``--product-lengths`` also
simulates the product's whole forward trust check (length choice, then the surrogate) with both kernels.

    python benchmarks/size_calibration.py --bank benchmarks/truth/arith12.base.json \
        --scores benchmarks/truth/arith12.base.at-base.steps.scores.json --key "sign|0.2"
    python benchmarks/size_calibration.py --bank benchmarks/truth/planted12.json \
        --forward benchmarks/truth/planted12.forward.json --key "sign|1.87930468"
    python benchmarks/size_calibration.py --bank benchmarks/truth/bbh12.base.json \
        --scores benchmarks/truth/bbh12.base.at-base.scores.json --key "sign|0.2"
    python benchmarks/size_calibration.py --bank benchmarks/truth/bbh12.base.json \
        --scores benchmarks/truth/bbh12.base.at-base.scores.json --key "linear, default radius"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from truthbank import _loo_additive, _trust_check_draws

from gradselect.estimate.surrogate import ResidualSurrogate


def load(bank_path, scores_path=None, forward_path=None, key="sign|0.2", truth_metric="functional"):
    """(subsets, seed-mean truths, estimates, number of sources) on the subsets that have an estimate;
    ``truth_metric``: the truth in the estimator's functional (``losses``) or in token cross-entropy."""
    bank = json.loads(Path(bank_path).read_text())
    if scores_path:
        scores = json.loads(Path(scores_path).read_text())
        kept = scores.get("forward_estimates", {}) | scores.get("estimates", {}) | {
            k: v["estimates"] for k, v in scores.get("variants", {}).items() if isinstance(v, dict) and "estimates" in v}
        est = np.array(kept[key])
        idx = scores.get("judged", list(range(len(est))))
    else:
        passes = json.loads(Path(forward_path).read_text())["passes"]
        idx = list(range(len(bank["subsets"])))
        est = np.array([passes[f"{key}|" + ";".join(sorted(bank["subsets"][i]["sources"]))] for i in idx])
    subsets = [bank["subsets"][i]["sources"] for i in idx]
    field = {"functional": "losses", "token_ce": "token_ce"}[truth_metric]
    truth = np.array([np.mean(bank["subsets"][i][field]) for i in idx])
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


def corrected(est, size, masks, truth, check, new) -> dict:
    """Predictions for the subsets ``new`` of each surrogate candidate, fitted on the subsets ``check``."""
    X = np.c_[est, size]
    level = fit_predict(X[check], truth[check], X[check])
    raw_fit = ResidualSurrogate("rbf").fit(masks[check], truth[check] - est[check])
    size_fit = ResidualSurrogate("rbf").fit(masks[check], truth[check] - level)
    additive_fit = ResidualSurrogate("additive").fit(masks[check], truth[check] - est[check])
    return {"raw": est[new], "raw+krr": est[new] + raw_fit.predict(masks[new]),
            "est+size+krr": fit_predict(X[check], truth[check], X[new]) + size_fit.predict(masks[new]),
            "raw+additive": est[new] + additive_fit.predict(masks[new])}


def held_out(est, size, masks, truth, check) -> dict:
    """Every candidate's leave-one-out predictions on the checked subsets (subset i by a fit without it)."""
    check = np.asarray(check)
    rows = [corrected(est, size, masks, truth, np.delete(check, i), check[i : i + 1]) for i in range(len(check))]
    return {m: np.array([r[m][0] for r in rows]) for m in rows[0]}


def auto_choice(loo: dict, truth_checked, pool) -> str:
    """The candidate of ``pool`` whose leave-one-out predictions (:func:`held_out`) order the checked subsets
    best."""
    from gradselect.validate.fidelity import pairwise_accuracy

    marks = {m: pairwise_accuracy(loo[m], truth_checked) for m in pool}
    return max(pool, key=lambda m: (marks[m], -pool.index(m)))


def subset_masks(subsets) -> np.ndarray:
    """Subsets as a bool matrix (n_subsets, n_sources), sources in sorted order."""
    names = sorted({n for s in subsets for n in s})
    return np.array([[n in s for n in names] for s in subsets], dtype=bool)


def unseen_spearman(pred, truth) -> float:
    """Spearman of predictions on a check's unseen subsets; a constant prediction orders nothing: 0, not a
    missing draw."""
    return 0.0 if np.ptp(pred) == 0 else float(spearmanr(pred, truth)[0])


AUTO_POOLS = {"auto(raw, raw+krr)": ("raw", "raw+krr"), "auto(raw, raw+additive)": ("raw", "raw+additive"),
              "auto(raw, raw+krr, est+size+krr)": ("raw", "raw+krr", "est+size+krr")}


def source_effects(masks, est, truth) -> dict:
    """Per-source effects of an additive model (intercept + one effect per source, least squares over every
    subset) fitted to the estimates and to the truths: how well the estimate's effects rank the truth's
    (Spearman over sources), and how many sources truly raise the target's loss (effect > 0)."""
    x = np.c_[np.ones(len(masks)), masks.astype(float)]
    fit_est, fit_true = (np.linalg.lstsq(x, y, rcond=None)[0][1:] for y in (est, truth))
    return {"spearman_over_sources": float(spearmanr(fit_est, fit_true)[0]),
            "true_effects_positive": int((fit_true > 0).sum()), "n_sources": int(masks.shape[1])}


def simulate(subsets, truth, est, n_sources, ks=(8, 12), draws=200, seed=0, additive_alphas=()) -> dict:
    from gradselect.validate.trust import surrogate_decision

    size = np.log1p([len(s) for s in subsets])
    masks = subset_masks(subsets)
    feats = {"est": est[:, None], "size": size[:, None], "est+size": np.c_[est, size]}
    # "additive": each subset's estimate predicted from the other subsets' estimates by an additive model over
    # sources (label-free; what averaging a scorer's per-source effects over subsets gives, truthbank's LOO).
    additive = _loo_additive(sorted({n for s in subsets for n in s}), subsets, est)
    out = {"all_subsets_spearman": {"est": float(spearmanr(est, truth)[0]),
                                    "size": float(spearmanr(size, truth)[0]),
                                    "additive": float(spearmanr(additive, truth)[0])},
           "source_effects": source_effects(masks, est, truth)}

    def rho(pred, unseen):
        return unseen_spearman(pred, truth[unseen])

    for k, checks in _trust_check_draws(subsets, n_sources, ks, draws, seed):
        sweep = {f"raw+additive, alpha {a:g}": a for a in additive_alphas}
        smoothed = ("est made additive", "est made additive + additive surrogate auto",
                    "raw + additive surrogate auto (surrogate_decision)")
        rhos = {m: [] for m in [*feats, "raw", "raw+krr", "est+size+krr", "raw+additive", *AUTO_POOLS, *sweep,
                                *smoothed]}
        picks = {a: [] for a in AUTO_POOLS}
        for check, unseen in checks:
            for m, X in feats.items():
                rhos[m].append(rho(fit_predict(X[check], truth[check], X[unseen]), unseen))
            preds = corrected(est, size, masks, truth, np.asarray(check), np.asarray(unseen))
            for m, pred in preds.items():
                rhos[m].append(rho(pred, unseen))
            for m, alpha in sweep.items():  # the additive kernel's ridge strength (the product fixes it at 3)
                fit = ResidualSurrogate("additive", alpha=alpha).fit(masks[check], truth[check] - est[check])
                rhos[m].append(rho(est[unseen] + fit.predict(masks[unseen]), unseen))
            loo = held_out(est, size, masks, truth, check)  # once for every pool
            for a, pool in AUTO_POOLS.items():
                picks[a].append(auto_choice(loo, truth[np.asarray(check)], pool))
                rhos[a].append(rho(preds[picks[a][-1]], unseen))
            # The estimate made additive over sources (each subset from the other subsets' estimates; label-free),
            # then the product's own surrogate decision on it, beside the same decision on the raw estimate.
            chk = [subsets[i] for i in check]
            rhos[smoothed[0]].append(rho(additive[unseen], unseen))
            for name, e in ((smoothed[1], additive), (smoothed[2], est)):
                d = surrogate_decision(masks[check], e[check], truth[check], chk, e[check], mode="auto")
                rhos[name].append(rho(e[unseen] + (d["surrogate"].predict(masks[unseen]) if d["apply"] else 0), unseen))
        out[f"k={k}"] = {m: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for m, v in rhos.items()}
        out[f"k={k}"]["auto_picks"] = {a: {m: v.count(m) for m in AUTO_POOLS[a]} for a, v in picks.items()}
    return out


def simulate_forward_product(subsets, truth, by_length: dict, configured: str, n_sources, ks=(8, 12), draws=200,
                             seed=0, kernels=("rbf", "additive")) -> dict:
    """The product's forward-scorer trust check, simulated: on each check, choose the step length among
    ``by_length`` (estimates per length key) by pairwise order, keeping ``configured`` unless another is ahead
    by more than one standard error (``trust_forward_scorer``'s rule), then decide the residual surrogate
    on the kept length's scores (``correct_forward_scorer``; ``auto`` and ``on``). Unseen-subset Spearman
    (mean over draws) of: the configured length, the chosen length (the product before the surrogate),
    chosen + ``auto`` (the product's default), chosen + ``on``, each with the surrogate's ``kernels``."""
    from gradselect.validate.fidelity import one_se_choice
    from gradselect.validate.trust import surrogate_decision

    masks = subset_masks(subsets)
    keys = list(by_length)
    stack = np.array([by_length[k] for k in keys])
    default = keys.index(configured)
    out = {}
    for k, checks in _trust_check_draws(subsets, n_sources, ks, draws, seed):
        rows = {"configured length": [], "chosen length": []}
        applied = {kernel: 0 for kernel in kernels}
        for check, unseen in checks:
            check, unseen = np.asarray(check), np.asarray(unseen)
            c = one_se_choice(stack[:, check], truth[check], default=default)
            est = stack[c]
            chk = [subsets[i] for i in check]
            preds = {"configured length": stack[default, unseen], "chosen length": est[unseen]}
            for kernel in kernels:
                auto = surrogate_decision(masks[check], est[check], truth[check], chk, est[check], mode="auto",
                                          kernel=kernel)
                correction = auto["surrogate"].predict(masks[unseen])
                applied[kernel] += auto["apply"]
                preds[f"chosen length + {kernel} surrogate auto"] = est[unseen] + (correction if auto["apply"] else 0)
                preds[f"chosen length + {kernel} surrogate on"] = est[unseen] + correction
            for key, pred in preds.items():
                rows.setdefault(key, []).append(unseen_spearman(pred, truth[unseen]))
        out[f"k={k}"] = {key: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for key, v in rows.items()}
        out[f"k={k}"]["surrogate_applied"] = applied
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scores", help="a scores file with forward_estimates (and judged), estimates, or variants "
                   "holding estimates (truthbank.py score's)")
    g.add_argument("--forward", help="a bank's forward.json cache of theta* passes")
    p.add_argument("--key", default="sign|0.2", help="which kept forward estimate")
    p.add_argument("--truth", choices=["functional", "token_ce"], default="functional",
                   help="the truth the estimates are judged against (token_ce for forward scores measuring it)")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--additive-alphas", default="", metavar="A,B,...",
                   help="also score the additive residual surrogate (on) at these ridge strengths")
    p.add_argument("--out", help="also write the figures here as JSON")
    p.add_argument("--product-lengths", default=None,
                   help="comma-separated kept forward keys (e.g. 'sign|0.1,sign|0.2,sign|0.5'; the first is the "
                   "configured length): also simulate the product's forward trust check (length choice, then the "
                   "residual surrogate)")
    args = p.parse_args(argv)
    try:
        subsets, truth, est, n_sources = load(args.bank, args.scores, args.forward, args.key, args.truth)
    except (OSError, KeyError, ValueError) as e:
        print(f"{args.scores or args.forward}: cannot read estimate {args.key!r}: {e}", file=sys.stderr)
        return 2
    res = simulate(subsets, truth, est, n_sources, draws=args.draws,
                   additive_alphas=[float(a) for a in args.additive_alphas.split(",") if a])
    print(f"{args.bank} ({len(truth)} subsets), estimate {args.key}: all subsets Spearman "
          f"est {res['all_subsets_spearman']['est']:+.2f}, size {res['all_subsets_spearman']['size']:+.2f}, "
          f"est made additive over sources (LOO, label-free) {res['all_subsets_spearman']['additive']:+.2f}; "
          f"additive source effects, estimate vs truth {res['source_effects']['spearman_over_sources']:+.2f} over "
          f"sources ({res['source_effects']['true_effects_positive']} of {res['source_effects']['n_sources']} "
          "truly raise the loss)")
    for k, v in res.items():
        if k.startswith("k="):
            print(f"  trust check {k}, unseen subsets, mean Spearman over {args.draws} draws: "
                  + "  ".join(f"{m} {x['mean']:+.2f} (sd {x['sd']:.2f})" for m, x in v.items() if "mean" in x))
            print(f"    auto picks: {v['auto_picks']}")
    if args.product_lengths:
        keys = args.product_lengths.split(",")
        by_length = {k: load(args.bank, args.scores, args.forward, k, args.truth)[2] for k in keys}
        res["forward_product"] = simulate_forward_product(subsets, truth, by_length, keys[0], n_sources,
                                                          draws=args.draws)
        for k, v in res["forward_product"].items():
            print(f"  product forward trust check {k} (lengths {keys}, configured {keys[0]}), unseen subsets: "
                  + "  ".join(f"{m} {x['mean']:+.2f} (sd {x['sd']:.2f})" for m, x in v.items() if isinstance(x, dict) and "mean" in x)
                  + f"; surrogate applied (auto) in {v['surrogate_applied']} of {args.draws}")
    if args.out:
        from gradselect.io import write_json_atomic

        write_json_atomic(Path(args.out), {"bank": args.bank, "estimate": args.key, "draws": args.draws, **res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
