"""The run folder: checked to be writable before a run, written at its end; a file that
cannot be written there (disk full) goes to a fallback folder, and the error says where.

A run folder holds ``reconstruction.h5``, ``report.png``, ``config.toml``, ``tensorboard/``
and ``checkpoint.pt`` (see DESIGN.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diffrecon.data.results import write_results
from diffrecon.errors import ConfigError, RunFolderError
from diffrecon.runconfig import RunConfig, config_to_toml

log = logging.getLogger("diffrecon")


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def check_run_folder(folder: str | Path) -> Path:
    """Check that ``folder`` can be created and written, so that a run that could not save
    its results fails before it starts: a uniquely named probe file is written and removed in
    it or, while it does not exist, a probe folder in its nearest existing parent. Nothing is
    left behind (a run that fails later on its data leaves no empty folder), and concurrent
    checks (torchrun ranks) do not disturb one another. ConfigError naming the folder and the
    reason otherwise."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents, Path(".")) if p.exists())
    if not existing.is_dir():
        why = f"'{existing}' is a file, not a folder"
    else:
        try:
            if existing == folder:
                handle, probe = tempfile.mkstemp(dir=folder, prefix=".diffrecon-write-test-")
                os.close(handle)
                os.unlink(probe)
            else:
                os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".diffrecon-write-test-"))
            return folder
        except OSError as error:
            why = _reason(error)
    raise ConfigError(f"run folder '{folder}': cannot create and write it ({why}); give "
                      "another run folder (--out)")


class RunFolder:
    """Writes a run's files into ``path``; one that cannot be written there is written into a
    fallback folder in the temporary directory instead, and ``raise_failures`` reports both.

    Attributes:
        path: the run folder.
        fallback: the fallback folder, once one was needed.
        failures: by file name, why it could not be written into ``path``, and why not into the
            fallback folder either (None: it is there).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fallback: Path | None = None
        self.failures: dict[str, tuple[str, str | None]] = {}

    def write(self, name: str, write: Callable[[Path], object], *, rescue: bool = True
              ) -> Path | None:
        """``write(path)`` for ``path`` = ``self.path / name``, else (with ``rescue``) in the
        fallback folder; returns where it was written (None: nowhere). Without ``rescue`` a
        failure raises RunFolderError at once."""
        problem = _attempt(write, self.path / name)
        if problem is None:
            self.failures.pop(name, None)
            return self.path / name
        if not rescue:
            raise RunFolderError(f"run folder '{self.path}': could not write {name} ({problem})")
        try:
            if self.fallback is None:
                self.fallback = Path(tempfile.mkdtemp(prefix=f"diffrecon-{self.path.name}-"))
            second = _attempt(write, self.fallback / name)
        except OSError as error:
            second = f"no fallback folder: {_reason(error)}"
        self.failures[name] = (problem, second)
        rescued = self.fallback / name if second is None and self.fallback else None
        log.warning("could not write %s (%s); %s", self.path / name, problem,
                    f"wrote {rescued} instead" if rescued else f"nor elsewhere: {second}")
        return rescued

    def raise_failures(self, result: Any = None) -> None:
        """Raise RunFolderError (carrying ``result``) if any file missed the run folder."""
        if not self.failures:
            return
        reasons = "; ".join(sorted({problem for problem, _ in self.failures.values()}))
        message = f"run folder '{self.path}': could not write {', '.join(self.failures)} " \
                  f"({reasons})"
        rescued = [name for name, (_, second) in self.failures.items() if second is None]
        lost = {name: second for name, (_, second) in self.failures.items() if second}
        if rescued:
            message += f"; wrote {', '.join(rescued)} to {self.fallback}{os.sep} instead"
        if lost:
            message += "; lost " + ", ".join(f"{name} ({why})" for name, why in lost.items())
        error = RunFolderError(message)
        error.result = result
        raise error


def _attempt(write: Callable[[Path], object], path: Path) -> str | None:
    """None when ``write(path)`` succeeded, else why not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except (OSError, RuntimeError) as error:  # torch.save reports some I/O as RuntimeError
        return _reason(error)
    return None


def write_run_folder(folder: RunFolder, run_config: RunConfig, results: dict[str, Any],
                     history: dict[str, list[float]], metrics: dict[str, float]) -> None:
    """Write config.toml, reconstruction.h5 (and .xdmf, atoms.xyz where the modality has
    them) and report.png through ``folder``."""
    from diffrecon.viz import save_report

    folder.write("config.toml", lambda path: path.write_text(config_to_toml(run_config)))
    if "atoms_xyz" in results:  # traced atoms (ptycho_tomo) as an XYZ file
        results = dict(results)
        atoms = results.pop("atoms_xyz")
        folder.write("atoms.xyz", lambda path: path.write_text(atoms))
    arrays = {k: np.asarray(v) for k, v in results.items() if np.ndim(v) > 0}
    attrs: dict[str, Any] = {k: v for k, v in results.items() if np.ndim(v) == 0}
    for key in ("pixel_size_m", "origin_m"):
        if key in arrays:
            attrs[key] = tuple(float(v) for v in arrays.pop(key))
    attrs["modality"] = run_config.modality
    attrs.update({f"metric_{k}": float(v) for k, v in metrics.items()})
    groups = {"history": {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}}
    folder.write("reconstruction.h5", lambda path: write_results(path, arrays, attrs,
                                                                 groups=groups))
    if "lab_voxel_size_m" in arrays:  # lab-frame volumes (Bragg CDI): a ParaView descriptor
        from diffrecon.data.xdmf import write_xdmf

        grid = np.shape(arrays.get("strain", ()))
        folder.write("reconstruction.xdmf", lambda path: write_xdmf(
            path, "reconstruction.h5",
            {k: v for k, v in arrays.items() if v.shape == grid and v.dtype != bool},
            arrays["lab_voxel_size_m"].tolist(), arrays["lab_origin_m"].tolist()))
    if run_config.log.report:
        title = f"diffrecon {run_config.modality}: " + ", ".join(
            f"{k} {v:.3g}" for k, v in metrics.items())
        curves = {"loss": history.get("loss/total", []),
                  **{k: v for k, v in history.items() if k.startswith("metric/")}}
        folder.write("report.png", lambda path: save_report(path, results, curves, title=title))
