"""Training losses of inversion networks (ptychography patches here; CDI in ``learn.cdi``).

- :func:`supervised_loss`: probe-weighted squared error against the true patch after removing
  each patch's global phase (a single pattern cannot fix it: |F(c O P)|^2 = |F(O P)|^2);
  built on :func:`relative_error`, which any number of spatial dimensions can use.
- :func:`physics_loss`: the predicted patch times the (sub-pixel shifted) probe, propagated to
  the detector, against the measured counts with a registered likelihood (Poisson by
  default), through the shared :func:`likelihood_loss`. It needs no truth, so it trains or
  fine-tunes on unlabelled data.
"""

from __future__ import annotations

import torch

from diffrecon.losses.likelihoods import Likelihood
from diffrecon.physics.optics import squared_modulus
from diffrecon.physics.propagators import Propagator
from diffrecon.physics.shifts import shifted_copies

Tensor = torch.Tensor


def probe_weights(probe: Tensor, fractions: Tensor) -> Tensor:
    """Summed-mode intensity of the probe at each sub-pixel offset, (B, h, w), max 1.

    Args:
        probe: (M, h, w) complex modes.
        fractions: (B, 2) sub-pixel offsets in pixels (y, x).
    """
    intensity = squared_modulus(shifted_copies(probe, fractions)).sum(1)
    return intensity / intensity.amax(dim=(-2, -1), keepdim=True)


def phase_align(estimate: Tensor, target: Tensor, weights: Tensor, ndim: int = 2,
                scale: bool = False) -> Tensor:
    """``estimate`` (B, *S) times the unit phase factor (with ``scale``: the complex factor)
    that best matches ``target`` (weighted least squares per sample over the last ``ndim``
    dimensions). The factor is detached from nothing: gradients flow through it, which is
    harmless since the aligned error is stationary in it."""
    dims = tuple(range(-ndim, 0))
    inner = (weights * estimate.conj() * target).sum(dim=dims, keepdim=True)
    if scale:
        power = (weights * estimate.abs().square()).sum(dim=dims, keepdim=True)
        return estimate * inner / power.clamp(min=1e-12)
    return estimate * inner / inner.abs().clamp(min=1e-12)


def relative_error(estimate: Tensor, target: Tensor, weights: Tensor, ndim: int = 2,
                   scale: bool = False) -> Tensor:
    """Per sample (B,): sum w |c e - t|^2 / sum w |t|^2 with the best unit phase c (with
    ``scale``: the best complex c, for outputs whose scale is fitted elsewhere).

    Args:
        estimate, target: (B, *S) complex objects, S the last ``ndim`` dimensions.
        weights: real, broadcastable to (B, *S), where the error counts.
        ndim: spatial dimensions (2 or 3).
        scale: also remove a real scale factor.
    """
    dims = tuple(range(-ndim, 0))
    aligned = phase_align(estimate, target, weights, ndim, scale)
    error = (weights * (aligned - target).abs().square()).sum(dim=dims)
    norm = (weights * target.abs().square()).sum(dim=dims).clamp(min=1e-12)
    return error / norm


def supervised_loss(estimate: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean over the batch of :func:`relative_error` (best unit phase per patch).

    Args:
        estimate, target: (B, h, w) complex object patches.
        weights: (B, h, w) real, where the error counts (the probe intensity).
    """
    return relative_error(estimate, target, weights).mean()


def mode_intensity(psi: Tensor, propagator: Propagator) -> Tensor:
    """Expected counts (B, *S), native layout, of exit waves ``psi`` (B, M, *S): the
    incoherent sum over the M modes of the propagated intensities."""
    field = propagator(psi)
    return (field.real.square() + field.imag.square()).sum(1)


def likelihood_loss(psi: Tensor, counts: Tensor, propagator: Propagator,
                    likelihood: Likelihood, valid: Tensor | None = None) -> Tensor:
    """Negative log-likelihood per pixel of measured ``counts`` (B, *S) (DC-centred) given
    the exit waves ``psi`` (B, M, *S); ``valid`` (DC-centred, bool) excludes masked pixels."""
    predicted = mode_intensity(psi, propagator)
    measured = likelihood.prepare(propagator.to_native(counts))
    mask = None if valid is None else propagator.to_native(valid).expand_as(measured)
    return likelihood.nll(predicted, measured, mask) / counts.numel()


def predicted_counts(patches: Tensor, probe: Tensor, fractions: Tensor,
                     propagator: Propagator) -> Tensor:
    """Expected counts (B, h, w), native layout, of object ``patches`` (B, h, w) under the
    ``probe`` modes (M, h, w) shifted by ``fractions`` (B, 2): the ptycho model's forward."""
    return mode_intensity(patches[:, None] * shifted_copies(probe, fractions), propagator)


def physics_loss(patches: Tensor, counts: Tensor, probe: Tensor, fractions: Tensor,
                 propagator: Propagator, likelihood: Likelihood) -> Tensor:
    """Negative log-likelihood per pixel of measured ``counts`` (B, h, w) (DC-centred) given
    the predicted ``patches``; zero when prediction and (noise-free) data agree."""
    psi = patches[:, None] * shifted_copies(probe, fractions)
    return likelihood_loss(psi, counts, propagator, likelihood)
