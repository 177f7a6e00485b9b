import pytest

from gradselect.config import RunConfig, dump_config, load_config
from gradselect.errors import ConfigError


def test_unknown_keys_list_valid_ones(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data.target]\nreasoning_gym = "chain_sum"\n\n[train]\nlr = 0.1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "run.toml" in msg and "unknown key 'train.lr'" in msg and "learning_rate" in msg


def test_bad_value_names_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data.target]\nreasoning_gym = "chain_sum"\n\n[train]\nbatch_size = 0\n')
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be greater than or equal to 1"):
        load_config(path)


def test_source_needs_one_origin(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data.target]\npath = "a.jsonl"\nreasoning_gym = "chain_sum"\n')
    with pytest.raises(ConfigError, match="exactly one of 'path', 'hf_dataset', 'reasoning_gym'"):
        load_config(path)


def test_malformed_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: malformed TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml")


def test_dump_round_trips(tmp_path):
    cfg = RunConfig.model_validate(
        {"data": {"target": {"reasoning_gym": "chain_sum"}, "sources": [{"path": "a.jsonl", "label_noise": 0.5}]}}
    )
    path = tmp_path / "again.toml"
    text = dump_config(cfg)
    path.write_text(text)
    loaded = load_config(path)
    # Provenance is data: it survives the reload (it used to be TOML comments).
    from gradselect import __version__

    assert loaded.provenance.gradselect_version == __version__ and loaded.provenance.created
    assert loaded.model_copy(update={"provenance": None}) == cfg


def test_path_options_resolve_against_the_config_folder(tmp_path):
    from gradselect.config import RunConfig, replay_config, resolve_paths

    config = RunConfig.model_validate({"data": {"target": {"path": "t.jsonl"}},
                                       "features": {"precondition": "adam", "optimizer_state": "meta/run"},
                                       "evaluate": {"lm_eval_include": "tasks"}})
    resolved = resolve_paths(config, tmp_path / "cfg")
    assert resolved.features.optimizer_state == str((tmp_path / "cfg" / "meta" / "run").resolve())
    assert resolved.evaluate.lm_eval_include == str((tmp_path / "cfg" / "tasks").resolve())
    saved = replay_config(config, base_dir=tmp_path / "cfg")
    assert saved.features.optimizer_state == resolved.features.optimizer_state
    assert resolve_paths(RunConfig(), tmp_path) == RunConfig()  # nothing set, nothing changed


def test_forward_scorer_defaults_and_ignored_options(tmp_path):
    from gradselect.config import FORWARD_N_SUBSETS

    linear = RunConfig()
    assert linear.select_config().n_subsets == 200
    forward = RunConfig.model_validate({"estimate": {"scorer": "forward"}})
    assert forward.select_config().n_subsets == FORWARD_N_SUBSETS
    # A config that sets n_subsets keeps it.
    assert RunConfig.model_validate({"estimate": {"scorer": "forward"},
                                     "select": {"n_subsets": 64}}).select_config().n_subsets == 64
    # The residual surrogate: on for the linear scorer, auto for the forward scorer, unless set.
    assert linear.run.residual_surrogate_mode() == "on" and linear.run.residual_surrogate_mode("forward") == "auto"
    set_off = RunConfig.model_validate({"run": {"residual_surrogate": "off"}})
    assert set_off.run.residual_surrogate_mode() == set_off.run.residual_surrogate_mode("forward") == "off"
    with pytest.warns(UserWarning, match="forward_step is ignored by scorer 'linear'"):
        RunConfig.model_validate({"estimate": {"forward_step": "adam"}})
    with pytest.warns(UserWarning, match="forward_metric is ignored by scorer 'linear'"):
        RunConfig.model_validate({"estimate": {"forward_metric": "token_ce"}})
    assert RunConfig.model_validate({"estimate": {"scorer": "forward", "forward_metric": "token_ce"}})
    bad = tmp_path / "bad.toml"
    bad.write_text('[estimate]\nscorer = "exact"\n')
    with pytest.raises(ConfigError, match="scorer"):
        load_config(bad)
