"""The autograd step: backward -> optional preconditioner -> optimizer.step -> constrain."""

from __future__ import annotations

from typing import Any

import torch

from diffrecon.algorithms.base import Algorithm, Batch, algorithms
from diffrecon.errors import ConfigError
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
    #: whether gradients of several minibatches may be summed before an update
    accumulates = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if getattr(config, "accumulate_batches", 1) < 1 or (
                config.accumulate_batches > 1 and not self.accumulates):
            raise ConfigError(
                f"algorithm.accumulate_batches={config.accumulate_batches}: expected 1, or "
                "an integer > 1 with algorithm.name='gradient' (PIE steps are normalised per "
                "minibatch)")

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
        # With ``accumulate_batches`` k > 1 the gradients of k minibatches are summed before
        # one update: the objective is a sum over patterns, so this is the update of their
        # union with the memory of one. Per-pattern rows are disjoint between minibatches,
        # so each is preconditioned right after its own backward pass.
        every = int(getattr(self.config, "accumulate_batches", 1))
        pending = int(state["accumulated"]) if "accumulated" in state else 0
        if pending == 0:
            plan.zero_grad()
        total, terms = objective(model, batch)
        total.backward()
        self.precondition(model, batch, active)
        if pending + 1 < every:
            state["accumulated"] = torch.tensor(pending + 1)
            return terms
        state["accumulated"] = torch.tensor(0)
        fields = model.named_fields()
        batch.comm.reduce_grads([fields[name] for name in active])
        plan.step(active)
        model.constrain()
        return terms
