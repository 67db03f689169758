"""Run pty-chi (ptychi) on the shared CXI file; executed inside its own virtual environment.

    python ptychi_worker.py SCAN.cxi OUT.npz EPOCHS SNAPSHOT_EVERY THREADS BUDGET_S

Stops after EPOCHS epochs or once the timed epochs exceed BUDGET_S seconds.

Recipe (the package's LSQML tests and docs): ``LSQMLOptions`` with its default step sizes
(object and probe 1, optimal-step scaler 0.9), Gaussian noise model, minibatches of 96,
object started as ones on ``get_suggested_object_size(..., extra=100)``, positions from the
file (zero-centred, object pixels), CPU. pty-chi needs a probe start and has no data-driven
initialiser, so it gets the generic mean-pattern probe of ``handoff.mean_pattern_probe``.
Epochs run one ``task.run(1)`` at a time; only those calls are timed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import handoff  # noqa: E402


def main(path: str, out: str, epochs: int, every: int, threads: int,
         budget_s: float) -> None:
    handoff.without_torchvision_ops()
    import numpy as np
    import ptychi.api as api
    import torch
    from ptychi.api.task import PtychographyTask
    from ptychi.utils import get_suggested_object_size

    torch.set_num_threads(threads)
    base = handoff.resident_mb()
    started = time.perf_counter()
    scan = handoff.read_scan(path)
    positions = scan.positions_px()
    positions -= (positions.max(axis=0) + positions.min(axis=0)) / 2
    probe = handoff.mean_pattern_probe(scan)[None, None]
    options = api.LSQMLOptions()
    options.data_options.wavelength_m = scan.wavelength_m
    options.object_options.pixel_size_m = scan.object_pixel_m
    options.probe_position_options.optimizable = False
    options.reconstructor_options.batch_size = 96
    options.reconstructor_options.num_epochs = epochs
    options.reconstructor_options.default_device = api.Devices.CPU
    options.reconstructor_options.random_seed = 0
    size = get_suggested_object_size(positions, probe.shape[-2:], extra=100)
    task = PtychographyTask(
        options, diffraction_data=scan.patterns, valid_pixel_mask=scan.valid,
        object_data=torch.ones((1, *size), dtype=torch.complex64),
        probe_data=torch.as_tensor(probe), probe_position_y_px=positions[:, 0],
        probe_position_x_px=positions[:, 1])
    setup = time.perf_counter() - started

    def snapshot() -> np.ndarray:
        obj = np.asarray(task.get_data_to_cpu("object", as_numpy=True))
        return obj.reshape(-1, *obj.shape[-2:])[0]

    objects, done, seconds = handoff.run_epochs(lambda _: task.run(1), snapshot, epochs, every,
                                                budget_s)
    handoff.save_snapshots(out, objects, done, seconds, setup, handoff.peak_mb() - base,
                           scan.object_pixel_m,
                           note="LSQML defaults, batch 96, mean-pattern probe start")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
         float(sys.argv[6]))
