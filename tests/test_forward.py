"""Forward-pass estimates on a tiny model: per-source training gradients, parameter-space steps, real dev loss."""

import numpy as np
import pytest
import torch

from gradselect.config import load_config
from gradselect.data import load_taskset
from gradselect.data.tokenize import IGNORE_INDEX, pad_right, tokenize_examples
from gradselect.estimate.forward import TARGET, ForwardPassEstimator, SourceGradients
from gradselect.model import apply_adapter, load_model

from conftest import TINY_RUN_TOML


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("fwd") / "run.toml"
    cfg.write_text(TINY_RUN_TOML)
    config = load_config(cfg)
    taskset = load_taskset(config.data)
    model, tok = load_model(config.model, device="cpu")
    model = apply_adapter(model, config.adapter)
    return config, taskset, model, tok


def test_source_gradients_are_sums_of_per_example_gradients(setup, tmp_path):
    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, batch_size=5)
    assert set(grads.sums) == set(taskset.source_names) | {TARGET}
    assert grads.counts["legs"] == len(taskset.source("legs"))
    # One example at a time, by autograd: the same sum.
    name = next(n for n, p in model.named_parameters() if p.requires_grad)
    param = dict(model.named_parameters())[name]
    tokens = tokenize_examples(taskset.source("legs").examples, tok, config.tokenize)
    total, squared = torch.zeros_like(param), torch.zeros_like(param)
    for ids, labels in zip(tokens.input_ids, tokens.labels):
        i, m, lab = pad_right([ids], [labels], tok.pad_token_id)
        logits = model(input_ids=i, attention_mask=m).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[0], lab[0, 1:], ignore_index=IGNORE_INDEX)
        g = torch.autograd.grad(loss, param)[0]
        total, squared = total + g, squared + g * g
    assert torch.allclose(grads.sums["legs"][name], total, rtol=1e-4, atol=1e-6)
    assert grads.squares is None
    grads.save(tmp_path / "g.safetensors")
    again = SourceGradients.load(tmp_path / "g.safetensors")
    assert again.counts == grads.counts and torch.equal(again.sums["legs"][name], grads.sums["legs"][name])
    # With squares: the same sums, and the sums of squared per-example gradients, through a save and load.
    with_sq = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=True)
    assert torch.allclose(with_sq.sums["legs"][name], total, rtol=1e-4, atol=1e-6)
    assert torch.allclose(with_sq.squares["legs"][name], squared, rtol=1e-4, atol=1e-9)
    with_sq.save(tmp_path / "sq.safetensors")
    again = SourceGradients.load(tmp_path / "sq.safetensors")
    assert set(again.sums) == set(with_sq.sums) and torch.equal(again.squares["legs"][name], with_sq.squares["legs"][name])


def test_adam_step_moves_agreed_coordinates_like_sign_and_noisy_ones_less(setup):
    config, taskset, model, tok = setup
    plain = SourceGradients.compute(model, tok, taskset, config.tokenize)
    with pytest.raises(Exception, match="squares=True"):
        ForwardPassEstimator("adam").fit(model, tok, plain, taskset.target_dev.examples, config.tokenize)
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=True)
    dev = taskset.target_dev.examples
    sign = ForwardPassEstimator("sign").fit(model, tok, grads, dev, config.tokenize).direction(["legs"])
    # An unbounded batch averages the noise away: Adam's first step is the sign step.
    huge = ForwardPassEstimator("adam", train_batch_size=1e30).fit(model, tok, grads, dev, config.tokenize)
    for p, t in huge.direction(["legs"]).items():
        assert torch.allclose(t, sign[p], atol=1e-4)
    # One example per batch: mean over root-mean-square of the per-example gradients, |.| <= 1.
    one = ForwardPassEstimator("adam", train_batch_size=1).fit(model, tok, grads, dev, config.tokenize)
    groups = ["legs", TARGET]
    n = sum(grads.counts[g] for g in groups)
    for p, t in one.direction(["legs"]).items():
        m = sum(grads.sums[g][p].double() for g in groups) / n
        rms = (sum(grads.squares[g][p].double() for g in groups) / n).sqrt()
        expected = -torch.where(rms > 0, m / rms.clamp(min=1e-300), torch.zeros_like(m)).float()
        assert torch.allclose(t, expected, atol=1e-5) and float(t.abs().max()) <= 1 + 1e-5
    moved = one.estimate([["legs"], []])
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, one.base_loss_)


@pytest.mark.parametrize("step", ["sign", "normalized"])
def test_forward_pass_estimates_move_from_theta_star_and_restore_it(setup, step):
    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    est = ForwardPassEstimator(step).fit(model, tok, grads, taskset.target_dev.examples, config.tokenize)
    subsets = [["more"], ["legs", "noisy"], []]
    zero = est.estimate(subsets, length=0.0)
    assert np.allclose(zero, est.base_loss_)  # no step: theta*'s own loss
    moved = est.estimate(subsets)
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, est.base_loss_)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # theta* restored bitwise
    d = est.direction(["more"])
    if step == "sign":
        assert all(set(torch.unique(t).tolist()) <= {-1.0, 0.0, 1.0} for t in d.values())
    with pytest.raises(Exception, match="unknown source"):
        est.estimate([["nope"]])
    # Any direction scores the same way: the subset's own direction gives its estimate; a partial one is refused.
    assert np.allclose(est.outputs_along(d), est.outputs(["more"]))
    with pytest.raises(Exception, match="lacks parameter"):
        est.outputs_along(dict(list(d.items())[:1]))


def test_run_with_the_forward_scorer_selects_by_real_forward_passes(tmp_path, capsys):
    """``[estimate] scorer = "forward"``: the select stage scores subsets by forward passes at theta* + step
    (the same numbers a ForwardPassEstimator built by hand gives), caches the source gradients, measures its
    own gain error on the trust check's fine-tunes, and the CLI verb does the same on the run's features."""
    import json

    from gradselect.cli import main
    from gradselect.config import FORWARD_N_SUBSETS

    from conftest import tiny_run

    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    text = tiny_run(run_dir, k=1).replace("n_subsets = 20\n", "")
    # Special tokens left out of the functional: the features, the trust check's truths and the forward
    # passes all compute it so (the hand-built scorer below agrees only if the run passed the option on).
    text = text.replace("[features]", '[estimate]\nscorer = "forward"\n\n[features]\nskip_special_tokens = true')
    cfg.write_text(text + "validate_k = 3\nvalidate_repeats = 1\n")
    assert main(["run", str(cfg), "-q"]) == 0
    capsys.readouterr()
    sel = json.loads((run_dir / "selection.json").read_text())
    assert sel["params"]["estimator"]["scorer"] == "forward"
    assert sel["params"]["n_subsets"] == FORWARD_N_SUBSETS  # the forward scorer's default
    # Each distinct subset passed forward once: at most the sampled ones, the target alone and the choice,
    # and the 3 validated subsets at each other candidate length of the step.
    choice = sel["params"]["forward_length_choice"]
    others = len(choice["pairwise_accuracy"]) - 1
    assert choice["subsets"] == 3 and others == len(config_lengths := [0.05, 0.2, 0.5, 1.0])
    assert choice["configured_fraction"] == pytest.approx(0.1) and choice["chosen_fraction"] in [0.1] + config_lengths
    assert 2 <= sel["params"]["forward_passes"] <= FORWARD_N_SUBSETS + 2 + 3 * others
    assert "step length" in (run_dir / "report.md").read_text()
    # The trivial rival on the same subsets: the number of sources alone (the 3 validated subsets differ in size).
    assert 0 <= choice["size_baseline_pairwise_accuracy"] <= 1
    assert "the number of sources alone orders them at" in (run_dir / "report.md").read_text()
    # The forward scorer's own measured error (not the linear estimator's), from the 3 validated subsets.
    ev = sel["params"]["evidence"]
    assert ev["measured_error"] is not None and ev["measured_error"] >= 0
    validation = json.loads((run_dir / "validation" / "validation.json").read_text())
    assert all(len(s["true_losses"]) >= 1 for s in validation["subsets"])
    assert len(validation["subsets"][0]["true_losses"]) == 2  # the repeated one
    # The choice's estimate is a real forward pass at theta* + step: rebuild one by hand.
    config = load_config(cfg)
    taskset = load_taskset(config.data)
    model, tok = load_model(config.model, device="cpu")
    model = apply_adapter(model, config.adapter, init_adapter=run_dir / "meta_init" / "adapter")
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize)
    by_hand = ForwardPassEstimator("sign", train_batch_size=config.train.batch_size, skip_special_tokens=True).fit(
        model, tok, grads, taskset.target_dev.examples, config.tokenize)
    assert json.loads((run_dir / "features" / "manifest.json").read_text())["skip_special_tokens"] is True
    truth_file = next(run_dir.rglob("truth.json"))  # a trust-check fine-tune: its truth without special tokens
    from gradselect.features import output_values
    from gradselect.model import load_trained

    tuned, _ = load_trained(config.model, config.adapter, truth_file.parent / "adapter", device="cpu")
    b_tuned = output_values(tuned, tok, taskset.target_dev.examples, config.tokenize, skip_special_tokens=True)
    assert json.loads(truth_file.read_text())["loss"] == pytest.approx(float(np.mean(np.logaddexp(0, -b_tuned))),
                                                                      rel=1e-6)
    length = choice["chosen_fraction"] * by_hand.param_norm_
    assert np.isclose(sel["params"]["forward_step_length"], length, rtol=1e-6)
    # The forward scorer's default residual_surrogate is "auto": decided on the 3 validated subsets, recorded.
    surrogate = sel["params"]["forward_surrogate_choice"]
    assert surrogate["mode"] == "auto" and surrogate["subsets"] == 3
    assert surrogate["apply"] == (surrogate["pairwise_accuracy"]["forward + surrogate (held out)"]
                                  > surrogate["pairwise_accuracy"]["forward"])
    assert "residual surrogate of the trust check's 3 subsets" in (run_dir / "report.md").read_text()
    if not surrogate["apply"]:  # (when it applies, the estimate carries its correction)
        assert np.isclose(by_hand.estimate([sel["chosen"]], length=length)[0], sel["estimated_loss"], rtol=1e-4)
    assert np.isclose(by_hand.base_loss_, sel["params"]["base_loss"], rtol=1e-5)
    gradients = run_dir / "source_gradients" / "gradients.safetensors"
    assert gradients.exists()
    stamp = gradients.stat().st_mtime_ns
    passes = run_dir / "source_gradients" / "forward_outputs.json"
    assert len(json.loads(passes.read_text())["outputs"]) == sel["params"]["forward_passes"]
    passes_stamp = passes.stat().st_mtime_ns

    # The CLI verb on the same features: the same choice; the cached source gradients are reused.
    out = tmp_path / "again" / "selection.json"
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "source_gradients").symlink_to(run_dir / "source_gradients")
    assert main(["select", str(cfg), "--features", str(run_dir / "features"), "-o", str(out), "-q"]) == 0
    again = json.loads(out.read_text())
    assert again["params"]["forward_length_choice"] == choice
    assert again["params"]["forward_surrogate_choice"] == surrogate
    assert again["chosen"] == sel["chosen"] and np.isclose(again["estimated_loss"], sel["estimated_loss"], rtol=1e-6)
    assert again["params"]["evidence"]["measured_error"] == pytest.approx(ev["measured_error"], rel=1e-6)
    assert gradients.stat().st_mtime_ns == stamp
    assert passes.stat().st_mtime_ns == passes_stamp  # every subset's pass read back, none run again
    # gradselect estimate with the forward scorer: the same forward pass for the same subset.
    subsets = tmp_path / "subsets.json"
    subsets.write_text(json.dumps([sel["chosen"], []]))
    table = tmp_path / "again" / "estimates.csv"
    assert main(["estimate", str(cfg), "--features", str(run_dir / "features"), "--subsets", str(subsets),
                 "-o", str(table), "-q"]) == 0
    import pyarrow.csv as pacsv

    est = pacsv.read_csv(table).column("estimated_loss").to_pylist()
    assert np.isclose(est[0], sel["estimated_loss"], rtol=1e-6)
    assert "scorer forward" in capsys.readouterr().out
    # Without the trust check's calibration beside the features: a warning, and no measured error.
    (run_dir / "calibration.json").rename(tmp_path / "calibration.json")
    with pytest.warns(UserWarning, match="without a trust check"):
        assert main(["select", str(cfg), "--features", str(run_dir / "features"), "-o", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["params"]["evidence"]["measured_error"] is None
    # Without data the forward scorer cannot pass the dev split through the model: a clear error.
    bare = tmp_path / "bare.toml"
    bare.write_text('[estimate]\nscorer = "forward"\n')
    assert main(["select", str(bare), "--features", str(run_dir / "features"), "-o", str(tmp_path / "x.json")]) != 0
    assert "[data]" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _linear_and_gradients(setup, folder):
    """The linear estimator on features of the tiny model (made in ``folder``) and its per-source gradient sums:
    what a :class:`ForwardScoredEstimator` wraps and steps with."""
    from gradselect.estimate import FeatureArrays, SubsetEstimator
    from gradselect.estimate.config import EstimateConfig
    from gradselect.features import FeatureStore, featurize

    config, taskset, model, tok = setup
    featurize(taskset, folder / "features", feature_config=config.features, adapter_path=None,
              model_config=config.model, adapter_config=config.adapter, tokenize_config=config.tokenize,
              device="cpu", progress=False)
    linear = SubsetEstimator(EstimateConfig()).fit(FeatureArrays.from_store(FeatureStore.open(folder / "features")))
    return linear, SourceGradients.compute(model, tok, taskset, config.tokenize)


def test_forward_scored_estimator_passes_each_subset_forward_once(setup, tmp_path):
    from gradselect.estimate.forward import ForwardScoredEstimator
    from gradselect.select.selectors import evidence

    config, taskset, model, tok = setup
    linear, grads = _linear_and_gradients(setup, tmp_path)
    fwd = ForwardPassEstimator("sign").fit(model, tok, grads, taskset.target_dev.examples, config.tokenize)
    scored = ForwardScoredEstimator(linear, fwd)
    losses = scored.estimate([["more"], ["more"], [], ["legs", "noisy"]])
    assert scored.n_forward_passes_ == 3 and losses[0] == losses[1]
    assert np.allclose(losses, fwd.estimate([["more"], ["more"], [], ["legs", "noisy"]]))
    # The evidence check pairs the forward pass's per-example losses; nothing new to pass forward.
    ev = evidence(scored, ["more"], margin="auto")
    assert scored.n_forward_passes_ == 3 and np.isclose(ev["gain"], losses[2] - losses[0])
    assert ev["measured_error"] is None  # no trust check: nothing inherited from the linear estimator
    # Everything else is the linear estimator's (features, sources, config).
    assert scored.source_names_ == linear.source_names_ and scored.arrays_ is linear.arrays_


def test_trust_check_chooses_the_forward_step_length_by_the_order_of_its_subsets(setup, tmp_path):
    """trust_forward_scorer scores the validated subsets at each candidate length, keeps the configured one
    unless another orders them better by more than one standard error, and measures the gain error at the
    length kept; every later estimate uses that length."""
    import itertools
    import json

    from gradselect.estimate.forward import ForwardScoredEstimator
    from gradselect.validate import trust_forward_scorer
    from gradselect.validate.fidelity import one_se_choice
    from gradselect.validate.trust import gain_error, seed_noise

    config, taskset, model, tok = setup
    linear, grads = _linear_and_gradients(setup, tmp_path)
    fwd = ForwardPassEstimator("sign", length_fraction=0.1).fit(model, tok, grads, taskset.target_dev.examples,
                                                                config.tokenize)
    names = taskset.source_names
    subsets = [list(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]
    norm = fwd.param_norm_
    # The truth: what the 1 |theta| step estimates, reversed, so the lengths differ in how well they order it.
    at = {f: fwd.estimate(subsets, length=f * norm) for f in (0.1, 0.05, 1.0)}
    true = -at[1.0]
    losses = [[t, t + 0.01] if i < 2 else [t] for i, t in enumerate(true)]
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps({"subsets": [{"sources": s, "true_losses": x} for s, x in zip(subsets, losses)]}))

    scored = ForwardScoredEstimator(linear, fwd)
    record = trust_forward_scorer(scored, validation, [0.05, 1.0])
    means = np.array([np.mean(x) for x in losses])
    expected = [0.1, 0.05, 1.0][one_se_choice(np.array([at[0.1], at[0.05], at[1.0]]), means)]
    assert record["chosen_fraction"] == pytest.approx(expected) and record["configured_fraction"] == pytest.approx(0.1)
    assert set(record["pairwise_accuracy"]) == {"0.1", "0.05", "1"} and record["subsets"] == len(subsets)
    assert scored.length_choice_ == record and np.isclose(scored.length_, expected * norm)
    # Later estimates are at the length kept; the gain error was measured there.
    assert np.allclose(scored.estimate(subsets), at[expected], rtol=1e-6)
    assert scored.gain_error_ == pytest.approx(gain_error(at[expected], means, subsets,
                                                          noise=seed_noise(subsets, losses)))
    assert scored.n_forward_passes_ == 3 * len(subsets)  # each (subset, length) passed forward once
    # No candidates: the configured length, its gain error, no record.
    plain = ForwardScoredEstimator(linear, ForwardPassEstimator("sign", length_fraction=0.1).fit(
        model, tok, grads, taskset.target_dev.examples, config.tokenize))
    assert trust_forward_scorer(plain, validation) == {} and plain.length_choice_ is None
    assert plain.gain_error_ == pytest.approx(gain_error(at[0.1], means, subsets, noise=seed_noise(subsets, losses)))
    with pytest.raises(Exception, match="positive"):
        plain.set_length(0.0)


def test_forward_scores_corrected_by_the_trust_checks_surrogate_only_where_it_orders_better(setup, tmp_path):
    """correct_forward_scorer fits the residual surrogate to the trust check's truths minus the forward
    scores: ``auto`` uses it when its held-out corrections order the validated subsets better (a source
    the forward pass misjudges), not when the scores are already right; ``on`` always, ``off`` never.
    The corrected scorer's estimates are score + surrogate, its gain error is measured on them, and the
    selection records and prints the decision."""
    import itertools
    import json

    from gradselect.estimate.forward import ForwardScoredEstimator
    from gradselect.estimate.surrogate import CorrectedEstimator, ResidualSurrogate
    from gradselect.report import format_selection
    from gradselect.select import SelectConfig
    from gradselect.select.stage import select_sources
    from gradselect.validate import correct_forward_scorer
    from gradselect.validate.fidelity import pairwise_accuracy
    from gradselect.validate.trust import gain_error, seed_noise

    config, taskset, model, tok = setup
    linear, grads = _linear_and_gradients(setup, tmp_path)
    names = taskset.source_names
    subsets = [list(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]

    def scorer():
        fwd = ForwardPassEstimator("sign", length_fraction=0.1).fit(model, tok, grads, taskset.target_dev.examples,
                                                                    config.tokenize)
        return ForwardScoredEstimator(linear, fwd)

    est = scorer().estimate(subsets)
    spread = float(np.ptp(est)) or 1.0

    def validation(true, name):
        losses = [[t, t + 0.001 * spread] if i < 2 else [t] for i, t in enumerate(true)]
        path = tmp_path / name
        path.write_text(json.dumps({"subsets": [{"sources": s, "true_losses": x} for s, x in zip(subsets, losses)]}))
        return path, losses

    # The forward pass misjudges one source: every subset holding it is truly much worse.
    misjudged = est + 3 * spread * np.array([names[0] in s for s in subsets])
    path, losses = validation(misjudged, "misjudged.json")
    plain = scorer()
    corrected = correct_forward_scorer(plain, path, "auto")
    means = np.array([np.mean(x) for x in losses])
    masks = linear.subset_masks(subsets)
    held_out = est + ResidualSurrogate.held_out(masks, means - est)
    assert pairwise_accuracy(held_out, means) > pairwise_accuracy(est, means)
    assert isinstance(corrected, CorrectedEstimator) and corrected.estimator is plain
    choice = plain.surrogate_choice_
    assert choice["apply"] and choice["mode"] == "auto" and choice["subsets"] == len(subsets)
    assert choice["pairwise_accuracy"]["forward"] == pytest.approx(pairwise_accuracy(est, means))
    fitted = ResidualSurrogate().fit(masks, means - est)
    assert np.allclose(corrected.estimate(subsets), est + fitted.predict(masks))
    reference = est[0] + fitted.predict(masks[:1])[0]
    assert corrected.gain_error_ == pytest.approx(gain_error(held_out, means, subsets, reference=reference,
                                                             noise=seed_noise(subsets, losses)))
    selection = select_sources(corrected, SelectConfig(method="forward", margin=0.0), tmp_path / "selection.json")
    assert names[0] not in selection.chosen
    assert selection.params["forward_surrogate_choice"] == choice
    assert "corrected by the residual surrogate" in format_selection(selection)

    # Scores already right: auto leaves them alone; on corrects anyway; off does nothing.
    path, _ = validation(2.0 * est + 1.0, "exact.json")
    plain = scorer()
    assert correct_forward_scorer(plain, path, "auto") is plain and not plain.surrogate_choice_["apply"]
    assert isinstance(correct_forward_scorer(scorer(), path, "on"), CorrectedEstimator)
    off = scorer()
    assert correct_forward_scorer(off, path, "off") is off and getattr(off, "surrogate_choice_", None) is None
    with pytest.raises(Exception, match="auto, on or off"):
        correct_forward_scorer(scorer(), path, "sometimes")


def test_unroll_replays_the_trainers_first_step_and_keeps_per_example_gradients(setup, tmp_path):
    """The unroll step's first step is a real fine-tune's first step (the gradients are not yet stale):
    one HF Trainer step on all of a subset's examples from the same adapter moves the parameters as the
    replay does. Per-example gradients sum to the source sums and survive a save and load."""
    from gradselect.train import TrainConfig, train

    config, taskset, model, tok = setup
    plain = SourceGradients.compute(model, tok, taskset, config.tokenize)
    dev = taskset.target_dev.examples
    with pytest.raises(Exception, match="per_example=True"):
        ForwardPassEstimator("unroll", train_steps=1).fit(model, tok, plain, dev, config.tokenize)
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, per_example=True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    flat_sum = grads.examples["legs"].sum(0).split([p.numel() for p in trainable.values()])
    for (n, p), s in zip(trainable.items(), flat_sum):
        assert torch.allclose(s.view(p.shape), grads.sums["legs"][n], rtol=1e-5, atol=1e-7)
    assert grads.examples["legs"].shape[0] == grads.counts["legs"] == len(grads.tokens["legs"])
    grads.save(tmp_path / "ex.safetensors")
    again = SourceGradients.load(tmp_path / "ex.safetensors")
    assert torch.equal(again.examples["legs"], grads.examples["legs"]) and torch.equal(again.tokens[TARGET],
                                                                                       grads.tokens[TARGET])

    n_examples = grads.counts["legs"] + grads.counts[TARGET]
    one_step = TrainConfig(max_steps=1, batch_size=n_examples, warmup=0, scheduler="constant", learning_rate=1e-3)
    model.save_pretrained(tmp_path / "start")
    real = train(taskset, ["legs"], tmp_path / "ft", model_config=config.model, adapter_config=config.adapter,
                 train_config=one_step, tokenize_config=config.tokenize, init_adapter=tmp_path / "start",
                 device="cpu", progress=False)
    after, _ = load_model(config.model, device="cpu")
    after = dict(apply_adapter(after, config.adapter, init_adapter=real.adapter_dir).named_parameters())
    replay = ForwardPassEstimator("unroll", train_config=one_step).fit(model, tok, again, dev, config.tokenize)
    moved = replay.direction(["legs"])
    true = torch.cat([(after[n].detach() - p.detach()).reshape(-1) for n, p in trainable.items()])
    est = torch.cat([moved[n].reshape(-1) for n in trainable])
    assert true.abs().max() > 0.5e-3  # Adam's first step moves a live coordinate by about the learning rate
    close = (true - est).abs() <= 1e-5
    assert close.float().mean() > 0.99, float(close.float().mean())
    assert (true - est).abs().max() < 0.5e-3
    # Natural length by default, and theta* restored after scoring.
    before = {n: p.detach().clone() for n, p in trainable.items()}
    at_replay = replay.estimate([["legs"]])
    assert np.isfinite(at_replay).all()
    assert np.allclose(replay.estimate([["legs"]], length=float(est.norm())), at_replay)
    assert all(torch.equal(before[n], p) for n, p in trainable.items())


def test_unroll_revisits_a_small_subset_and_dilutes_it_in_a_large_one(setup):
    """Thirty steps of 4 from the target alone pass over its examples several times; mixed with every
    source they see each target example less often, so the replay moves less along the target's own
    replay (the dilution a one-step model cannot see). Adam bounds every coordinate's move by about
    steps x learning rate."""
    from gradselect.train import TrainConfig

    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, per_example=True)
    cfg = TrainConfig(max_steps=30, batch_size=4, learning_rate=1e-3)
    est = ForwardPassEstimator("unroll", train_config=cfg).fit(model, tok, grads, taskset.target_dev.examples,
                                                              config.tokenize)
    flat = lambda d: torch.cat([t.reshape(-1) for t in d.values()])  # noqa: E731
    alone, mixed = flat(est.direction([])), flat(est.direction(taskset.source_names))
    assert float(alone.abs().max()) <= 30 * 1e-3 * 1.01
    along = lambda x: float(x @ alone) / float(alone.norm())  # noqa: E731
    assert along(mixed) < along(alone)
    assert est.direction([]).keys() == est.params_.keys()


def test_saturating_unroll_pulls_less_as_examples_are_fitted(setup):
    """``unroll_saturating``: each example's loss at theta* is recorded; the first step is the frozen
    replay's (nothing fitted yet); over a long replay the fitted examples pull less, so the replay stops
    shorter and does not drive the examples' first-order losses as far below zero."""
    from gradselect.train import TrainConfig

    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, per_example=True)
    tokens = tokenize_examples(taskset.source("legs").examples[:1], tok, config.tokenize)
    i, m, lab = pad_right(tokens.input_ids, tokens.labels, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=i, attention_mask=m).logits[:, :-1]
    direct = torch.nn.functional.cross_entropy(logits[0], lab[0, 1:], ignore_index=IGNORE_INDEX)
    assert np.isclose(float(grads.losses["legs"][0]), float(direct), rtol=1e-5)
    dev = taskset.target_dev.examples
    flat = lambda d: torch.cat([t.reshape(-1) for t in d.values()])  # noqa: E731

    def both(cfg):
        return [flat(ForwardPassEstimator(step, train_config=cfg).fit(model, tok, grads, dev, config.tokenize)
                     .direction([])) for step in ("unroll", "unroll_saturating")]

    frozen, saturating = both(TrainConfig(max_steps=1, batch_size=4, warmup=0, learning_rate=1e-3))
    assert torch.allclose(frozen, saturating)
    frozen, saturating = both(TrainConfig(max_steps=60, batch_size=4, warmup=0, learning_rate=5e-2))
    assert saturating.norm() < frozen.norm()
    rows, loss0 = grads.examples[TARGET], grads.losses[TARGET]
    assert float((loss0 + rows @ saturating).min()) > float((loss0 + rows @ frozen).min())


@pytest.mark.parametrize("step", ["normalized", "adam", "unroll"])
def test_target_share_steps_as_if_the_target_split_were_repeated(setup, step):
    """``target_share``: a subset's step is the step on gradients whose target split is copied as often as
    the fine-tune repeats it (sums, squares, counts, and the replay's rows); the target alone is unchanged."""
    import dataclasses

    from gradselect.data.examples import target_repeats
    from gradselect.train import TrainConfig

    config, taskset, model, tok = setup
    grads = SourceGradients.compute(model, tok, taskset, config.tokenize, squares=step == "adam",
                                     per_example=step == "unroll")
    dev = taskset.target_dev.examples
    names = ["legs", "more"]
    copies = target_repeats(grads.counts[TARGET], sum(grads.counts[n] for n in names), 0.6)
    assert copies > 1
    cfg = TrainConfig(max_steps=6, batch_size=4)
    shared = ForwardPassEstimator(step, target_share=0.6, train_config=cfg).fit(model, tok, grads, dev, config.tokenize)

    def repeated(field):
        value = getattr(grads, field)
        if value is None:
            return None
        t = value[TARGET]
        if field in ("examples", "tokens", "losses"):
            return value | {TARGET: torch.cat([t] * copies)}
        return value | {TARGET: {p: copies * x for p, x in t.items()}}

    copied = dataclasses.replace(grads, counts=grads.counts | {TARGET: copies * grads.counts[TARGET]},
                                 **{f: repeated(f) for f in ("sums", "squares", "examples", "tokens", "losses")})
    plain = ForwardPassEstimator(step, train_config=cfg).fit(model, tok, copied, dev, config.tokenize)
    for p, t in shared.direction(names).items():
        assert torch.allclose(t, plain.direction(names)[p], rtol=1e-5, atol=1e-7)
    natural = ForwardPassEstimator(step, train_config=cfg).fit(model, tok, grads, dev, config.tokenize)
    for p, t in shared.direction([]).items():
        assert torch.equal(t, natural.direction([])[p])


def test_token_ce_metric_measures_the_dev_cross_entropy_the_evaluation_reports(setup, tmp_path):
    """``metric = "token_ce"``: a subset's estimate is the token-weighted response cross-entropy of the dev
    split at theta* + step (what ``target_loss`` reports for the stepped model); per-example losses average
    to it and pair in the evidence check; the trust check compares it with the validated subsets' token CE."""
    import json

    from gradselect.estimate.forward import ForwardScoredEstimator
    from gradselect.evaluate.metrics import target_loss
    from gradselect.select.selectors import evidence
    from gradselect.validate import trust_forward_scorer
    from gradselect.validate.trust import gain_error, seed_noise

    config, taskset, model, tok = setup
    dev = taskset.target_dev.examples
    linear, grads = _linear_and_gradients(setup, tmp_path)
    with pytest.raises(Exception, match="unknown metric"):
        ForwardPassEstimator("sign", metric="accuracy").fit(model, tok, grads, dev, config.tokenize)
    ce = ForwardPassEstimator("sign", metric="token_ce").fit(model, tok, grads, dev, config.tokenize)
    assert ce.base_loss_ == pytest.approx(target_loss(model, tok, dev, config.tokenize).loss, rel=1e-5)
    # The subset's step applied by hand: the evaluation's own token cross-entropy there.
    d = ce.direction(["more"])
    scale = ce.length_ / float(torch.sqrt(sum((t.double() ** 2).sum() for t in d.values())))
    params = dict(model.named_parameters())
    saved = {p: params[p].detach().clone() for p in d}
    with torch.no_grad():
        for p, t in d.items():
            params[p].add_(t * scale)
    stepped = target_loss(model, tok, dev, config.tokenize).loss
    with torch.no_grad():
        for p in d:
            params[p].copy_(saved[p])
    assert ce.estimate([["more"]])[0] == pytest.approx(stepped, rel=1e-5)
    assert ce.estimate([["more"]], length=0.0)[0] == pytest.approx(ce.base_loss_, rel=1e-6)
    # Another metric than the functional's: the same steps, other numbers.
    functional = ForwardPassEstimator("sign").fit(model, tok, grads, dev, config.tokenize)
    assert not np.isclose(functional.estimate([["more"]])[0], ce.estimate([["more"]])[0])
    # Special tokens left out: the functional of the answer tokens; token CE still counts every token.
    from gradselect.features import output_values

    answers = ForwardPassEstimator("sign", skip_special_tokens=True).fit(model, tok, grads, dev, config.tokenize)
    b_answers = output_values(model, tok, dev, config.tokenize, skip_special_tokens=True)
    assert answers.base_loss_ == pytest.approx(float(np.mean(np.logaddexp(0, -b_answers))), rel=1e-6)
    assert not np.isclose(answers.base_loss_, functional.base_loss_)
    ce_answers = ForwardPassEstimator("sign", metric="token_ce", skip_special_tokens=True).fit(
        model, tok, grads, dev, config.tokenize)
    assert ce_answers.base_loss_ == pytest.approx(ce.base_loss_, rel=1e-9)

    scored = ForwardScoredEstimator(linear, ce)
    assert scored.metric_ == "token_ce"
    subsets = [["more"], [], ["legs", "noisy"], ["legs"]]
    losses = scored.estimate(subsets)
    assert np.allclose(scored.predict_example_losses(subsets).mean(axis=1), losses)
    with pytest.raises(Exception, match="predict_example_losses"):
        scored.predict_logodds(subsets)
    ev = evidence(scored, ["more"], margin="auto")
    per = scored.predict_example_losses([[], ["more"]])
    diff = per[0] - per[1]
    assert ev["gain"] == pytest.approx(losses[1] - losses[0])
    assert ev["dev_standard_error"] == pytest.approx(np.std(diff, ddof=1) / np.sqrt(len(diff)))

    # The trust check's truths in token CE (every seed), not its functional, set the gain error.
    token_ces = [[1.0 + 0.1 * i, 1.02 + 0.1 * i] if i < 2 else [1.0 + 0.1 * i] for i in range(len(subsets))]
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps({"subsets": [
        {"sources": s, "true_losses": [5.0 - i], "true_token_ces": x} for i, (s, x) in enumerate(zip(subsets, token_ces))]}))
    trust_forward_scorer(scored, validation)
    means = np.array([np.mean(x) for x in token_ces])
    assert scored.gain_error_ == pytest.approx(gain_error(losses, means, subsets, noise=seed_noise(subsets, token_ces)))
    # A trust check written before every seed's token CE was kept: the first seed's.
    validation.write_text(json.dumps({"subsets": [
        {"sources": s, "true_loss": 5.0 - i, "true_token_ce": x[0]} for i, (s, x) in enumerate(zip(subsets, token_ces))]}))
    trust_forward_scorer(scored, validation)
    first = np.array([x[0] for x in token_ces])
    assert scored.gain_error_ == pytest.approx(gain_error(losses, first, subsets))
