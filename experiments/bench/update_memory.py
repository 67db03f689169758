"""Tensor memory of one far-field update, by category, from torch's memory profiler.

    python experiments/bench/update_memory.py [--file scan.cxi] [--update 20]

Runs the default far-field reconstruction of ``--file`` (the DESIGN scene, 420 x 128^2,
simulated, when none is given) without the probe-guess trials, profiles update ``--update``
(forward, likelihood, backward, optimiser step) with ``profile_memory``, and prints the live
tensor memory before the update and at its peak, split into torch's categories (parameters,
inputs, activations saved for the backward pass, temporaries, gradients, optimiser state).
The difference is the update's own working set: what the batch size costs, apart from the
data, the object's state and the allocator. Tensors made before the profiled update that it
does not touch (the patterns held in memory) are not in the figures. DESIGN scene, 2026-12-01:
14.9 MiB before, 39.0 MiB at the peak (24.1 MiB: 14 of activations, 6 of temporaries, 4 of
autograd buffers). Resident-size figures are ``bench_memory.py``'s. CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import diffrecon
import diffrecon.algorithms.gradient as gradient
import diffrecon.api as api
import diffrecon.data.cxi

HERE = Path(__file__).resolve().parent
# the columns of torch's exported timeline (a leading unused one, then its categories in
# order; "other" holds what it could not classify, e.g. the Adam moments of our functional
# optimiser and the spare gradient between updates)
CATEGORIES = ("(unused)", "parameter", "optimizer state", "input", "temporary", "activation",
              "gradient", "autograd detail", "other")


def profiled_update(path: Path, update: int) -> np.ndarray:
    """(T, categories) bytes of live tensor memory over update number ``update``."""
    original = gradient.GradientStep.step
    count = {"n": 0}
    timeline: dict[str, Any] = {}

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] != update:
            return original(self, *args, **kwargs)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                     record_shapes=True, with_stack=True) as prof:
            result = original(self, *args, **kwargs)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "timeline.json"
            prof.export_memory_timeline(str(out), device="cpu")
            timeline["sizes"] = np.asarray(json.loads(out.read_text())[1], dtype=np.float64)
        return result

    gradient.GradientStep.step = step
    saved = api.select_initial_guess
    api.select_initial_guess = lambda *a, **k: {}  # the trials would count as updates
    try:
        diffrecon.reconstruct(path, "ptycho", overrides=[
            "recon.epochs=3", "log.progress=false", "log.tensorboard=false",
            "log.metrics=false"])
    finally:
        gradient.GradientStep.step, api.select_initial_guess = original, saved
    if "sizes" not in timeline:
        sys.exit(f"the run made fewer than {update} updates")
    return timeline["sizes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="a CXI file (default: the DESIGN scene)")
    parser.add_argument("--update", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = args.file
        if path is None:
            path = Path(folder) / "design.cxi"
            diffrecon.data.cxi.save(
                diffrecon.simulate(HERE.parent / "configs" / "ptycho_design.toml"), path)
        sizes = profiled_update(path, args.update)
    total = sizes.sum(axis=1)
    peak = int(total.argmax())
    names = (CATEGORIES if sizes.shape[1] == len(CATEGORIES)
             else [f"column {i}" for i in range(sizes.shape[1])])
    mib = 2.0**20
    print(f"update {args.update}: tensor memory {total[0] / mib:.1f} MiB before, "
          f"{total[peak] / mib:.1f} MiB at the peak ({(total[peak] - total[0]) / mib:.1f} MiB "
          "working set)")
    for name, before, at_peak in zip(names, sizes[0], sizes[peak], strict=True):
        if before or at_peak:
            print(f"  {name:16s} {before / mib:7.1f} -> {at_peak / mib:7.1f} MiB")


if __name__ == "__main__":
    main()
