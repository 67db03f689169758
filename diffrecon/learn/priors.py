"""Learned priors inside reconstruction: a RED regularizer and a deep-image-prior object.

- :class:`RedPrior` (regularization by denoising, Romano, Elad & Milanfar 2017): the penalty
  rho(x) = 1/2 Re<x, x - D(x)> with the gradient x - D(x), for a denoiser D trained on the
  object generators (:func:`train_denoiser`). It is a regularizer like ``tv``: register it
  under a name (:func:`register_red`) and list it in ``loss.regularizers``. Plug-and-play.
- :class:`DeepImagePrior` (Ulyanov et al. 2018): the object is the output of a small
  randomly initialised U-Net on a fixed random input, and the network weights are what is
  fitted (:func:`fit_deep_image_prior`), through the registered model's own forward
  (``torch.func.functional_call`` substitutes the network's object for the ``object``
  parameter); the result can then be refined with ``reconstruct(..., initial=...)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from diffrecon.data.container import DiffractionData
from diffrecon.learn.nets import UNet
from diffrecon.learn.objects import ObjectGenerator, ObjectSpec
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.losses.regularizers import regularizers
from diffrecon.models.base import ForwardModel

Tensor = torch.Tensor


def _as_channels(field: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """(..., H, W) complex -> (B, 2, H', W') real, padded (replicate) to a multiple."""
    h, w = field.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    real = torch.stack([field.real, field.imag], dim=-3).reshape(-1, 2, h, w)
    return functional.pad(real, (0, pad_w, 0, pad_h), mode="replicate"), (h, w)


class Denoiser(nn.Module):
    """Residual U-Net denoiser of complex fields: D(x) = x - r(x), any (..., H, W) shape.

    Args:
        width, depth: of the U-Net (fields are padded to a multiple of 2**depth).
    """

    def __init__(self, width: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.unet = UNet(width, depth, 2, channels_in=2)
        self.multiple = 2**depth

    def forward(self, field: Tensor) -> Tensor:
        channels, (h, w) = _as_channels(field, self.multiple)
        residual = self.unet.features(channels)[..., :h, :w]
        noise = torch.complex(residual[:, 0], residual[:, 1]).reshape(field.shape)
        return field - noise


@dataclasses.dataclass
class DenoiserTraining:
    """Result of :func:`train_denoiser`: the denoiser and its loss per step."""

    denoiser: Denoiser
    losses: list[float]


def train_denoiser(objects: ObjectSpec, *, sigma: float = 0.1, size_px: int = 32,
                   steps: int = 300, batch_size: int = 16, lr: float = 2e-3,
                   seed: int = 0) -> DenoiserTraining:
    """Train a :class:`Denoiser` on generator objects with complex Gaussian noise ``sigma``
    (per real component), seeds ``seed * 10**6 + k``."""
    generator = ObjectGenerator(objects)
    torch.manual_seed(seed)
    denoiser = Denoiser()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)
    noise_source = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        clean = torch.as_tensor(np.stack([
            generator(seed * 10**6 + step * batch_size + k, (size_px, size_px))
            for k in range(batch_size)]))
        noise = torch.complex(torch.randn(clean.shape, generator=noise_source),
                              torch.randn(clean.shape, generator=noise_source))
        loss = (denoiser(clean + sigma * noise) - clean).abs().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return DenoiserTraining(denoiser.eval(), losses)


class _RedPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, field: Tensor, denoiser: Denoiser, weights: Tensor | None) -> Tensor:
        with torch.no_grad():
            residual = field - denoiser(field)
            if weights is not None:
                residual = weights * residual
        ctx.save_for_backward(residual)
        return 0.5 * (field.conj() * residual).real.sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (residual,) = ctx.saved_tensors
        return grad * residual, None, None


class RedPrior:
    """The RED penalty of a denoiser, a regularizer ``penalty(field) -> scalar``.

    Its gradient is w (x - D(x)) by construction (RED's gradient rule), not the autograd
    derivative of the penalty, which would need the denoiser's Jacobian.

    Args:
        denoiser: a trained :class:`Denoiser`.
        weights: optional real map broadcastable to the field, e.g. the normalised
            illumination of a scan: where no data constrain the object (the scan's margin)
            RED alone would drive it to the denoiser's fixed points, outside its training
            range, and spoil alignment-based comparisons.
    """

    def __init__(self, denoiser: Denoiser, weights: Tensor | None = None) -> None:
        self.denoiser = denoiser.eval()
        self.weights = weights
        for parameter in self.denoiser.parameters():
            parameter.requires_grad_(False)

    def __call__(self, field: Tensor) -> Tensor:
        self.denoiser.to(field.device)
        weights = None if self.weights is None else self.weights.to(field.device)
        return _RedPenalty.apply(field, self.denoiser, weights)


def register_red(denoiser: Denoiser, name: str = "red",
                 weights: Tensor | None = None) -> RedPrior:
    """Register the RED prior of ``denoiser`` (optionally weighted, see :class:`RedPrior`) as
    regularizer ``name`` (``loss.regularizers = [{name = "red", param = "object", ...}]``)."""
    prior = RedPrior(denoiser, weights)
    regularizers.register(name)(prior)
    return prior


class DeepImagePrior(nn.Module):
    """An object (1, H, W) complex that is the output of a U-Net on a fixed random input.

    Args:
        shape: object (H, W).
        width, depth: of the U-Net.
        seed: of the fixed input.
    """

    def __init__(self, shape: tuple[int, int], width: int = 8, depth: int = 3,
                 seed: int = 0) -> None:
        super().__init__()
        multiple = 2**depth
        padded = tuple(math.ceil(n / multiple) * multiple for n in shape)
        noise = torch.rand((1, 1, *padded), generator=torch.Generator().manual_seed(seed))
        self.register_buffer("code", 0.1 * noise)
        self.shape = shape
        self.unet = UNet(width, depth, 2)

    def forward(self) -> Tensor:
        h, w = self.shape
        return self.unet(self.code)[:, :h, :w]


@dataclasses.dataclass
class PriorFit:
    """Result of :func:`fit_deep_image_prior`: the prior and the loss per epoch."""

    prior: DeepImagePrior
    losses: list[float]


def fit_deep_image_prior(model: ForwardModel, data: DiffractionData, *, epochs: int = 50,
                         batch_size: int = 32, lr: float = 2e-3, likelihood: str = "poisson",
                         seed: int = 0) -> PriorFit:
    """Fit a deep-image-prior object to ``data`` with the other parameters of ``model`` fixed
    (e.g. a known probe); on return ``model.object`` holds the prior's object."""
    nll = make_likelihood(likelihood)
    counts = torch.as_tensor(np.asarray(data.patterns[:]), dtype=torch.float32)
    measured = nll.prepare(model.propagator.to_native(counts))
    prior = DeepImagePrior(tuple(model.object.shape[-2:]), seed=seed)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    frozen = {name: p.detach() for name, p in model.named_parameters()}
    losses = []
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(data.num_patterns, generator=order).split(batch_size):
            parameters = {**frozen, "object": prior()}
            predicted = torch.func.functional_call(model, parameters, (index,))
            loss = nll.nll(predicted, measured[index]) / index.numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * index.numel()
        losses.append(total / data.num_patterns)
    with torch.no_grad():
        model.object.copy_(prior())
    return PriorFit(prior, losses)
