"""Before/after epoch time of two commits on a noisy machine: interleaved fresh processes.

    python experiments/bench/ab.py BASE                     # BASE (a commit) against the tree
    python experiments/bench/ab.py HEAD~1 --pairs 10 --epochs 20
    python experiments/bench/ab.py HEAD~1 --scene experiments/configs/ptycho_bench.toml

On a shared machine whose speed drifts over minutes, two runs timed one after the other can
differ by more than the change being measured. This script checks ``BASE`` out into a
temporary git worktree, simulates the scene once, and then alternates fresh processes of the
base and of the working tree (base first in even pairs, the tree first in odd ones), each
reconstructing the same file for ``--epochs`` epochs with the defaults (``--set`` for more).
It reports, per side, the median over runs of each run's median epoch and the fastest epoch
of all runs, and the median over pairs of the tree/base ratios: below 1 the tree is faster.
Each process prints where it imported diffrecon from, so a mix-up cannot go unnoticed.
CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
import diffrecon
result = diffrecon.reconstruct(sys.argv[1], "ptycho", overrides=[
    f"recon.epochs={sys.argv[2]}", "log.progress=false", "log.tensorboard=false",
    "log.metrics=false", "log.report=false", *sys.argv[4:]])
epochs = result.history["time/epoch_s"][2:]  # the first epochs warm plans and caches
print(json.dumps({"module": diffrecon.__file__, "median": sorted(epochs)[len(epochs) // 2],
                  "fastest": min(epochs)}))
"""


def run_side(source: Path, scan: Path, args: argparse.Namespace) -> dict[str, float]:
    """One fresh process importing diffrecon from ``source``; its epoch statistics. It runs
    in the scene's folder: ``python -c`` puts the working directory first on the path, so run
    from the repository it would import the tree's diffrecon whatever PYTHONPATH says."""
    env = {"PYTHONPATH": str(source), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(scan), str(args.epochs), str(args.threads),
         *args.set], capture_output=True, text=True, check=True,
        env={**os.environ, **env}, cwd=scan.parent)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(row["module"]).resolve().is_relative_to(source.resolve()):
        raise RuntimeError(f"imported diffrecon from {row['module']}, not {source}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="commit to compare the working tree against")
    parser.add_argument("--scene", type=Path,
                        default=ROOT / "experiments" / "configs" / "ptycho_design.toml")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import diffrecon  # the working tree's, for the scene
    import diffrecon.data.cxi

    with tempfile.TemporaryDirectory(prefix="diffrecon-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
        try:
            scan = Path(tmp) / "scene.cxi"
            diffrecon.data.cxi.save(diffrecon.simulate(args.scene), scan)
            rows: dict[str, list[dict[str, float]]] = {"base": [], "tree": []}
            for pair in range(args.pairs):
                order = ["base", "tree"] if pair % 2 == 0 else ["tree", "base"]
                for side in order:
                    rows[side].append(run_side(base if side == "base" else ROOT, scan, args))
                print(f"pair {pair + 1}: base {rows['base'][-1]['median']:.4f} s, "
                      f"tree {rows['tree'][-1]['median']:.4f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base)], check=False, capture_output=True)
    for side, runs in rows.items():
        print(f"{side}: median epoch {statistics.median(r['median'] for r in runs):.4f} s, "
              f"fastest {min(r['fastest'] for r in runs):.4f} s over {len(runs)} runs")
    ratios = [t["median"] / b["median"] for b, t in zip(rows["base"], rows["tree"], strict=True)]
    print(f"tree / base, median over pairs: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
