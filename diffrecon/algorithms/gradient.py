"""The autograd step: backward -> optional preconditioner -> optimizer.step -> constrain."""

from __future__ import annotations

from typing import Any

import torch

from diffrecon.algorithms.base import Algorithm, Batch, algorithms
from diffrecon.models.base import ForwardModel

Tensor = torch.Tensor


@algorithms.register("gradient")
class GradientStep(Algorithm):
    """Minimise the objective with each parameter's own optimiser (Adam by default)."""

    def precondition(self, model: ForwardModel, batch: Batch, active: list[str]) -> None:
        """Rescale gradients in place before the optimisers step (none by default)."""

    def step(self, model: ForwardModel, batch: Batch, objective: Any, plan: Any,
             active: list[str], state: dict[str, Tensor]) -> dict[str, float]:
        plan.zero_grad()
        total, terms = objective(model, batch)
        total.backward()
        self.precondition(model, batch, active)
        plan.step(active)
        model.constrain()
        return terms
