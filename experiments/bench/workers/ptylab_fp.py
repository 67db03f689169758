"""Run PtyLab's FPM reconstruction on the hand-off file; executed inside its virtual environment.

    python ptylab_fp.py IN.h5 CHECK.npz OUT.npz EPOCHS THREADS [ENGINE [PUPIL_UPDATE]]

IN.h5 is PtyLab's FPM input (``fp_handoff.write_fpm_file``); CHECK.npz holds ``pupil`` (our NA
disc, (n, n)), ``truth`` (the true transmission on our grid) and ``clean`` (our noise-free
images of it); OUT.npz receives ``spectrum`` (PtyLab's object, (No, No)), ``pupil``,
``epoch_s`` (seconds of each engine iteration), ``error`` (PtyLab's per-iteration error),
``misfit_<variant>`` (``fp_handoff.geometry_misfit`` of PtyLab's own window positions, for each
encoder convention, on the truth), ``corners_match`` (``fp_handoff.ptylab_corners`` gives
PtyLab's own positions) and ``No``.

Recipe (PtyLab's FPM docs, docs/fpm/overview.md, and example_scripts/exampleReconstructionFPM.py):
``easyInitialize(..., operationMode="FPM")`` (which sets ``positionOrder = "NA"``, bright field
first, and ``probeBoundary = True``), the "upsampled" object start (the mean image's amplitude,
zero-padded spectrum), the pupil started as our NA disc, engine ``mqNewton`` (the one its docs
recommend for FPM) with the example's settings (betas 1, beta1 = beta2 = 0.5, momentum
0.25, NADAM), which update the pupil every iteration; no LED calibration
(``IlluminationCalibration``) and no position correction: the scene's LEDs are where the file
says. ENGINE ``qNewton``/``mPIE``/``ePIE`` and PUPIL_UPDATE 0 are the alternatives tried.
Only the engine's iterations are timed (from each iteration's ``setPositionOrder`` to its
``showReconstruction``, the first and last calls of PtyLab's loop body).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fp_handoff  # noqa: E402


def main(path: str, check: str, out: str, epochs: int, threads: int, engine_name: str,
         pupil_update: bool) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import numpy as np
    import PtyLab
    from PtyLab import Engines

    np.random.seed(0)  # PtyLab's starts add 0.001 * rand
    reference = np.load(check)
    with contextlib.redirect_stdout(io.StringIO()):
        data, recon, params, monitor, engine, _ = PtyLab.easyInitialize(
            path, engine=getattr(Engines, engine_name), operationMode="FPM", dummyMonitor=True)
    params.gpuSwitch = False
    params.positionCorrectionSwitch = False
    params.probePowerCorrectionSwitch = False
    params.comStabilizationSwitch = False
    pupil = reference["pupil"].astype(np.complex64)
    recon.probe = np.broadcast_to(pupil, recon.probe.shape).copy()
    recon.initialGuessProbe = recon.probe.copy()
    if hasattr(recon, "probeBuffer"):
        recon.probeBuffer = recon.probe.copy()
    engine.numIterations = epochs
    if engine_name == "mqNewton":
        engine.betaProbe = engine.betaObject = 1
        engine.beta1 = engine.beta2 = 0.5
        engine.betaProbe_m = engine.betaObject_m = 0.25
        engine.momentum_method = "NADAM"
    if not pupil_update:
        params.probeUpdateStart = epochs + 1
        if hasattr(engine, "betaProbe"):
            engine.betaProbe = 0
        if hasattr(engine, "betaProbe_m"):
            engine.betaProbe_m = 0

    misfits = {}
    truth_spectrum = fp_handoff.spectrum_from_object(reference["truth"], int(recon.No))
    nominal = recon.encoder_corrected.copy()
    for name in fp_handoff.ENCODER_VARIANTS:
        recon.encoder_corrected = fp_handoff.encoder_variant(nominal, name)
        images = fp_handoff.window_images(truth_spectrum, recon.positions, pupil)
        misfits[f"misfit_{name}"] = fp_handoff.geometry_misfit(images, reference["clean"])
    recon.encoder_corrected = nominal
    mirror = fp_handoff.ptylab_corners(nominal, recon.wavelength, recon.zled, recon.dxp,
                                       int(recon.Np), int(recon.No))
    misfits["corners_match"] = bool(np.array_equal(mirror, recon.positions))

    marks: list[float] = []
    order, show = engine.setPositionOrder, engine.showReconstruction

    def start_iteration() -> None:
        marks.append(time.perf_counter())
        order()

    def end_iteration(loop: int, *args: object, **kwargs: object) -> None:
        show(loop, *args, **kwargs)
        marks.append(time.perf_counter())

    engine.setPositionOrder, engine.showReconstruction = start_iteration, end_iteration
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        engine.reconstruct()
    seconds = np.diff(np.asarray(marks).reshape(-1, 2), axis=1)[:, 0]
    np.savez(out, spectrum=np.asarray(recon.object).reshape(recon.No, recon.No),
             pupil=np.asarray(recon.probe).reshape(recon.Np, recon.Np),
             epoch_s=seconds, error=np.asarray(recon.error, dtype=np.float64),
             No=int(recon.No), **misfits)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], args[2], int(args[3]), int(args[4]),
         args[5] if len(args) > 5 else "mqNewton", len(args) <= 6 or args[6] != "0")
