"""Zernike pupil recovery for Fourier ptychography: full-batch fits between object epochs.

Per-minibatch Adam steps on the Zernike coefficients (the former default) random-walk on the
noise of 4-image batches and fight the object, which absorbs part of any pupil error as it
goes (a pupil defocus equals an object defocus plus LED-dependent image shifts): with ~1 wave
rms of aberration they stayed near zero. Instead, after each object epoch the coefficients
are fitted by L-BFGS to the bright-field images with the object held (an EPRY-like
alternation, Ou, Zheng & Yang, Opt. Express 17, 7873 (2009), with the Zernike-parameterised
pupil), coarse to fine: Noll 4-6 (defocus, astigmatism) first, up to 8 (coma)
``ORDER_STEPS[1]`` epochs later, all fitted indices after ``ORDER_STEPS[2]`` (freeing the
trefoils together with coma was measured to land in a worse minimum at 1 wave rms). The
bright-field images carry the pupil through the interference of the direct beam with the
scattered light; the dark-field ones, fitted with an object still far from the truth, pull
the coefficients towards the object's errors (measured in ``bench_fp.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from diffrecon.physics import led_array

Tensor = torch.Tensor

#: epochs after the first fit at which radial orders <= 2, <= 3 and all become free
ORDER_STEPS = (0, 4, 10)


def free_coefficients(noll: list[int], epochs_fitted: int) -> Tensor:
    """Mask (J,) of the coefficients fitted ``epochs_fitted`` epochs after the first fit."""
    stage = sum(epochs_fitted >= step for step in ORDER_STEPS)
    limit = {1: 6, 2: 8}.get(stage, max(noll))
    return torch.tensor([float(j <= limit) for j in noll])


def brightfield_images(model: Any) -> Tensor:
    """Indices (N_bf,) of the images whose lit LEDs are all bright-field (calibrated pose)."""
    with torch.no_grad():
        height = model.height_m + float(model.led_geometry[3]) * 1e-3
        bright = led_array.is_brightfield(model.led_positions(), height,
                                          model.scope.numerical_aperture)
    dark = (~bright[model.groups]) & (model.lit > 0)
    return torch.nonzero(~dark.any(dim=1)).flatten().to(model.groups.device)


def fit_aberrations(model: Any, index: Tensor, measured: Tensor, likelihood: Any,
                    free: Tensor, iterations: int, chunk: int = 64) -> float:
    """L-BFGS on ``model.aberrations`` (entries where ``free`` is 1), every other parameter
    held, minimising the summed negative log-likelihood of images ``index`` (N,) against
    ``measured`` (N, h, w) (prepared, native layout). Returns the final loss."""
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name == "aberrations")
    free = free.to(model.aberrations.device, model.aberrations.dtype)
    optimizer = torch.optim.LBFGS([model.aberrations], max_iter=iterations,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for rows in torch.arange(len(index), device=index.device).split(chunk):
            loss = likelihood.elementwise(model(index[rows]), measured[rows]).sum()
            loss.backward()
            total += float(loss.detach())
        model.aberrations.grad.mul_(free)
        return total

    try:
        with torch.enable_grad():  # loop callbacks may run under no_grad
            optimizer.step(closure)
            final = float(closure())
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(previous[name])
        model.aberrations.grad = None
    return final


class ZernikeFit:
    """Loop callback: ``fit_aberrations`` on the bright-field images after every epoch in
    which the ``aberrations`` parameter spec is active (its start/every/stop apply), when
    that spec's optimizer is ``"callback"`` (the plan then gives it no per-minibatch step)."""

    def __init__(self) -> None:
        self.spec: Any = None

    def on_start(self, run: Any) -> None:
        spec = run.plan.specs.get("aberrations")
        fitted_here = spec is not None and spec.enabled and spec.optimizer == "callback"
        self.spec = spec if fitted_here else None

    def on_epoch_end(self, run: Any, epoch: int, logs: dict[str, float]) -> None:
        if self.spec is None or not self.spec.active(epoch):
            return
        model = run.model
        index = brightfield_images(model)
        if len(index) == 0:
            return
        free = free_coefficients(model.noll, epoch - self.spec.start)
        fit_aberrations(model, index, run.batches(index), run.objective.likelihood, free,
                        model.config.zernike_fit_iterations)

    def on_end(self, run: Any) -> None:
        pass
