"""pAET benchmark (issue 7): joint ptychographic tomography vs the two-step baseline.

    PYTHONPATH=. python experiments/bench_paet.py                 # all cases, 2 CPU threads
    PYTHONPATH=. python experiments/bench_paet.py --cases angles --epochs 30

Scene (experiments/configs/paet_bench.toml): an fcc Mo-core / S-shell particle of ~100 atoms
in a (D, H, W) voxel grid of 0.5 A, 80 kV, 20 mrad, a raster scan at each of 15 tilts over
+-60 deg, Poisson noise at the configured dose per tilt. Cases:

``joint`` joint pAET (``ptycho_tomo``) with the file's true angles: 3D NRMSE of the volume
    against the truth (plain ||est - true|| / ||true||, physical units, no rescaling), atoms
    found within 0.5 A (target >= 95 %), species guessed right; and the two-step baseline
    (``recon.tomography.two_step``: per-tilt single-slice ptychography + SIRT) on the same
    data, same measures (target: joint beats it in NRMSE).
``angles`` the file's angles carry 1 deg rms errors (about y and x, per tilt); joint pAET with
    angle refinement: rms angle error after the fit, the common offset removed (the gauge)
    (target < 0.2 deg).
``scaling`` seconds per epoch and peak memory against the number of tilts (each point in a
    fresh process, 2 epochs).
Results go to experiments/out/bench_paet.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import diffrecon
from diffrecon import config as cfg
from diffrecon.data.particles import match_atoms, trace_atoms
from diffrecon.data.simulate_tomo import TomoSimulation, particle, simulate_tomo, tilt_angles
from diffrecon.physics.optics import interaction_constant
from diffrecon.recon.tomography import two_step

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "bench"))
import handoff  # noqa: E402  (peak memory: VmHWM, which exec does not inherit)

SCENE = HERE / "configs" / "paet_bench.toml"
QUIET = {"log": {"progress": False, "tensorboard": False, "metrics": False}}


def scene(**changes: Any) -> TomoSimulation:
    values = cfg.load_toml(SCENE)
    values.update(changes)
    return cfg.from_dict(TomoSimulation, values)


def volume_scores(estimate: np.ndarray, settings: TomoSimulation, truth: np.ndarray
                  ) -> dict[str, float]:
    """3D NRMSE and atom-tracing scores of a volume of phases per voxel."""
    voxel = settings.pixel_size_m
    potential = estimate / (interaction_constant(settings.voltage_v) * voxel)
    atoms, elements = particle(settings)
    found, species = trace_atoms(potential, voxel, species=tuple(settings.species))
    match, distance = match_atoms(found, atoms, 0.5e-10)
    matched = match >= 0
    right = [species[m] == e for m, e in zip(match, elements, strict=True) if m >= 0]
    return {
        "nrmse_3d": float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth)),
        "atoms_true": len(atoms), "atoms_traced": len(found),
        "atoms_found_within_0.5A": float(matched.mean()),
        "median_position_error_A": float(np.median(distance[matched]) * 1e10)
        if matched.any() else float("nan"),
        "false_atoms": int(len(found) - matched.sum()),
        "species_right": float(np.mean(right)) if right else float("nan"),
    }


def joint(data: diffrecon.DiffractionData, settings: TomoSimulation, epochs: int,
          refine_angles: bool) -> tuple[diffrecon.Result, float]:
    config = {"model": {"depth_px": settings.depth_px, "padding_px": settings.padding_px},
              "recon": {"epochs": epochs},
              "params": {"probe": {"enabled": False},
                         "tilts": {"enabled": refine_angles},
                         "shifts": {"enabled": False}}, **QUIET}
    start = time.perf_counter()
    result = diffrecon.reconstruct(data, "ptycho_tomo", config)
    return result, (time.perf_counter() - start) / epochs


def case_joint(epochs: int) -> dict[str, Any]:
    settings = scene()
    data = simulate_tomo(settings)
    truth = np.angle(data.truth.object)
    result, seconds = joint(data, settings, epochs, refine_angles=False)
    out = {"joint": {**volume_scores(result.results["phase"], settings, truth),
                     "seconds_per_epoch": seconds, "epochs": epochs}}
    start = time.perf_counter()
    baseline = two_step(data, {"model": {"padding_px": settings.padding_px, "positivity": True},
                               "recon": {"epochs": epochs}, "params": {"probe": {
                                   "enabled": False}}, **QUIET}, truth.shape[0])
    out["two_step"] = {**volume_scores(baseline, settings, truth),
                       "seconds_total": time.perf_counter() - start}
    out["joint_beats_two_step"] = out["joint"]["nrmse_3d"] < out["two_step"]["nrmse_3d"]
    out["atoms_target_met"] = out["joint"]["atoms_found_within_0.5A"] >= 0.95
    return out


def case_angles(epochs: int) -> dict[str, Any]:
    settings = scene(angle_error_deg=1.0)
    data = simulate_tomo(settings)
    true, recorded = tilt_angles(settings)
    result, seconds = joint(data, settings, epochs, refine_angles=True)

    def rms(angles: np.ndarray) -> float:
        error = np.degrees(angles - true)[:, :2]
        return float(np.sqrt(np.mean((error - error.mean(0)) ** 2)))

    after = rms(result.results["tilts_rad"])
    scores = volume_scores(result.results["phase"], settings, np.angle(data.truth.object))
    return {"angle_error_before_deg": rms(recorded), "angle_error_after_deg": after,
            "target_met": after < 0.2, "seconds_per_epoch": seconds, "epochs": epochs,
            **scores}


def scaling_point(tilts: int) -> dict[str, Any]:
    settings = scene(tilts=tilts)
    data = simulate_tomo(settings)
    result, _ = joint(data, settings, 2, refine_angles=True)
    return {"tilts": tilts, "patterns": data.num_patterns,
            "seconds_per_epoch": float(np.mean(result.history["time/epoch_s"])),
            "peak_rss_MiB": handoff.peak_mb()}


def case_scaling(points: list[int], threads: int) -> list[dict[str, Any]]:
    rows = []
    for tilts in points:
        output = subprocess.run([sys.executable, __file__, "--scaling-point", str(tilts),
                                 "--threads", str(threads)],
                                check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=["joint", "angles", "scaling"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--scaling-tilts", type=int, nargs="*", default=[5, 10, 15])
    parser.add_argument("--scaling-point", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_paet.json"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (issue: 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scaling_point is not None:
        print(json.dumps(scaling_point(args.scaling_point)))
        return
    settings = dataclasses.asdict(scene())
    report: dict[str, Any] = {"scene": settings, "threads": args.threads}
    for case in args.cases:
        start = time.perf_counter()
        if case == "joint":
            report[case] = case_joint(args.epochs)
        elif case == "angles":
            report[case] = case_angles(args.epochs)
        else:
            report[case] = case_scaling(args.scaling_tilts, args.threads)
        print(case, f"({time.perf_counter() - start:.0f} s):",
              json.dumps(report[case], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
