"""Choosing among candidate initial guesses by a short trial reconstruction of each."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable

import torch

from diffrecon.models.base import ForwardModel
from diffrecon.recon.reconstructor import Reconstructor

Tensor = torch.Tensor
log = logging.getLogger("diffrecon")


@torch.no_grad()
def _assign(model: ForwardModel, values: dict[str, Tensor]) -> None:
    fields = model.named_fields()
    for name, value in values.items():
        fields[name].copy_(value)


def select_initial_guess(
    model: ForwardModel, candidates: list[tuple[str, dict[str, Tensor]]],
    make_run: Callable[[ForwardModel], Reconstructor], epochs: int = 8,
) -> dict[str, float]:
    """Try each candidate for ``epochs`` epochs; leave ``model`` at the start of the best one.

    Returns the final loss of every candidate by label. The model's other parameters start
    from the same state for every trial.
    """
    start = copy.deepcopy(model.state_dict())
    losses: dict[str, float] = {}
    for label, values in candidates:
        model.load_state_dict(start)
        _assign(model, values)
        run = make_run(model)
        run.config = dataclasses.replace(run.config, epochs=epochs)
        history = run.run()
        loss = history["loss/total"][-1] if history.get("loss/total") else float("inf")
        losses[label] = loss if loss == loss else float("inf")
    best = min(losses, key=losses.__getitem__)
    model.load_state_dict(start)
    _assign(model, dict(candidates)[best])
    log.info("initial guess: %s (trial losses %s)", best,
             ", ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    return losses
