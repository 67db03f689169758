"""Choosing among candidate initial guesses by a short trial reconstruction of each."""

from __future__ import annotations

import contextlib
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


def central_patterns(model: ForwardModel, fraction: float = 0.25, least: int = 128,
                     most: int = 256) -> Tensor | None:
    """Indices (K,) of the patterns nearest the scan's centre, ``fraction`` of the scan
    clamped to [``least``, ``most``]; None when that is the whole scan (or it has no
    positions). A compact patch of the scan judges a probe guess as well as the whole."""
    positions = getattr(model, "positions", None)
    if not isinstance(positions, Tensor) or positions.ndim != 2:
        return None
    count = min(most, max(least, int(fraction * positions.shape[0])))
    if count >= positions.shape[0]:
        return None
    xy = positions.detach().cpu().double()
    distance = (xy - xy.mean(0)).square().sum(1)
    return torch.argsort(distance)[:count].sort().values


def select_initial_guess(
    model: ForwardModel, candidates: list[tuple[str, dict[str, Tensor]]],
    make_run: Callable[[ForwardModel], Reconstructor], epochs: int = 8,
    first_epochs: int = 2, finalists: int = 3,
) -> dict[str, float]:
    """Try each candidate; leave ``model`` at the start of the best one.

    Every candidate first runs ``first_epochs`` epochs; the ``finalists`` with the lowest
    loss then go on to ``epochs`` epochs, and the lowest final loss wins. The trials use the
    ``central_patterns`` of a large scan. Trial set-up on one thread (7 candidates),
    420 x 128^2: 11.3 s for 8 epochs of every candidate on every pattern, 4.0 s on the
    central 128, 2.6 s with the finalists; 400 x 64^2: 2.4, 1.1 and 0.7 s. The 64^2 scan gets
    the same guess (NRMSE 0.0234 after 100 epochs); the 128^2 scan a neighbouring one that
    does as well (NRMSE 0.056 after 30 epochs with either).

    A finalist continues its first trial (its model state, optimiser moments and history),
    rather than starting again: epochs draw their batches from the seed and the epoch number,
    so the result is the same as an uninterrupted run, without repeating its first
    ``first_epochs`` epochs (32 instead of 38 trial epochs with the defaults).

    Returns the last trial loss of every candidate by label (after ``epochs`` epochs for the
    finalists, ``first_epochs`` for the others). The model's other parameters start from the
    same state for every trial.
    """
    patterns = central_patterns(model)
    chosen = dict(candidates)
    with contextlib.nullcontext() if patterns is None else model.restricted(patterns):
        start = copy.deepcopy(model.state_dict())
        runs: dict[str, Reconstructor] = {}
        reached: dict[str, dict[str, Tensor]] = {}  # model state where each trial stopped

        def trial(label: str, length: int) -> float:
            if label in runs:
                run = runs[label]
                model.load_state_dict(reached[label])
            else:
                model.load_state_dict(start)
                _assign(model, chosen[label])
                run = runs[label] = make_run(model)
                if patterns is not None:
                    run.restrict(patterns)
            run.config = dataclasses.replace(run.config, epochs=length)
            history = run.run()
            reached[label] = copy.deepcopy(model.state_dict())
            loss = history["loss/total"][-1] if history.get("loss/total") else float("inf")
            return loss if loss == loss else float("inf")

        losses: dict[str, float] = {}
        for label in chosen:
            losses[label] = trial(label, first_epochs)
            # only the best so far may be finalists: the others' moments and states go now
            for dropped in sorted(runs, key=losses.__getitem__)[finalists:]:
                runs.pop(dropped), reached.pop(dropped)
        ranked = sorted(losses, key=losses.__getitem__)
        for label in ranked[:finalists]:
            losses[label] = trial(label, epochs)
        best = min(ranked[:finalists], key=losses.__getitem__)
        model.load_state_dict(start)
    _assign(model, chosen[best])
    log.info("initial guess: %s (trial losses %s)", best,
             ", ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    return losses
