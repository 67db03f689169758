"""ePIE and rPIE as preconditioned gradient steps (no separate update math).

With the amplitude likelihood and an orthonormal propagator the gradient of the loss with
respect to the object is sum_n conj(P_n) 2 (psi_n - P_M psi_n) (and likewise for the probe), so
    ePIE (Maiden & Rodenburg 2009):  O <- O - alpha / (2 max|P|^2) * grad
    rPIE (Maiden et al. 2017, Eq. 6): O <- O - grad / (2 ((1-alpha)|P|^2 + alpha max|P|^2))
where |P|^2 is the probe intensity on the object grid; the probe update swaps the roles. Both
run as unit-step SGD on the preconditioned gradient, for any model that exposes
``partner_intensities``.
"""

from __future__ import annotations

import dataclasses

import torch

from diffrecon.algorithms.base import Batch, algorithms
from diffrecon.algorithms.gradient import GradientStep
from diffrecon.models.base import ForwardModel, ParamSpec

Tensor = torch.Tensor

PIE_FIELDS = ("object", "probe")


class _PIE(GradientStep):
    default_alpha = 1.0
    accumulates = False
    def adjust_specs(self, specs: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        return {
            name: dataclasses.replace(spec, optimizer="sgd", lr=1.0) if name in PIE_FIELDS
            else spec
            for name, spec in specs.items()
        }

    def step_size(self, intensity: Tensor, alpha: float) -> Tensor:
        """The step per pixel of ``intensity`` (the partner's intensity on this field's grid):
        a tensor that broadcasts against it (0-dim for a uniform step)."""
        raise NotImplementedError

    @torch.no_grad()
    def precondition(self, model: ForwardModel, batch: Batch, active: list[str]) -> None:
        super().precondition(model, batch, active)
        targets = [name for name in PIE_FIELDS if name in active]
        if not targets:
            return
        partners = batch.comm.sum(model.partner_intensities(batch.index))
        fields = model.named_fields()
        alpha = self.default_alpha if self.config.alpha is None else self.config.alpha
        alphas = {"object": alpha, "probe": self.config.beta}
        for name in targets:
            grad = fields[name].grad
            if grad is not None:
                grad.mul_(self.step_size(partners[name], alphas[name]))


@algorithms.register("epie")
class EPIE(_PIE):
    """Extended PIE: a step alpha / max|P|^2 along the amplitude-loss gradient."""

    def step_size(self, intensity: Tensor, alpha: float) -> Tensor:
        # one number (0-dim): an object-sized map of it cost a fill and a pass per update
        return alpha / (2 * intensity.max().clamp(min=1e-30))


@algorithms.register("rpie")
class RPIE(_PIE):
    """Regularised PIE: the step 1 / ((1-alpha)|P|^2 + alpha max|P|^2) per pixel."""

    default_alpha = 0.1

    def step_size(self, intensity: Tensor, alpha: float) -> Tensor:
        return rpie_step_size(intensity, alpha)


def rpie_step_size(intensity: Tensor, alpha: float) -> Tensor:
    """rPIE's per-pixel step on the amplitude-loss gradient, 1 / (2 ((1-alpha) I + alpha
    max I)), for the partner intensity ``I`` on the updated field's grid (any shape)."""
    denominator = (1 - alpha) * intensity + alpha * intensity.max()
    return 1 / (2 * denominator.clamp(min=1e-30))
