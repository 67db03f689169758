"""Data-parallel benchmark: seconds per epoch with 1 and 2 processes (torchrun, Gloo on CPU).

    python experiments/bench_distributed.py                 # 400 patterns of 64x64
    python experiments/bench_distributed.py --epochs 4 --batch-size 100

Each case launches ``torch.distributed.run --standalone`` with N processes of T threads on the
default simulated far-field scene (400 Fermat-spiral positions, 64x64 frames), the gradient
algorithm at a fixed batch size, and the true probe as the probe guess (so no initial-probe
trials: only epochs are timed). Reported: median seconds per epoch after the first, and the
final loss (equal across cases up to summation order). Results are printed and written to
experiments/out/bench_distributed.json. On a machine with 2 cores, 2 processes of 1 thread
compete with 1 process of 2 threads for the same cores: expect little speedup there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
CASES = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)


def worker(epochs: int, batch_size: int, threads: int) -> None:
    """One torchrun worker: simulate (seeded, identical on every rank), reconstruct, report."""
    import torch

    import diffrecon
    from diffrecon.data.simulate import PtychoSimulation, simulate_ptycho

    torch.set_num_threads(threads)
    data = simulate_ptycho(PtychoSimulation())
    assert data.truth is not None
    data = dataclasses.replace(data, probe_guess=data.truth.probe)
    result = diffrecon.reconstruct(data, "ptycho", overrides=[
        f"recon.epochs={epochs}", f"recon.batch_size={batch_size}", "recon.plateau_patience=0",
        "log.progress=false", "log.metrics=false"])
    if result.rank == 0:
        seconds = result.history["time/epoch_s"][1:]
        print(json.dumps({"epoch_s": statistics.median(seconds),
                          "loss": result.history["loss/total"][-1]}))


def launch(processes: int, threads: int, epochs: int, batch_size: int) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", __file__, "--worker", f"--threads={threads}",
               f"--epochs={epochs}", f"--batch-size={batch_size}"]
    environment = dict(os.environ, PYTHONPATH=str(HERE.parent), OMP_NUM_THREADS=str(threads))
    output = subprocess.run(command, env=environment, capture_output=True, text=True,
                            check=True).stdout
    line = [row for row in output.splitlines() if row.startswith("{")][-1]
    return dict(json.loads(line), processes=processes, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.epochs, args.batch_size, args.threads)
        return
    rows = []
    for processes, threads in CASES:
        row = launch(processes, threads, args.epochs, args.batch_size)
        rows.append(row)
        print(f"{processes} process(es) x {threads} thread(s): {row['epoch_s']:.3f} s/epoch, "
              f"final loss {row['loss']:.6g}", flush=True)
    out = HERE / "out" / "bench_distributed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "epochs": args.epochs,
                               "batch_size": args.batch_size, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
