"""Benchmark harness (issue 9): speed, FFT floor, memory and time to accuracy, vs the peers.

    python experiments/bench/run.py                          # everything, DESIGN sizes
    python experiments/bench/run.py --cases ptycho --peers cdtools
    python experiments/bench/run.py --scene experiments/configs/ptycho_bench.toml  # smaller
    python experiments/bench/run.py --device cuda --peers        # ours on a GPU, no peers

Cases (each of ours runs in a fresh process, so its peak memory is its own):

- ``ptycho``: far-field ptychography on ``--scene`` (default the DESIGN sizes, 420 patterns of
  128x128, experiments/configs/ptycho_design.toml). The scene is written once to
  ``<out>/scene.cxi``; diffrecon (default settings) and every peer (``--peers``, each in its
  own virtual environment under experiments/bench/.venvs, installed on first use) reconstruct
  that same file. All are scored with the same metric (``evaluate.py``: ambiguity-removed
  object NRMSE over the well-lit region) on object snapshots taken every ``--every`` epochs
  outside the timed region. FFT floors: ``bench_ptycho.FloorTimer`` (the epoch's batched
  forward + inverse FFTs alone), chunked as our minibatches (``x floor``) and as one call
  over the whole scan (``x scan``, the floor of the issue's calibration; see harness.py).
  The chunked floor of our row is timed between its epochs, at every scoring (the median of
  those passes); a peer's floors are the means of those timed just before and after it.
  Peak memory: the resident high-water mark (VmHWM) added by loading and reconstructing the
  file in a fresh process (``bench_ptycho.reconstruction_memory_mb`` for ours).
- ``cdi``: 2D plane-wave CDI (``bench_cdi``: 64x64 object in 256x256, 1e8 photons), HIO then
  ER with shrinkwrap; seconds per iteration, ``bench_cdi.fft_floor`` of one 256x256 FFT pair.
- ``multislice``: the MoS2 monolayer of ``bench_electron`` (256 patterns of 64x64);
  floor: (2S - 1) batched FFT pairs for S slices.

Time to accuracy = set-up seconds + the epoch seconds up to the first snapshot with NRMSE <=
0.1 (``harness.time_to_target``); the ratio printed is ours / each peer's (< 1: ours faster).
Prints a table with the load average before and after; JSON goes to ``<out>/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent
sys.path[:0] = [str(HERE), str(EXPERIMENTS)]

import bench_cdi  # noqa: E402
import bench_electron  # noqa: E402
import bench_ptycho  # noqa: E402
import evaluate  # noqa: E402
import handoff  # noqa: E402
import harness  # noqa: E402
import peers  # noqa: E402

import diffrecon  # noqa: E402
import diffrecon.api  # noqa: E402
import diffrecon.data.cxi  # noqa: E402
from diffrecon.data.simulate import CDISimulation, simulate_cdi  # noqa: E402
from diffrecon.recon.host_memory import jemalloc_environment  # noqa: E402
from diffrecon.recon.reconstructor import default_batch_size  # noqa: E402

QUIET = ["log.progress=false", "log.tensorboard=false", "log.report=false"]


def on_gpu(args: argparse.Namespace) -> bool:
    return torch.device(args.device).type == "cuda"


def device_overrides(args: argparse.Namespace) -> list[str]:
    """Our runs' device and the user's ``--set`` overrides."""
    return [f'recon.device="{args.device}"', *args.set]


def gpu_peak_mb(run: Any) -> float:
    """Peak GPU memory allocated while ``run()`` runs, MiB."""
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() / 2**20


def peak_mb(args: argparse.Namespace, base_mb: float) -> float:
    """Peak memory of the case so far: the GPU's allocations, or host RSS above ``base_mb``."""
    return torch.cuda.max_memory_allocated() / 2**20 if on_gpu(args) else (
        handoff.peak_mb() - base_mb)


def ptycho_ours(data: Any, scan: Path, mask: np.ndarray, floors: dict[str, float],
                args: argparse.Namespace) -> dict[str, Any]:
    """diffrecon with default settings, scored by ``evaluate.object_nrmse`` every ``--every``
    epochs (the evaluator replaces the built-in one for this call only, so that every package
    is judged by the same code; its time is excluded from the epoch times).

    The chunked FFT floor is timed at each scoring too, between epochs, with the allocator as
    the epochs have it: on a shared machine whose speed drifts, a floor timed minutes apart
    from the epochs gave ratios from 1.9x to 7.7x for the same code. The row's floor is the
    median of those passes."""
    truth = data.truth.object[0]
    spent = [0.0]
    n, frame = data.num_patterns, data.frame_shape[0]
    timer = bench_ptycho.FloorTimer(n, 1, frame, floors["batch"], args.device,
                                    reuse_memory=None)
    passes: list[float] = []

    def score(model: Any) -> dict[str, float]:
        tick = time.perf_counter()
        value = evaluate.object_nrmse(model.results()["object"], truth, mask)
        passes.append(timer.once())
        spent[0] += time.perf_counter() - tick
        return {"nrmse": value}

    started = time.perf_counter()
    # the scoring runs as the epochs do (not handing memory back: that is for large objects)
    with mock.patch.object(diffrecon.api, "truth_evaluator", lambda *_: score), \
            mock.patch.object(diffrecon.api, "_returning_memory", lambda evaluate: evaluate):
        result = diffrecon.reconstruct(scan, "ptycho", overrides=[
            f"recon.epochs={args.epochs}", f"log.metric_every={args.every}", *QUIET,
            *device_overrides(args)])
    wall = time.perf_counter() - started
    seconds = result.history["time/epoch_s"]
    errors = result.history["metric/nrmse"]
    done = [i + 1 for i, e in enumerate(errors) if np.isfinite(e)]
    allocator_note = ""
    if on_gpu(args):  # the GPU's own peak (data, object, batch intermediates), not host RSS
        memory = torch.cuda.max_memory_allocated() / 2**20
        lazy = gpu_peak_mb(lambda: diffrecon.reconstruct(scan, "ptycho", lazy=True, overrides=[
            "recon.epochs=3", *QUIET, *device_overrides(args)]))
    else:
        memory = bench_ptycho.reconstruction_memory_mb(scan, False, *args.set)
        lazy = bench_ptycho.reconstruction_memory_mb(scan, True, *args.set)
        jemalloc = jemalloc_environment()  # the same process under jemalloc, if installed
        if jemalloc is not None:
            peak = bench_ptycho.reconstruction_memory_mb(scan, False, *args.set, env=jemalloc)
            allocator_note = f"; jemalloc peak {peak:.0f} MiB"
    return harness.summarize(
        "ptycho", harness.OURS, seconds, done, [errors[i - 1] for i in done],
        setup_s=wall - sum(seconds) - spent[0],
        fft_floor_s=statistics.median(passes or [floors["fft_floor_s"]]),
        fft_floor_scan_s=floors["fft_floor_scan_s"], peak_mb=memory,
        note=f"defaults; lazy peak {lazy:.0f} MiB{allocator_note}; raw data "
             f"{data.patterns.nbytes / 2**20:.1f} MiB; floor from {len(passes)} passes "
             "between epochs")


def ptycho_peer(name: str, data: Any, scan: Path, mask: np.ndarray, floors: dict[str, float],
                args: argparse.Namespace) -> dict[str, Any]:
    """A peer on the same file: install if needed, run its worker, score its snapshots."""
    peer = peers.PEERS[name]
    reason = peers.ensure_venv(peer)
    if reason:
        return harness.failed("ptycho", name, reason)
    out = args.out / f"{name}.npz"
    out.unlink(missing_ok=True)
    reason = peers.run_worker(peer, scan, out, args.peer_epochs, args.every, args.threads,
                              args.peer_budget, args.peer_budget * 3 + 600)
    if reason:
        return harness.failed("ptycho", name, reason)
    after = measure_floors(data, floors["batch"], args)
    runs = np.load(out)
    truth = data.truth.object[0]
    orientation, _ = evaluate.best_orientation(runs["objects"][-1], truth, mask)
    errors = [evaluate.object_nrmse(o, truth, mask, orientation) for o in runs["objects"]]
    # the peer runs in its own process: its floor is the mean of those timed just before
    # and just after it
    return harness.summarize(
        "ptycho", name, runs["epoch_seconds"].tolist(), runs["epochs"].tolist(), errors,
        setup_s=float(runs["setup_s"]),
        **{key: (floors[key] + after[key]) / 2 for key in ("fft_floor_s", "fft_floor_scan_s")},
        peak_mb=float(runs["peak_mb"]), note=f"{runs['note']}; axes {orientation}")


def measure_floors(data: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """The chunked and one-call FFT floors of ``data``'s epoch, timed now."""
    n, frame = data.num_patterns, data.frame_shape[0]
    return {"batch": batch,
            "fft_floor_s": bench_ptycho.fft_floor(n, 1, frame, batch, device=args.device),
            "fft_floor_scan_s": bench_ptycho.fft_floor(n, 1, frame, n, device=args.device,
                                                       reuse_memory=False)}


def case_ptycho(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = diffrecon.simulate(args.scene)
    scan = args.out / "scene.cxi"
    diffrecon.data.cxi.save(data, scan)
    n, frame = data.num_patterns, data.frame_shape[0]
    print(f"ptycho scene: {n} patterns of {frame}x{frame}, raw data "
          f"{data.patterns.nbytes / 2**20:.1f} MiB, object {data.truth.object.shape[-2:]}",
          flush=True)
    mask = evaluate.truth_mask(data)
    batch = next((int(v.split("=", 1)[1]) for v in args.set
                  if v.startswith("recon.batch_size=")), 0) or default_batch_size(n, frame**2)
    rows = [ptycho_ours(data, scan, mask, measure_floors(data, batch, args), args)]
    print(harness.format_table(rows[-1:]), flush=True)
    for name in [] if on_gpu(args) else args.peers:  # the peer workers run on the CPU
        rows.append(ptycho_peer(name, data, scan, mask, measure_floors(data, batch, args),
                                args))
        print(harness.format_table(rows[-1:]), flush=True)
    return rows


def case_cdi(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = CDISimulation(photons=1e8)
    data = simulate_cdi(settings)
    base = handoff.resident_mb()
    started = time.perf_counter()
    result = bench_cdi.reconstruct(data, bench_cdi.HIO, f"log.metric_every={args.cdi_every}",
                                   *device_overrides(args))
    wall = time.perf_counter() - started
    memory = peak_mb(args, base)  # the reconstruction's, before the floor's own arrays
    seconds = result.history["time/epoch_s"]
    errors = result.history["metric/nrmse"]
    done = [i + 1 for i, e in enumerate(errors) if np.isfinite(e)]
    floor = bench_cdi.fft_floor((settings.array_px,) * settings.dimensions, device=args.device)
    return [harness.summarize(
        "cdi", harness.OURS, seconds, done, [errors[i - 1] for i in done],
        fft_floor_s=floor, peak_mb=memory,
        note=f"{bench_cdi.HIO}, 2D {settings.array_px}^2; wall {wall:.1f} s incl. metrics")]


def case_multislice(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = diffrecon.simulate(bench_electron.CONFIGS / "electron_mos2.toml")
    base = handoff.resident_mb()
    quiet = [q for q in bench_electron.QUIET if not q.startswith("log.metrics")]
    result, _ = bench_electron.run(data, {}, ['model.object_kind="phase"', "recon.epochs=40",
                                              f"log.metric_every={args.every}",
                                              *device_overrides(args)], quiet)
    memory = peak_mb(args, base)  # the reconstruction's, before the floor's own arrays
    seconds = result.history["time/epoch_s"]
    errors = result.history["metric/nrmse"]
    done = [i + 1 for i, e in enumerate(errors) if np.isfinite(e)]
    n, frame = data.num_patterns, data.frame_shape[0]
    config = result.model.config
    pairs = 2 * config.slices - 1
    batch = default_batch_size(n, frame * frame)
    floor = pairs * bench_ptycho.fft_floor(n, config.probe_modes, frame, batch,
                                           device=args.device)
    return [harness.summarize(
        "multislice", harness.OURS, seconds, done, [errors[i - 1] for i in done],
        fft_floor_s=floor, peak_mb=memory,
        note=f"MoS2 monolayer, {n}x{frame}^2, S={config.slices}, phase object")]


CASES = {"ptycho": case_ptycho, "cdi": case_cdi, "multislice": case_multislice}


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_case_in_child(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one case in a fresh interpreter (its own peak memory); rows come back as JSON."""
    rows_file = args.out / f"rows_{name}.json"
    rows_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", name, "--out", str(args.out),
               "--scene", str(args.scene), "--threads", str(args.threads),
               "--epochs", str(args.epochs), "--peer-epochs", str(args.peer_epochs),
               "--every", str(args.every), "--cdi-every", str(args.cdi_every),
               "--peer-budget", str(args.peer_budget), "--device", args.device,
               *[item for value in args.set for item in ("--set", value)],
               "--peers", *args.peers]
    done = subprocess.run(command)
    if done.returncode != 0 or not rows_file.exists():
        return [harness.failed(name, harness.OURS, f"case process exited {done.returncode}")]
    return json.loads(rows_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES),
                        help="benchmark cases to run")
    parser.add_argument("--peers", nargs="*", default=list(peers.PEERS),
                        choices=list(peers.PEERS),
                        help="peer packages on the ptycho case, each installed from PyPI into "
                             "experiments/bench/.venvs/ on first use; --peers with no names "
                             "runs ours alone")
    parser.add_argument("--scene", type=Path,
                        default=EXPERIMENTS / "configs" / "ptycho_design.toml",
                        help="simulation TOML of the ptycho scene")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="torch device of our runs, e.g. cuda (peers are then skipped: "
                             "their workers run on the CPU); peak memory is then the GPU's")
    parser.add_argument("--epochs", type=int, default=60, help="diffrecon ptycho epochs")
    parser.add_argument("--peer-epochs", type=int, default=100)
    parser.add_argument("--every", type=int, default=5, help="epochs between scored snapshots")
    parser.add_argument("--cdi-every", type=int, default=50,
                        help="CDI iterations between scored estimates")
    parser.add_argument("--peer-budget", type=float, default=600.0,
                        help="seconds of timed epochs after which a peer is stopped")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for our runs, e.g. recon.batch_size=64")
    parser.add_argument("--out", type=Path, default=EXPERIMENTS / "out" / "bench")
    parser.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.child:
        rows = CASES[args.child](args)
        (args.out / f"rows_{args.child}.json").write_text(json.dumps(rows, indent=1))
        return
    before = load_average()
    started = time.perf_counter()
    rows = [row for name in args.cases for row in run_case_in_child(name, args)]
    ratios = harness.peer_ratios(rows)
    after = load_average()
    report = {"threads": args.threads, "device": device_name(args.device),
              "torch": torch.__version__, "cpus": os.cpu_count(),
              "load_average_before": before, "load_average_after": after,
              "wall_s": time.perf_counter() - started, "rows": rows, "ratios": ratios}
    print(f"\n{device_name(args.device)}; threads {args.threads}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; "
          f"load average (1, 5, 15 min) before {before}, after {after}")
    print(harness.format_table(rows))
    print(harness.format_ratios(ratios))
    for row in rows:
        if row.get("note"):
            print(f"  {row['case']}/{row['package']}: {row['note']}")
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'bench.json'}")


if __name__ == "__main__":
    main()
