"""Far-field ptychography benchmark: accuracy vs epochs, speed vs the FFT floor, memory.

Reproduces the figures of the core-framework issue on the scene in
``experiments/configs/ptycho_bench.toml`` (2 CPU threads unless --threads):

    python experiments/bench_ptycho.py                  # all cases
    python experiments/bench_ptycho.py --cases default  # one case

Cases: ``default`` (default settings, generic probe guess, 100 epochs: NRMSE, phase RMSE,
s/epoch, ratios to the FFT floor chunked as the minibatches and as one call over the scan,
the issue's calibration floor; peak memory), ``positions`` (1 px rms position errors, with
refinement), ``modes`` (data from 3 incoherent modes, reconstructed with 1 and 3 modes),
``near_field`` (200 Fresnel-scaled near-field patterns of 100x100, diffuser illumination).
Results are printed and written to experiments/out/bench_ptycho.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import diffrecon
import diffrecon.data.cxi
from diffrecon.recon.host_memory import reuse_freed_blocks
from diffrecon.recon.reconstructor import default_batch_size

HERE = Path(__file__).parent
SCENE = HERE / "configs" / "ptycho_bench.toml"


def synchronizer(device: str | torch.device = "cpu"):  # noqa: ANN201
    """A function that waits for ``device``'s queued work (a no-op on the CPU), for timing."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


class FloorTimer:
    """The forward + inverse FFTs of one epoch alone (batched like the epoch), timed one pass
    at a time, so that a benchmark can interleave them with the epochs it compares them to.

    With ``reuse_memory`` freed host blocks are reused, as during our epochs
    (``recon.host_memory``), so the time is the FFT work alone; without it every output is
    freshly mapped and page-faulted in, as in the issues' calibration of the one-call floor
    (and, depending on glibc's moving mmap threshold, sometimes in the chunks too: the 1-thread
    400 x 64^2 floor then read 18-20 ms instead of 7 from one process to the next). With
    ``reuse_memory=None`` the allocator is left as it is (within a reconstruction, which
    already reuses freed blocks)."""

    def __init__(self, num: int, modes: int, frame: int, batch: int, device: str = "cpu",
                 reuse_memory: bool | None = True) -> None:
        self.field = torch.randn(num, modes, frame, frame, dtype=torch.complex64, device=device)
        self.batch, self.reuse_memory = batch, reuse_memory
        self.sync = synchronizer(device)
        self.once()  # FFT plans and GPU warm-up are not counted

    def once(self) -> float:
        """Seconds of one pass over the scan."""
        reuse = self.reuse_memory
        with contextlib.nullcontext() if reuse is None else reuse_freed_blocks(reuse):
            self.sync()
            start = time.perf_counter()
            for chunk in self.field.split(self.batch):
                torch.fft.ifft2(torch.fft.fft2(chunk, norm="ortho"), norm="ortho")
            self.sync()
            return time.perf_counter() - start


def fft_floor(num: int, modes: int, frame: int, batch: int, repeats: int = 7,
              device: str = "cpu", reuse_memory: bool = True) -> float:
    """Median seconds of ``repeats`` passes of ``FloorTimer`` (the epoch's FFTs alone)."""
    timer = FloorTimer(num, modes, frame, batch, device, reuse_memory)
    return statistics.median(timer.once() for _ in range(repeats))


MEMORY_PROBE = """
import sys, torch
torch.set_num_threads(2)
sys.path.insert(0, sys.argv[3])
import handoff
import diffrecon
import diffrecon.data.cxi
base = handoff.resident_mb()  # resident now, not the import-time peak
lazy = sys.argv[2] == "lazy"
diffrecon.reconstruct(sys.argv[1], "ptycho", lazy=lazy, overrides=[
    "recon.epochs=3", "log.progress=false", "log.tensorboard=false", "log.metrics=false",
    *sys.argv[4:]])
print(handoff.peak_mb() - base)
"""


def reconstruction_memory_mb(path: Path, lazy: bool, *overrides: str,
                             env: dict[str, str] | None = None) -> float:
    """Peak resident memory added by loading and reconstructing ``path`` (3 epochs, MiB), in a
    fresh process, above its resident memory once Python, torch and diffrecon are imported
    (the peak reached while importing does not hide the reconstruction's own). The peak is
    the process's VmHWM (``handoff.peak_mb``), which does not inherit the caller's. Without truth
    metrics: their alignment of the whole object in complex128 is a cost of simulated data
    only (about 2 GiB on a 2435^2 object), not of a reconstruction. ``env``: the process's
    environment (e.g. ``host_memory.jemalloc_environment()``), default the caller's."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path),
                          "lazy" if lazy else "memory", str(HERE / "bench"), *overrides],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def run_case(data, overrides: list[str], epochs: int, label: str) -> dict:
    start = time.perf_counter()
    result = diffrecon.reconstruct(data, "ptycho", overrides=[
        f"recon.epochs={epochs}", "log.progress=false", "log.tensorboard=false",
        "log.metric_every=5", *overrides])
    seconds = time.perf_counter() - start
    history = {k: [None if np.isnan(v) else v for v in vals]
               for k, vals in result.history.items() if k.startswith("metric/")}
    print(f"[{label}] {epochs} epochs in {seconds:.1f} s; final: " + ", ".join(
        f"{k}={v:.4f}" for k, v in result.metrics.items()), flush=True)
    return {"seconds_total": seconds, "final": result.metrics, "history": history,
            "epoch_seconds": result.history["time/epoch_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*",
                        default=["default", "positions", "modes", "near_field"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_ptycho.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"threads": args.threads, "torch": torch.__version__}
    data = diffrecon.simulate(SCENE)
    raw_mb = data.patterns.nbytes / 2**20
    n, frame = data.num_patterns, data.frame_shape[0]
    batch = default_batch_size(n, frame * frame)
    print(f"scene: {n} patterns of {frame}x{frame}, object {data.truth.object.shape[-2:]}, "
          f"raw data {raw_mb:.1f} MiB, batch {batch}", flush=True)

    if "default" in args.cases:
        case = run_case(data, [], args.epochs, "default")
        floor = fft_floor(n, 1, frame, batch)
        # the floor of the calibration: one batched call over the whole scan (see
        # experiments/bench/harness.py); its extra time is page faults, not FFT arithmetic
        scan_floor = fft_floor(n, 1, frame, n, reuse_memory=False)
        per_epoch = statistics.median(case.pop("epoch_seconds")[2:])
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scene.cxi"
            diffrecon.data.cxi.save(data, path)
            memory = {mode: reconstruction_memory_mb(path, mode == "lazy")
                      for mode in ("memory", "lazy")}
        nrmse = case["history"].get("metric/nrmse", [])
        hit = next((i + 1 for i, v in enumerate(nrmse) if v is not None and v <= 0.10), None)
        case.update(seconds_per_epoch=per_epoch, fft_floor_s=floor,
                    ratio_to_fft_floor=per_epoch / floor, fft_floor_scan_s=scan_floor,
                    ratio_to_fft_floor_scan=per_epoch / scan_floor, raw_data_mb=raw_mb,
                    added_peak_rss_mb=memory, **{"epochs_to_nrmse_0.10": hit})
        print(f"[default] {per_epoch * 1e3:.1f} ms/epoch, FFT floor {floor * 1e3:.1f} ms in "
              f"minibatches (ratio {per_epoch / floor:.2f}), {scan_floor * 1e3:.1f} ms as one "
              f"call (ratio {per_epoch / scan_floor:.2f}); NRMSE<=0.10 after {hit} epochs; "
              f"added peak RSS {memory['memory']:.0f} MiB in memory, {memory['lazy']:.0f} MiB lazy "
              f"(raw data {raw_mb:.1f} MiB)", flush=True)
        report["default"] = case

    if "positions" in args.cases:
        noisy = diffrecon.simulate(SCENE, overrides=["position_error_px=1.0"])
        start_error = float(np.sqrt(np.mean(np.sum(
            (noisy.positions_m - noisy.truth.positions_m
             - (noisy.positions_m - noisy.truth.positions_m).mean(0)) ** 2, axis=1))))
        pixel = noisy.truth.pixel_size_m[0]
        case = run_case(noisy, ["params.positions.enabled=true"], args.epochs, "positions")
        case["initial_position_error_px"] = start_error / pixel
        final = case["final"]["position_error_px"]
        case["reduction"] = case["initial_position_error_px"] / final
        print(f"[positions] error {start_error / pixel:.3f} px -> {final:.3f} px "
              f"({case['reduction']:.1f}x)", flush=True)
        report["positions"] = case

    if "modes" in args.cases:
        mixed = diffrecon.simulate(SCENE, overrides=["probe.modes=3"])
        report["modes"] = {
            f"{m}_modes": run_case(mixed, [f"model.probe_modes={m}"], args.epochs, f"{m} modes")
            for m in (1, 3)
        }

    if "near_field" in args.cases:
        near = diffrecon.simulate(HERE / "configs" / "ptycho_nearfield.toml")
        case = run_case(near, ["model.geometry=near_field", "model.focus_to_sample_m=5e-3"],
                        args.epochs, "near field")
        case["seconds_per_epoch"] = statistics.median(case.pop("epoch_seconds")[2:])
        print(f"[near field] {near.num_patterns} patterns of {near.frame_shape}: "
              f"{case['seconds_per_epoch'] * 1e3:.0f} ms/epoch", flush=True)
        report["near_field"] = case

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
