"""Typed configuration: unknown keys with hints, type and choice errors, --set, TOML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import diffrecon
from diffrecon import api
from diffrecon import config as cfg
from diffrecon.config import tomllib  # tomli before Python 3.11
from diffrecon.errors import ConfigError
from diffrecon.learn.train import load_train_config
from diffrecon.models.base import ParamSpec, models
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.runconfig import RunConfig, build_config, config_to_dict, config_to_toml, load_config

# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "where", "hint"),
    [
        ("recon.epoch=3", "recon.epoch", "epochs"),
        ("model.geometri=far_field", "model.geometri", "geometry"),
        ("recons.epochs=3", "recons", "recon"),
        ("log.progres=false", "log.progres", "progress"),
        ("algorithm.nmae=epie", "algorithm.nmae", "name"),
        ("params.object.learning_rate=0.1", "params.object.learning_rate", None),
    ],
)
def test_unknown_key_names_the_key_and_suggests(override, where, hint):
    with pytest.raises(ConfigError) as info:
        build_config(overrides=[override])
    message = str(info.value)
    assert "unknown config key" in message
    assert f"'{where}'" in message
    if hint is not None:
        assert f"did you mean '{hint}'" in message


def test_unknown_key_message_is_exact_for_a_typo():
    with pytest.raises(ConfigError, match=r"unknown config key 'recon\.epoch'; did you mean "
                                          r"'epochs'\?"):
        build_config(overrides=["recon.epoch=3"])


def test_unknown_key_in_a_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[model]\ngeometri = 'near_field'\n")
    with pytest.raises(ConfigError, match=r"model\.geometri.*did you mean 'geometry'"):
        load_config(path)


def test_unknown_parameter_name_suggests_the_model_s_parameter():
    run = build_config(overrides=["params.probes.lr=0.1"])
    defaults = {"object": ParamSpec(), "probe": ParamSpec(), "positions": ParamSpec()}
    with pytest.raises(ConfigError, match=r"params\.probes.*did you mean 'probe'"):
        run.param_specs(defaults)


def test_unknown_parameter_name_fails_before_reconstructing(small_ptycho):
    with pytest.raises(ConfigError, match=r"params\.probes.*did you mean 'probe'"):
        diffrecon.reconstruct(small_ptycho, "ptycho",
                              overrides=["params.probes.lr=0.1", "log.progress=false"])


def test_unknown_modality_suggests():
    with pytest.raises(ConfigError, match="did you mean 'ptycho'"):
        build_config(modality="ptychoo")
    with pytest.raises(ConfigError, match="unknown modality"):
        diffrecon.default_config("nonsense")


# --- wrong types and choices ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ('recon.epochs="ten"', r"'recon\.epochs': expected int, found 'ten'"),
        ("recon.epochs=ten", r"'recon\.epochs': expected int, found 'ten'"),
        ("recon.epochs=2.5", r"'recon\.epochs': expected int, found 2\.5"),
        ("recon.epochs=true", r"'recon\.epochs': expected an integer, found True"),
        ("log.progress=3", r"'log\.progress': expected bool, found 3"),
        ("params.object.lr=fast", r"'params\.object\.lr': expected float, found 'fast'"),
        ("recon=3", r"'recon': expected a table"),
        ("loss.regularizers=3", r"'loss\.regularizers': expected a list"),
        ("model.padding_px=none", r"'model\.padding_px': expected int, found 'none'"),
    ],
)
def test_wrong_type_names_key_expected_and_found(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config(overrides=[override])


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("recon.sampler=compactt", "compact"),
        ("loss.likelihood=poison", "poisson"),
        ("model.geometry=nearfield", "near_field"),
        ("params.object.optimizer=adamw", "adam"),
    ],
)
def test_literal_value_error_lists_choices_and_suggests(override, suggestion):
    key = override.split("=")[0].replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"'{key}': expected one of \[.*\], found .*; "
                                          rf"did you mean '{suggestion}'\?"):
        build_config(overrides=[override])


def test_int_is_accepted_where_a_float_is_expected():
    run = build_config(overrides=["params.object.lr=1", "model.object_amplitude_max=1"])
    assert run.params["object"].lr == 1.0 and isinstance(run.params["object"].lr, float)
    assert isinstance(run.model.object_amplitude_max, float)


def test_none_clears_an_optional_value():
    run = build_config(overrides=["algorithm.alpha=0.5"])
    assert run.algorithm.alpha == 0.5
    run = build_config({"algorithm": {"alpha": 0.5}}, overrides=["algorithm.alpha=none"])
    assert run.algorithm.alpha is None


# --- --set parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("2.5", 2.5),
        ("1e-3", 1e-3),
        ("true", True),
        ("false", False),
        ("adam", "adam"),
        ('"cuda:1"', "cuda:1"),
        ("'single quoted'", "single quoted"),
        ("cuda:1", "cuda:1"),
        ("[1, 2]", [1, 2]),
        ("{name = 'tv', weight = 0.1}", {"name": "tv", "weight": 0.1}),
        ("none", "none"),
    ],
)
def test_parse_value(text, value):
    parsed = cfg.parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_apply_overrides_builds_nested_sections():
    values: dict = {"recon": {"epochs": 5}}
    cfg.apply_overrides(values, ["recon.seed=3", "params.object.lr=0.1", " log.progress = false",
                                 "algorithm.name=a=b"])
    assert values == {
        "recon": {"epochs": 5, "seed": 3},
        "params": {"object": {"lr": 0.1}},
        "log": {"progress": False},
        "algorithm": {"name": "a=b"},
    }


def test_apply_overrides_errors():
    with pytest.raises(ConfigError, match="key=value"):
        cfg.apply_overrides({}, ["recon.epochs"])
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        cfg.apply_overrides({"recon": {"epochs": 3}}, ["recon.epochs.value=1"])


def test_overrides_win_over_values_and_modality_argument_wins():
    run = build_config({"recon": {"epochs": 5}}, overrides=["recon.epochs=7"])
    assert run.recon.epochs == 7
    assert build_config({"modality": "ptycho"}, modality="ptycho").modality == "ptycho"


def test_set_values_reach_typed_sections():
    run = build_config(overrides=[
        "recon.epochs=12", "recon.device=cuda:1", "log.tensorboard=false",
        "model.geometry=near_field", "model.focus_to_sample_m=5e-3", "params.probe.start=3",
        "loss.likelihood=poisson", "algorithm.name=rpie",
    ])
    assert run.recon.epochs == 12 and run.recon.device == "cuda:1"
    assert run.log.tensorboard is False
    assert isinstance(run.model, PtychoConfig) and run.model.geometry == "near_field"
    assert run.model.focus_to_sample_m == pytest.approx(5e-3)
    assert run.loss.likelihood == "poisson" and run.algorithm.name == "rpie"
    specs = run.param_specs({"object": ParamSpec(lr=0.02), "probe": ParamSpec(lr=0.5, start=1)})
    assert specs["probe"] == ParamSpec(lr=0.5, start=3)  # only the given key replaced
    assert specs["object"] == ParamSpec(lr=0.02)


# --- files ----------------------------------------------------------------------------------


def test_load_toml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml.*not found"):
        cfg.load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[recon\nepochs = 3\n")
    with pytest.raises(ConfigError, match="bad.toml.*invalid TOML"):
        cfg.load_toml(bad)


def test_default_config_is_commented_toml():
    text = diffrecon.default_config("ptycho")
    values = tomllib.loads(text)
    assert values["modality"] == "ptycho"
    assert {"model", "params", "loss", "algorithm", "recon", "log"} <= set(values)
    assert "# passes over all patterns" in text
    loaded = build_config(values)
    assert dataclasses.replace(loaded, params={}) == build_config(modality="ptycho")


def test_default_config_lists_the_model_s_parameter_defaults(small_ptycho, tmp_path):
    """``diffrecon config ptycho`` holds a ``[params.<name>]`` table per parameter with the
    model's defaults; a learning rate set from the data is left out, its rule noted; loaded
    back, the plan of a model is its default plan."""
    text = diffrecon.default_config("ptycho")
    positions = text.split("[params.positions]\n")[1].split("\n\n")[0]
    assert "# refine this parameter at all\nenabled = false" in positions
    assert 'optimizer = "sgd"' in positions and "start = 10" in positions
    assert ("# lr left out: 0.005 x the starting probe's peak amplitude (set from the data)\n"
            "[params.probe]\n") in text
    path = tmp_path / "config.toml"
    path.write_text(text)
    loaded = load_config(path)
    assert loaded.params["positions"].enabled is False and loaded.params["probe"].lr is None
    model = Ptycho.from_data(small_ptycho, loaded.model)
    defaults = model.param_specs()
    assert loaded.param_specs(defaults) == defaults
    assert defaults["probe"].lr == 0.005 * float(model.probe.detach().abs().max())


@pytest.mark.parametrize("modality", diffrecon.list_models())
def test_every_modality_s_default_config_loads_with_its_parameters(modality):
    values = tomllib.loads(diffrecon.default_config(modality))
    model_cls = models.get(modality)
    run = build_config(values)
    assert set(run.params) == set(model_cls.param_defaults(run.model))
    for name in model_cls.lr_scales:
        assert name not in values["params"] or "lr" not in values["params"][name]


CONFIGS = sorted((Path(__file__).parents[1] / "experiments" / "configs").glob("*.toml"))
RUN_SECTIONS = {f.name for f in dataclasses.fields(RunConfig)} - {"modality"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_experiment_config_loads(path):
    """Run configs, training configs and simulation configs each through their loader."""
    keys = set(cfg.load_toml(path))
    if api.TRAINING_SECTIONS & keys:
        load_train_config(path)
    elif RUN_SECTIONS & keys:
        load_config(path)
    else:
        api.simulation_settings(path)


def test_default_run_config_round_trips_through_toml(tmp_path):
    default = build_config(modality="ptycho")
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(default))
    assert load_config(path) == default
    assert build_config(tomllib.loads(config_to_toml(default, comments=False))) == default


def test_changed_run_config_round_trips_through_toml(tmp_path):
    changed = build_config(overrides=[
        "recon.epochs=7", "recon.sampler=compact", "model.probe_modes=2",
        "model.object_amplitude_max=1.0", "algorithm.alpha=0.5", "params.object.lr=0.05",
        "params.positions.enabled=true", "params.positions.stop=30", "log.image_every=3",
    ])
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(changed))
    back = load_config(path)
    assert back == changed
    assert back.params["positions"].stop == 30 and back.params["positions"].lr is None


def test_run_config_round_trips_through_a_dict():
    changed = build_config(overrides=["recon.epochs=7", "params.object.lr=0.05"])
    values = config_to_dict(changed)
    assert isinstance(changed, RunConfig)
    assert build_config(values) == changed


def test_run_config_with_regularizers_round_trips():
    changed = build_config({"loss": {"regularizers": [
        {"name": "tv", "param": "object", "weight": 1e-3}, {"name": "amplitude_max"}]}})
    assert build_config(config_to_dict(changed)) == changed
    assert build_config(tomllib.loads(config_to_toml(changed))) == changed
