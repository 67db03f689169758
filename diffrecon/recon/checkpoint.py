"""Atomic checkpoints: write to a temporary file in the same folder, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffrecon.errors import DataFormatError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` so that ``path`` is either old or new, never torn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a clear error when missing or torn."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise DataFormatError(str(path), "<file>", "a checkpoint.pt from an earlier run",
                              "no such file")
    size = path.stat().st_size
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        detail = str(error).strip().splitlines()[0][:80] if str(error).strip() else ""
        found = ("an empty file" if size == 0 else
                 f"a damaged or truncated file of {size} bytes"
                 + (f" (torch: {detail})" if detail else ""))
        raise DataFormatError(str(path), "<file>", "a checkpoint written by diffrecon",
                              found) from None
