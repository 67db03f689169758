"""Run PtyRAD (ptyrad) on the shared CXI file; executed inside its own virtual environment.

    python ptyrad_worker.py SCAN.cxi OUT.npz EPOCHS SNAPSHOT_EVERY THREADS BUDGET_S

Stops after EPOCHS epochs or once the timed epochs exceed BUDGET_S seconds.

Recipe: the package's "minimal" template (its defaults for the model, losses and constraints;
minibatches of 32), one probe mode and one slice (``params_for`` says why the electron branch);
measurements, positions and the probe start are handed over as arrays ('custom' sources):
positions as
probe-window corners in object pixels, the probe start the generic mean-pattern probe of
``handoff.mean_pattern_probe`` (PtyRAD's own probe simulation needs optics parameters that a
data file does not carry). Epochs are PtyRAD's ``recon_step`` calls, one at
a time; only those are timed.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import handoff  # noqa: E402

MARGIN_PX = 10  #: object pixels between the scan's probe windows and the object edge


class _NoPlots(types.ModuleType):
    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def without_plotting() -> None:
    """Stand-ins for ``ptyrad.plotting``: ptyrad 1.0.0's plotting/basic.py uses the Python 3.12
    f-string grammar (PEP 701) and does not compile on this machine's Python 3.11, although
    the package declares Python >= 3.10; the reconstruction imports it only to draw figures,
    which this benchmark does not ask for (``SAVE_ITERS`` None), so the timed work is the
    package's own."""
    for name in ("ptyrad.plotting", "ptyrad.plotting.basic", "ptyrad.plotting.model"):
        sys.modules.setdefault(name, _NoPlots(name))


def params_for(scan: handoff.ScanFile, epochs: int, folder: str) -> dict:
    """PtyRAD parameters for the scan.

    PtyRAD 1.0.0's X-ray branch does not initialise (``Initializer.set_variables_dict`` reads
    keys its validation never fills, then raises UnboundLocalError on ``simu_match_mode``).
    With one slice, a given probe and given positions, its far-field forward model does not
    depend on the illumination type: wavelength and pixel size only label lengths. So the
    electron branch is used, with the object pixel (in Angstrom, PtyRAD's electron unit) as
    the 'dx' calibration; the voltage and convergence angle only feed its own probe
    simulation, which the 'custom' probe skips.
    """
    import numpy as np

    n = scan.frame
    corners = scan.positions_px() - n / 2
    corners += MARGIN_PX - corners.min(axis=0)
    probe = handoff.mean_pattern_probe(scan)[None]
    return {
        "init_params": {
            "probe_illum_type": "electron", "probe_kv": 80, "probe_conv_angle": 20,
            "meas_Npix": n, "pos_N_scans": len(corners), "pos_N_scan_slow": 1,
            "pos_N_scan_fast": len(corners), "pos_scan_step_size": 1.0,
            "meas_calibration": {"mode": "dx", "value": scan.object_pixel_m * 1e10},
            "probe_pmode_max": 1, "obj_Nlayer": 1, "obj_slice_thickness": 1.0,
            "meas_flipT": None, "pos_scan_rand_std": None,
            "meas_source": "custom", "meas_params": scan.patterns * scan.valid,
            "probe_source": "custom", "probe_params": probe.astype(np.complex64),
            "pos_source": "custom", "pos_params": corners.astype(np.float32),
        },
        "recon_params": {"NITER": epochs, "BATCH_SIZE": {"size": 32, "grad_accumulation": 1},
                         "SAVE_ITERS": None, "output_dir": folder},
    }


def main(path: str, out: str, epochs: int, every: int, threads: int,
         budget_s: float) -> None:
    handoff.without_torchvision_ops()
    without_plotting()
    import numpy as np
    import torch
    from ptyrad.params.ptyrad_params import PtyRADParams
    from ptyrad.solver import PtyRADSolver
    from ptyrad.solver.reconstruction import (
        compute_loss,
        create_optimizer,
        create_scheduler,
        prepare_recon,
        recon_step,
        toggle_grad_requires,
    )

    torch.set_num_threads(threads)
    base = handoff.resident_mb()
    started = time.perf_counter()
    scan = handoff.read_scan(path)
    params = PtyRADParams(**params_for(scan, epochs, str(Path(out).parent / "ptyrad_output"))
                          ).model_dump()
    solver = PtyRADSolver(params, device="cpu", seed=0)
    from ptyrad.core import PtychoModel

    model = PtychoModel(solver.init.init_variables, params["model_params"], device="cpu")
    optimizer = create_optimizer(model.optimizer_params, model.optimizable_params)
    scheduler = create_scheduler(model.scheduler_params, optimizer)
    _, batches, _ = prepare_recon(model, solver.init, params)
    batches = [torch.from_numpy(b) for b in batches]
    setup = time.perf_counter() - started

    def step(epoch: int) -> None:
        toggle_grad_requires(model, epoch)
        recon_step(batches, 1, model, optimizer, scheduler, solver.loss_fn,
                   solver.constraint_fn, epoch, compute_loss_fn=compute_loss)

    def snapshot() -> np.ndarray:
        with torch.no_grad():
            obj = model.opt_obja.cpu().numpy() * np.exp(1j * model.opt_objp.cpu().numpy())
        return obj.reshape(-1, *obj.shape[-2:])[0]

    objects, done, seconds = handoff.run_epochs(step, snapshot, epochs, every, budget_s)
    handoff.save_snapshots(out, objects, done, seconds, setup, handoff.peak_mb() - base,
                           scan.object_pixel_m,
                           note="minimal template, batch 32, mean-pattern probe start")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
         float(sys.argv[6]))
