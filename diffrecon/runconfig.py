"""The run configuration: one typed dataclass composing every section of a TOML config."""

from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any

from diffrecon import config as cfg
from diffrecon.algorithms.base import AlgorithmConfig
from diffrecon.config import doc
from diffrecon.errors import ConfigError
from diffrecon.models.base import ParamOverride, ParamSpec, models
from diffrecon.recon.objective import LossConfig
from diffrecon.recon.reconstructor import ReconConfig


@dataclasses.dataclass
class LogConfig:
    tensorboard: bool = doc(True, "write TensorBoard event files into <out>/tensorboard")
    progress: bool = doc(True, "show a progress bar")
    image_every: int = doc(10, "log object/probe images every n epochs")
    metrics: bool = doc(True, "compare with the ground truth when the data carry one")
    metric_every: int = doc(5, "compare with ground truth every n epochs (simulated data)")
    report: bool = doc(True, "write report.png")


@dataclasses.dataclass
class RunConfig:
    modality: str = doc("ptycho", "registered modality (diffrecon config --list)")
    model: Any = None
    params: dict[str, ParamOverride] = doc({}, "per-parameter overrides: [params.<name>]")
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    recon: ReconConfig = dataclasses.field(default_factory=ReconConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    def param_specs(self, defaults: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        """The model's default plan with this config's overrides applied."""
        for name in self.params:
            if name not in defaults:
                close = difflib.get_close_matches(name, list(defaults), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown config key 'params.{name}' for modality "
                                  f"'{self.modality}' (known: {', '.join(defaults)}){hint}")
        return {name: self.params[name].apply(spec) if name in self.params else spec
                for name, spec in defaults.items()}


def build_config(values: dict[str, Any] | None = None, *, modality: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A validated RunConfig from a TOML-like dict, a modality and ``--set`` overrides."""
    values = dict(values or {})
    cfg.apply_overrides(values, list(overrides))
    if modality is not None:
        values["modality"] = modality
    name = values.get("modality", RunConfig.modality)
    model_cls = models.get(name)
    values = merge_tables(model_cls.run_defaults, values)
    model_values = values.pop("model", {}) or {}
    run = cfg.from_dict(RunConfig, values)
    run.model = cfg.from_dict(model_cls.Config, model_values, "model")
    return run


def merge_tables(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` over ``defaults``, nested tables merged key by key."""
    out = dict(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None, *, modality: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    if path is None:
        return build_config({}, modality=modality, overrides=overrides)
    values = cfg.load_toml(path)
    try:  # the file alone first, so that its own errors name it
        build_config(copy.deepcopy(values), modality=modality)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return build_config(values, modality=modality, overrides=overrides)


def config_to_dict(run: RunConfig) -> dict[str, Any]:
    return cfg.to_dict(run)


def config_to_toml(run: RunConfig, comments: bool = True) -> str:
    """The config as TOML; with ``comments`` every key carries its description."""
    return cfg.to_toml(run, comments=comments)
