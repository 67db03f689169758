"""Callbacks of the reconstruction loop: progress bar, metrics, TensorBoard, checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffrecon.errors import ConfigError, RunFolderError
from diffrecon.recon.checkpoint import save_checkpoint
from diffrecon.recon.reconstructor import Reconstructor
from diffrecon.runfolder import RunFolder
from diffrecon.tracking import Logger

log = logging.getLogger("diffrecon")


class ProgressBar:
    """A tqdm bar over epochs showing the loss, the latest metrics and the ETA."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_start(self, run: Reconstructor) -> None:
        self.bar = tqdm(total=run.config.epochs, initial=run.epoch, unit="epoch",
                        disable=not self.enabled, dynamic_ncols=True, leave=True)

    def on_epoch_end(self, run: Reconstructor, epoch: int, logs: dict[str, float]) -> None:
        postfix = {"loss": f"{logs['loss/total']:.4g}"}
        for name, values in run.history.items():
            finite = [v for v in values if np.isfinite(v)] if name.startswith("metric/") else []
            if finite:
                postfix[name.split("/", 1)[1]] = f"{finite[-1]:.3g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_end(self, run: Reconstructor) -> None:
        self.bar.close()


class Metrics:
    """Every ``every`` epochs, record ``evaluate(model) -> {name: value}`` as ``metric/<name>``.

    Used with ground truth (simulated data); history holds NaN on epochs not evaluated, so
    every history entry stays one value per epoch. The comparison aligns the whole object in
    complex128 (2435 x 2440 pixels: 0.7 GiB of temporaries, 12-20 s on 2 cores); when one
    takes longer than the epochs since the previous one, a log line says so once, with the
    settings that space them out or turn them off.
    """

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], every: int = 5) -> None:
        self.evaluate, self.every = evaluate, every
        self._told = False

    def on_start(self, run: Reconstructor) -> None:
        pass

    def on_epoch_end(self, run: Reconstructor, epoch: int, logs: dict[str, float]) -> None:
        last = epoch + 1 == run.config.epochs
        values = {}
        if (epoch + 1) % self.every == 0 or last:
            started = time.perf_counter()
            values = self.evaluate(run.model)
            self._tell_if_slow(time.perf_counter() - started, run)
        names = set(values) | {k.split("/", 1)[1] for k in run.history if k.startswith("metric/")}
        epochs_done = len(run.history["loss/total"])
        for name in names:
            series = run.history[f"metric/{name}"]
            series.extend([float("nan")] * (epochs_done - 1 - len(series)))  # one per epoch
            value = values.get(name, float("nan"))
            series.append(value)
            if name in values:
                logs[f"metric/{name}"] = value

    def on_end(self, run: Reconstructor) -> None:
        pass

    def _tell_if_slow(self, seconds: float, run: Reconstructor) -> None:
        epochs = run.history.get("time/epoch_s", [])[-self.every:]
        if self._told or not epochs or seconds <= sum(epochs):
            return
        self._told = True
        spaced = math.ceil(4 * seconds * len(epochs) / sum(epochs))  # a fifth of the time
        log.info("comparing with the ground truth took %.1f s, more than the %.1f s of the "
                 "%d epochs before it; log.metric_every=%d spaces it out, log.metrics=false "
                 "turns it off", seconds, sum(epochs), len(epochs), spaced)


class TensorBoard:
    """Scalars every epoch; object/probe images every ``image_every`` epochs; hparams at end."""

    def __init__(self, logger: Logger, hparams: dict[str, Any], image_every: int = 10) -> None:
        self.logger, self.hparams, self.image_every = logger, hparams, image_every

    def on_start(self, run: Reconstructor) -> None:
        pass

    def on_epoch_end(self, run: Reconstructor, epoch: int, logs: dict[str, float]) -> None:
        step = epoch + 1
        self.logger.scalars(logs, step)
        self.logger.scalars({f"lr/{k}": v for k, v in run.plan.learning_rates().items()}, step)
        if step % self.image_every == 0 or step == run.config.epochs:
            self.images(run, step)

    def images(self, run: Reconstructor, step: int) -> None:
        """Amplitude and phase images of the object (slice 0), probe modes and pupil. An object
        larger than ``viz.MAX_SHOWN`` per side is logged block-averaged (the full one is in
        reconstruction.h5): 2435 x 2440 pixels took 7.6 s and 29 MB of event file per step."""
        from diffrecon.viz import for_display  # matplotlib: imported when first needed

        results = run.model.results()
        if "object" in results:
            obj = np.asarray(results["object"])
            self.logger.complex_image(
                "object", for_display(obj.reshape(-1, *obj.shape[-2:])[0]), step)
        if "probe" in results:
            for mode, field in enumerate(np.asarray(results["probe"])[:4]):
                self.logger.complex_image(f"probe/mode{mode}", field, step)
        if "pupil" in results:
            self.logger.complex_image("pupil", np.asarray(results["pupil"]), step)

    def on_end(self, run: Reconstructor) -> None:
        final = {k: v[-1] for k, v in run.history.items()
                 if (k.startswith("metric/") or k == "loss/total") and v and np.isfinite(v[-1])}
        self.logger.hparams(self.hparams, {f"final/{k}": float(v) for k, v in final.items()})
        self.logger.flush()


class Checkpoint:
    """Atomically write the full run state as ``name`` in ``folder`` every ``every`` epochs and
    at the end. When an epoch's checkpoint cannot be written the run stops (RunFolderError;
    the previous checkpoint is intact); the final one goes to the folder's fallback instead,
    which the end of the run reports."""

    def __init__(self, folder: RunFolder, config: Any, every: int = 10,
                 name: str = "checkpoint.pt") -> None:
        self.folder, self.config, self.every, self.name = folder, config, every, name

    @property
    def path(self) -> Path:
        return self.folder.path / self.name

    def save(self, run: Reconstructor, rescue: bool = True) -> None:
        state = self.state(run)
        self.folder.write(self.name, lambda path: save_checkpoint(path, state), rescue=rescue)

    def state(self, run: Reconstructor) -> dict[str, Any]:
        return {
            "epoch": run.epoch,
            "model": run.model.state_dict(),
            "plan": run.plan.state_dict(),
            "algorithm_state": run.state,
            "history": dict(run.history),
            "recoveries": run.recoveries,
            "config": dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config)
            else self.config,
        }

    def on_start(self, run: Reconstructor) -> None:
        pass

    def on_epoch_end(self, run: Reconstructor, epoch: int, logs: dict[str, float]) -> None:
        if self.every and (epoch + 1) % self.every == 0:
            try:
                self.save(run, rescue=False)
            except RunFolderError as error:
                raise RunFolderError(f"{error}; the run stopped after epoch {epoch + 1}, its "
                                     "previous checkpoint (if any) is intact and --resume "
                                     "continues from it") from None

    def on_end(self, run: Reconstructor) -> None:
        self.save(run)


def resume(run: Reconstructor, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
    """Put a freshly built run into the state the checkpoint ``source`` recorded; ConfigError
    when it was made from another scan or other model settings."""
    _check_same_model(run.model.state_dict(), state["model"], source)
    run.model.load_state_dict(state["model"])
    run.plan.load_state_dict(state["plan"])
    run.state = state["algorithm_state"]
    run.history.clear()
    run.history.update({k: list(v) for k, v in state["history"].items()})
    run.epoch = int(state["epoch"])
    run.recoveries = int(state["recoveries"])


def _check_same_model(current: dict[str, Any], saved: dict[str, Any], source: str | Path) -> None:
    """ConfigError naming the first parameter whose shape (or presence) differs between the
    checkpoint ``source``'s model state ``saved`` and this run's ``current``."""
    mismatched = [(name, tuple(saved[name].shape), tuple(value.shape))
                  for name, value in current.items()
                  if name in saved and tuple(saved[name].shape) != tuple(value.shape)]
    if mismatched:
        name, before, now = mismatched[0]
        more = f" (and {len(mismatched) - 1} more parameters)" if len(mismatched) > 1 else ""
        raise ConfigError(
            f"{source}: parameter '{name}' has shape {before} in the checkpoint but {now} for "
            f"this data{more}: the checkpoint belongs to another scan (or other model "
            "settings); resume it with the data file it was made from, or start a new run "
            "without --resume")
    differ = sorted(set(current) ^ set(saved))
    if differ:
        raise ConfigError(f"{source}: the checkpoint's model has other parameters than this "
                          f"run's ({', '.join(differ[:4])}): it was made with other model "
                          "settings; start a new run without --resume")
