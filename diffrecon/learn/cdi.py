"""CDI training data: whole isolated objects through the registered ``cdi`` forward model.

A chunk of seed ``k`` is one object: an :class:`ObjectGenerator` transmission of ``object_px``
pixels per axis, cut to a compact irregular support (``data.phantoms.blob_support``), placed
in the centre of an oversampled ``array_px`` array (2D or 3D), scaled to ``photons`` in total
and evaluated by ``models.cdi.CDI`` and a registered likelihood (``simulate_patterns``), the
same path as ``diffrecon simulate`` for CDI. The target is the object in transmission units
(amplitude at most ``objects.amplitude_range[1]``), zero outside its support.

Ambiguities of a single far-field pattern, and how training handles them:
- global phase (and scale, fitted to the counts at inference): removed per sample in the
  supervised loss (``relative_error``);
- translation: every target is centred (intensity centroid rolled to the array centre
  ``array_px // 2``), so a network learns to return centred objects; inference therefore
  yields a centred object, which is what the CDI solver's autocorrelation support expects;
- twin image ``conj(O(-r))``: the supervised loss is the smaller of the errors against the
  target and against its twin (about the same centre), so either is accepted.
The object's scale is not learned: the network returns transmission units and
:func:`flux_scale` fits the one real factor to the measured counts (the Poisson maximum
likelihood scale), which makes a network independent of the flux it was trained with.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.phantoms import blob_support
from diffrecon.data.simulate import (
    Beamline,
    CDISimulation,
    beamstop_valid,
    simulate_patterns,
)
from diffrecon.learn.losses import likelihood_loss, mode_intensity, relative_error
from diffrecon.learn.objects import ObjectGenerator, ObjectSpec
from diffrecon.learn.samples import PatchSet, SampleConfig, SampleSource, sources
from diffrecon.losses.likelihoods import Likelihood, make_likelihood
from diffrecon.models.cdi import CDI, CDIConfig
from diffrecon.physics import optics
from diffrecon.physics.propagators import FarField

Tensor = torch.Tensor


#: weight of the output-power anchor in :func:`cdi_supervised_loss`
SCALE_ANCHOR = 0.01


@dataclasses.dataclass
class CDISamples:
    """Geometry and flux of the simulated CDI training patterns."""

    dimensions: Literal[2, 3] = doc(2, "2D patterns (net 'unet') or 3D volumes ('unet3d')")
    array_px: int = doc(64, "array (detector) size per axis, pixels")
    object_px: int = doc(32, "object extent per axis, pixels (array / object = oversampling)")
    photons: float = doc(1e6, "total counts per pattern (or volume)")
    noise: Literal["poisson", "gaussian", "amplitude", "none"] = doc("poisson", "noise model")
    beamstop_px: int = doc(0, "side of a central square beamstop (masked, 2D only), pixels")


def centre(obj: np.ndarray) -> np.ndarray:
    """``obj`` rolled (whole pixels) so that its intensity centroid is at index n // 2."""
    weight = np.abs(obj) ** 2
    grids = np.meshgrid(*[np.arange(n) for n in obj.shape], indexing="ij")
    shifts = [int(round(n // 2 - float((g * weight).sum() / weight.sum())))
              for n, g in zip(obj.shape, grids, strict=True)]
    return np.roll(obj, shifts, axis=tuple(range(obj.ndim)))


def twin(obj: Tensor, ndim: int) -> Tensor:
    """The twin image conj(O(-r)) about the centre index n // 2 (even n) of the last ``ndim``
    dimensions: the same far-field intensity."""
    dims = list(range(-ndim, 0))
    return torch.roll(torch.flip(obj, dims), [1] * ndim, dims).conj()


def flux_scale(estimate: Tensor, counts: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per sample (B,) the real factor c with |F(c e)|^2 best fitting ``counts`` in the Poisson
    sense: c^2 = sum counts / sum |F e|^2 over the valid pixels.

    Args:
        estimate: (B, *S) complex objects (any units).
        counts: (B, *S) measured counts, DC-centred.
        valid: (*S) bool, DC-centred, True where a pixel is trusted (None: all).
    """
    ndim = counts.dim() - 1
    propagator = FarField(ndim)
    predicted = propagator.from_native(mode_intensity(estimate[:, None], propagator))
    if valid is not None:
        predicted, counts = predicted * valid, counts * valid
    dims = tuple(range(1, ndim + 1))
    return (counts.sum(dims) / predicted.sum(dims).clamp(min=1e-30)).sqrt()


def cdi_supervised_loss(estimate: Tensor, target: Tensor, ndim: int) -> Tensor:
    """Mean over the batch of the relative error (global phase and scale removed, whole
    array) against the target or its twin, whichever is smaller. The scale is free because
    inference fits it to the counts (:func:`flux_scale`); a loss that fixed it would let an
    all-zero output (error 1) trap the network, since the object fills a small part of the
    oversampled array. A weak anchor, ``SCALE_ANCHOR * log(power ratio)^2``, keeps the
    output's power near the target's: without it Adam lets the (free) scale drift until the
    amplitude head's sigmoid saturates at zero and the gradients vanish.

    Args:
        estimate, target: (B, *S) complex objects, S the last ``ndim`` dimensions.
    """
    ones = torch.ones((), device=estimate.device)
    direct = relative_error(estimate, target, ones, ndim, scale=True)
    flipped = relative_error(estimate, twin(target, ndim), ones, ndim, scale=True)
    dims = tuple(range(-ndim, 0))
    ratio = (estimate.abs().square().sum(dims).clamp(min=1e-30)
             / target.abs().square().sum(dims).clamp(min=1e-30))
    return (torch.minimum(direct, flipped) + SCALE_ANCHOR * ratio.log().square()).mean()


def cdi_physics_loss(estimate: Tensor, counts: Tensor, likelihood: Likelihood,
                     valid: Tensor | None = None) -> Tensor:
    """Negative log-likelihood per pixel of ``counts`` (B, *S) given the objects ``estimate``
    (B, *S) scaled by :func:`flux_scale` (the CDI forward model without support: the network
    output is zero outside its object). Zero at the truth for noise-free data."""
    scale = flux_scale(estimate, counts, valid)
    psi = (estimate * scale.view(-1, *[1] * (counts.dim() - 1)))[:, None]
    return likelihood_loss(psi, counts, FarField(counts.dim() - 1), likelihood, valid)


class CDISimulator(SampleSource):
    """One CDI pattern per chunk (seeded object, support and noise).

    Args:
        geometry: array and object sizes, flux, noise.
        objects: the object classes to draw.
        samples: chunk counts (one object per chunk) and seeds.
    """

    def __init__(self, geometry: CDISamples, objects: ObjectSpec, samples: SampleConfig) -> None:
        self.geometry = geometry
        self.samples = samples
        self.generator = ObjectGenerator(objects)
        self.likelihood = None if geometry.noise == "none" else make_likelihood(geometry.noise)
        side = geometry.beamstop_px if geometry.dimensions == 2 else 0
        self.valid = torch.as_tensor(beamstop_valid(self.frame, side))

    @property
    def frame(self) -> tuple[int, ...]:
        return (self.geometry.array_px,) * self.geometry.dimensions

    def target(self, seed: int) -> np.ndarray:
        """The centred object (*S) complex64 of chunk ``seed``, transmission units."""
        g = self.geometry
        small = (g.object_px,) * g.dimensions
        rng = np.random.default_rng([seed, 15485863])
        values = self.generator(seed, small) * blob_support(small, rng)
        obj = np.zeros(self.frame, np.complex64)
        start = g.array_px // 2 - g.object_px // 2
        obj[tuple(slice(start, start + g.object_px) for _ in small)] = values
        return centre(obj)

    def model(self, target: np.ndarray) -> CDI:
        """The CDI forward model of ``target`` scaled to ``photons`` (Parseval)."""
        obj = torch.as_tensor(target)
        scale = math.sqrt(self.geometry.photons / float(obj.abs().square().sum()))
        return CDI(obj * scale, obj != 0, (1.0, 1.0), CDIConfig())  # pixel: results only

    def chunk(self, seed: int) -> PatchSet:
        target = self.target(seed)
        noise = torch.Generator().manual_seed(int(np.random.default_rng([seed, 2]).integers(
            2**62)))
        counts = simulate_patterns(self.model(target), self.likelihood, 1, generator=noise)
        counts = torch.as_tensor(counts).reshape(1, *self.frame)
        return PatchSet(torch.where(self.valid, counts, 0.0), torch.as_tensor(target)[None])

    def data(self, seed: int, beamline: Beamline | None = None) -> DiffractionData:
        """The pattern of chunk ``seed`` as a data set with its truth (sqrt(photons) units),
        e.g. a held-out object in the training geometry; ``beamline`` gives the wavelength,
        distance and detector pixel (default: those of ``CDISimulation``)."""
        beamline = beamline or CDISimulation()
        wavelength = optics.xray_wavelength_m(beamline.energy_ev)
        pixel = optics.farfield_pixel_size_m(wavelength, beamline.distance_m,
                                             self.geometry.array_px, beamline.detector_pixel_m)
        chunk = self.chunk(seed)
        assert chunk.targets is not None
        truth = self.model(chunk.targets[0].numpy()).results()["object"]
        counts = chunk.counts.numpy()
        return DiffractionData(
            patterns=counts if self.geometry.dimensions == 2 else counts[0],
            wavelength_m=wavelength, distance_m=beamline.distance_m,
            detector_pixel_size_m=(beamline.detector_pixel_m,) * 2,
            valid=None if bool(self.valid.all()) else self.valid.numpy(),
            truth=Truth(object=truth, pixel_size_m=(pixel, pixel)),
            metadata={"simulation": f"learn cdi {self.geometry.dimensions}D", "seed": str(seed)})

    def supervised(self, estimate: Tensor, batch: PatchSet, probe: Tensor | None) -> Tensor:
        assert batch.targets is not None
        return cdi_supervised_loss(estimate, batch.targets.to(estimate.device),
                                   self.geometry.dimensions)

    def physics(self, estimate: Tensor, batch: PatchSet, probe: Tensor | None,
                likelihood: Likelihood) -> Tensor:
        return cdi_physics_loss(estimate, batch.counts.to(estimate.device), likelihood,
                                self.valid.to(estimate.device))


def _cdi_source(config: Any) -> CDISimulator:
    return CDISimulator(config.cdi, config.objects, config.samples)


sources.register("cdi")(_cdi_source)
