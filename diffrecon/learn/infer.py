"""Inference: a trained network's patches stitched into the object of a ptychographic scan,
or (CDI) the whole object of one pattern or intensity volume.

For ptychography the object grid, the window corners and the sub-pixel probe offsets come
from the registered ``ptycho`` model built from the data (``Ptycho.from_data``), so the
stitched object is exactly the ``object`` parameter the iterative solver would start from,
and can be handed to
``diffrecon.reconstruct(..., initial={"object": ..., "probe": ...})``. For CDI the network's
object (centred, in transmission units) is scaled to the counts (``learn.cdi.flux_scale``) and
set as the ``object`` of the ``cdi`` model built from the data (``CDI.from_data``: the
autocorrelation support, which contains a centred object), ready for
``reconstruct(..., initial={"object": ...})``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from diffrecon.data.container import DiffractionData
from diffrecon.errors import ConfigError, DataFormatError
from diffrecon.learn.cdi import flux_scale
from diffrecon.learn.losses import probe_weights
from diffrecon.learn.samples import PatchSet
from diffrecon.learn.stitch import stitch
from diffrecon.learn.train import TrainedNet
from diffrecon.models.cdi import CDI, CDIConfig, measured_intensity
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


def network_probe(trained: TrainedNet) -> Tensor:
    """The probe a ptychography network was trained with (ConfigError for other networks)."""
    if trained.probe is None:
        raise ConfigError(f"a ptychography network is needed here (this one was trained on "
                          f"'{trained.config.modality}' data)")
    return trained.probe


def scan_patches(data: DiffractionData, trained: TrainedNet,
                 config: PtychoConfig | None = None) -> tuple[Ptycho, PatchSet]:
    """The ptycho model of ``data`` (probe set to the network's) and its patterns as a
    PatchSet (no targets) with the model's sub-pixel offsets."""
    probe = network_probe(trained)
    if tuple(data.frame_shape) != tuple(probe.shape[-2:]):
        raise DataFormatError(data.source or "<memory>", "patterns",
                              f"frames of {tuple(probe.shape[-2:])} pixels (the "
                              "network's training geometry)", f"{tuple(data.frame_shape)}")
    config = config or PtychoConfig(probe_modes=int(probe.shape[0]))
    model = Ptycho.from_data(data, config)
    with torch.no_grad():
        model.probe.copy_(probe)
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
    probe = network_probe(trained)
    assert patches.fractions is not None
    weights = probe_weights(probe, patches.fractions)
    obj = stitch(estimate, weights, corners, tuple(model.object.shape[-2:]))
    with torch.no_grad():
        model.object.copy_(obj[None])
    return Inference(obj[None].to(torch.complex64), probe.clone(), estimate, model,
                     seconds)


@dataclasses.dataclass
class CDIInference:
    """Network result for one CDI pattern (or 3D intensity volume).

    Attributes:
        object: (H, W) or (D, H, W) complex64, sqrt(photons) units, centred in the array.
        model: the cdi model of the data (its ``object`` holds the network result).
        seconds: network time.
    """

    object: Tensor
    model: CDI
    seconds: float


def infer_cdi(data: DiffractionData, trained: TrainedNet,
              config: CDIConfig | None = None) -> CDIInference:
    """The whole object of a CDI pattern (1, H, W) or volume (D, H, W) from ``trained``.

    The counts are rescaled to the training flux (``cdi.photons``) before the network, since
    its input scale was fitted to it; the output is then scaled to the measured counts.
    """
    intensity, valid = measured_intensity(data)
    frame = (trained.config.cdi.array_px,) * trained.config.cdi.dimensions
    if tuple(intensity.shape) != frame:
        raise DataFormatError(data.source or "<memory>", "patterns",
                              f"a CDI array of {frame} pixels (the network's training "
                              "geometry)", f"{tuple(intensity.shape)}")
    total = float(intensity.sum()) * intensity.numel() / max(int(valid.sum()), 1)
    start = time.perf_counter()
    estimate = trained.predict((intensity * (trained.config.cdi.photons / max(total, 1e-30)))
                               [None])
    seconds = time.perf_counter() - start
    model = CDI.from_data(data, config or CDIConfig())
    # the scale fits what the model predicts: the network's object within the model's support
    estimate = torch.where(model.support.cpu(), estimate, 0.0)
    obj = (estimate * flux_scale(estimate, intensity[None], valid))[0].to(torch.complex64)
    with torch.no_grad():
        model.object.copy_(obj)
    return CDIInference(obj, model, seconds)
