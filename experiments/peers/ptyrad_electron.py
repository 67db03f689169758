"""Run PtyRAD on a diffrecon 4D-STEM hand-off file; runs inside PtyRAD's own virtual environment.

    /work/venvs/ptyrad/bin/python experiments/peers/ptyrad_electron.py HANDOFF.h5 RESULT.h5 \
        [--threads 2] [--probe-modes 6] [--iterations N] [--workdir DIR]

The environment (outside git; ``bench_electron.py --ptyrad-python`` points at it):

    python3.12 -m venv /work/venvs/ptyrad
    /work/venvs/ptyrad/bin/pip install ptyrad==1.0.0 torch==2.13.0 h5py pyyaml

PtyRAD 1.0.0 declares Python >= 3.10, but its plotting/basic.py uses a Python 3.12 f-string
(nested quotes), and PyPI's torchvision 0.28.0, which it imports, is a CUDA build whose
operators do not load against a ``+cpu`` torch ("operator torchvision::nms does not exist").
This script applies the harness's two workarounds (``workers/ptyrad_worker.without_plotting``,
``handoff.without_torchvision_ops``), so a Python 3.11 venv with the CPU wheel works too.

Settings are those of PtyRAD 1.0.0's "standard" params template (its recommended starting
point): Adam, batches of 32 random patterns, amplitude likelihood (``loss_single``,
dp_pow 0.5), learning rates 5e-4 (object amplitude, phase, positions) and 1e-4 (probe), mixed
probe of 6 modes orthogonalised every iteration, probe intensity fixed to the data, object
amplitude clipped to [0.96, 1.04], 1-slice-std depth blur (``obj_zblur``, a no-op for one
slice), initial positions jittered by 0.15 px. Only the experiment goes in from the hand-off:
voltage, convergence angle, C10/C30 (Angstrom, C10 > 0 overfocus as in diffrecon), pixel size
(``meas_calibration`` mode ``dx``), slices and their thickness, and the scan positions as
probe-window corners on PtyRAD's canvas (``pos_source = custom``). The measurements are read
by PtyRAD's own HDF5 loader from the hand-off file. ``--probe-modes 1`` gives the same model
complexity as diffrecon's single coherent probe. Writes the slices, seconds per iteration
(PtyRAD's own ``iter_times``), losses and the settings to RESULT.h5
(``electron_handoff.write_result``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from electron_handoff import HandOff, read_handoff, write_result  # noqa: E402


def ptyrad_params(handoff: HandOff, path: Path, workdir: Path, probe_modes: int,
                  iterations: int) -> dict[str, Any]:
    """PtyRAD's params (a YAML-ready dict; positions are set after validation)."""
    rows, columns = handoff.scan_shape
    angstrom = 1e10
    steps = np.abs(np.diff(handoff.positions_m[:, 1]))
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 1e-10
    init = {
        "probe_illum_type": "electron",
        "probe_kv": handoff.voltage_v / 1e3,
        "probe_conv_angle": handoff.convergence_mrad,
        "probe_aberrations": {"C10": handoff.defocus_m * angstrom,
                              "C30": handoff.cs_m * angstrom},
        "meas_Npix": int(handoff.measurements.shape[-1]),
        "pos_N_scans": int(handoff.measurements.shape[0]),
        "pos_N_scan_slow": int(rows), "pos_N_scan_fast": int(columns),
        "pos_scan_step_size": step * angstrom,
        "meas_calibration": {"mode": "dx", "value": handoff.pixel_size_m * angstrom},
        "probe_pmode_max": probe_modes,
        "obj_Nlayer": handoff.slices,
        "obj_slice_thickness": handoff.slice_thickness_m * angstrom,
        "meas_flipT": None,  # our patterns are DC-centred |FFT|^2 like PtyRAD's forward model
        "meas_source": "file",
        "meas_params": {"path": str(path), "key": "measurements"},
        "pos_source": "custom",
        "random_seed": 0,
    }
    model = {"update_params": {
        "obja": {"start_iter": 1, "lr": 5.0e-4, "end_iter": None},
        "objp": {"start_iter": 1, "lr": 5.0e-4, "end_iter": None},
        "probe": {"start_iter": 1, "lr": 1.0e-4, "end_iter": None},
        "probe_pos_shifts": {"start_iter": 1, "lr": 5.0e-4, "end_iter": None},
    }}
    every = {"start_iter": 1, "step": 1, "end_iter": None}
    constraints = {
        "ortho_pmode": every, "fix_probe_int": every,
        "obj_zblur": {**every, "obj_type": "both", "kernel_size": 5, "std": 1},
        "obja_thresh": {**every, "relax": 0, "thresh": [0.96, 1.04]},
    }
    loss = {"loss_single": {"state": True, "weight": 1.0, "dp_pow": 0.5}}
    recon = {
        "NITER": iterations, "BATCH_SIZE": {"size": 32, "grad_accumulation": 1},
        "GROUP_MODE": "random", "SAVE_ITERS": None, "output_dir": str(workdir),
        "copy_params": False, "compiler_configs": {"enable": False},
    }
    return {"init_params": init, "model_params": model, "loss_params": loss,
            "constraint_params": constraints, "recon_params": recon}


def run(handoff_path: Path, result_path: Path, threads: int, probe_modes: int,
        iterations: int | None, workdir: Path) -> None:
    import logging

    # the harness's workarounds, so a venv of Python 3.11 with the CPU torch wheel works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "workers"))
    from ptyrad_worker import handoff, without_plotting

    handoff.without_torchvision_ops()
    without_plotting()
    import ptyrad
    import torch
    import yaml
    from ptyrad.params import load_params
    from ptyrad.params.ptyrad_params import PtyRADParams
    from ptyrad.solver import PtyRADSolver

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    handoff = read_handoff(handoff_path)
    iterations = handoff.iterations if iterations is None else iterations
    params = ptyrad_params(handoff, handoff_path, workdir, probe_modes, iterations)
    params_path = workdir / "ptyrad_params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    # PtyRAD's loader normalises the file; its validator (defaults, checks) needs the positions
    params = load_params(str(params_path), validate=False)
    params["init_params"]["pos_params"] = np.asarray(handoff.ptyrad_corners_px, np.float64)
    params.pop("params_path", None)
    params = {**PtyRADParams(**params).model_dump(), "params_path": str(params_path)}
    load_before = os.getloadavg()
    cpu_start = time.process_time()  # all threads: robust to other users of the cores
    solver = PtyRADSolver(params, device="cpu", seed=0, acc=None)
    solver.run()
    cpu_seconds = time.process_time() - cpu_start
    model = solver.reconstruct_results
    phase = model.opt_objp.detach().cpu().numpy()[0]  # (omode, S, H, W) -> first object mode
    amplitude = model.opt_obja.detach().cpu().numpy()[0]
    losses = [float(loss) for _, loss in model.loss_iters]
    info = {"package": "ptyrad", "version": ptyrad.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "probe_modes": probe_modes,
            "iterations": iterations, "cpu_s": cpu_seconds,
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "settings": "PtyRAD 1.0.0 standard template (see ptyrad_electron.py)"}
    write_result(result_path, phase, amplitude, list(model.iter_times), losses, info)
    print(json.dumps({"seconds_per_iteration": float(np.median(model.iter_times)),
                      "final_loss": losses[-1] if losses else None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("handoff", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-modes", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=None,
                        help="default: the hand-off file's")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        run(args.handoff, args.result, args.threads, args.probe_modes, args.iterations, workdir)


if __name__ == "__main__":
    main()
