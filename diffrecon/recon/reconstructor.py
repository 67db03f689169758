"""The one reconstruction loop every modality and algorithm runs in."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import defaultdict
from typing import Any, Literal, Protocol

import numpy as np
import torch

from diffrecon.algorithms.base import Algorithm, Batch
from diffrecon.config import doc
from diffrecon.data.dataset import (
    PatternBatches,
    compact_batches,
    prefetched,
    random_batches,
)
from diffrecon.errors import DivergenceError
from diffrecon.models.base import ForwardModel
from diffrecon.recon import memory_budget
from diffrecon.recon.distributed import Communicator, SingleProcess
from diffrecon.recon.objective import Objective
from diffrecon.recon.optim import ParameterPlan

Tensor = torch.Tensor
log = logging.getLogger("diffrecon")


#: Torch device types a reconstruction runs on (``recon.device``).
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_NAMES = "cpu, cuda, cuda:<index> (e.g. cuda:1) or mps"


def device_name_problem(name: object) -> str | None:
    """None when ``name`` is a device string of ``DEVICE_TYPES``, else what was expected
    (whether this machine has that device is checked before a run, ``runconfig.require_device``).
    """
    try:
        valid = isinstance(name, str) and torch.device(name).type in DEVICE_TYPES
    except (RuntimeError, ValueError):
        valid = False
    return None if valid else f"a torch device: {DEVICE_NAMES}"


@dataclasses.dataclass
class ReconConfig:
    epochs: int = doc(100, "passes over all patterns", minimum=1)
    batch_size: int = doc(0, "patterns per update; 0 picks from the data size", minimum=0)
    sampler: Literal["random", "compact"] = doc("random", "batch composition")
    seed: int = doc(0, "seed of initial guesses and batch order")
    device: str = doc("cpu", "torch device: cpu, cuda, cuda:1, ...", check=device_name_problem)
    max_recoveries: int = doc(
        5, "NaN/Inf rollbacks (each halves the steps) before giving up", minimum=0
    )
    checkpoint_every: int = doc(
        10, "write checkpoint.pt every n epochs (0: only at the end)", minimum=0
    )
    plateau_patience: int = doc(
        3, "halve all step sizes when the loss has not improved for n epochs (0: never)",
        minimum=0,
    )
    starts: int = doc(
        1, "independent random starts (seeds seed, seed+1, ...), ranked by R-factor", minimum=1
    )
    average_best: int = doc(
        5, "with starts > 1: align and average this many of the best", minimum=1
    )
    compact_counts: bool = doc(
        True, "hold whole-number counts in [0, 65535] as uint16 in memory (half of float32; "
        "converted per batch); other data stay float32"
    )
    reuse_host_memory: bool = doc(
        True, "keep freed host memory for reuse during the run (glibc; see recon.host_memory)"
    )
    distributed: Literal["auto", "on", "off"] = doc(
        "auto", "data-parallel over processes: auto (when launched by torchrun), on, off"
    )


class Callback(Protocol):
    def on_start(self, run: Reconstructor) -> None: ...
    def on_epoch_end(self, run: Reconstructor, epoch: int, logs: dict[str, float]) -> None: ...
    def on_end(self, run: Reconstructor) -> None: ...


def default_batch_size(num_patterns: int, frame_pixels: int = 0) -> int:
    """About eight updates per epoch, between 16 and 256 patterns each, and no more than a
    4 MiB stack of complex64 frames of ``frame_pixels`` pixels (32 of 128x128): an update's
    intermediates then stay in cache and its memory does not grow with the scan. On the
    420 x 128^2 benchmark (1 thread) batches of 32 instead of 53 ran 0.184 instead of
    0.221 s per epoch and reached NRMSE 0.059 instead of 0.095 after 30 epochs."""
    size = min(256, max(16, math.ceil(num_patterns / 8)))
    if frame_pixels:
        size = min(size, max(16, 2**22 // (8 * frame_pixels)))
    return int(size)


class Reconstructor:
    """Runs epochs of minibatch updates and hands each one to an ``Algorithm``.

    It owns the schedule (which parameters are active when), the batch order, NaN/Inf
    detection with rollback to the last good epoch, and the callbacks (progress, TensorBoard,
    checkpoints, metrics). ``history`` maps a scalar name to its per-epoch values.

    With a ``comm`` of several processes, every process runs the same minibatch sequence on
    its share of each minibatch; loss terms are summed over processes (see
    :mod:`diffrecon.recon.distributed`).
    """

    def __init__(
        self,
        model: ForwardModel,
        batches: PatternBatches,
        objective: Objective,
        algorithm: Algorithm,
        plan: ParameterPlan,
        config: ReconConfig,
        callbacks: list[Callback] | None = None,
        comm: Communicator | None = None,
    ) -> None:
        self.model, self.batches, self.objective = model, batches, objective
        self.comm = comm if comm is not None else SingleProcess(batches.device)
        self.algorithm, self.plan, self.config = algorithm, plan, config
        self.callbacks = list(callbacks or [])
        self.batch_size = self._batch_size(len(batches), warn=True)
        self.state = algorithm.init_state(model)
        self.history: dict[str, list[float]] = defaultdict(list)
        self.epoch = 0  # next epoch to run
        self.recoveries = 0
        self._compact: list[Tensor] | None = None
        self.patterns: Tensor | None = None  # all patterns, unless restricted

    def restrict(self, patterns: Tensor) -> None:
        """Run on the patterns ``patterns`` (K,) only, in random batches (short trials)."""
        self.patterns = patterns
        self.batch_size = self._batch_size(len(patterns))

    def _batch_size(self, count: int, warn: bool = False) -> int:
        """``recon.batch_size``, or the default for ``count`` patterns capped by the memory
        available (``memory_budget.batch_limit``; each process holds its share of a batch).
        With ``warn``, a set size above that cap is logged as a warning. Data-parallel runs
        keep the uncapped default: every process must draw the same batches, and their
        available memory differs."""
        frame = math.prod(self.batches.frame_shape)
        available = memory_budget.available_bytes(self.batches.device)
        limit = memory_budget.batch_limit(frame, available)
        if limit is not None:
            limit *= self.comm.world_size
        size = self.config.batch_size
        if not size:
            default = default_batch_size(count, frame)
            return default if limit is None or self.comm.world_size > 1 else min(default, limit)
        if warn and limit is not None and size > limit:
            need = memory_budget.update_bytes(size, frame) / self.comm.world_size
            log.warning(
                "recon.batch_size=%d: one update needs about %.2f GiB on %s, where %.2f GiB "
                "are available; it may run out of memory (recon.batch_size=%d or less fits, "
                "0 chooses)", size, need / 2**30, self.batches.device, available / 2**30,
                limit)
        return size

    def num_used(self) -> int:
        """Patterns visited per epoch."""
        return len(self.batches) if self.patterns is None else len(self.patterns)

    def _epoch_batches(self, epoch: int) -> list[Tensor]:
        n, seed = len(self.batches), self.config.seed
        if self.patterns is not None:
            batches = random_batches(len(self.patterns), self.batch_size, seed, epoch)
            return [self.patterns[group] for group in batches]
        if self.config.sampler == "random":
            return random_batches(n, self.batch_size, seed, epoch)
        if self._compact is None:
            # a model may group its patterns itself (e.g. by tilt: ptycho_tomo)
            self._compact = self.model.compact_batches(self.batch_size, seed)
        if self._compact is None:
            positions = getattr(self.model, "positions", None)
            xy = np.zeros((n, 2)) if positions is None else positions.detach().cpu().numpy()
            self._compact = compact_batches(xy, self.batch_size, seed)
        order = torch.randperm(
            len(self._compact), generator=torch.Generator().manual_seed(seed + epoch)
        )
        return [self._compact[i] for i in order]

    def run_epoch(self, epoch: int) -> dict[str, float]:
        active = self.plan.active(epoch)
        # Frozen parameters must not pull autograd through their part of the graph
        # (e.g. the sub-pixel shift's derivative when positions are not refined).
        for name, parameter in self.model.named_fields().items():
            parameter.requires_grad_(name in active)
        totals: dict[str, float] = defaultdict(float)
        device = self.batches.device
        # no mask at all where every pixel is trusted: the likelihood then skips its selects
        valid = None if bool(self.batches.valid.all()) else self.batches.valid
        def read(group: Tensor) -> Tensor:
            return self.batches(self.comm.share(group))

        groups = self._epoch_batches(epoch)
        for group, counts in prefetched(read, groups, background=self.batches.lazy):
            index = self.comm.shard(group)  # this process's share, now the current minibatch
            batch = Batch(index.to(device), counts, valid, self.comm)
            terms = self.algorithm.step(
                self.model, batch, self.objective, self.plan, active, self.state
            )
            terms = self.comm.reduce_scalars(terms)
            for name, value in terms.items():
                totals[name] += value
        with torch.no_grad():
            self.model.end_epoch(epoch)
        n = self.num_used()
        logs = {f"loss/{name}": value / n for name, value in totals.items()}
        logs["loss/total"] = sum(totals.values()) / n
        return logs

    def _finite(self, logs: dict[str, float]) -> bool:
        if not all(math.isfinite(v) for k, v in logs.items() if k.startswith("loss/")):
            return False
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def snapshot(self, into: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a NaN/Inf epoch rolls back to: the model's tensors and the algorithm's state,
        copied to host memory (a GPU run keeps no second copy on the device). The optimisers'
        moments are not kept (a rollback restarts them, with halved steps): Adam holds two
        object-sized moments per parameter, so keeping them tripled the snapshot.

        ``into`` (the previous snapshot) is overwritten where shapes match, so the epochs
        share one set of host buffers: a fresh copy each epoch held two snapshots at once
        (2000 x 256^2 frames: a 45 MiB object)."""
        def host(tensors: dict[str, Tensor], old: dict[str, Tensor]) -> dict[str, Tensor]:
            out = {}
            for key, value in tensors.items():
                kept = old.get(key)
                value = value.detach()
                if (kept is not None and kept.shape == value.shape
                        and kept.dtype == value.dtype):
                    out[key] = kept.copy_(value)
                else:
                    out[key] = value.to("cpu", copy=True)
            return out

        into = into or {}
        return {"model": host(self.model.state_dict(), into.get("model", {})),
                "state": host(self.state, into.get("state", {}))}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.plan.restart_moments()
        device = self.batches.device
        self.state = {k: v.to(device, copy=True) for k, v in snapshot["state"].items()}

    def run(self) -> dict[str, list[float]]:
        """Run from ``self.epoch`` to ``config.epochs``; returns the history."""
        for callback in self.callbacks:
            callback.on_start(self)
        good: dict[str, Any] | None = None
        while self.epoch < self.config.epochs:
            epoch = self.epoch
            good = self.snapshot(into=good)
            started = time.perf_counter()
            logs = self.run_epoch(epoch)
            logs["time/epoch_s"] = time.perf_counter() - started
            if not self._finite(logs):
                self._recover(good, epoch)
                continue
            for name, value in logs.items():
                self.history[name].append(value)
            for name, lr in self.plan.learning_rates().items():
                self.history[f"lr/{name}"].append(lr)
            self._anneal_on_plateau()
            self.epoch += 1
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, logs)
        for callback in self.callbacks:
            callback.on_end(self)
        return dict(self.history)

    def _anneal_on_plateau(self) -> None:
        """Halve the steps once the loss stops improving for ``plateau_patience`` epochs.

        Constant-step Adam keeps hopping around the optimum at the noise level and the error
        creeps back up; annealing settles it. The patience window restarts after each change
        of step size, which is read back from the ``lr/`` history (so a resumed run does the
        same as an uninterrupted one).
        """
        patience = self.config.plateau_patience
        losses = self.history["loss/total"]
        rates = [
            v for k, v in self.history.items() if k in {f"lr/{n}" for n in self.plan.adaptive()}
        ]
        since = len(losses)
        if rates:
            changes = [i for i in range(1, len(rates[0])) if rates[0][i] != rates[0][i - 1]]
            since = len(losses) - (changes[-1] if changes else 0)
        if patience <= 0 or len(losses) <= patience or since <= patience:
            return
        if min(losses[-patience:]) > min(losses[:-patience]) * (1 - 1e-3):
            self.plan.scale_learning_rates(0.5, adaptive_only=True)

    def _recover(self, good: dict[str, Any], epoch: int) -> None:
        self.recoveries += 1
        if self.recoveries > self.config.max_recoveries:
            raise DivergenceError(
                f"epoch {epoch}: NaN/Inf persisted after {self.config.max_recoveries} rollbacks "
                "with halved step sizes; lower params.<name>.lr or check the data"
            )
        log.warning(
            "epoch %d: NaN/Inf detected; rolled back to the last good state and "
            "halved all step sizes (recovery %d of %d)",
            epoch,
            self.recoveries,
            self.config.max_recoveries,
        )
        self.restore(good)
        self.plan.scale_learning_rates(0.5)
        self.history["recoveries"].append(float(epoch))
