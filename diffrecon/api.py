"""The Python API; the CLI is a thin layer over these functions.

    >>> import diffrecon
    >>> data = diffrecon.simulate("experiments/configs/ptycho_sim.toml")
    >>> result = diffrecon.reconstruct(data, "ptycho", out="run1")
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffrecon import config as cfg
from diffrecon.algorithms.base import Algorithm
from diffrecon.algorithms.recipe import make_algorithm
from diffrecon.config import Overrides
from diffrecon.data import (
    arrays,
    cxi,
    fpm,
    simulate_bragg,  # noqa: F401  (registers the "bragg" simulator)
    simulate_fp,  # noqa: F401  (registers the "fourier_ptycho" simulator)
    simulate_stem,  # noqa: F401  (registers the "multislice" simulator)
    simulate_tomo,  # noqa: F401  (registers the "ptycho_tomo" simulator)
)
from diffrecon.data.container import DiffractionData
from diffrecon.data.dataset import PatternBatches
from diffrecon.data.simulate import Simulator, simulators
from diffrecon.errors import ConfigError
from diffrecon.learn.train import TrainConfig, load_train_config
from diffrecon.models.base import ForwardModel, models
from diffrecon.recon import callbacks as cb
from diffrecon.recon import distributed, memory_budget
from diffrecon.recon.checkpoint import load_checkpoint
from diffrecon.recon.evaluation import truth_evaluator
from diffrecon.recon.host_memory import (
    allocator_hint,
    restart_under_jemalloc,
    return_large_blocks,
    reuse_freed_blocks,
)
from diffrecon.recon.initialize import select_initial_guess
from diffrecon.recon.multistart import multistart
from diffrecon.recon.objective import Objective
from diffrecon.recon.optim import ParameterPlan
from diffrecon.recon.reconstructor import Reconstructor
from diffrecon.runconfig import (
    RunConfig,
    build_config,
    config_to_dict,
    config_to_toml,
    default_config_toml,
    load_config,
    require_device,
    resumed_config,
)
from diffrecon.runfolder import RunFolder, check_run_folder, write_run_folder
from diffrecon.tracking import NullLogger, RunLogger

log = logging.getLogger("diffrecon")

#: top-level tables only a training config has (``learn.train.TrainConfig``)
TRAINING_SECTIONS = {f.name for f in dataclasses.fields(TrainConfig)} - {"modality"}


@dataclasses.dataclass
class Result:
    """What a reconstruction returns.

    Attributes:
        model: the fitted forward model (parameters on its device).
        results: the model's outputs in physical units (see ``ForwardModel.results``).
        history: per-epoch scalars: ``loss/total``, ``loss/<term>``, ``lr/<param>``,
            ``metric/<name>`` (with ground truth).
        metrics: final errors against ground truth, if the data carried any.
        out: the run folder, if one was written (in a distributed run only rank 0 writes).
        rank: this process's rank in a distributed run (0 otherwise); all ranks hold the same
            model and results.
    """

    model: ForwardModel
    results: dict[str, Any]
    history: dict[str, list[float]]
    metrics: dict[str, float]
    out: Path | None
    rank: int = 0


def load(path: str | Path, *, lazy: bool = False, truth: bool = True) -> DiffractionData:
    """Read a data file: CXI or the plain HDF5 layout, or a bare NPY/NPZ/TIFF intensity
    (a CDI pattern or volume; see README), or a Fourier-ptychography HDF5 file, TOML/JSON
    description or folder (``data.fpm``). ``truth=False`` skips a CXI file's ground truth."""
    if fpm.is_fp_source(path):
        return fpm.load_fp(path)
    if arrays.is_array_file(path):
        return arrays.load_array(path)
    return cxi.load(path, lazy=lazy, truth=truth)


def list_models() -> list[str]:
    return models.names()


def _as_config(config: RunConfig | str | Path | dict[str, Any] | None, modality: str | None,
               overrides: Overrides) -> RunConfig:
    if isinstance(config, RunConfig):
        values = config_to_dict(config)
        values["model"] = cfg.to_dict(config.model)
        return build_config(values, modality=modality, overrides=overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, modality=modality, overrides=overrides)
    return build_config(config, modality=modality, overrides=overrides)


def _run_factory(model: ForwardModel, batches: PatternBatches, objective: Objective,
                 algorithm: Algorithm, run_config: RunConfig,
                 comm: distributed.Communicator) -> Any:
    specs = algorithm.adjust_specs(run_config.param_specs(model.param_specs()))

    def make(target: ForwardModel) -> Reconstructor:
        plan = ParameterPlan(target.named_fields(), specs, spares=target.spares)
        return Reconstructor(target, batches, objective, algorithm, plan, run_config.recon,
                             comm=comm)

    return make


def reconstruct(
    data: DiffractionData | str | Path, modality: str | None = None,
    config: RunConfig | str | Path | dict[str, Any] | None = None, *,
    out: str | Path | None = None, resume: str | Path | None = None,
    overrides: Overrides = (), lazy: bool | None = None,
    initial: dict[str, Any] | None = None,
) -> Result:
    """Reconstruct ``data`` with the registered ``modality``; write a run folder if ``out``.

    Args:
        data: a DiffractionData or the path of a data file.
        modality: registered model name (default: the config's, else ``ptycho``).
        config: a RunConfig, a TOML path or a dict; defaults work on typical data.
        out: run folder for reconstruction.h5, report.png, config.toml, tensorboard/,
            checkpoint.pt; checked to be creatable and writable before the data are read
            (ConfigError). A file that cannot be written there at the end goes to a folder in
            the temporary directory, and ``errors.RunFolderError`` says where.
        resume: a run folder (or checkpoint.pt) to continue from; its config is used, with
            ``overrides`` on top (e.g. more epochs); ``config`` must then be None.
        overrides: ``section.key=value`` strings (or one such string), as ``--set`` on the
            command line.
        lazy: True reads the patterns from the file batch by batch (data larger than
            memory), False holds them in memory; None (default) holds them in memory when
            they take at most half of the memory available (host, cgroup or CUDA device),
            see :mod:`diffrecon.recon.memory_budget`.
        initial: starting values by canonical parameter name (e.g. ``{"object": ...,
            "probe": ...}`` from a network, see ``diffrecon.infer``), each of the model's
            shape; given a probe, the model's own probe candidates are not tried.

    Launched by torchrun (``recon.distributed``, default "auto"), every process runs this
    call on its share of each minibatch and returns the same result; only rank 0 writes
    ``out``. See README, "Scaling out: torchrun".
    """
    state = checkpoint = None
    if resume is not None:
        if config is not None:
            raise ConfigError("a resumed run keeps the config of its run folder: give either "
                              "a config (--config) or resume (--resume), and change settings of "
                              "a resumed run with overrides (--set)")
        checkpoint = Path(resume) / "checkpoint.pt" if Path(resume).is_dir() else Path(resume)
        state = load_checkpoint(checkpoint)
        config = resumed_config(state, checkpoint, modality)
        out = checkpoint.parent if out is None else out
    run_config = _as_config(config, modality, overrides)
    require_device(run_config.recon.device)
    if out is not None:
        check_run_folder(out)
    if not isinstance(data, DiffractionData):
        # Read a file through the lazy reader even when the patterns are then held in memory:
        # they are copied chunk by chunk into the working tensor, never twice in memory.
        # ... and its ground truth only where it is used (for metrics)
        data = load(data, lazy=True, truth=run_config.log.metrics)
    model_cls = models.get(run_config.modality)
    data.validate(needs_positions=model_cls.needs_positions)
    data = model_cls.prepare(data, run_config.model)
    with distributed.session(run_config.recon.distributed, run_config.recon.device) as comm:
        if comm.world_size > 1 and run_config.recon.starts > 1:
            raise ConfigError("recon.starts > 1 does not run distributed (torchrun); "
                              "use recon.starts=1 or recon.distributed=off")
        if state is None and run_config.recon.starts > 1:
            best, results, metrics = multistart(
                data, run_config,
                lambda start: _reconstruct_once(data, start, None, None, lazy, comm, initial))
            result = Result(best.model, results, best.history, metrics,
                            Path(out) if out is not None else None)
            if out is not None:
                folder = RunFolder(out)
                write_run_folder(folder, run_config, results, best.history, metrics)
                folder.raise_failures(result)
            return result
        return _reconstruct_once(data, run_config, state, out, lazy, comm, initial,
                                 checkpoint=checkpoint)


def _set_initial(model: ForwardModel, initial: dict[str, Any]) -> None:
    """Copy user starting values into the model's named parameters (shape-checked)."""
    fields = model.named_fields()
    for name, value in initial.items():
        if name not in fields:
            raise ConfigError(f"initial value '{name}': the model has no such parameter "
                              f"(known: {', '.join(sorted(fields))})")
        tensor = torch.as_tensor(np.asarray(value)).to(fields[name].dtype)
        if tuple(tensor.shape) != tuple(fields[name].shape):
            raise ConfigError(f"initial value '{name}': expected shape "
                              f"{tuple(fields[name].shape)}, found {tuple(tensor.shape)}")
        with torch.no_grad():
            fields[name].copy_(tensor)


def _reconstruct_once(data: DiffractionData, run_config: RunConfig, state: Any,
                      out: str | Path | None, lazy: bool | None,
                      comm: distributed.Communicator,
                      initial: dict[str, Any] | None = None, *,
                      checkpoint: Path | None = None) -> Result:
    """One reconstruction of validated ``data`` (from ``state``, read from ``checkpoint``, when
    resuming)."""
    model_cls = models.get(run_config.modality)
    device = comm.device
    generator = torch.Generator().manual_seed(run_config.recon.seed)
    model = model_cls.from_data(data, run_config.model, generator=generator, device=device)
    if initial:
        _set_initial(model, initial)
    comm.broadcast_module(model)  # all ranks start equal whatever their random state
    objective = Objective(run_config.loss, data.num_patterns)
    if lazy is None:
        lazy = _fits_in_memory_or_lazy(data, model, device, run_config.recon.compact_counts)
    batches = PatternBatches(data, model.propagator, device, lazy=lazy,
                             prepare=objective.likelihood.prepare_,
                             compact=run_config.recon.compact_counts)
    objective.num_patterns = len(batches)  # a 3D volume is one measurement
    objective.check(model)
    algorithm, epochs = make_algorithm(run_config.algorithm, run_config.recon.epochs)
    if epochs != run_config.recon.epochs:  # a recipe's counts set the run length
        run_config = dataclasses.replace(
            run_config, recon=dataclasses.replace(run_config.recon, epochs=epochs))
    if comm.world_size > 1 and not algorithm.shardable:
        raise ConfigError(f"algorithm.name '{run_config.algorithm.name}' does not run "
                          "distributed (torchrun); data-parallel runs support gradient, epie "
                          "and rpie")
    make_run = _run_factory(model, batches, objective, algorithm, run_config, comm)
    out_dir = Path(out) if out is not None and comm.is_main else None
    folder = RunFolder(out_dir) if out_dir is not None else None
    evaluate = (truth_evaluator(data.truth, data.positions_m)
                if data.truth is not None and run_config.log.metrics else None)
    # The allocator keeps freed blocks during the iterations only: while the data were read
    # and converted, kept blocks fragmented the heap (2000 x 256^2, 500 MiB of patterns:
    # 852 instead of 660 MiB resident after conversion).
    with reuse_freed_blocks(run_config.recon.reuse_host_memory) as reusing:
        # between epochs the comparison with the truth gives its temporaries back
        during = _returning_memory(evaluate) if evaluate is not None and reusing else evaluate
        if state is None and "probe" not in (initial or {}):
            candidates = model.initial_guesses(data)
            if len(candidates) > 1:
                select_initial_guess(model, candidates, make_run)
        run = make_run(model)
        logger = _logger(run_config, out_dir)
        run.callbacks = model.callbacks() + _callbacks(run_config, folder, logger, during,
                                                       comm.is_main)
        if state is not None:
            cb.resume(run, state, checkpoint or "checkpoint")
            comm.broadcast_module(model)
        try:
            history = run.run()
        finally:
            logger.close()
    results = model.results()
    metrics = evaluate(model) if evaluate is not None else {}
    result = Result(model, results, history, metrics, out_dir, comm.rank)
    if folder is not None:
        write_run_folder(folder, run_config, results, history, metrics)
        folder.raise_failures(result)
    return result


def _returning_memory(evaluate: Callable[[ForwardModel], dict[str, float]]
                      ) -> Callable[[ForwardModel], dict[str, float]]:
    """``evaluate`` run with large host blocks unmapped when freed (``return_large_blocks``)."""
    def evaluate_and_return(model: ForwardModel) -> dict[str, float]:
        with return_large_blocks():
            return evaluate(model)

    return evaluate_and_return


def _fits_in_memory_or_lazy(data: DiffractionData, model: ForwardModel,
                            device: torch.device, compact: bool) -> bool:
    """Read the patterns batch by batch when held in memory they would take more than
    ``memory_budget.DATA_SHARE`` of the memory available on ``device`` (logged)."""
    if model.propagator.ndim >= len(data.patterns.shape):  # a 3D volume: one measurement
        return False
    lazy, why = _holding(data, device, compact)
    (log.info if lazy else log.debug)("%s: %s", data.source, why)
    hint = allocator_hint(_held_bytes(data, compact), torch.device(device).type)
    if hint is not None and not lazy:
        log.info("%s", hint)
    return lazy


def _holding(data: DiffractionData, device: torch.device | str, compact: bool = True
             ) -> tuple[bool, str]:
    """Whether ``data``'s patterns would be read batch by batch on ``device``, and why."""
    return memory_budget.choose_lazy(
        tuple(data.patterns.shape), memory_budget.stored_dtype(data.patterns),
        memory_budget.available_bytes(device), compact)


def prefer_jemalloc(path: str | Path, device: str | None = None) -> None:
    """For the command line, before ``reconstruct``: restart the process under jemalloc when
    the scan in ``path`` would be held in host memory and is large
    (``host_memory.restart_under_jemalloc``); returns when it does not restart."""
    target = require_device(device or "cpu")
    data = load(path, lazy=True)
    if data.positions_m is None or _holding(data, target)[0]:
        return
    restart_under_jemalloc(_held_bytes(data), target.type)


def _held_bytes(data: DiffractionData, compact: bool = True) -> int:
    """Bytes of ``data``'s patterns once held in memory (``memory_budget.held_pattern_bytes``)."""
    return memory_budget.held_pattern_bytes(
        tuple(data.patterns.shape), memory_budget.stored_dtype(data.patterns), compact)


def _logger(run_config: RunConfig, out: Path | None) -> Any:
    if out is None or not run_config.log.tensorboard:
        return NullLogger()
    logger = RunLogger(out / "tensorboard")
    logger.text("config", "```\n" + config_to_toml(run_config, comments=False) + "\n```")
    return logger


def _callbacks(run_config: RunConfig, folder: RunFolder | None, logger: Any,
               evaluate: Any, main: bool = True) -> list[Any]:
    callbacks: list[Any] = []
    if evaluate is not None:
        callbacks.append(cb.Metrics(evaluate, run_config.log.metric_every))
    callbacks.append(cb.ProgressBar(run_config.log.progress and main))
    hparams = {
        "modality": run_config.modality, "algorithm": run_config.algorithm.name,
        "likelihood": run_config.loss.likelihood, "epochs": run_config.recon.epochs,
        "batch_size": run_config.recon.batch_size,
    }
    if not isinstance(logger, NullLogger):
        # without TensorBoard its images would still be drawn: results (an object-sized
        # illumination map) and matplotlib (about 25 MiB resident) every image_every epochs
        callbacks.append(cb.TensorBoard(logger, hparams, run_config.log.image_every))
    if folder is not None:
        callbacks.append(cb.Checkpoint(folder, config_to_dict(run_config),
                                       run_config.recon.checkpoint_every))
    return callbacks


def simulate(config: str | Path | dict[str, Any] | None = None, *, modality: str = "ptycho",
             out: str | Path | None = None, overrides: Overrides = ()) -> DiffractionData:
    """Simulate a data set with ground truth; write it as CXI if ``out`` is given.

    ``config`` is a simulation TOML (path or dict; keys: ``default_simulation``) or a training
    config, whose ``[simulation]`` table is the scan its network is trained for.
    """
    simulator, settings = simulation_settings(config, modality=modality, overrides=overrides)
    data = simulator(settings)
    if out is not None:
        cxi.save(data, out)
        data.source = str(out)
    return data


def simulation_settings(config: str | Path | dict[str, Any] | None = None, *,
                        modality: str = "ptycho", overrides: Overrides = ()
                        ) -> tuple[Simulator, Any]:
    """The simulator and its validated settings for ``simulate`` (same arguments)."""
    values = (cfg.load_toml(config) if isinstance(config, (str, Path))
              else copy.deepcopy(config or {}))  # overrides edit nested tables in place
    if TRAINING_SECTIONS & set(values):
        train = load_train_config(values)
        if train.modality != "ptycho":
            raise ConfigError(f"a training config of modality '{train.modality}' holds no scan "
                              "to simulate (its [simulation] table is ptychography's)")
        values = cfg.to_dict(train.simulation)
    cfg.apply_overrides(values, overrides)
    simulator = simulators.get(values.get("modality", modality))
    return simulator, cfg.from_dict(simulator.Config, values)


def default_simulation(modality: str) -> str:
    """The simulation settings of ``modality`` with their defaults, as commented TOML: the
    keys of a ``simulate`` TOML and of its overrides."""
    return cfg.to_toml(simulators.get(modality).Config())


def import_4dstem(path: str | Path, calibration: str | Path | dict[str, Any] | None = None, *,
                  out: str | Path | None = None, overrides: Overrides = ()
                  ) -> DiffractionData:
    """Read a 4D-STEM file (.npy, HDF5, EMPAD .raw) with a calibration (TOML path or dict of
    ``data.stem.STEMCalibration`` keys, plus ``key=value`` overrides); write CXI if ``out``."""
    from diffrecon.data.stem import STEMCalibration, load_4dstem

    values = (cfg.load_toml(calibration) if isinstance(calibration, (str, Path))
              else dict(calibration or {}))
    cfg.apply_overrides(values, overrides)
    data = load_4dstem(path, cfg.from_dict(STEMCalibration, values))
    if out is not None:
        cxi.save(data, out)
        data.source = str(out)
    return data


def default_config(modality: str) -> str:
    """The default run configuration of ``modality`` as commented TOML, with the model's
    per-parameter defaults as ``[params.<name>]`` tables."""
    if modality not in models:
        raise ConfigError(f"unknown modality '{modality}' (known: {', '.join(models.names())})")
    return default_config_toml(modality)


def inspect(path: str | Path, modality: str = "ptycho") -> str:
    """A human summary of a data file, ending with the validation verdict."""
    data = load(path, lazy=True)
    model_cls = models.get(modality)
    data.validate(needs_positions=model_cls.needs_positions)
    extra = model_cls.describe(data)
    if data.positions_m is not None:  # a scan: held in memory or read batch by batch
        _, why = _holding(data, "cpu")
        hint = allocator_hint(_held_bytes(data))
        extra = "\n".join(filter(None, [extra, f"memory:           {why}",
                                         hint and f"                  {hint}"]))
    return cxi.inspect_text(data) + (f"\n{extra}" if extra else "") + "\nvalidation: OK"
