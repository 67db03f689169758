"""The peer packages: their own virtual environments (outside git) and their worker runs.

Each peer lives in ``experiments/bench/.venvs/<name>`` (gitignored), created with
``python -m venv --system-site-packages`` so it shares this interpreter's numpy/h5py, with
``torch==2.13.0`` pinned so the local CPU wheel is used instead of a CUDA build. Its worker
script (``workers/<name>_worker.py``) runs there on the shared CXI file and hands back object
snapshots and timings (``handoff.save_snapshots``); failures come back as a reason string.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
TORCH_PIN = "torch==2.13.0"


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str  #: the venv's name and the worker's prefix
    requirement: str  #: what pip installs from the registry
    module: str = ""  #: the import name, when it is not ``name``

    @property
    def python(self) -> Path:
        return VENVS / self.name / "bin" / "python"

    @property
    def worker(self) -> Path:
        return HERE / "workers" / f"{self.name}_worker.py"


PEERS = {peer.name: peer for peer in (
    Peer("cdtools", "cdtools-py==0.3.2"),
    Peer("ptychi", "ptychi==2.2.0"),
    Peer("ptyrad", "ptyrad==1.0.0"),
)}
#: Fourier ptychography only (bench_fp.py, workers/ptylab_fp.py), not a ptychography peer
PTYLAB = Peer("ptylab", "ptylab==0.3.7", module="PtyLab")


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def ensure_venv(peer: Peer, timeout_s: float = 1800) -> str:
    """Create and fill the peer's environment if it cannot import the package yet.

    Returns "" when ready, else the reason it is not (the pip or import error's last lines).
    """
    module = peer.module or peer.name
    check = [str(peer.python), "-c", f"import {module}"]
    if peer.python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return ""
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                        str(VENVS / peer.name)], check=True, capture_output=True, text=True)
        pip = subprocess.run([str(peer.python), "-m", "pip", "install", "-q", TORCH_PIN,
                              peer.requirement], capture_output=True, text=True,
                             timeout=timeout_s)
    except (subprocess.SubprocessError, OSError) as error:
        return f"could not create the environment: {error}"
    if pip.returncode != 0:
        return f"pip install {peer.requirement} failed: {_tail(pip.stderr)}"
    imported = subprocess.run(check, capture_output=True, text=True)
    if imported.returncode != 0:
        return f"import {module} failed after install: {_tail(imported.stderr)}"
    return ""


def run_worker(peer: Peer, scan: Path, out: Path, epochs: int, every: int, threads: int,
               budget_s: float, timeout_s: float) -> str:
    """Run the peer's worker for at most ``epochs`` epochs or ``budget_s`` seconds of them;
    returns "" on success (``out`` written), else the reason."""
    return run_script(peer, peer.worker, [scan, out, epochs, every, threads, budget_s], out,
                      threads, timeout_s)


def run_script(peer: Peer, script: Path, args: list[object], out: Path, threads: int,
               timeout_s: float) -> str:
    """Run ``script args...`` in the peer's environment with ``threads`` CPU threads, in
    ``out``'s folder; its output goes to ``out`` with suffix ``.log``. Returns "" when it
    exited 0 and wrote ``out``, else the reason."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [str(peer.python), str(script), *map(str, args)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env=env, cwd=out.parent)
    except subprocess.TimeoutExpired:
        return f"worker ran past {timeout_s:.0f} s"
    log = out.with_suffix(".log")
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0 or not out.exists():
        return f"worker exited {done.returncode}: {_tail(done.stderr)} (full log: {log})"
    return ""
