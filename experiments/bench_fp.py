"""Fourier ptychography benchmark (issue 5): resolution, NRMSE, pupil and LED calibration.

    PYTHONPATH=. python experiments/bench_fp.py                 # all cases, 1 CPU thread
    PYTHONPATH=. python experiments/bench_fp.py --cases baseline multiplex
    PYTHONPATH=. python experiments/bench_fp.py --cases --seeds 0 1 2 3 4  # 1 wave, 5 seeds
    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench_fp.py --cases baseline ptylab

Scene: experiments/configs/fp_sim.toml (bars + smooth phase, 15x15 LEDs, NA 0.1, illumination
NA up to ~0.42 on axis, Poisson noise at 1e4 bright-field counts per pixel). Cases:
``baseline``    NRMSE (global phase and ramp removed) and bar modulation per period against
                the truth, and the same for the upsampled bright-field start (NA 0.1 only);
                target NRMSE <= 0.10, bars resolved at lambda / (NA_obj + NA_ill).
``aberrations`` ~1 wave rms of defocus + astigmatism + coma in the true pupil, Zernike
                refinement (default ``params.aberrations.optimizer="callback"``: a grid
                search for the starting pupil on the bright-field images, models/fp_search.py,
                then one L-BFGS fit per epoch on the bright-field images, object held, Noll 4-6,
                then 4-8, then all, then basin hopping with object restarts, see
                models/fp_pupil.py): NRMSE <= 0.10 and every coefficient within 0.1 wave
                (also run at 0.3 wave rms, ``aberrations_0.3_wave``).
``calibration`` the array shifted 0.5 mm (0.3, -0.4 mm) and rotated 2 degrees:
                recovered within 0.1 mm and 0.2 degrees.
``autograd``    the baseline with Adam (autograd) instead of ePIE, for comparison.
``fpm_py``      the baseline scene with the PyPI package ``fpm-py`` (when installed; 2.0.1
                crashes, the reason is recorded).
``ptylab``      the baseline scene with PtyLab 0.3.7 (PyPI ``ptylab``, import ``PtyLab``) in its
                own venv (experiments/bench/.venvs/ptylab, made on first use by
                ``peers.ensure_venv``: torch==2.13.0 CPU + ptylab==0.3.7), run by
                workers/ptylab_fp.py on a PtyLab FPM file (``fp_handoff``: encoder = our
                nominal (y, x) LEDs, dxd, zled, magnification, NA); its FPM recipe (mqNewton,
                pupil updated every iteration, bright field first, probe boundary), and ePIE;
                pupil started as our NA disc, no LED calibration or position correction, same
                epochs, 1 thread, only its iterations timed, ratio to the baseline's FFT floor.
                Its object spectrum (298^2, its grid) is cut to our 256^2 about DC (it never
                updates beyond its windows, all inside ours) and transformed with its fft2c:
                the object on our pixel and orientation. Checks: PtyLab's own window corners
                and forward model on the truth reproduce our noise-free images (median image
                misfit 0.031, all from rounding its offsets to whole spectrum pixels; x/y
                swapped 0.97, negated 0.063 (the twin)). At 40 epochs (2 shared cores):
                mqNewton NRMSE 0.141, 0.66 s/epoch (~70x ours' floor: momentum over the whole
                object per image); ePIE 0.129, 0.040 s/epoch (~4x); ours 0.068, 0.073 s/epoch
                (~8x; ePIE batches of 4 plus the per-epoch Zernike fit). Bars: all periods
                >= 0.91 of the truth's for both. Tried too: mqNewton with the pupil fixed 0.131,
                qNewton 0.151, mPIE 0.179 (its error grows); encoder negated 0.237, x/y
                swapped 0.210 (bars lost). ``ours_with_ptylab_rounded_windows``: ours with the
                LED table moved to PtyLab's rounded windows reaches 0.128, so PtyLab's gap is
                its whole-pixel window geometry on sub-pixel LEDs, not the conversion.
``multiplex``   4 LEDs per image, of similar NA, spread apart, no facing pair (58 images
                instead of 225): NRMSE within 1.5x of ``baseline``, after the same number of epochs
                and after the same number of updates (4x epochs, 4x the FFT work).
Seconds per epoch and the ratio to the FFT floor (the forward and adjoint FFTs of one epoch)
are reported for the baseline. Results go to experiments/out/bench_fp.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import diffrecon
from diffrecon import config as cfg
from diffrecon.data.container import DiffractionData
from diffrecon.data.fpm import led_table
from diffrecon.data.simulate_fp import FPSimulation, bar_layout, bar_target, simulate_fp
from diffrecon.losses.metrics import nrmse
from diffrecon.models.fourier_ptycho import FourierPtycho, FourierPtychoConfig

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "bench"))
import fp_handoff  # noqa: E402
import peers  # noqa: E402

OUT = HERE / "out"
QUIET = {"log": {"progress": False, "tensorboard": False, "metric_every": 10}}
#: PtyLab runs of the ``ptylab`` case: (engine, pupil update); mqNewton is the FPM engine its
#: docs recommend (updating the pupil), ePIE the best and fastest of its others here
PTYLAB_RUNS = (("mqNewton", True), ("ePIE", True))
ABERRATIONS = {"Z4": 0.6, "Z5": 0.4, "Z6": 0.3, "Z7": 0.45, "Z8": 0.4}


def scene(**changes: object) -> DiffractionData:
    settings = cfg.from_dict(FPSimulation, cfg.load_toml(HERE / "configs" / "fp_sim.toml"))
    return simulate_fp(dataclasses.replace(settings, **changes))


def run(data: DiffractionData, epochs: int, **config: object) -> diffrecon.Result:
    values = {"recon": {"epochs": epochs}, **QUIET, **config}  # a given "recon" replaces it
    return diffrecon.reconstruct(data, "fourier_ptycho", values)


def bar_modulation(estimate: np.ndarray, data: DiffractionData) -> dict[str, float]:
    """Per bar period (in units of lambda / NA_syn): |fundamental| of the vertical-bar
    profile of |estimate|, relative to the truth's (1 = full contrast, 0 = unresolved)."""
    truth = np.abs(data.truth.object[0])
    amplitude = np.abs(estimate) * truth.mean() / np.abs(estimate).mean()
    pixel = data.truth.pixel_size_m[0]
    limit = float(data.metadata["resolution_limit_m"])
    out = {}
    for period, top, left in bar_layout(truth.shape, pixel,
                                        json.loads(data.metadata["bar_periods_m"])):
        rows = slice(int((top + period) / pixel), int((top + 4 * period) / pixel))
        columns = np.arange(int((left - period / 2) / pixel), int((left + 3 * period) / pixel))
        wave = np.exp(-2j * np.pi * (columns + 0.5) * pixel / period)
        fundamental = [abs(np.sum(a[rows][:, columns].mean(0) * wave)) for a in (amplitude, truth)]
        out[f"{period / limit:.2f}"] = float(fundamental[0] / max(fundamental[1], 1e-12))
    return out


def truth_modulation(data: DiffractionData) -> dict[str, float]:
    """``bar_modulation`` of the sharp (not band-limited) bars, with the truth as estimate
    and the sharp bars as reference: how much of each period the measured band holds."""
    truth = np.abs(data.truth.object[0])
    periods = json.loads(data.metadata["bar_periods_m"])
    sharp = bar_target(truth.shape, data.truth.pixel_size_m[0], periods)
    reference = dataclasses.replace(data, truth=dataclasses.replace(
        data.truth, object=sharp[None].astype(np.complex64)))
    return bar_modulation(truth, reference)


def fft_floor_s(shape: tuple[int, ...], repeats: int = 20) -> float:
    """Seconds of one forward (ifft2) and one adjoint (fft2) over (N, h, w) complex64."""
    field = torch.randn(shape, dtype=torch.complex64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.fft.fft2(torch.fft.ifft2(field))
        best = min(best, time.perf_counter() - start)
    return best


def baseline(epochs: int) -> dict[str, object]:
    data = scene()
    result = run(data, epochs)
    start = FourierPtycho.from_data(data, FourierPtychoConfig()).transmission().detach()[0]
    seconds = float(np.median(result.history["time/epoch_s"]))
    floor = fft_floor_s(np.asarray(data.patterns).shape)
    limit = float(data.metadata["resolution_limit_m"])
    modulation = bar_modulation(result.results["object"][0], data)
    return {
        "images": data.num_patterns, "epochs": epochs, "nrmse": result.metrics["nrmse"],
        "phase_rmse_rad": result.metrics["phase_rmse"],
        "nrmse_brightfield_start": nrmse(start.numpy(), data.truth.object[0]),
        "resolution_limit_um": limit * 1e6,
        "synthetic_na": result.results["synthetic_na"],
        "bar_modulation": modulation,
        "bar_modulation_brightfield_start": bar_modulation(start.numpy(), data),
        # the truth is band-limited to the synthetic NA: its bars beyond the limit are gone
        "bar_modulation_truth_vs_sharp_bars": truth_modulation(data),
        "resolved_at_limit": modulation["1.05"] >= 0.5,
        "seconds_per_epoch": seconds, "fft_floor_s": floor, "ratio_to_fft_floor": seconds / floor,
        "nrmse_history": [v for v in result.history["metric/nrmse"] if v == v],
    }


def aberrations(epochs: int, scale: float = 1.0, seed: int = 0) -> dict[str, object]:
    truth = {name: scale * value for name, value in ABERRATIONS.items()}
    data = scene(zernike_waves=truth, seed=seed)
    result = run(data, epochs)
    noll = list(result.results["zernike_noll"])
    fitted = dict(zip(noll, result.results["aberrations_waves"], strict=True))
    errors = {name: float(fitted[int(name[1:])] - value) for name, value in truth.items()}
    others = max(abs(float(v)) for j, v in fitted.items() if f"Z{j}" not in truth)
    rms = float(np.sqrt(sum(v * v for v in truth.values())))
    return {"true_rms_waves": rms, "nrmse": result.metrics["nrmse"],
            "zernike_errors_waves": errors, "max_other_coefficient_waves": others,
            "max_abs_error_waves": max(max(abs(e) for e in errors.values()), others)}


def calibration(epochs: int) -> dict[str, object]:
    shift, rotation = [0.3e-3, -0.4e-3], 2.0
    data = scene(led_shift_m=shift, led_rotation_deg=rotation)
    result = run(data, epochs, model={"calibrate_leds": True},
                 params={"aberrations": {"enabled": False}})
    found = result.results["led_shift_m"]
    nominal = run(data, epochs, params={"aberrations": {"enabled": False}})
    return {"true_shift_mm": [s * 1e3 for s in shift], "true_rotation_deg": rotation,
            "shift_mm": [float(v) * 1e3 for v in found],
            "rotation_deg": float(np.degrees(result.results["led_rotation_rad"])),
            "shift_error_mm": float(np.hypot(*(np.asarray(found) - shift))) * 1e3,
            "rotation_error_deg": abs(float(np.degrees(result.results["led_rotation_rad"]))
                                      - rotation),
            "nrmse": result.metrics["nrmse"], "nrmse_without_calibration":
            nominal.metrics["nrmse"]}


def multiplex(epochs: int, single_nrmse: float | None) -> dict[str, object]:
    """Same epochs as the single-LED run, and 4x the epochs (the same number of updates)."""
    data = scene(leds_per_image=4)
    out: dict[str, object] = {"images": data.num_patterns}
    for label, count in (("same_epochs", epochs), ("same_updates", 4 * epochs)):
        result = run(data, count)
        out[label] = {"epochs": count, "nrmse": result.metrics["nrmse"],
                      "seconds_per_epoch": float(np.median(result.history["time/epoch_s"]))}
        if single_nrmse is not None:
            out[label]["ratio_to_single_led"] = result.metrics["nrmse"] / single_nrmse
    return out


def autograd(epochs: int) -> dict[str, object]:
    """The baseline scene with Adam (autograd) instead of ePIE, batches of 16."""
    result = run(scene(), epochs, algorithm={"name": "gradient"}, recon={"epochs": epochs,
                                                                         "batch_size": 16})
    return {"nrmse": result.metrics["nrmse"],
            "seconds_per_epoch": float(np.median(result.history["time/epoch_s"]))}


def fpm_py_case(epochs: int) -> dict[str, object]:
    """The baseline scene reconstructed by the PyPI package ``fpm-py`` (2.0.1), if installed
    (``pip install --no-deps fpm-py``; it needs only torch, numpy and Pillow at run time):
    its EPRY-like sequential update, with our NA disc as the starting pupil, the nominal LED
    offsets (it rounds them to whole spectrum pixels), centre-out, and the same object grid."""
    try:
        import fpm_py
        from fpm_py.core.structs import AcquisitionSettings, ImageCapture, ImageSeries
    except ImportError as error:
        return {"skipped": f"fpm-py not importable: {error}"}
    data = scene()
    model = FourierPtycho.from_data(data, FourierPtychoConfig())
    with torch.no_grad():
        offsets = model.led_centres()
    images = torch.as_tensor(np.asarray(data.patterns))
    # centre-out order, the usual FP sequence (fpm-py also places its first capture with a
    # bottom-row convention that only fits near the centre of the spectrum)
    order = torch.argsort(offsets.norm(dim=1)).tolist()
    captures = [ImageCapture(image=images[n], k_vector=offsets[n].float()) for n in order]
    settings = AcquisitionSettings(du=1.0, pixel_size=data.detector_pixel_size_m[0],
                                   wavelength=data.wavelength_m)
    series = ImageSeries(captures=captures, settings=settings)
    started = time.perf_counter()
    try:
        estimate = fpm_py.reconstruct(series, output_image_size=model.scope.grid,
                                      pupil_0=model.support.to(torch.complex64),
                                      max_iters=epochs)
    except ValueError as error:
        # fpm-py 2.0.1 crops each window at its top row but adds the update with the top row
        # at (crop row - h + 1) (``overlap_matrices``), which leaves the array for windows in
        # the upper part of the spectrum
        return {"failed": f"{type(error).__name__}: {error}"}
    seconds = (time.perf_counter() - started) / epochs
    obj = estimate.numpy()
    return {"nrmse": nrmse(obj, data.truth.object[0]), "seconds_per_epoch": seconds,
            "bar_modulation": bar_modulation(obj, data)}


def ptylab_case(epochs: int, runs: tuple[tuple[str, bool], ...] = PTYLAB_RUNS,
                encoder: str = "yx", floor: float | None = None) -> dict[str, object]:
    """The baseline scene reconstructed by PtyLab 0.3.7 (PyPI ``ptylab``) in its own virtual
    environment (``peers.PTYLAB``, installed on first use): per (engine, pupil update) of
    ``runs``, workers/ptylab_fp.py with our nominal LEDs and our NA disc as the starting
    pupil; its object spectrum goes back onto our object grid by
    ``fp_handoff.object_from_spectrum``. ``geometry_misfit``: PtyLab's own window positions
    and forward model on the true object against our noise-free images, per encoder
    convention (0 = identical images); ``encoder`` writes the file under another convention
    (``fp_handoff.ENCODER_VARIANTS``). ``ours_with_ptylab_rounded_windows``: our default run
    with PtyLab's geometry (every window offset rounded to whole spectrum pixels). ``floor``:
    the FFT floor to divide by (the baseline's, when it ran; else measured here)."""
    reason = peers.ensure_venv(peers.PTYLAB)
    if reason:
        return {"failed": reason}
    data = scene()
    model = FourierPtycho.from_data(data, FourierPtychoConfig())
    table = led_table(data)
    floor = floor or fft_floor_s(np.asarray(data.patterns).shape)
    out: dict[str, object] = {"version": peers.PTYLAB.requirement, "encoder": encoder,
                              "epochs": epochs, "fft_floor_s": floor,
                              "object_grid_ours": list(model.scope.grid)}
    with tempfile.TemporaryDirectory() as folder:
        path, check = Path(folder) / "fpm.h5", Path(folder) / "check.npz"
        fp_handoff.write_fpm_file(path, np.asarray(data.patterns), fp_handoff.encoder_variant(
            table.positions_m[table.groups[:, 0]], encoder), data.wavelength_m,
            data.detector_pixel_size_m[0], table.magnification, data.distance_m,
            table.numerical_aperture)
        np.savez(check, pupil=model.support.numpy(), truth=data.truth.object[0],
                 clean=np.asarray(scene(noise="none").patterns))
        for engine, pupil_update in runs:
            result = Path(folder) / f"{engine}_{int(pupil_update)}.npz"
            reason = peers.run_script(
                peers.PTYLAB, HERE / "bench" / "workers" / "ptylab_fp.py",
                [path, check, result, epochs, 1, engine, int(pupil_update)], result,
                threads=1, timeout_s=1800)
            label = engine + ("" if pupil_update else "_pupil_fixed")
            if reason:
                out[label] = {"failed": reason}
                continue
            values = dict(np.load(result))
            obj = fp_handoff.object_from_spectrum(values["spectrum"], model.scope.grid)
            seconds = float(np.median(values["epoch_s"]))
            out[label] = {"nrmse": nrmse(obj, data.truth.object[0]),
                          "bar_modulation": bar_modulation(obj, data),
                          "seconds_per_epoch": seconds, "ratio_to_fft_floor": seconds / floor,
                          "ptylab_error_first_last": [float(values["error"][0]),
                                                      float(values["error"][-1])]}
            out["object_grid_ptylab"] = int(values["No"])
            out["corners_match_ptylab"] = bool(values["corners_match"])
            out["geometry_misfit"] = {name: float(values[f"misfit_{name}"])
                                      for name in fp_handoff.ENCODER_VARIANTS}
    rounded = run(rounded_leds(data, model), epochs)
    out["ours_with_ptylab_rounded_windows"] = {"nrmse": rounded.metrics["nrmse"]}
    return out


def rounded_leds(data: DiffractionData, model: FourierPtycho) -> DiffractionData:
    """``data`` with its LED table moved so that every window offset is a whole number of
    spectrum pixels (PtyLab's rounding; the images stay those of the true LEDs):
    p = k lambda z / sqrt(1 - lambda^2 |k|^2) inverts k = p / (lambda sqrt(|p|^2 + z^2))."""
    with torch.no_grad():
        pixels = model.led_centres().double().numpy()
    k = np.round(pixels) * model.scope.spectrum_pixel
    wavelength = data.wavelength_m
    scale = wavelength * data.distance_m / np.sqrt(1 - wavelength**2 * (k**2).sum(1))
    return dataclasses.replace(data, positions_m=k * scale[:, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=["baseline", "aberrations",
                                                       "calibration", "autograd", "multiplex",
                                                       "fpm_py", "ptylab"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="*", default=[],
                        help="also run the 1-wave aberrations case for these simulation seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict[str, object] = {}
    started = time.perf_counter()
    if "baseline" in args.cases:
        out["baseline"] = baseline(args.epochs)
    if "aberrations" in args.cases:
        out["aberrations"] = aberrations(args.epochs)
        out["aberrations_0.3_wave"] = aberrations(args.epochs, 0.3)
    if args.seeds:
        runs = {str(seed): aberrations(args.epochs, seed=seed) for seed in args.seeds}
        out["aberrations_seeds"] = {**runs, "passed": sum(
            r["nrmse"] <= 0.1 and r["max_abs_error_waves"] <= 0.1  # type: ignore[operator]
            for r in runs.values())}
    if "calibration" in args.cases:
        out["calibration"] = calibration(args.epochs + 20)
    if "autograd" in args.cases:
        out["autograd"] = autograd(args.epochs)
    if "multiplex" in args.cases:
        single = out.get("baseline", {}).get("nrmse")  # type: ignore[union-attr]
        out["multiplex"] = multiplex(args.epochs, single)
    if "fpm_py" in args.cases:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every iteration
            out["fpm_py"] = fpm_py_case(args.epochs)
    if "ptylab" in args.cases:
        floor = out.get("baseline", {}).get("fft_floor_s")  # type: ignore[union-attr]
        out["ptylab"] = ptylab_case(args.epochs, floor=floor)  # type: ignore[arg-type]
    out["total_seconds"] = time.perf_counter() - started
    OUT.mkdir(exist_ok=True)
    path = OUT / "bench_fp.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **out}, indent=2))  # a partial run updates its cases
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
