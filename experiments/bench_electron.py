"""Electron ptychography benchmark (issue 4): accuracy, depth sectioning, aberration fitting.

    PYTHONPATH=. python experiments/bench_electron.py      # all cases, 2 CPU threads
    PYTHONPATH=. python experiments/bench_electron.py --cases monolayer

Cases (scenes and run configs in experiments/configs/electron_*.toml):
``monolayer`` (a) MoS2 monolayer, 80 kV, 20 mrad, 1e5 e/A^2, single-slice reconstruction of a
    phase object: phase NRMSE against the true projected phase over the region lit above 10%
    of the maximum (target <= 0.15), and the atom columns resolved (``columns_resolved``:
    every true column reproduced as a local phase maximum within 1.5 px, no spurious ones);
``depth`` (b) two MoS2 layers (the second twisted by 30 deg) 10 nm apart: a 5-slice
    reconstruction should put each lattice's Bragg contrast in the right slice (within one),
    which a single-slice one cannot (its data misfit is reported);
``aberrations`` (c) C10 started 10 nm off with C30 unknown (true 20 um): |fitted C10 - true|
    should be below 1 nm.
Seconds per epoch are printed; results go to experiments/out/bench_electron.json.

``--peers ptyrad ptyrad_1mode`` also runs PtyRAD (its own virtual environment,
``--ptyrad-python``) on the very same simulated files of ``monolayer`` and ``depth``, in the
same run and with the same thread count: the hand-off file is written by
``peers/electron_handoff.py``, PtyRAD is run by ``peers/ptyrad_electron.py`` with the settings
of its "standard" template (``ptyrad``: 6 probe modes; ``ptyrad_1mode``: one coherent probe,
our model complexity) for as many iterations as our epochs (``--peer-iterations``), and its
object is scored with the same metric and mask. Seconds per epoch are medians over epochs
(iterations), set-up excluded, with load averages beside them; on shared cores the process
CPU seconds per epoch (all threads, set-up included, ``cpu_s_per_epoch``) is the steadier
figure. The side-by-side
table goes to experiments/out/bench_electron_peers.json (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import diffrecon
from diffrecon import config as cfg
from diffrecon.api import Result
from diffrecon.data.container import DiffractionData
from diffrecon.losses.metrics import align

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "peers"))
from electron_handoff import (  # noqa: E402
    HandOff,
    crop_to_grid,
    read_result,
    with_ptyrad_layout,
    write_handoff,
)

CONFIGS = HERE / "configs"
QUIET = ["log.progress=false", "log.tensorboard=false", "log.metrics=false"]


def phase_nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """||phi_est - phi_true|| / ||phi_true - mean|| over ``mask``, after alignment.

    Shift, phase ramp and global phase are removed (``metrics.align``) and the mean phase
    difference inside the mask is subtracted (the phase is defined up to a constant).
    """
    aligned = align(estimate, truth, mask=mask).numpy()
    difference = np.angle(aligned * np.conj(truth))[mask]
    difference -= difference.mean()
    reference = np.angle(truth)[mask]
    return float(np.linalg.norm(difference) / np.linalg.norm(reference - reference.mean()))


def local_maxima(phase: np.ndarray, mask: np.ndarray, floor: float) -> np.ndarray:
    """(K, 2) pixel indices of the 3x3 local maxima of ``phase`` above ``floor`` in ``mask``."""
    field = torch.as_tensor(phase, dtype=torch.float64)[None, None]
    peak = field == torch.nn.functional.max_pool2d(field, 3, stride=1, padding=1)
    return np.argwhere(peak[0, 0].numpy() & mask & (phase > floor))


def columns_resolved(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                     radius_px: float = 1.5) -> dict[str, float]:
    """Atom columns: the local maxima above 30% of the phase range (5th percentile to max)
    inside the eroded mask, found alike in the true projected phase and in the aligned
    estimate. ``columns_resolved_fraction``: true columns with an estimated one within
    ``radius_px``; ``spurious_columns_fraction``: estimated ones with no true column within
    ``radius_px``, per true column (noise or artefacts score high here)."""
    aligned = align(estimate, truth, mask=mask).numpy()
    inner = torch.nn.functional.max_pool2d(  # erode: no column on the mask's rim
        torch.as_tensor(~mask, dtype=torch.float64)[None, None], 5, stride=1, padding=2)
    inner = inner[0, 0].numpy() == 0

    def columns(phase: np.ndarray) -> np.ndarray:
        low, high = np.percentile(phase[inner], [5, 100])
        return local_maxima(phase, inner, low + 0.3 * (high - low))

    true_columns = columns(np.angle(truth))
    found = columns(np.angle(aligned * np.conj(truth.mean())))
    if len(found) == 0:
        return {"columns": float(len(true_columns)), "columns_resolved_fraction": 0.0,
                "spurious_columns_fraction": 0.0}
    distance = np.linalg.norm(true_columns[:, None, :] - found[None, :, :], axis=-1)
    return {"columns": float(len(true_columns)),
            "columns_resolved_fraction": float(np.mean(distance.min(axis=1) <= radius_px)),
            "spurious_columns_fraction": float(np.sum(distance.min(axis=0) > radius_px)
                                               / max(len(true_columns), 1))}


def run(data: DiffractionData, config: Path | dict, overrides: list[str],
        quiet: list[str] = QUIET) -> tuple[Result, float]:
    """A reconstruction and its seconds per epoch (``quiet``: the logging overrides)."""
    start = time.perf_counter()
    result = diffrecon.reconstruct(data, "multislice", config, overrides=[*overrides, *quiet])
    seconds = (time.perf_counter() - start) / len(result.history["loss/total"])
    return result, seconds


def epoch_median(result: Result) -> float:
    """Median wall time of one epoch (no set-up), seconds."""
    return float(np.median(result.history["time/epoch_s"]))


@dataclasses.dataclass
class PeerOptions:
    """Which peers to run and how: ``names`` from PEERS, each with its own Python."""

    names: list[str]
    ptyrad_python: Path
    iterations: int | None  # None: as many as our epochs
    threads: int


# peer runs by name: (script in peers/, its extra arguments)
PEERS = {"ptyrad": ("ptyrad_electron.py", ["--probe-modes", "6"]),  # its standard template
         "ptyrad_1mode": ("ptyrad_electron.py", ["--probe-modes", "1"])}  # our complexity


def handoff_for(data: DiffractionData, result: Result, slices: int, thickness_m: float,
                iterations: int) -> HandOff:
    """The hand-off of ``data`` with our reconstruction's grid (its initial window corners)."""
    meta = data.metadata
    return HandOff(
        measurements=np.asarray(data.patterns[:], np.float32),
        positions_m=np.asarray(data.positions_m, np.float64),
        our_corners_px=np.asarray(result.results["positions_initial_px"], np.float64),
        voltage_v=float(meta["voltage_v"]), convergence_mrad=float(meta["convergence_mrad"]),
        pixel_size_m=float(result.model.pixel_size_m[1]), defocus_m=float(meta["defocus_m"]),
        cs_m=float(meta.get("cs_m", 0.0)), slices=slices, slice_thickness_m=thickness_m,
        scan_shape=tuple(int(v) for v in meta["scan_shape"].split()), iterations=iterations)


def run_peer(python: Path, script: str, arguments: list[str], handoff: HandOff,
             threads: int) -> dict:
    """One peer run in its own interpreter: its result arrays and info, or {"error": ...}."""
    with tempfile.TemporaryDirectory() as scratch:
        handoff_path, result_path = Path(scratch) / "handoff.h5", Path(scratch) / "result.h5"
        write_handoff(handoff_path, handoff)
        command = [str(python), str(HERE / "peers" / script), str(handoff_path),
                   str(result_path), "--threads", str(threads), *arguments]
        environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env=environment, capture_output=True, text=True)
        except OSError as error:
            return {"error": f"{command[0]}: {error}"}
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-12:])
            return {"error": f"exit status {done.returncode}: {tail}"}
        out = read_result(result_path)
        out["wall_s"] = time.perf_counter() - start
        return out


def run_peers(options: PeerOptions, data: DiffractionData, result: Result, slices: int,
              thickness_m: float, score: Callable[[np.ndarray, np.ndarray], dict]) -> dict:
    """Each peer on ``data``: seconds per iteration, load average, and ``score(phase, amplitude)``
    of its slices (S, H, W) cut onto our object grid."""
    iterations = options.iterations or len(result.history["loss/total"])
    handoff = with_ptyrad_layout(handoff_for(data, result, slices, thickness_m, iterations))
    shape = tuple(result.model.object.shape[-2:])
    table = {}
    for label in options.names:
        script, arguments = PEERS[label]
        peer = run_peer(options.ptyrad_python, script, arguments, handoff, options.threads)
        if "error" in peer:
            table[label] = {"error": peer["error"]}
            print(label, "failed:", peer["error"], flush=True)
            continue
        offset = handoff.object_offset_px
        phase = crop_to_grid(peer["phase"], offset, shape, 0.0)
        amplitude = crop_to_grid(peer["amplitude"], offset, shape, 1.0)
        info = peer["info"]
        table[label] = {
            **score(phase, amplitude),
            "seconds_per_epoch": float(np.median(peer["iteration_s"])),
            "seconds_per_epoch_mean": float(np.mean(peer["iteration_s"])),
            "cpu_s_per_epoch": info["cpu_s"] / len(peer["iteration_s"]),
            "iterations": len(peer["iteration_s"]), "wall_s": peer["wall_s"],
            "final_loss": float(peer["loss"][-1]), "threads": info["threads"],
            "load_average_before": info["load_average_before"],
            "load_average_after": info["load_average_after"],
            "version": info["version"], "probe_modes": info["probe_modes"]}
    return table


def monolayer(peers: PeerOptions | None = None) -> dict[str, float | dict]:
    data = diffrecon.simulate(CONFIGS / "electron_mos2.toml")
    cpu = time.process_time()
    result, seconds = run(data, {}, ['model.object_kind="phase"', "recon.epochs=40"])
    cpu = (time.process_time() - cpu) / len(result.history["loss/total"])
    model = result.model
    mask = model.truth_mask()
    truth = model.comparable(data.truth.object)

    def score(transmission: np.ndarray) -> dict[str, float]:
        estimate = model.comparable(transmission)
        return {"phase_nrmse": phase_nrmse(estimate, truth, mask),
                **columns_resolved(estimate, truth, mask)}

    out: dict[str, float | dict] = {
        **score(result.results["object"]), "final_loss": result.history["loss/total"][-1],
        "seconds_per_epoch": seconds, "epoch_s_median": epoch_median(result),
        "cpu_s_per_epoch": cpu}
    if peers is not None:
        out["peers"] = run_peers(peers, data, result, 1, 1e-9,
                                 lambda phase, amplitude: score(amplitude * np.exp(1j * phase)))
    return out


def lattice_spots(phase: np.ndarray, count: int = 6) -> np.ndarray:
    """Boolean mask (H, W) of the ``count`` strongest non-DC Fourier peaks (+- 1 px)."""
    power = np.abs(np.fft.fft2(phase - phase.mean())) ** 2
    power[:3, :3] = power[-2:, -2:] = power[:3, -2:] = power[-2:, :3] = 0  # DC neighbourhood
    spots = np.zeros(power.shape, bool)
    for index in np.argsort(power.ravel())[::-1][:count]:
        y, x = np.unravel_index(index, power.shape)
        spots[np.ix_(np.arange(y - 1, y + 2) % power.shape[0],
                     np.arange(x - 1, x + 2) % power.shape[1])] = True
    return spots


def lattice_depth_profile(phases: np.ndarray, spots: np.ndarray) -> np.ndarray:
    """Fourier power at ``spots`` of each slice (S,), from phases (S, H, W)."""
    return np.array([float((np.abs(np.fft.fft2(p - p.mean())) ** 2)[spots].sum())
                     for p in phases])


def depth(peers: PeerOptions | None = None) -> dict[str, float | list[float] | dict]:
    data = diffrecon.simulate(CONFIGS / "electron_gap.toml")
    cpu = time.process_time()
    multi, seconds = run(data, CONFIGS / "electron_gap_recon.toml", [])
    cpu = (time.process_time() - cpu) / len(multi.history["loss/total"])
    single, single_seconds = run(data, CONFIGS / "electron_gap_recon.toml",
                                 ["model.slices=1"])
    box = np.ix_(*[np.flatnonzero(multi.model.truth_mask().any(axis=a)) for a in (1, 0)])
    truth = np.angle(data.truth.object)[(slice(None), *box)]
    thickness = float(np.mean(multi.results["slice_thickness_m"]))
    expected = [0, int(round(float(data.metadata.get("layer_gap_m", 10e-9)) / thickness))]

    def score(phases: np.ndarray) -> dict[str, float | list[float]]:
        """Depth profile of each lattice's Bragg power in ``phases`` (S, H, W)."""
        out: dict[str, float | list[float]] = {}
        for layer, name in enumerate(("layer0", "layer1")):
            profile = lattice_depth_profile(phases[(slice(None), *box)],
                                            lattice_spots(truth[layer]))
            out[f"{name}_profile"] = (profile / profile.max()).round(3).tolist()
            out[f"{name}_peak_slice"] = int(np.argmax(profile))
            out[f"{name}_expected_slice"] = expected[layer]
        return out

    out: dict[str, float | list[float] | dict] = {
        "seconds_per_epoch": seconds, "epoch_s_median": epoch_median(multi),
        "cpu_s_per_epoch": cpu,
        "single_slice_seconds_per_epoch": single_seconds, **score(multi.results["phase"]),
        "multislice_final_loss": multi.history["loss/total"][-1],
        "single_slice_final_loss": single.history["loss/total"][-1]}
    if peers is not None:
        out["peers"] = run_peers(peers, data, multi, multi.model.object.shape[0], thickness,
                                 lambda phase, amplitude: score(phase))
    return out


def aberrations(peers: PeerOptions | None = None) -> dict[str, float]:
    scene = {**cfg.load_toml(CONFIGS / "electron_mos2.toml"), "cs_m": 20e-6}
    data = diffrecon.simulate(scene)
    result, seconds = run(data, CONFIGS / "electron_aberrations.toml", [])
    fitted = result.results
    return {"C10_true_nm": 20.0, "C10_start_nm": 30.0, "C10_fit_nm": fitted["C10_m"] * 1e9,
            "C10_error_nm": abs(fitted["C10_m"] - 20e-9) * 1e9,
            "C30_true_um": 20.0, "C30_fit_um": fitted["C30_m"] * 1e6,
            "seconds_per_epoch": seconds}


CASES = {"monolayer": monolayer, "depth": depth, "aberrations": aberrations}


def peer_table(results: dict) -> list[dict]:
    """One row per (case, package): seconds per epoch and the case's accuracy figures."""
    keys = {"monolayer": ["phase_nrmse"],
            "depth": ["layer0_peak_slice", "layer1_peak_slice", "layer0_expected_slice",
                      "layer1_expected_slice"]}
    rows = []
    for case, result in results.items():
        if "peers" not in result:
            continue
        ours = {"case": case, "package": "diffrecon", "seconds_per_epoch": result[
            "epoch_s_median"], "cpu_s_per_epoch": result["cpu_s_per_epoch"],
            **{k: result[k] for k in keys[case]}}
        rows.append(ours)
        for label, peer in result["peers"].items():
            row = {"case": case, "package": label}
            row.update({"error": peer["error"]} if "error" in peer else {
                "seconds_per_epoch": peer["seconds_per_epoch"],
                "cpu_s_per_epoch": peer["cpu_s_per_epoch"], **{k: peer[k] for k in keys[case]},
                "ratio_ours_to_peer": result["epoch_s_median"] / peer["seconds_per_epoch"],
                "cpu_ratio_ours_to_peer": result["cpu_s_per_epoch"] / peer["cpu_s_per_epoch"]})
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", nargs="*", default=[], choices=list(PEERS),
                        help="also run these packages on the same files (monolayer, depth)")
    parser.add_argument("--ptyrad-python", type=Path,
                        default=Path(os.environ.get("PTYRAD_PYTHON",
                                                    "/work/venvs/ptyrad/bin/python")),
                        help="the Python of PtyRAD's virtual environment")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "bench_electron_peers.json",
                        help="the side-by-side table (with --peers)")
    parser.add_argument("--peer-iterations", type=int, default=None,
                        help="peer iterations (default: our epochs; PtyRAD's templates: 200)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = PeerOptions(args.peers, args.ptyrad_python, args.peer_iterations,
                        args.threads) if args.peers else None
    results: dict[str, dict] = {}
    for name in args.cases:
        start = time.perf_counter()
        load = os.getloadavg()
        results[name] = CASES[name](peers)
        results[name]["wall_s"] = time.perf_counter() - start
        results[name]["load_average"] = [*load, *os.getloadavg()]
        print(name, json.dumps(results[name], indent=1), flush=True)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    if peers is None:
        (out / "bench_electron.json").write_text(json.dumps(results, indent=1))
        return
    table = peer_table(results)
    for row in table:
        print("  ".join(f"{key}={value}" for key, value in row.items()), flush=True)
    args.out.write_text(json.dumps(
        {"threads": args.threads, "table": table, "cases": results}, indent=1))


if __name__ == "__main__":
    main()
