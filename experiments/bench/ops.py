"""Time the pieces of one far-field update at the DESIGN batch shape (32 x 128^2, 2 threads).

    python experiments/bench/ops.py [--batch 32] [--frame 128] [--repeats 200]

Each piece runs ``--repeats`` times after a warm-up, in one process, and prints its mean time
per call: the FFT pair that the FFT floor counts, the overlap (gather x shifted probe) and
its backward, the detector loss node (``Measurement.nll``) forward and backward, patch
gathering and insertion, and masking a batch of residuals (``zero_invalid_`` against
``masked_fill_``). For deciding where an update's time goes and for before/after figures of
a change to one piece; whole-epoch effects need ``ab.py``. CI does not run it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from diffrecon.losses.likelihoods import Amplitude, zero_invalid_
from diffrecon.models.measurement import Measurement
from diffrecon.physics.overlap import overlap
from diffrecon.physics.shifts import gather_windows, insert_patches


def per_call_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frame", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    b, n = args.batch, args.frame
    side = 5 * n
    obj = torch.randn(1, side, side, dtype=torch.complex64, generator=gen).requires_grad_()
    probe = torch.randn(1, n, n, dtype=torch.complex64, generator=gen).requires_grad_()
    corners = torch.randint(0, side - n, (b, 2), generator=gen)
    shifts = torch.rand(b, 2, generator=gen)
    field = torch.randn(b, 1, n, n, dtype=torch.complex64, generator=gen).requires_grad_()
    measured = torch.rand(b, n, n, generator=gen) * 3
    valid = torch.rand(n, n, generator=gen) > 0.05
    residual = torch.randn(b, n, n, generator=gen)
    batch = torch.randn(b, 1, n, n, dtype=torch.complex64, generator=gen)
    detector = Measurement(b, (n, n))
    index = torch.arange(b)
    likelihood = Amplitude()

    def overlap_forward() -> torch.Tensor:
        with torch.no_grad():
            return overlap(obj, probe, corners, shifts)

    def overlap_both() -> None:
        obj.grad = probe.grad = None  # as after the optimiser's zero_grad
        overlap(obj, probe, corners, shifts).real.sum().backward()

    def loss_both() -> None:
        field.grad = None
        detector.nll(field, index, measured, valid, likelihood).backward()

    pieces: dict[str, Callable[[], object]] = {
        "fft2 + ifft2 (the floor's pair)": lambda: torch.fft.ifft2(torch.fft.fft2(batch)),
        "overlap forward": overlap_forward,
        "overlap forward + backward": overlap_both,
        "detector loss forward + backward": loss_both,
        "gather patches": lambda: gather_windows(obj.detach(), corners, (n, n)),
        "insert patches": lambda: insert_patches(batch, corners, tuple(obj.shape)),
        "mask: masked_fill_": lambda: residual.masked_fill_(~valid, 0.0),
        "mask: zero_invalid_": lambda: zero_invalid_(residual, valid),
    }
    print(f"{b} x {n}^2 complex64, {args.threads} threads, {args.repeats} calls each")
    for name, fn in pieces.items():
        print(f"  {name:36s} {per_call_ms(fn, args.repeats):7.3f} ms", flush=True)


if __name__ == "__main__":
    main()
