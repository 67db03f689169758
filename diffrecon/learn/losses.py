"""Training losses for ptychography patch networks.

- :func:`supervised_loss`: probe-weighted squared error against the true patch after removing
  each patch's global phase (a single pattern cannot fix it: |F(c O P)|^2 = |F(O P)|^2).
- :func:`physics_loss`: the predicted patch times the (sub-pixel shifted) probe, propagated to
  the detector, against the measured counts with a registered likelihood (Poisson by
  default). It needs no truth, so it trains or fine-tunes on unlabelled data.
"""

from __future__ import annotations

import torch

from diffrecon.losses.likelihoods import Likelihood
from diffrecon.physics.propagators import Propagator
from diffrecon.physics.shifts import shifted_copies

Tensor = torch.Tensor


def probe_weights(probe: Tensor, fractions: Tensor) -> Tensor:
    """Summed-mode intensity of the probe at each sub-pixel offset, (B, h, w), max 1.

    Args:
        probe: (M, h, w) complex modes.
        fractions: (B, 2) sub-pixel offsets in pixels (y, x).
    """
    intensity = shifted_copies(probe, fractions).abs().square().sum(1)
    return intensity / intensity.amax(dim=(-2, -1), keepdim=True)


def phase_align(estimate: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """``estimate`` (B, h, w) times the unit phase factor that best matches ``target``
    (weighted least squares per patch). The factor is detached from nothing: gradients flow
    through it, which is harmless since the aligned error is stationary in the phase."""
    inner = (weights * estimate.conj() * target).sum(dim=(-2, -1), keepdim=True)
    return estimate * inner / inner.abs().clamp(min=1e-12)


def supervised_loss(estimate: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean over the batch of sum w |c e - t|^2 / sum w |t|^2 with the best unit phase c.

    Args:
        estimate, target: (B, h, w) complex object patches.
        weights: (B, h, w) real, where the error counts (the probe intensity).
    """
    aligned = phase_align(estimate, target, weights)
    error = (weights * (aligned - target).abs().square()).sum(dim=(-2, -1))
    norm = (weights * target.abs().square()).sum(dim=(-2, -1)).clamp(min=1e-12)
    return (error / norm).mean()


def predicted_counts(patches: Tensor, probe: Tensor, fractions: Tensor,
                     propagator: Propagator) -> Tensor:
    """Expected counts (B, h, w), native layout, of object ``patches`` (B, h, w) under the
    ``probe`` modes (M, h, w) shifted by ``fractions`` (B, 2): the ptycho model's forward."""
    psi = patches[:, None] * shifted_copies(probe, fractions)
    field = propagator(psi)
    return (field.real.square() + field.imag.square()).sum(1)


def physics_loss(patches: Tensor, counts: Tensor, probe: Tensor, fractions: Tensor,
                 propagator: Propagator, likelihood: Likelihood) -> Tensor:
    """Negative log-likelihood per pixel of measured ``counts`` (B, h, w) (DC-centred) given
    the predicted ``patches``; zero when prediction and (noise-free) data agree."""
    predicted = predicted_counts(patches, probe, fractions, propagator)
    measured = likelihood.prepare(propagator.to_native(counts))
    return likelihood.nll(predicted, measured) / counts.numel()
