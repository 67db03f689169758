"""TensorBoard run logging, passed explicitly to whoever logs (never a global).

``RunLogger`` writes event files; ``NullLogger`` has the same methods and does nothing, so code
that logs never branches on whether logging is enabled. Both satisfy the ``Logger`` protocol.
Tags follow the canonical names: ``loss/total``, ``loss/<term>``, ``lr/<param>``,
``metric/<name>``, ``object/amplitude``, ``object/phase``, ``probe/mode<m>/...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

HParamValue = float | int | str | bool


@runtime_checkable
class Logger(Protocol):
    """What the reconstruction loop and callbacks may call on a logger."""

    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def scalars(self, values: Mapping[str, float], step: int) -> None: ...
    def image(self, tag: str, image: np.ndarray, step: int) -> None: ...
    def complex_image(self, tag_prefix: str, field: np.ndarray, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int = 0) -> None: ...
    def hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def normalise_image(image: np.ndarray) -> np.ndarray:
    """Min-max scale a real image to [0, 1] (float32); NaN/inf become 0, a flat image all 0.

    Args:
        image: real array, any shape.
    """
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.float32)
    low, high = image[finite].min(), image[finite].max()
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return np.where(finite, scaled, 0.0).astype(np.float32)


class RunLogger:
    """Write TensorBoard event files into ``log_dir`` (created if missing).

    Args:
        log_dir: folder for the event files, usually ``<run folder>/tensorboard``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        # imported here so that importing diffrecon does not load TensorBoard
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer: SummaryWriter = SummaryWriter(str(self.log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log one scalar ``value`` under ``tag`` at ``step`` (epoch or iteration)."""
        self.writer.add_scalar(tag, float(value), int(step))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log each ``tag: value`` pair as its own scalar at ``step``."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log an image.

        Args:
            tag: image tag.
            image: (H, W) real, min-max normalised to grey; or (H, W, 3) RGB in [0, 1] (clipped).
            step: global step.
        """
        image = np.asarray(image)
        if image.ndim == 2:
            self.writer.add_image(tag, normalise_image(image), int(step), dataformats="HW")
        elif image.ndim == 3 and image.shape[-1] == 3:
            rgb = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
            self.writer.add_image(tag, rgb, int(step), dataformats="HWC")
        else:
            raise ValueError(
                f"RunLogger.image({tag!r}): expected (H, W) or (H, W, 3), found shape {image.shape}"
            )

    def complex_image(self, tag_prefix: str, field: np.ndarray, step: int) -> None:
        """Log ``<prefix>/amplitude`` and ``<prefix>/phase`` of a complex (H, W) field.

        Each is min-max normalised on its own, so weak phase objects keep their contrast.
        """
        field = np.asarray(field)
        self.image(f"{tag_prefix}/amplitude", np.abs(field), step)
        self.image(f"{tag_prefix}/phase", np.angle(field), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Log markdown ``text`` (e.g. the resolved config in a code block)."""
        self.writer.add_text(tag, text, int(step))

    def hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float]) -> None:
        """Log run hyperparameters with final ``metrics`` for TensorBoard's HPARAMS tab.

        Written into ``log_dir`` itself (``run_name="."``), not a time-stamped sub-folder.
        Numpy scalars are unwrapped; values of other types are logged as their ``str``.
        """
        clean: dict[str, HParamValue] = {}
        for key, value in hparams.items():
            value = value.item() if isinstance(value, np.generic) else value
            clean[key] = value if isinstance(value, bool | int | float | str) else str(value)
        self.writer.add_hparams(clean, {k: float(v) for k, v in metrics.items()}, run_name=".")

    def flush(self) -> None:
        """Write pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file; safe to call twice."""
        self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class NullLogger:
    """Accept every ``Logger`` call and do nothing (TensorBoard logging disabled)."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Ignore a scalar."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Ignore scalars."""

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Ignore an image."""

    def complex_image(self, tag_prefix: str, field: np.ndarray, step: int) -> None:
        """Ignore a complex image."""

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Ignore text."""

    def hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float]) -> None:
        """Ignore hyperparameters."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None
