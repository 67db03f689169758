"""Bragg CDI benchmark: a strained faceted nanocrystal and a screw dislocation, simulated.

    python experiments/bench_bcdi.py                       # both cases, 1 CPU thread
    python experiments/bench_bcdi.py --cases smooth --starts 2 --recipe "hio:600,er:100"

Cases (the ``bragg`` simulator, :mod:`diffrecon.data.simulate_bragg`): a cube truncated by
{111} facets, about 40 lab voxels across, in a 128^3 rocking-curve volume (Pt 111 at 9 keV,
55 um pixels at 1 m, rocking step of one pixel's q), Poisson at 1e9 photons:

- ``smooth``: a smooth displacement field along Q with peak strain 1e-3;
- ``dislocation``: one screw dislocation whose line runs along Q off the centre.

Each is reconstructed by the ``bragg`` model (HIO + shrinkwrap, ER, Poisson refinement,
``--starts`` random starts ranked by the R-factor against the data, never the truth). Then the
best start is aligned with the true object on the detector grid (sub-voxel shift, twin, phase
ramp, global phase: the phase-retrieval ambiguities) and mapped onto the lab grid like the
truth's analytic fields. Measured:

- ``support_iou``: the reconstructed support (|rho| above 30 % of its maximum, after alignment)
  against the true crystal, intersection over union;
- ``displacement_rmse_d``: RMS of u_rec - u_true (constant removed: not measurable) inside the
  crystal shrunk by 2 voxels, in lattice spacings (target <= 0.05);
- ``strain_rmse``: RMS of the strain error there (target <= 2e-4);
- dislocation: the phase vortices (plaquettes with a 2 pi winding) of the reconstruction, their
  median distance from the true line and the fraction of the true line's plaquettes found
  within 2 voxels of it;
- ``seconds``: time to solution (wall; ``cpu_seconds``: process CPU time, the figure that
  does not depend on what else runs on the machine); ``seconds_per_iteration`` of HIO and its
  ratio to the FFT floor (one forward plus one inverse 3D FFT of the same array, measured in
  the same run).
Results are printed and written to experiments/out/bench_bcdi.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_cdi import fft_floor  # the same FFT-floor measurement as the CDI benchmark

import diffrecon
from diffrecon.data.simulate_bragg import BraggSimulation, bragg_scene, simulate_bragg
from diffrecon.losses.metrics import align
from diffrecon.physics.bragg import lab_frame_maps, lab_grid, phase_vortices

HERE = Path(__file__).parent
QUIET = ["log.progress=false", "log.tensorboard=false", "log.report=false"]


def line_distance_vox(points: torch.Tensor, crystal, voxel: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Distance (voxels) of lab points (N, 3) from the dislocation line (along Q)."""
    q_hat = torch.as_tensor(crystal.q_m / np.linalg.norm(crystal.q_m))
    offset = points - torch.as_tensor(crystal.line)
    return (offset - (offset @ q_hat)[:, None] * q_hat).norm(dim=-1) / voxel


def vortex_points(obj: torch.Tensor, mask: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Lab positions (N, 3) of the plaquettes (corner voxel) with a non-zero phase winding."""
    winding = phase_vortices(obj, mask).abs().sum(0) > 0
    return r[winding]


def evaluate(result, settings: BraggSimulation, truth: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    geometry, crystal = bragg_scene(settings)
    true_support = np.abs(truth) > 0.5 * np.abs(truth).max()
    # as the loop's own evaluator (no mask): correlating with the masked truth can lock onto
    # a wrong shift when the centred data leave a large phase ramp in the estimate
    obj = align(result.results["object"], truth, allow_twin=True)
    (HERE / "out").mkdir(exist_ok=True)
    np.save(HERE / "out" / f"bench_bcdi_{settings.strain}_{settings.peak_strain:g}.npy",
            obj.numpy())
    amplitude = obj.abs()
    found = (amplitude > 0.3 * amplitude.max()).numpy()
    iou = float((found & true_support).sum() / (found | true_support).sum())
    support = torch.as_tensor(true_support)
    maps = lab_frame_maps(obj.to(torch.complex64), support, geometry, remove_ramp=False)
    voxel = float(maps["lab_voxel_size_m"][0])
    r = lab_grid(maps["strain"].shape, voxel, maps["lab_origin_m"])
    inside = torch.as_tensor(maps["strain_mask"])
    u = torch.as_tensor(maps["displacement_m"], dtype=torch.float64)[inside]
    difference = u - crystal.displacement(r)[inside]
    # a constant displacement is unobservable; also fold whole lattice spacings (2 pi turns)
    turns = torch.remainder(difference - difference.median() + crystal.spacing_m / 2,
                            crystal.spacing_m) - crystal.spacing_m / 2
    strain_error = torch.as_tensor(maps["strain"], dtype=torch.float64)[inside] - \
        crystal.strain(r)[inside]
    out = {
        "support_iou": iou,
        "displacement_rmse_d": float(turns.square().mean().sqrt()) / crystal.spacing_m,
        "strain_rmse": float(strain_error.square().mean().sqrt()),
        "true_strain_rms": float(crystal.strain(r)[inside].square().mean().sqrt()),
        "true_strain_peak": float(crystal.strain(r)[inside].abs().max()),
        "lab_voxel_nm": voxel * 1e9, "voxels_compared": int(inside.sum()),
    }
    if crystal.line is not None:
        lab_mask = torch.as_tensor(maps["strain_mask"])
        lab_truth = torch.polar(torch.ones_like(r[..., 0]),
                                float(np.linalg.norm(crystal.q_m)) * crystal.displacement(r))
        lab_rec = torch.polar(torch.ones_like(r[..., 0]), torch.as_tensor(
            np.nan_to_num(maps["phase"]), dtype=torch.float64))
        true_points = vortex_points(lab_truth, lab_mask, r)
        points = vortex_points(lab_rec, lab_mask, r)
        distance = line_distance_vox(points, crystal, voxel)
        out.update({
            "vortex_plaquettes_true": len(true_points), "vortex_plaquettes_found": len(points),
            "vortex_median_distance_vox": float(distance.median()) if len(points) else None,
            "vortex_fraction_within_2vox": float((distance <= 2).sum()) / max(len(true_points),
                                                                               1),
        })
    return out


def run_case(strain: str, recipe: str, starts: int, extra: list[str], peak_strain: float
             ) -> dict:
    settings = BraggSimulation(strain=strain, peak_strain=peak_strain)
    data = simulate_bragg(settings)
    start, cpu = time.perf_counter(), time.process_time()
    result = diffrecon.reconstruct(data, "bragg", overrides=[
        *QUIET, f'algorithm.name="{recipe}"', f"recon.starts={starts}", "recon.average_best=1",
        "log.metric_every=100000", *extra])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    out = {"recipe": recipe, "starts": starts, "overrides": extra, "seconds": seconds,
           "cpu_seconds": cpu,
           "peak_strain": peak_strain if strain in ("smooth", "both") else 0.0,
           "nrmse": result.metrics.get("nrmse")}
    if "start_r_factor" in result.results:
        out["start_r_factor"] = np.round(result.results["start_r_factor"], 4).tolist()
        out["start_nrmse"] = np.round(result.results["start_nrmse"], 4).tolist()
    out.update(evaluate(result, settings, data.truth.object))
    return out


def case_speed() -> dict:
    data = simulate_bragg(BraggSimulation())
    result = diffrecon.reconstruct(data, "bragg", overrides=[
        *QUIET, 'algorithm.name="hio:30"', "log.metrics=false", "model.shrinkwrap_every=0"])
    seconds = statistics.median(result.history["time/epoch_s"][5:])
    floor = fft_floor((128, 128, 128))
    return {"seconds_per_iteration": seconds, "fft_floor_s": floor,
            "ratio_to_fft_floor": seconds / floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="speed,smooth,dislocation")
    parser.add_argument("--recipe", default="hio:600,er:100,gradient:50")
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak-strain", type=float, default=1e-3)
    parser.add_argument("--label", default="", help="suffix of the case names in the JSON")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--out", default=str(HERE / "out" / "bench_bcdi.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.exists() else {}
    for name in args.cases.split(","):
        start = time.perf_counter()
        key = name if name == "speed" else name + args.label
        if name == "speed":
            report[key] = case_speed() | {"threads": args.threads}
        else:
            report[key] = run_case(name, args.recipe, args.starts, args.extra,
                                   args.peak_strain) | {"threads": args.threads}
        print(f"== {key} ({time.perf_counter() - start:.0f} s)")
        print(json.dumps(report[key], indent=1), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
