"""Conventional CDI benchmark: success rate of random starts, averaging, 3D, speed, variants.

Reproduces the figures of the CDI issue (2 CPU threads unless --threads):

    python experiments/bench_cdi.py                      # all cases (about 30 min on 2 cores)
    python experiments/bench_cdi.py --cases 2d --starts 5

Cases
- ``2d``: a 64x64 complex object in a 256x256 array, central 7x7 beamstop, Poisson at 1e8
  photons; ``--starts`` random starts of HIO + shrinkwrap (sigma 3 -> 0.5 px) from the loose
  autocorrelation support, then ER; ranked by the R-factor, the best 5 aligned and averaged.
  Prints the fraction of starts with NRMSE <= 0.1 (after removing shift, global phase and twin),
  the NRMSE of the average and its PRTF; then the same starts with the default recipe, which
  adds 200 epochs of Poisson likelihood refinement by autograd.
- ``oss``: the same object at 1e6 photons: success rates of HIO and of OSS from the same seeds.
- ``3d``: a 32^3 object in a 96^3 array (1e9 photons), HIO + shrinkwrap then ER.
- ``speed``: seconds per HIO iteration for 2D 256^2 and 3D 96^3, and the ratio to the FFT
  floor (one forward plus one inverse FFT of the same array, measured in the same run).
- ``variants``: plane-wave, Fresnel (curved, finite beam) and holographic (pinhole reference)
  CDI of the same object: iterations of HIO until NRMSE <= 0.1.
Results are printed and written to experiments/out/bench_cdi.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_ptycho import synchronizer

import diffrecon
from diffrecon.data.simulate import CDISimulation, cdi_scene, simulate_cdi

HERE = Path(__file__).parent
QUIET = ["log.progress=false", "log.tensorboard=false", "log.report=false"]
HIO = "hio:800,er:100"
REFINED = HIO + ",gradient:200"  # the default recipe: phasing, then Poisson autograd


def reconstruct(data, recipe: str, *extra: str):  # type: ignore[no-untyped-def]
    return diffrecon.reconstruct(data, "cdi", overrides=[f'algorithm.name="{recipe}"', *QUIET,
                                                         *extra])


def success_rate(data, recipe: str, starts: int, threshold: float = 0.1) -> dict:
    """Multistart: NRMSE of every start, the fraction under ``threshold``, the average's."""
    start = time.perf_counter()
    result = reconstruct(data, recipe, f"recon.starts={starts}", "recon.average_best=5",
                         "log.metric_every=100000")
    errors = np.asarray(result.results["start_nrmse"])
    out = {
        "recipe": recipe, "starts": starts, "start_nrmse": np.round(errors, 4).tolist(),
        f"fraction_nrmse_le_{threshold}": float(np.mean(errors <= threshold)),
        "fraction_nrmse_le_0.2": float(np.mean(errors <= 0.2)),
        "average_best5_nrmse": result.metrics["nrmse"],
        "best_start_nrmse": result.metrics["best_start_nrmse"],
        "seconds": time.perf_counter() - start,
    }
    if "prtf" in result.results:
        prtf, freq = result.results["prtf"], result.results["prtf_frequency"]
        out["prtf_at_half_nyquist"] = float(np.interp(0.25, freq, prtf))
        out["prtf_mean"] = float(np.nanmean(prtf[4:]))
    best_seed = int(np.argmin(result.results["start_r_factor"]))
    return out | {"best_seed": best_seed}


def case_2d(starts: int) -> dict:
    """The same starts (seeds 0..starts-1) without and with Poisson likelihood refinement."""
    data = simulate_cdi(CDISimulation(photons=1e8))
    return {"phasing_only": success_rate(data, HIO, starts),
            "with_poisson_refinement": success_rate(data, REFINED, starts)}


def case_oss(starts: int) -> dict:
    data = simulate_cdi(CDISimulation(photons=1e6))
    return {"hio": success_rate(data, HIO, starts), "oss": success_rate(data, "oss:800,er:100",
                                                                         starts)}


def case_3d() -> dict:
    data = simulate_cdi(CDISimulation(dimensions=3, array_px=96, object_px=32, photons=1e9,
                                      beamstop_px=0))
    start = time.perf_counter()
    result = reconstruct(data, "hio:300,er:100", "log.metric_every=50",
                         "model.shrinkwrap_every=20")
    history = [round(v, 4) for v in result.history["metric/nrmse"] if np.isfinite(v)]
    return {"nrmse": result.metrics["nrmse"], "nrmse_history": history,
            "seconds": time.perf_counter() - start}


def fft_floor(shape: tuple[int, ...], repeats: int = 20, device: str = "cpu") -> float:
    """Seconds for one forward + inverse FFT of ``shape`` (median of ``repeats``)."""
    field = torch.randn(shape, dtype=torch.complex64, device=device)
    sync = synchronizer(device)
    times = []
    for _ in range(repeats + 1):  # the first (plan, warm-up) is not counted
        sync()
        start = time.perf_counter()
        torch.fft.ifftn(torch.fft.fftn(field, norm="ortho"), norm="ortho")
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def case_speed() -> dict:
    out = {}
    for label, settings in {
        "2d_256": CDISimulation(photons=1e8),
        "3d_96": CDISimulation(dimensions=3, array_px=96, object_px=32, photons=1e9,
                               beamstop_px=0),
    }.items():
        data = simulate_cdi(settings)
        result = reconstruct(data, "hio:60", "log.metrics=false", "model.shrinkwrap_every=0")
        seconds = statistics.median(result.history["time/epoch_s"][5:])
        floor = fft_floor(tuple(settings.array_px for _ in range(settings.dimensions)))
        out[label] = {"seconds_per_iteration": seconds, "iterations_per_second": 1 / seconds,
                      "fft_floor_s": floor, "ratio_to_fft_floor": seconds / floor}
    return out


def iterations_to(history: list[float], threshold: float) -> int | None:
    """The first iteration (1-based) whose NRMSE is <= ``threshold`` (history: one per epoch,
    NaN where not measured)."""
    for k, value in enumerate(history):
        if np.isfinite(value) and value <= threshold:
            return k + 1
    return None


def at(history: list[float], iteration: int) -> float:
    return float(history[iteration - 1])


def case_variants(iterations: int = 600, every: int = 10, threshold: float = 0.1) -> dict:
    """Same object, three experiments; default shrinkwrap for all; two sizes."""
    sizes = {"64_in_256": {}, "16_in_64": {"array_px": 64, "object_px": 16,
                                           "reference_offset_px": 16.0,
                                           "reference_radius_px": 2.0}}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size, changes in sizes.items():
            for variant in ("plane", "fresnel", "holographic"):
                settings = CDISimulation(photons=1e8, variant=variant, **changes)
                data = simulate_cdi(settings)
                extra = [f"log.metric_every={every}"]
                if variant == "fresnel":
                    extra += ["model.transmission_offset=1.0"]
                if variant == "holographic":
                    np.save(Path(tmp) / "reference.npy", cdi_scene(settings).reference)
                    extra += [f'model.reference_file="{Path(tmp) / "reference.npy"}"']
                result = reconstruct(data, f"hio:{iterations}", *extra)
                history = result.history["metric/nrmse"]
                out[f"{size}/{variant}"] = {
                    f"iterations_to_nrmse_le_{threshold}": iterations_to(history, threshold),
                    "nrmse_at_100": at(history, 100), "nrmse_at_300": at(history, 300),
                    "final_nrmse": result.metrics["nrmse"]}
    return out


CASES = {"speed": case_speed, "2d": case_2d, "oss": case_oss, "3d": case_3d,
         "variants": case_variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_cdi.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for name in args.cases.split(","):
        start = time.perf_counter()
        case = CASES[name]
        report[name] = case(args.starts) if name in ("2d", "oss") else case()
        print(f"== {name} ({time.perf_counter() - start:.0f} s)")
        print(json.dumps(report[name], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
