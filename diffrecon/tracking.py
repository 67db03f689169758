"""TensorBoard run logging, passed explicitly to whoever logs (never a global)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Logger(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def scalars(self, values: Mapping[str, float], step: int) -> None: ...
    def image(self, tag: str, image: np.ndarray, step: int) -> None: ...
    def complex_image(self, tag_prefix: str, field: np.ndarray, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int = 0) -> None: ...
    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _normalise(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    low, high = np.nanmin(image), np.nanmax(image)
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


class RunLogger:
    """Writes TensorBoard event files into ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        image = np.asarray(image)
        if image.ndim == 2:
            self.writer.add_image(tag, _normalise(image), step, dataformats="HW")
        else:
            self.writer.add_image(tag, np.clip(image, 0, 1), step, dataformats="HWC")

    def complex_image(self, tag_prefix: str, field: np.ndarray, step: int) -> None:
        self.image(f"{tag_prefix}/amplitude", np.abs(field), step)
        self.image(f"{tag_prefix}/phase", np.angle(field), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.writer.add_hparams(dict(hparams), dict(metrics), run_name=".")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullLogger:
    """Accepts every logging call and does nothing (TensorBoard disabled)."""

    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def scalars(self, values: Mapping[str, float], step: int) -> None: ...
    def image(self, tag: str, image: np.ndarray, step: int) -> None: ...
    def complex_image(self, tag_prefix: str, field: np.ndarray, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int = 0) -> None: ...
    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc: object) -> None: ...
