"""Global start for the FP Zernike fit: a grid of pupils, each scored with its own object.

The per-epoch Zernike fit (``fp_pupil``) is local: at about a wave rms it stops 0.3-0.7
wave off even with the true object held, and the estimated object, grown under a wrong
pupil, absorbs that pupil's error and holds it there. The bright-field images alone,
however, fix both the pupil and the low-frequency object (9 images of 64^2 intensities
against ~4 pupil areas of complex object spectrum in bench_fp.py's scene), and a joint fit on
them is cheap. So before the first epoch every start of a grid over defocus, astigmatism and
coma (Noll 4-8, each at -s, 0, +s waves: 243 starts) is scored by the *profile* misfit of
the bright-field images: the object restarts from the bright-field guess and alternates
full-batch rPIE steps (``object_steps``) with the L-BFGS Zernike fit, so each pupil is
judged with an object grown under it, not under another pupil. The best few are refined
longer and the lowest misfit is kept. With 1 wave rms (bench_fp.py, seed 2), the start
nearest the truth scores 2.6x lower than the next and refines to 0.002 wave at ~50x lower
misfit than the other refined starts; with 8 instead of 20 object steps per alternation the
scores were too unconverged to rank (seed 0 kept a start 0.16 wave off). The grid covers
coefficients up to about 1.5 s in magnitude (each start's basin reaches ~0.25 wave). No
truth is used: zero is one of the starts, so unaberrated data keep a zero start.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from diffrecon.algorithms.pie import rpie_step_size
from diffrecon.models.fp_pupil import fit_aberrations, images_loss, trainable_only

Tensor = torch.Tensor

#: Noll indices spanned by the start grid (defocus, astigmatism, coma)
GRID_NOLL = (4, 5, 6, 7, 8)


def object_steps(model: Any, index: Tensor, measured: Tensor, likelihood: Any, steps: int,
                 alpha: float = 0.1) -> None:
    """``steps`` full-batch rPIE steps on ``model.object`` against images ``index`` (N,)
    (all at once, ``measured`` (N, h, w) prepared), every other parameter held."""
    with trainable_only(model, "object"), torch.enable_grad():
        for _ in range(steps):
            model.object.grad = None
            likelihood.elementwise(model(index), measured).sum().backward()
            with torch.no_grad():
                cover = model.partner_intensities(index)["object"]
                model.object.sub_(model.object.grad * rpie_step_size(cover, alpha))
        model.object.grad = None


def profile_misfit(model: Any, index: Tensor, measured: Tensor, likelihood: Any, start: Tensor,
                   rounds: int, steps: int = 20, iterations: int = 8) -> float:
    """Misfit of images ``index`` after ``rounds`` alternations of ``steps`` object steps and an
    L-BFGS fit of every Zernike coefficient, from the bright-field object and ``start`` (J,)
    waves. Leaves the result in ``model.object`` and ``model.aberrations``."""
    free = torch.ones(len(model.noll))
    with torch.no_grad():
        model.object.copy_(model.initial_spectrum)
        model.aberrations.copy_(start)
    for _ in range(rounds):
        object_steps(model, index, measured, likelihood, steps)
        fit_aberrations(model, index, measured, likelihood, free, iterations)
    return images_loss(model, index, measured, likelihood)


def grid_starts(noll: list[int], step_waves: float) -> Tensor:
    """Starts (3^5, J): every combination of -step, 0, +step waves on ``GRID_NOLL``."""
    columns = [noll.index(j) for j in GRID_NOLL if j in noll]
    starts = torch.zeros(3 ** len(columns), len(noll))
    levels = (-step_waves, 0.0, step_waves)
    for row, combination in enumerate(itertools.product(levels, repeat=len(columns))):
        starts[row, columns] = torch.tensor(combination)
    return starts


def search_aberrations(model: Any, index: Tensor, measured: Tensor, likelihood: Any,
                       step_waves: float, keep: int = 3, rounds: int = 2,
                       refine_rounds: int = 6) -> float:
    """Set ``model.aberrations`` to the best pupil of the ``grid_starts`` search (module
    docstring): every start scored after ``rounds`` alternations, the ``keep`` best refined
    for ``refine_rounds``. The object goes back to the bright-field guess. Returns the
    best misfit."""
    scored = []
    for start in grid_starts(model.noll, step_waves):
        misfit = profile_misfit(model, index, measured, likelihood, start, rounds)
        scored.append((misfit, model.aberrations.detach().clone()))
    scored.sort(key=lambda pair: pair[0])
    best, best_misfit = scored[0][1], float("inf")
    for _, start in scored[:keep]:
        misfit = profile_misfit(model, index, measured, likelihood, start, refine_rounds)
        if misfit < best_misfit:
            best, best_misfit = model.aberrations.detach().clone(), misfit
    with torch.no_grad():
        model.aberrations.copy_(best)
        model.object.copy_(model.initial_spectrum)
    return best_misfit
