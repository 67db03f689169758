"""The run configuration: one typed dataclass composing every section of a TOML config."""

from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any

import torch

from diffrecon import config as cfg
from diffrecon.algorithms.base import AlgorithmConfig
from diffrecon.config import Overrides, doc
from diffrecon.errors import ConfigError, DataFormatError
from diffrecon.models.base import ParamOverride, ParamSpec, models
from diffrecon.recon.objective import LossConfig
from diffrecon.recon.reconstructor import ReconConfig


@dataclasses.dataclass
class LogConfig:
    tensorboard: bool = doc(True, "write TensorBoard event files into <out>/tensorboard")
    progress: bool = doc(True, "show a progress bar")
    image_every: int = doc(10, "log object/probe images every n epochs", minimum=1)
    metrics: bool = doc(True, "compare with the ground truth when the data carry one")
    metric_every: int = doc(
        5, "compare with ground truth every n epochs (simulated data)", minimum=1
    )
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
                 overrides: Overrides = ()) -> RunConfig:
    """A validated RunConfig from a TOML-like dict, a modality and ``--set`` overrides."""
    values = dict(values or {})
    cfg.apply_overrides(values, overrides)
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
                overrides: Overrides = ()) -> RunConfig:
    if path is None:
        return build_config({}, modality=modality, overrides=overrides)
    values = cfg.load_toml(path)
    try:  # the file alone first, so that its own errors name it
        build_config(copy.deepcopy(values), modality=modality)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return build_config(values, modality=modality, overrides=overrides)


def resumed_config(state: Any, source: str | Path, modality: str | None) -> dict[str, Any]:
    """The run config recorded in checkpoint ``state`` (read from ``source``), checked to be a
    reconstruction's and, when ``modality`` is given, to be of that modality."""
    values = state.get("config") if isinstance(state, dict) else None
    if not isinstance(values, dict) or "model" not in state:
        found = f"keys {sorted(state)}" if isinstance(state, dict) else type(state).__name__
        raise DataFormatError(str(source), "config", "a checkpoint written by 'diffrecon "
                              "reconstruct' (model state and run config)", found)
    made_with = values.get("modality", RunConfig.modality)
    if modality is not None and modality != made_with:
        raise ConfigError(f"{source}: the run was made with modality '{made_with}' and cannot "
                          f"be resumed as '{modality}'; leave out --modality, or start a new "
                          "run without --resume")
    return values


def require_device(name: str) -> torch.device:
    """The torch device ``name`` (``recon.device``), checked to exist on this machine, so that
    a run fails before it starts rather than in torch's first CUDA call."""
    device = torch.device(cfg.from_dict(ReconConfig, {"device": name}, "recon").device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = (f"built with CUDA {torch.version.cuda}, but no GPU is visible"
                 if torch.version.cuda else "a CPU-only build")
        raise ConfigError(f"recon.device '{name}': CUDA requested but torch.cuda.is_available() "
                          f"is False (torch {torch.__version__}: {build}); use recon.device=cpu "
                          "(--device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"recon.device '{name}': this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"recon.device '{name}': MPS requested but "
                          f"torch.backends.mps.is_available() is False (torch {torch.__version__})")
    return device


def config_to_dict(run: RunConfig) -> dict[str, Any]:
    return cfg.to_dict(run)


def config_to_toml(run: RunConfig, comments: bool = True) -> str:
    """The config as TOML; with ``comments`` every key carries its description."""
    return cfg.to_toml(run, comments=comments)


def default_config_toml(modality: str) -> str:
    """The default run config of ``modality`` as commented TOML, with the model's default plan
    (``ForwardModel.param_defaults``) as ``[params.<name>]`` tables; a learning rate the model
    derives from the data (``lr_scales``) is left out, its rule noted above the table."""
    run = build_config(modality=modality)
    model_cls = models.get(modality)
    params: dict[str, ParamOverride] = {}
    notes: dict[str, str] = {}
    for name, spec in model_cls.param_defaults(run.model).items():
        params[name] = ParamOverride(**dataclasses.asdict(spec))
        if name in model_cls.lr_scales:
            params[name].lr = None
            notes[f"params.{name}"] = (f"lr left out: {spec.lr:g} x {model_cls.lr_scales[name]}"
                                       " (set from the data)")
    return cfg.to_toml(dataclasses.replace(run, params=params), notes=notes)
