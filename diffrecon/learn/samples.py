"""Training samples: (pattern, target) pairs from a registered forward model, so that a
network's output lives in exactly the frame the iterative solver uses.

A :class:`SampleSource` (registry ``sources``, keyed by modality) draws *chunks*: chunk ``k``
of a split is a pure function of ``(split seed, k)``; training and validation use disjoint
seeds, so the split is by generator seed. Chunks are simulated per epoch (streamed) or once,
or read from HDF5 shards (:func:`write_shard`). This module holds the ``ptycho`` source; the
``cdi`` source is in ``learn.cdi``.

For ptychography a *chunk* is one random object (from :class:`ObjectGenerator`) scanned at
random sub-pixel positions by the simulation's probe, evaluated through the registered
``ptycho`` forward model and noised by a registered likelihood
(``data.simulate.simulate_patterns``). The target of each pattern is the object window the model
multiplies with the probe (``extract_patches`` at the integer corner), and the sub-pixel part of
the position is kept, since the model shifts the probe by it.

Input normalisation happens in one place, :func:`network_input`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data.hdf5 import open_hdf5
from diffrecon.data.simulate import PtychoSimulation, simulate_patterns, simulation_probe
from diffrecon.errors import DataFormatError
from diffrecon.learn.losses import physics_loss, probe_weights, supervised_loss
from diffrecon.learn.objects import ObjectGenerator, ObjectSpec
from diffrecon.losses.likelihoods import Likelihood, make_likelihood
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.physics.propagators import FarField
from diffrecon.physics.shifts import extract_patches
from diffrecon.registry import Registry

Tensor = torch.Tensor

#: seed offset of the validation split (its chunks never share a generator seed with training)
VALIDATION_SEED = 1_000_003


@dataclasses.dataclass
class SampleConfig:
    """How training chunks are drawn."""

    chunks: int = doc(200, "training objects (chunks) per epoch (cdi: one pattern each)")
    validation_chunks: int = doc(16, "validation objects (fixed seeds, disjoint from training)")
    patterns_per_chunk: int = doc(32, "ptycho: random scan positions per object")
    margin_px: int = doc(16, "ptycho: object size is the frame plus this margin, pixels")
    stream: bool = doc(False, "draw new objects every epoch (else the same chunks each epoch)")
    shards: list[str] = doc([], "HDF5 shards (from write_shard) used instead of simulating")
    seed: int = doc(0, "base seed of the training chunks")


@dataclasses.dataclass
class PatchSet:
    """Patterns and their ground truth, batch first.

    Attributes:
        counts: (N, *S) float32 counts, DC-centred as on the detector; S = (h, w) for 2D
            patterns, (D, H, W) for 3D CDI intensity volumes.
        targets: (N, *S) complex64 objects (ptycho: object windows), or None (unlabelled).
        fractions: (N, 2) float32 sub-pixel probe offsets in [0, 1) pixels (y, x) for
            ptychography; None where the model has no probe (CDI).
    """

    counts: Tensor
    targets: Tensor | None
    fractions: Tensor | None = None

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def subset(self, index: Tensor) -> PatchSet:
        return PatchSet(self.counts[index], None if self.targets is None else self.targets[index],
                        None if self.fractions is None else self.fractions[index])

    @staticmethod
    def concat(sets: list[PatchSet]) -> PatchSet:
        def joined(values: list[Tensor | None]) -> Tensor | None:
            return None if any(v is None for v in values) else torch.cat(
                [v for v in values if v is not None])

        return PatchSet(torch.cat([s.counts for s in sets]), joined([s.targets for s in sets]),
                        joined([s.fractions for s in sets]))


def network_input(counts: Tensor, scale: float) -> Tensor:
    """The one input normalisation: (B, h, w) counts -> (B, 1, h, w) sqrt(counts) / scale.

    ``scale`` is the mean of sqrt(counts) over the training set (stored with the network), so
    inputs are O(1) and a scan with the training flux gives the same input distribution.
    """
    return (counts.clamp(min=0).sqrt() / scale)[:, None].to(torch.float32)


class SampleSource:
    """Seeded chunks of (pattern, target) pairs from one forward model, and the training losses
    that fit its geometry (the subclass says what a chunk is and what the losses compare).

    Attributes:
        samples: chunk counts and seeds.
        probe: (M, h, w) complex probe stored with the network (ptycho), or None.
    """

    samples: SampleConfig
    probe: Tensor | None = None

    @property
    def frame(self) -> tuple[int, ...]:
        """Spatial shape of one pattern (and of the network's input and output)."""
        raise NotImplementedError

    def chunk(self, seed: int) -> PatchSet:
        """The chunk of generator seed ``seed`` (deterministic)."""
        raise NotImplementedError

    def supervised(self, estimate: Tensor, batch: PatchSet, probe: Tensor | None) -> Tensor:
        """Supervised loss of network output ``estimate`` (B, *S) against ``batch.targets``."""
        raise NotImplementedError

    def physics(self, estimate: Tensor, batch: PatchSet, probe: Tensor | None,
                likelihood: Likelihood) -> Tensor:
        """Negative log-likelihood per pixel of ``batch.counts`` given ``estimate``."""
        raise NotImplementedError

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


#: training-data sources by modality: ``factory(train_config) -> SampleSource``
sources: Registry[Callable[[Any], SampleSource]] = Registry("training-data source")


class PatchSimulator(SampleSource):
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

    def supervised(self, estimate: Tensor, batch: PatchSet, probe: Tensor | None) -> Tensor:
        assert batch.targets is not None and batch.fractions is not None and probe is not None
        fractions = batch.fractions.to(estimate.device)
        return supervised_loss(estimate, batch.targets.to(estimate.device),
                               probe_weights(probe, fractions))

    def physics(self, estimate: Tensor, batch: PatchSet, probe: Tensor | None,
                likelihood: Likelihood) -> Tensor:
        assert batch.fractions is not None and probe is not None
        return physics_loss(estimate, batch.counts.to(estimate.device), probe,
                            batch.fractions.to(estimate.device), FarField(), likelihood)


sources.register("ptycho")(
    lambda config: PatchSimulator(config.simulation, config.objects, config.samples))


def write_shard(patches: PatchSet, path: str | Path) -> None:
    """Write a PatchSet to an HDF5 shard (datasets counts, targets and fractions when
    present)."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle["counts"] = patches.counts.numpy()
        if patches.fractions is not None:
            handle["fractions"] = patches.fractions.numpy()
        if patches.targets is not None:
            handle["targets"] = patches.targets.numpy()


def read_shards(paths: list[str]) -> PatchSet:
    """Read and concatenate HDF5 shards written by :func:`write_shard`."""

    sets = []
    for path in paths:
        with open_hdf5(path) as handle:
            if "counts" not in handle:
                raise DataFormatError(path, "counts", "a dataset written by write_shard",
                                      "nothing")
            optional = {key: torch.as_tensor(handle[key][()]) if key in handle else None
                        for key in ("targets", "fractions")}
            sets.append(PatchSet(torch.as_tensor(handle["counts"][()]), **optional))
    return PatchSet.concat(sets)
