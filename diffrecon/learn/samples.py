"""Training samples for ptychography networks: (pattern, object patch) pairs from the ``ptycho``
model itself, so that a network's output lives in exactly the frame the iterative solver uses.

A *chunk* is one random object (from :class:`ObjectGenerator`) scanned at random sub-pixel
positions by the simulation's probe, evaluated through the registered ``ptycho`` forward model
and noised by a registered likelihood (``data.simulate.simulate_patterns``). The target of each
pattern is the object window the model multiplies with the probe (``extract_patches`` at the
integer corner), and the sub-pixel part of the position is kept, since the model shifts the
probe by it. Chunk ``k`` of a split is a pure function of ``(split seed, k)``; training and
validation use disjoint seeds, so the split is by generator seed.

Input normalisation happens in one place, :func:`network_input`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data.simulate import PtychoSimulation, simulate_patterns, simulation_probe
from diffrecon.errors import DataFormatError
from diffrecon.learn.objects import ObjectGenerator, ObjectSpec
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.physics.propagators import FarField
from diffrecon.physics.shifts import extract_patches

Tensor = torch.Tensor

#: seed offset of the validation split (its chunks never share a generator seed with training)
VALIDATION_SEED = 1_000_003


@dataclasses.dataclass
class SampleConfig:
    """How training chunks are drawn."""

    chunks: int = doc(200, "training objects (chunks) per epoch")
    validation_chunks: int = doc(16, "validation objects (fixed seeds, disjoint from training)")
    patterns_per_chunk: int = doc(32, "random scan positions per object")
    margin_px: int = doc(16, "object size is the frame plus this margin, pixels")
    stream: bool = doc(False, "draw new objects every epoch (else the same chunks each epoch)")
    shards: list[str] = doc([], "HDF5 shards (from write_shard) used instead of simulating")
    seed: int = doc(0, "base seed of the training chunks")


@dataclasses.dataclass
class PatchSet:
    """Patterns and their ground truth, batch first.

    Attributes:
        counts: (N, h, w) float32 counts, DC-centred as on the detector.
        targets: (N, h, w) complex64 object windows, or None (unlabelled data).
        fractions: (N, 2) float32 sub-pixel probe offsets in [0, 1) pixels (y, x).
    """

    counts: Tensor
    targets: Tensor | None
    fractions: Tensor

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def subset(self, index: Tensor) -> PatchSet:
        return PatchSet(self.counts[index], None if self.targets is None else self.targets[index],
                        self.fractions[index])

    @staticmethod
    def concat(sets: list[PatchSet]) -> PatchSet:
        targets = None if any(s.targets is None for s in sets) else torch.cat(
            [s.targets for s in sets if s.targets is not None])
        return PatchSet(torch.cat([s.counts for s in sets]), targets,
                        torch.cat([s.fractions for s in sets]))


def network_input(counts: Tensor, scale: float) -> Tensor:
    """The one input normalisation: (B, h, w) counts -> (B, 1, h, w) sqrt(counts) / scale.

    ``scale`` is the mean of sqrt(counts) over the training set (stored with the network), so
    inputs are O(1) and a scan with the training flux gives the same input distribution.
    """
    return (counts.clamp(min=0).sqrt() / scale)[:, None].to(torch.float32)


class PatchSimulator:
    """Chunks of (pattern, target) pairs for one probe and detector geometry.

    Args:
        simulation: the ptychography simulation settings (probe, frame, photons, noise); the
            held-out scan is simulated from the same settings.
        objects: the object classes to draw.
        samples: chunk sizes.
    """

    def __init__(self, simulation: PtychoSimulation, objects: ObjectSpec,
                 samples: SampleConfig) -> None:
        self.simulation = simulation
        self.samples = samples
        self.generator = ObjectGenerator(objects)
        self.probe, self.pixel_size_m = simulation_probe(simulation)
        self.likelihood = None if simulation.noise == "none" else make_likelihood(
            simulation.noise)

    @property
    def frame(self) -> tuple[int, int]:
        return (int(self.probe.shape[-2]), int(self.probe.shape[-1]))

    def chunk(self, seed: int) -> PatchSet:
        """The chunk of generator seed ``seed`` (deterministic)."""
        h, w = self.frame
        size = (h + self.samples.margin_px, w + self.samples.margin_px)
        obj = torch.as_tensor(self.generator(seed, size))[None]
        rng = np.random.default_rng([seed, 104729])
        span = np.array([size[0] - h - 1, size[1] - w - 1], dtype=np.float64)
        positions = rng.uniform(0, 1, (self.samples.patterns_per_chunk, 2)) * span
        model = Ptycho(obj, self.probe.clone(), torch.as_tensor(positions, dtype=torch.float32),
                       FarField(), (self.pixel_size_m,) * 2, (0.0, 0.0), PtychoConfig(
                           probe_modes=self.probe.shape[0]))
        noise = torch.Generator().manual_seed(int(rng.integers(2**62)))
        counts = simulate_patterns(model, self.likelihood, len(positions), generator=noise)
        corners = model.positions.detach().floor()
        targets = extract_patches(obj, corners.long(), self.frame)[:, 0]
        return PatchSet(torch.as_tensor(counts), targets.detach(),
                        (model.positions.detach() - corners).to(torch.float32))

    def split(self, validation: bool = False, epoch: int = 0) -> PatchSet:
        """All chunks of the training split (of ``epoch`` when streaming) or the validation
        split."""
        if validation:
            seeds = [VALIDATION_SEED + k for k in range(self.samples.validation_chunks)]
        else:
            first = self.samples.seed + (epoch * self.samples.chunks if self.samples.stream
                                         else 0)
            seeds = list(range(first, first + self.samples.chunks))
        return PatchSet.concat([self.chunk(seed) for seed in seeds])


def write_shard(patches: PatchSet, path: str | Path) -> None:
    """Write a PatchSet to an HDF5 shard (datasets counts, targets, fractions)."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle["counts"] = patches.counts.numpy()
        handle["fractions"] = patches.fractions.numpy()
        if patches.targets is not None:
            handle["targets"] = patches.targets.numpy()


def read_shards(paths: list[str]) -> PatchSet:
    """Read and concatenate HDF5 shards written by :func:`write_shard`."""
    import h5py

    sets = []
    for path in paths:
        with h5py.File(path, "r") as handle:
            for key in ("counts", "fractions"):
                if key not in handle:
                    raise DataFormatError(path, key, "a dataset written by write_shard",
                                          "nothing")
            targets = torch.as_tensor(handle["targets"][()]) if "targets" in handle else None
            sets.append(PatchSet(torch.as_tensor(handle["counts"][()]), targets,
                                 torch.as_tensor(handle["fractions"][()])))
    return PatchSet.concat(sets)
