"""Inference: a trained network's patches stitched into the object of a ptychographic scan.

The object grid, the window corners and the sub-pixel probe offsets come from the registered
``ptycho`` model built from the data (``Ptycho.from_data``), so the stitched object is exactly
the ``object`` parameter the iterative solver would start from, and can be handed to
``diffrecon.reconstruct(..., initial={"object": ..., "probe": ...})``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from diffrecon.data.container import DiffractionData
from diffrecon.errors import DataFormatError
from diffrecon.learn.losses import probe_weights
from diffrecon.learn.samples import PatchSet
from diffrecon.learn.stitch import stitch
from diffrecon.learn.train import TrainedNet
from diffrecon.models.ptycho import Ptycho, PtychoConfig

Tensor = torch.Tensor


@dataclasses.dataclass
class Inference:
    """Stitched network result for one scan.

    Attributes:
        object: (1, H, W) complex64 on the ptycho model's object grid.
        probe: (M, h, w) complex64, the probe the network was trained with.
        patches: (N, h, w) complex64 per-pattern predictions.
        model: the ptycho model (its ``object`` holds the stitched result).
        seconds: network time (patterns through the network, no stitching).
    """

    object: Tensor
    probe: Tensor
    patches: Tensor
    model: Ptycho
    seconds: float


def scan_patches(data: DiffractionData, trained: TrainedNet,
                 config: PtychoConfig | None = None) -> tuple[Ptycho, PatchSet]:
    """The ptycho model of ``data`` (probe set to the network's) and its patterns as a
    PatchSet (no targets) with the model's sub-pixel offsets."""
    if tuple(data.frame_shape) != tuple(trained.probe.shape[-2:]):
        raise DataFormatError(data.source or "<memory>", "patterns",
                              f"frames of {tuple(trained.probe.shape[-2:])} pixels (the "
                              "network's training geometry)", f"{tuple(data.frame_shape)}")
    config = config or PtychoConfig(probe_modes=int(trained.probe.shape[0]))
    model = Ptycho.from_data(data, config)
    with torch.no_grad():
        model.probe.copy_(trained.probe)
    index = torch.arange(data.num_patterns)
    corners, fractions = model._placement(index)
    counts = torch.as_tensor(np.asarray(data.patterns[:]), dtype=torch.float32)
    counts = torch.where(torch.as_tensor(data.valid_mask()), counts, 0.0)
    return model, PatchSet(counts, None, fractions.detach().to(torch.float32))


def infer_scan(data: DiffractionData, trained: TrainedNet,
               config: PtychoConfig | None = None) -> Inference:
    """Predict every pattern of ``data`` and stitch the patches (probe-intensity weighted)."""
    model, patches = scan_patches(data, trained, config)
    start = time.perf_counter()
    estimate = trained.predict(patches.counts)
    seconds = time.perf_counter() - start
    corners, _ = model._placement(torch.arange(data.num_patterns))
    weights = probe_weights(trained.probe, patches.fractions)
    obj = stitch(estimate, weights, corners, tuple(model.object.shape[-2:]))
    with torch.no_grad():
        model.object.copy_(obj[None])
    return Inference(obj[None].to(torch.complex64), trained.probe.clone(), estimate, model,
                     seconds)
