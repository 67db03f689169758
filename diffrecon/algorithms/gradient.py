"""The autograd step: backward -> optional preconditioner -> optimizer.step -> constrain."""

from __future__ import annotations

from typing import Any

import torch

from diffrecon.algorithms.base import Algorithm, Batch, algorithms
from diffrecon.models.base import ForwardModel

Tensor = torch.Tensor


@algorithms.register("gradient")
class GradientStep(Algorithm):
    """Minimise the objective with each parameter's own optimiser (Adam by default).

    Distributed: each process back-propagates its share of the batch and preconditions its own
    per-pattern rows (batch-wide statistics summed over processes); the gradients are then
    summed over processes, so every process takes the same step.
    """

    shardable = True

    @torch.no_grad()
    def precondition(self, model: ForwardModel, batch: Batch, active: list[str]) -> None:
        """Divide per-pattern gradients by the model's Gauss-Newton curvature.

        With plain SGD the step on, e.g., a position is then a fraction ``lr`` of a Newton
        step: large where the data pin the position down, vanishing where they do not (a
        flat object region), instead of the constant-size random walk of Adam there.
        """
        curvatures = model.curvatures(batch.index, active)
        fields = model.named_fields()
        for name, curvature in curvatures.items():
            # Levenberg-Marquardt damping keeps weakly constrained rows from jumping on noise
            damping = 0.1 * batch.comm.mean(curvature).clamp(min=1e-30)
            grad = fields[name].grad
            if grad is not None:
                grad[batch.index] /= curvature + damping

    def step(self, model: ForwardModel, batch: Batch, objective: Any, plan: Any,
             active: list[str], state: dict[str, Tensor]) -> dict[str, float]:
        plan.zero_grad()
        total, terms = objective(model, batch)
        total.backward()
        self.precondition(model, batch, active)
        fields = model.named_fields()
        batch.comm.reduce_grads([fields[name] for name in active])
        plan.step(active)
        model.constrain()
        return terms
