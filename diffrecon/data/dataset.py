"""Batches of measured patterns in the propagator's native layout, in memory or lazily."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from diffrecon.data.container import BLOCK_BYTES, DiffractionData
from diffrecon.physics.propagators import Propagator

Tensor = torch.Tensor


class PatternBatches:
    """Serves measured counts (B, H, W) for pattern indices, converted once to native layout.

    ``prepare`` (the likelihood's ``prepare_``) transforms the counts elementwise, in place,
    e.g. to amplitudes (a callable that returns a new tensor is copied back); masked pixels
    are zeroed, NaN/Inf included (they never enter the likelihood).

    In-memory data are converted block by block (``DiffractionData.blocks``) into one tensor
    on ``device`` (no second full copy); a lazy HDF5 source is read per batch, so memory
    stays bounded by the batch size whatever the file size.

    With ``compact`` (default), counts that are whole numbers in [0, 65535] on every valid
    pixel (photon-counting detectors, simulations with Poisson noise) are kept as uint16, half
    the memory of float32, and converted and prepared per batch; anything else (a flat-field
    corrected or background-subtracted float) is kept as prepared float32. The two serve the
    same values (masked pixels are zero in both). 2000 x 256^2 frames (500 MiB as float32):
    250 MiB held. Serving a batch of 32 of 128^2 (2 threads, amplitude likelihood) takes
    0.5 ms instead of 0.05 ms, about 3% of its update.
    """

    block_bytes = BLOCK_BYTES  # float32 frames converted at a time when loading into memory

    def __init__(
        self,
        data: DiffractionData,
        propagator: Propagator,
        device: torch.device | str = "cpu",
        *,
        lazy: bool | None = None,
        prepare: Callable[[Tensor], Tensor] | None = None,
        compact: bool = True,
    ) -> None:
        self.data = data
        self.propagator = propagator
        self.prepare = prepare
        self.device = torch.device(device)
        self.lazy = not isinstance(data.patterns, np.ndarray) if lazy is None else lazy
        # A propagator over all the data's axes (3D CDI): the whole array is one measurement.
        self.volume = propagator.ndim == len(data.patterns.shape)
        frame = tuple(data.patterns.shape[-propagator.ndim :])
        self.frame_shape: tuple[int, ...] = frame  # one measurement, detector pixels
        valid = np.broadcast_to(data.valid_mask(), frame).copy()
        self.valid = propagator.to_native(torch.as_tensor(valid)).to(self.device)
        self.patterns: Tensor | None = None
        if self.volume:
            self.lazy = False
            self.patterns = self._convert(torch.as_tensor(np.asarray(data.patterns))[None])
        elif not self.lazy:
            self.patterns = self._load(compact and _uint16_works(self.device))
        # compact counts are served through the prepared value of each possible count (the
        # likelihood's ``prepare`` maps counts elementwise): 32 x 128^2 counts, 88% zeros,
        # 2 threads: 0.43 ms, where converting and taking the square root took 1.05 ms
        # (torch's float sqrt of zero is 8x slower than of other numbers on this CPU)
        self._table: Tensor | None = None
        if self.compact:
            counts = torch.arange(65536, dtype=torch.float32, device=self.device)
            table = self._prepare(counts.clone())
            self._table = None if torch.equal(table, counts) else table

    @property
    def compact(self) -> bool:
        """Whether the patterns are held as uint16 counts (prepared per batch)."""
        return self.patterns is not None and self.patterns.dtype == torch.uint16

    def _load(self, compact: bool) -> Tensor:
        """All patterns (N, H, W) in native layout: uint16 counts while every block is whole
        numbers in range (``compact``), else prepared float32 (what was stored so far is
        converted once, when the first block that does not fit arrives)."""
        data = self.data
        n, (h, w) = data.num_patterns, data.frame_shape
        dtype = torch.uint16 if compact else torch.float32
        patterns = torch.empty((n, h, w), dtype=dtype, device=self.device)
        scratch: Tensor | None = None
        for start, block in data.blocks(self.block_bytes):
            stop = start + block.shape[0]
            if patterns.dtype == torch.float32:
                self._convert(torch.as_tensor(block), out=patterns[start:stop])
                continue
            if scratch is None:
                scratch = torch.empty((block.shape[0], h, w), device=self.device)
            native = self._native(torch.as_tensor(block), scratch[: stop - start])
            if _fits_uint16(native):
                patterns[start:stop].copy_(native)
                continue
            stored, patterns = patterns, torch.empty((n, h, w), device=self.device)
            for first in range(0, start, scratch.shape[0]):
                last = min(first + scratch.shape[0], start)
                self._prepare(patterns[first:last].copy_(stored[first:last]))
            del stored
            self._prepare(patterns[start:stop].copy_(native))
        return patterns

    def _native(self, block: Tensor, out: Tensor) -> Tensor:
        """``block`` (K, H, W) into ``out`` in native layout, float32, masked pixels and
        NaN/Inf zeroed; not prepared."""
        # from pinned memory the copy to a GPU is asynchronous (ordered on the same stream)
        moved = block.to(self.device, non_blocking=block.is_pinned()).to(torch.float32)
        self.propagator.to_native(moved, out=out).nan_to_num_(nan=0.0, posinf=0.0,
                                                               neginf=0.0)
        return out.masked_fill_(~self.valid, 0.0)

    def _prepare(self, counts: Tensor) -> Tensor:
        """``counts`` prepared in place (the likelihood's form) and returned."""
        if self.prepare is not None:
            prepared = self.prepare(counts)
            if prepared is not counts:
                counts.copy_(prepared)
        return counts

    def _convert(self, block: Tensor, out: Tensor | None = None) -> Tensor:
        """``block`` in native layout, float32, finite and prepared; written into ``out`` if
        given, with no block-sized temporary (2000 x 256^2 frames converted into one tensor:
        the temporaries left 230 MiB of freed blocks in the heap, 793 MiB resident at the
        end against 565). Never written into ``block`` itself (a user's array or the lazy
        reader's buffer)."""
        if out is None:
            out = torch.empty(block.shape, dtype=torch.float32, device=self.device)
        return self._prepare(self._native(block, out))

    def __len__(self) -> int:
        return 1 if self.volume else self.data.num_patterns

    def __call__(self, index: Tensor) -> Tensor:
        if self.patterns is not None:
            # index_select, not patterns[index]: 32 of 420 128^2 frames, 2 threads: 0.10 ms
            # against 0.38 ms (uint16 and float32 alike)
            rows = torch.index_select(self.patterns, 0, index.to(self.device))
            if not self.compact:
                return rows
            if self._table is None:
                return rows.to(torch.float32)
            return torch.index_select(self._table, 0, rows.view(-1).to(torch.int32)
                                      ).view(rows.shape)
        tensor = torch.from_numpy(read_frames(self.data.patterns, index.cpu().numpy()))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return self._convert(tensor)


def _fits_uint16(counts: Tensor) -> bool:
    """Whether float ``counts`` are all whole numbers in [0, 65535] (exact as uint16)."""
    if counts.numel() == 0:
        return True
    low, high = torch.aminmax(counts)
    return bool(low >= 0) and bool(high <= 65535) and bool(torch.equal(counts, counts.trunc()))


def _uint16_works(device: torch.device) -> bool:
    """Whether uint16 tensors can be indexed and converted on ``device`` (true on the CPU;
    checked once rather than assumed elsewhere)."""
    try:
        probe = torch.zeros(2, dtype=torch.uint16, device=device)
        return bool(probe[torch.tensor([1], device=device)].to(torch.float32).sum() == 0)
    except (RuntimeError, NotImplementedError):
        return False


def read_frames(source: Any, index: np.ndarray) -> np.ndarray:
    """Frames ``source[index]`` (K, H, W) of a lazy source (an HDF5 dataset), in the order of
    ``index`` (K,), read as runs of consecutive frames: h5py's indexing with a list is several
    times slower (32 random 128x128 gzip frames: 38.9 ms as a list, 8.9 ms frame by frame)."""
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    out = np.empty((len(index), *source.shape[1:]), dtype=source.dtype)
    starts = np.flatnonzero(np.diff(ordered) != 1) + 1
    for run in np.split(np.arange(len(index)), starts):
        first = int(ordered[run[0]])
        out[order[run]] = source[first : first + len(run)]
    return out


def prefetched(read: Callable[[Tensor], Tensor], groups: list[Tensor],
               background: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """``(group, read(group))`` for each index tensor of ``groups``, in order.

    With ``background`` (a lazy source) the next group is read, decompressed and converted
    in a background thread while the caller computes with the current one; otherwise each is
    read when it is needed. ``read`` must not change state the caller relies on.
    """
    if not background or not groups:
        for group in groups:
            yield group, read(group)
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, groups[0])
        for position, group in enumerate(groups):
            counts = pending.result()
            if position + 1 < len(groups):
                pending = reader.submit(read, groups[position + 1])
            yield group, counts


def random_batches(num: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """A fresh random partition of range(num) into batches, reproducible from (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.randperm(num, generator=generator).split(batch_size))


def compact_batches(
    positions: np.ndarray, batch_size: int, seed: int, iterations: int = 20
) -> list[Tensor]:
    """Spatially compact batches: k-means clusters of the scan positions (N, 2).

    Neighbouring positions share one update, which suits least-squares-like steps; the
    clustering is computed once and the batch order is shuffled per epoch by the caller.
    """
    count = max(1, int(np.ceil(len(positions) / batch_size)))
    rng = np.random.default_rng(seed)
    centres = positions[rng.choice(len(positions), count, replace=False)]
    for _ in range(iterations):
        labels = np.argmin(((positions[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for k in range(count):
            if np.any(labels == k):
                centres[k] = positions[labels == k].mean(axis=0)
    return [
        torch.as_tensor(np.flatnonzero(labels == k)) for k in range(count) if np.any(labels == k)
    ]
