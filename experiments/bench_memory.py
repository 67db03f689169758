"""Peak host memory of far-field reconstructions against the size of their data, per allocator.

    python experiments/bench_memory.py                          # DESIGN and large scenes
    python experiments/bench_memory.py --scenes design --repeats 5
    python experiments/bench_memory.py --file scan.cxi          # a file of yours

Each measurement is a fresh process that loads the file and runs 3 epochs (``--epochs``) with
the defaults (``bench_ptycho.reconstruction_memory_mb``: the kernel's high-water mark above
the resident size once torch and diffrecon are imported), in memory and read batch by batch,
with the system allocator (glibc here) and, where the library is installed, with jemalloc
(``diffrecon.recon.host_memory.jemalloc_environment``). Runs of the allocators alternate, so
that a drift of the machine touches both alike. The ratio is the median peak over the raw
data (the patterns as float32). Results go to experiments/out/bench_memory.json. CI does not
run it. ``--time-epochs E`` also times E epochs per fresh process under each allocator.
Scenes: ``design`` (420 x 128^2, ``configs/ptycho_design.toml``), ``large``
(2000 x 256^2, 500 MiB, ``configs/ptycho_large.toml``; simulating it takes about a minute).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ptycho  # noqa: E402

import diffrecon  # noqa: E402
import diffrecon.data.cxi  # noqa: E402
from diffrecon.recon.host_memory import jemalloc_environment, system_environment  # noqa: E402

SCENES = {"design": HERE / "configs" / "ptycho_design.toml",
          "large": HERE / "configs" / "ptycho_large.toml"}


def raw_mb(path: Path) -> float:
    """The patterns of a CXI file as float32, MiB."""
    with h5py.File(path, "r") as f:
        shape = f["entry_1/data_1/data"].shape
    count = 1
    for n in shape:
        count *= n
    return 4 * count / 2**20


def environments() -> dict[str, dict[str, str]]:
    """The allocators to compare: the system's, and jemalloc where it is installed."""
    system = system_environment()
    envs = {"system": system}
    jemalloc = jemalloc_environment(system)
    if jemalloc is not None:
        envs["jemalloc"] = jemalloc
    return envs


TIME_PROBE = """
import statistics, sys, torch
torch.set_num_threads(2)
import diffrecon
result = diffrecon.reconstruct(sys.argv[1], "ptycho", overrides=[
    "recon.epochs=" + sys.argv[2], "log.progress=false", "log.tensorboard=false",
    "log.metrics=false"])
print(statistics.median(result.history["time/epoch_s"]))
"""


def epoch_seconds(path: Path, epochs: int, env: dict[str, str]) -> float:
    """Median seconds per epoch of a fresh process reconstructing ``path`` (in memory)."""
    done = subprocess.run([sys.executable, "-c", TIME_PROBE, str(path), str(epochs)],
                          capture_output=True, text=True, check=True, env=env)
    return float(done.stdout.split()[-1])


def timing(path: Path, repeats: int, epochs: int) -> list[dict]:
    """Epoch times under each allocator, alternating fresh processes."""
    times: dict[str, list[float]] = {name: [] for name in environments()}
    for _ in range(repeats):
        for name, env in environments().items():
            times[name].append(epoch_seconds(path, epochs, env))
    for name, values in times.items():
        print(f"{path.name:24s} {name:8s} s/epoch {min(values):.3f}-{max(values):.3f}, "
              f"median {statistics.median(values):.3f} over {repeats} processes", flush=True)
    return [{"file": str(path), "allocator": k, "epoch_s": v} for k, v in times.items()]


def measure(path: Path, repeats: int, modes: list[str], epochs: int = 3) -> list[dict]:
    raw = raw_mb(path)
    rows = []
    for mode in modes:
        peaks: dict[str, list[float]] = {name: [] for name in environments()}
        for _ in range(repeats):
            for name, env in environments().items():
                peaks[name].append(bench_ptycho.reconstruction_memory_mb(
                    path, mode == "lazy", f"recon.epochs={epochs}", env=env))
        for name, values in peaks.items():
            median = statistics.median(values)
            rows.append({"file": str(path), "raw_mb": raw, "mode": mode, "allocator": name,
                         "epochs": epochs,
                         "peaks_mb": values, "median_mb": median, "ratio": median / raw})
            print(f"{path.name:24s} {raw:7.1f} MiB  {mode:6s} {name:8s} peak "
                  f"{min(values):6.0f}-{max(values):6.0f} MiB, median {median:6.0f} "
                  f"({median / raw:.2f}x the data)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="*", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--file", type=Path, action="append", default=[],
                        help="a CXI file to measure (repeatable); replaces --scenes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="*", default=["memory", "lazy"],
                        choices=["memory", "lazy"])
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of each memory run (glibc's peak grows over the first ten)")
    parser.add_argument("--time-epochs", type=int, default=0,
                        help="also time this many epochs per process under each allocator")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "bench_memory.json")
    args = parser.parse_args()
    print("allocators: " + ", ".join(environments()), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        files = list(args.file)
        if not files:
            for scene in args.scenes:
                files.append(Path(scratch) / f"{scene}.cxi")
                diffrecon.data.cxi.save(diffrecon.simulate(SCENES[scene]), files[-1])
        for path in files:
            rows += measure(path, args.repeats, args.modes, args.epochs)
            if args.time_epochs:
                rows += timing(path, args.repeats, args.time_epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
