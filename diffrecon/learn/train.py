"""Training inversion networks: supervised and physics-informed losses, DDP, checkpoints.

``train(config, out)`` (CLI: ``diffrecon train CONFIG.toml --out DIR``) simulates training pairs
with the registered forward model named by ``modality`` (``ptycho``: patches, ``learn.samples``;
``cdi``: whole 2D or 3D objects, ``learn.cdi``), fits a registered network (``learn.nets``) with
``supervised_weight * supervised + physics_weight * physics`` and writes ``DIR/model.pt`` (the
network, its input scale, the probe (ptycho) and the configuration), ``DIR/checkpoint.pt``
(resumable state), ``DIR/config.toml`` and ``DIR/tensorboard/`` (``loss/train``,
``loss/validation``, per-term losses, image grids of input, prediction and truth, hparams).

Launched by ``torchrun`` the network is wrapped in ``DistributedDataParallel`` (Gloo on CPU,
NCCL on GPU); every minibatch of the single-process run is split into one contiguous share per
rank (``recon.distributed.shard_index``), so the averaged gradient equals the single-process
gradient of the whole minibatch. Only rank 0 logs and writes.

``train.precision`` runs the network's forward pass in bfloat16 (``torch.autocast``, CPU or
CUDA) or float16 (CUDA only, with a ``GradScaler``); the losses and their physics (FFTs,
likelihoods) stay in float32 / complex64.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diffrecon import config as cfg
from diffrecon.config import Overrides, doc
from diffrecon.data.simulate import PtychoSimulation
from diffrecon.errors import ConfigError
from diffrecon.learn.cdi import CDISamples
from diffrecon.learn.nets import build_net
from diffrecon.learn.objects import ObjectSpec
from diffrecon.learn.samples import (
    PatchSet,
    SampleConfig,
    SampleSource,
    network_input,
    read_shards,
    sources,
)
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.recon import distributed
from diffrecon.recon.checkpoint import load_checkpoint, save_checkpoint
from diffrecon.runconfig import merge_tables
from diffrecon.tracking import NullLogger, RunLogger

Tensor = torch.Tensor
log = logging.getLogger("diffrecon")


@dataclasses.dataclass
class NetConfig:
    name: str = doc("ptychonn", "registered network: ptychonn, unet, unet3d")
    width: int = doc(16, "channels of the first stage")
    depth: int = doc(3, "down-sampling stages (frame must be divisible by 2**depth)")
    amplitude_max: float = doc(1.5, "largest object amplitude the network can output")


@dataclasses.dataclass
class FitConfig:
    epochs: int = doc(20, "passes over the training chunks")
    batch_size: int = doc(64, "patterns per step (split over the ranks)")
    lr: float = doc(1e-3, "Adam learning rate (cosine decay to 5% over the epochs)")
    clip_grad_norm: float = doc(0.0, "largest gradient norm of a step, 0: no clipping (e.g. 1.0 "
                                "guards a high learning rate against a spike that sends the "
                                "network's outputs to zero)")
    supervised_weight: float = doc(1.0, "weight of the supervised (truth) loss")
    physics_weight: float = doc(0.0, "weight of the physics-informed likelihood loss")
    likelihood: str = doc("poisson", "likelihood of the physics-informed loss")
    seed: int = doc(0, "seed of initial weights and batch order")
    time_limit_s: float = doc(0.0, "stop after this many seconds of training (0: no limit)")
    device: str = doc("cpu", "torch device")
    precision: Literal["fp32", "bf16", "fp16"] = doc(
        "fp32", "network arithmetic: fp32; bf16 (autocast, CPU or CUDA); fp16 (autocast and "
        "gradient scaling, CUDA only)")
    distributed: Literal["auto", "on", "off"] = doc("auto", "DDP when launched by torchrun")
    image_every: int = doc(5, "log image grids every n epochs")


@dataclasses.dataclass
class TrainConfig:
    modality: str = doc("ptycho", "forward model the training data come from: ptycho "
                        "([simulation], patches) or cdi ([cdi], whole objects)")
    simulation: PtychoSimulation = dataclasses.field(default_factory=lambda: PtychoSimulation(
        frame_px=32, photons_per_pattern=1e5))
    cdi: CDISamples = dataclasses.field(default_factory=CDISamples)
    objects: ObjectSpec = dataclasses.field(default_factory=ObjectSpec)
    samples: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    net: NetConfig = dataclasses.field(default_factory=NetConfig)
    train: FitConfig = dataclasses.field(default_factory=FitConfig)


def load_train_config(source: str | Path | dict[str, Any] | TrainConfig | None = None,
                      overrides: Overrides = ()) -> TrainConfig:
    """A TrainConfig from a TOML path, a dict or an existing config, with ``--set`` overrides
    (``key=value`` strings, or one such string)."""
    if isinstance(source, TrainConfig):
        values = cfg.to_dict(source)
    elif isinstance(source, (str, Path)):
        values = cfg.load_toml(source)
    else:
        values = copy.deepcopy(source or {})  # overrides edit nested tables in place
    cfg.apply_overrides(values, overrides)
    # sections given in part keep the other defaults (e.g. the 32-pixel training frame)
    return cfg.from_dict(TrainConfig, merge_tables(cfg.to_dict(TrainConfig()), values))


@dataclasses.dataclass
class TrainedNet:
    """A network with what it needs at inference: input scale, probe (ptycho; None for CDI)
    and its configuration."""

    net: nn.Module
    scale: float
    probe: Tensor | None
    config: TrainConfig

    def predict(self, counts: Tensor, batch_size: int = 256) -> Tensor:
        """Object patches (N, h, w) complex64 for counts (N, h, w), in batches, no autograd."""
        device = next(self.net.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, counts.shape[0], batch_size):
                chunk = torch.as_tensor(counts[start : start + batch_size]).to(device)
                out.append(self.net(network_input(chunk, self.scale)).cpu())
        return torch.cat(out)

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, {"net": self.net.state_dict(), "scale": self.scale,
                               "probe": self.probe, "config": cfg.to_dict(self.config)})


def load_network(path: str | Path, device: str = "cpu") -> TrainedNet:
    """Read a ``model.pt`` written by :func:`train` (or ``TrainedNet.save``)."""
    state = load_checkpoint(path)
    config = load_train_config(state["config"])
    net = new_net(config)
    net.load_state_dict(state["net"])
    return TrainedNet(net.to(device).eval(), float(state["scale"]), state["probe"], config)


def new_net(config: TrainConfig) -> nn.Module:
    """The untrained network of ``config`` (``ptychonn`` sizes its dense layer by the frame)."""
    frame = (config.cdi.array_px if config.modality == "cdi" else config.simulation.frame_px)
    return build_net(config.net.name, config.net.width, config.net.depth,
                     config.net.amplitude_max, frame)


def autocast_dtype(fit: FitConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``fit.precision`` on ``device`` (None: full precision)."""
    if fit.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"config key 'train.precision': 'fp16' needs a CUDA device (found "
                          f"'{device.type}'); use 'bf16' or 'fp32'")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[fit.precision]


def batch_loss(net: nn.Module, batch: PatchSet, trained: TrainedNet, source: SampleSource,
               likelihood: Any, fit: FitConfig) -> tuple[Tensor, dict[str, float]]:
    """The weighted training loss of one (share of a) minibatch and its terms."""
    device = next(net.parameters()).device
    counts = batch.counts.to(device)
    dtype = autocast_dtype(fit, device)
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        estimate = net(network_input(counts, trained.scale))
    estimate = estimate.to(torch.complex64)
    total = torch.zeros((), device=device)
    terms: dict[str, float] = {}
    if fit.supervised_weight and batch.targets is not None:
        value = source.supervised(estimate, batch, trained.probe)
        total = total + fit.supervised_weight * value
        terms["supervised"] = float(value.detach())
    if fit.physics_weight:
        value = source.physics(estimate, batch, trained.probe, likelihood)
        total = total + fit.physics_weight * value
        terms["physics"] = float(value.detach())
    return total, terms


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Scale the gradients of ``optimizer``'s parameters to a total norm <= ``max_norm``."""
    if max_norm > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def run_epoch(model: nn.Module, trained: TrainedNet, source: SampleSource, patches: PatchSet,
              optimizer: torch.optim.Optimizer | None, fit: FitConfig, epoch: int,
              comm: distributed.Communicator,
              scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass (training when ``optimizer`` is given); the mean loss terms over all ranks.
    ``scaler`` (fp16) scales the loss before the backward pass and unscales the step."""
    likelihood = make_likelihood(fit.likelihood)
    n = len(patches)
    if optimizer is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            fit.seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    sums: dict[str, float] = {}
    for start in range(0, n, fit.batch_size):
        index = order[start : start + fit.batch_size]
        share = distributed.shard_index(index, comm.rank, comm.world_size)
        if share.numel() == 0:
            share = index[:1]  # a stand-in (weighted 0 below) keeps the collectives in step
        weight = (distributed.shard_index(index, comm.rank, comm.world_size).numel()
                  / index.numel())
        with torch.set_grad_enabled(optimizer is not None):
            loss, terms = batch_loss(model, patches.subset(share), trained, source, likelihood,
                                     fit)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; scaling by world_size * share fraction makes
            # that average the gradient of the whole minibatch's mean loss
            scaled = loss * weight * comm.world_size
            if scaler is None:
                scaled.backward()
                _clip(optimizer, fit.clip_grad_norm)
                optimizer.step()
            else:
                scaler.scale(scaled).backward()
                if fit.clip_grad_norm > 0:
                    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                    _clip(optimizer, fit.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
        for name, value in {"total": float(loss.detach()), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value * weight * index.numel()
    sums = comm.reduce_scalars(sums) if comm.world_size > 1 else sums
    return {name: value / n for name, value in sums.items()}


def _patches(simulator: SampleSource, samples: SampleConfig, epoch: int) -> PatchSet:
    if samples.shards:
        return read_shards(samples.shards)
    return simulator.split(epoch=epoch)


def input_scale(patches: PatchSet) -> float:
    """Mean sqrt(counts) of a training set: the input scale of :func:`network_input`."""
    return float(patches.counts.clamp(min=0).sqrt().mean())


def _log_images(logger: Any, trained: TrainedNet, patches: PatchSet, step: int) -> None:
    sample = patches.subset(torch.arange(min(4, len(patches))))

    def row(batch: Tensor) -> np.ndarray:  # side by side; 3D: the central slices
        return np.concatenate([x[x.shape[0] // 2] if x.ndim == 3 else x
                               for x in batch.numpy()], axis=1)

    logger.image("images/input", row(network_input(sample.counts, trained.scale)[:, 0]), step)
    logger.complex_image("images/prediction", row(trained.predict(sample.counts)), step)
    if sample.targets is not None:
        logger.complex_image("images/truth", row(sample.targets), step)


@dataclasses.dataclass
class TrainResult:
    """The trained network and the per-epoch history (``loss/train``, ``loss/validation``,
    ``loss/train/<term>``)."""

    trained: TrainedNet
    history: dict[str, list[float]]
    seconds: float
    out: Path | None


def train(config: str | Path | dict[str, Any] | TrainConfig | None = None, *,
          out: str | Path | None = None, resume: bool = False,
          overrides: Overrides = (),
          initial: TrainedNet | None = None, data: PatchSet | None = None) -> TrainResult:
    """Train (or, with ``initial`` and unlabelled ``data``, fine-tune) an inversion network.

    Args:
        config: TOML path, dict or TrainConfig (see ``TrainConfig``).
        out: run folder (model.pt, checkpoint.pt, config.toml, tensorboard/); rank 0 only.
        resume: continue from ``out/checkpoint.pt``.
        overrides: ``section.key=value`` strings, or one such string.
        initial: start from this network (and its input scale and probe) instead of a new one.
        data: train on these patches instead of simulating (e.g. measured patterns without
            targets, with ``train.supervised_weight=0`` and ``train.physics_weight=1``).
    """
    config = load_train_config(config, overrides)
    fit = config.train
    with distributed.session(fit.distributed, fit.device) as comm:
        torch.manual_seed(fit.seed)
        simulator = sources.get(config.modality)(config)
        patches = data if data is not None else _patches(simulator, config.samples, 0)
        validation = None if data is not None else simulator.split(validation=True)
        if initial is None:
            trained = TrainedNet(new_net(config), input_scale(patches), simulator.probe, config)
        else:
            trained = dataclasses.replace(initial, config=config)
        device = comm.device
        autocast_dtype(fit, device)  # a ConfigError before any work when fp16 lacks CUDA
        scaler = torch.amp.GradScaler("cuda") if fit.precision == "fp16" else None
        trained.net.to(device).train()
        if trained.probe is not None:
            trained.probe = trained.probe.to(device)
        comm.broadcast_module(trained.net)
        model: nn.Module = trained.net
        if comm.world_size > 1:
            model = nn.parallel.DistributedDataParallel(trained.net)
        optimizer = torch.optim.Adam(trained.net.parameters(), lr=fit.lr)
        def cosine(epoch: int) -> float:
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / fit.epochs))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        out_dir = Path(out) if out is not None and comm.is_main else None
        history: dict[str, list[float]] = {}
        first = 0
        if resume and out is not None:
            state = load_checkpoint(Path(out) / "checkpoint.pt")
            trained.net.load_state_dict(state["net"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            trained.scale, history, first = state["scale"], state["history"], state["epoch"]
            # the run may have been extended (more epochs): the step size follows the new plan
            for group, base in zip(optimizer.param_groups, schedule.base_lrs, strict=True):
                group["lr"] = base * cosine(first)
        logger = RunLogger(out_dir / "tensorboard") if out_dir is not None else NullLogger()
        if out_dir is not None:
            (out_dir / "config.toml").write_text(cfg.to_toml(config))
        start = time.perf_counter()
        try:
            for epoch in range(first, fit.epochs):
                if config.samples.stream and epoch > 0 and data is None:
                    patches = _patches(simulator, config.samples, epoch)
                trained.net.train()
                terms = run_epoch(model, trained, simulator, patches, optimizer, fit, epoch,
                                  comm, scaler)
                schedule.step()
                trained.net.eval()
                record = {f"loss/train/{k}": v for k, v in terms.items() if k != "total"}
                record["loss/train"] = terms["total"]
                if validation is not None:
                    record["loss/validation"] = run_epoch(model, trained, simulator, validation,
                                                          None, fit, epoch, comm)["total"]
                for key, value in record.items():
                    history.setdefault(key, []).append(value)
                logger.scalars(record, epoch)
                if out_dir is not None:
                    if epoch % max(1, fit.image_every) == 0 or epoch == fit.epochs - 1:
                        _log_images(logger, trained, validation or patches, epoch)
                    save_checkpoint(out_dir / "checkpoint.pt", {
                        "net": trained.net.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "scale": trained.scale,
                        "history": history, "epoch": epoch + 1,
                        "seconds": time.perf_counter() - start})
                    trained.save(out_dir / "model.pt")
                log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}"
                                                          for k, v in record.items()))
                if fit.time_limit_s and time.perf_counter() - start > fit.time_limit_s:
                    break
            seconds = time.perf_counter() - start
            logger.hparams({"modality": config.modality, "net": config.net.name,
                            "width": config.net.width, "precision": fit.precision,
                            "lr": fit.lr, "batch_size": fit.batch_size,
                            "physics_weight": fit.physics_weight},
                           {k: v[-1] for k, v in history.items() if v})
        finally:
            logger.close()
        if comm.world_size > 1:  # leave together: rank 0 may still be writing its files
            torch.distributed.barrier()
        trained.net.eval()
        if trained.probe is not None:
            trained.probe = trained.probe.cpu()
        return TrainResult(trained, history, seconds, out_dir)
