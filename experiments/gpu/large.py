"""A 2000 x 256^2 far-field scan (500 MiB of patterns) on one GPU, in memory and lazily read.

    PYTHONPATH=. python experiments/gpu/large.py [--epochs 5] [--device cuda]

Prints seconds per epoch, the FFT floor of the same epoch on the same device, set-up seconds
and the device's peak memory; no truth metrics (their alignment of a 2435^2 object runs on
the host and is not what is measured here).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import bench_ptycho  # noqa: E402

import diffrecon  # noqa: E402
import diffrecon.data.cxi  # noqa: E402
from diffrecon.recon.reconstructor import default_batch_size  # noqa: E402

QUIET = ["log.progress=false", "log.tensorboard=false", "log.report=false", "log.metrics=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scene", type=Path, default=HERE.parent / "configs" / "ptycho_large.toml")
    args = parser.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    started = time.perf_counter()
    data = diffrecon.simulate(args.scene)
    n, frame = data.num_patterns, data.frame_shape[0]
    print(f"simulated {n} x {frame}^2 ({data.patterns.nbytes / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    floor = bench_ptycho.fft_floor(n, 1, frame, default_batch_size(n, frame**2), repeats=3,
                                   device=args.device)
    print(f"FFT floor {floor * 1e3:.1f} ms per epoch", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scan = Path(scratch) / "scan.cxi"
        diffrecon.data.cxi.save(data, scan)
        for lazy, epochs in ((False, args.epochs), (True, 2)):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            result = diffrecon.reconstruct(scan, "ptycho", lazy=lazy, overrides=[
                f'recon.device="{args.device}"', f"recon.epochs={epochs}", *QUIET])
            wall = time.perf_counter() - started
            seconds = result.history["time/epoch_s"]
            peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else float("nan")
            print(f"{'lazy' if lazy else 'in memory'}: {np.median(seconds):.3f} s/epoch "
                  f"({np.median(seconds) / floor:.1f}x floor), set-up "
                  f"{wall - sum(seconds):.1f} s, device peak {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
