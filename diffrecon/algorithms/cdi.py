"""Classical phasing (ER, HIO, DM, RAAR, OSS) as short compositions of shared projections.

Each algorithm maps the iterate x and its Fourier projection P_M x to the next iterate and the
current estimate (what the model's ``object`` shows); P_S is the support (and real/positivity)
projection, see :mod:`diffrecon.algorithms.projections`. The iterate is kept in the loop's
``state`` (``state["iterate"]``), so it checkpoints and rolls back like everything else.
They run one step per epoch, alone or as stages of a ``Recipe`` (``hio:400,er:100``, see
:mod:`diffrecon.algorithms.recipe`). :class:`Shrinkwrap` is the support-update callback.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch

from diffrecon.algorithms.base import Algorithm, Batch, algorithms
from diffrecon.algorithms.projections import (
    feasible,
    fourier_projection,
    shrinkwrap,
    support_projection,
)
from diffrecon.models.base import ForwardModel
from diffrecon.physics.filters import erode, gaussian_blur

Tensor = torch.Tensor


class Projection(Algorithm):
    """Base class: one Fourier projection per step, then ``update``. ``progress`` in [0, 1)
    is the fraction of the stage done (set by the Recipe; OSS schedules its filter on it)."""

    staged = True  # always run as a Recipe stage, which knows the stage length
    default_feedback = 0.9
    progress = 0.0

    @property
    def beta(self) -> float:
        feedback = self.config.feedback
        return self.default_feedback if feedback is None else feedback

    def support(self, model: Any, x: Tensor) -> Tensor:
        """P_S of the model (support plus its pointwise constraint)."""
        return support_projection(x, model.support, model.constraint)

    def update(self, model: Any, x: Tensor, pm: Tensor, batch: Batch,
               objective: Any) -> tuple[Tensor, Tensor]:
        """(next iterate, current estimate) from x and P_M x."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, model: ForwardModel, batch: Batch, objective: Any, plan: Any,
             active: list[str], state: dict[str, Tensor]) -> dict[str, float]:
        obj: Any = model.object
        x = state.get("iterate")
        if x is None:
            x = obj.detach().clone()
        pm, error = fourier_projection(model, x, batch.measured, batch.valid,  # type: ignore[arg-type]
                                       objective.likelihood)
        state["iterate"], estimate = self.update(model, x, pm, batch, objective)
        obj.copy_(estimate)
        return {"fourier_error": float(error)}


@algorithms.register("er")
class ErrorReduction(Projection):
    """x <- P_S P_M x (Fienup 1982); the Fourier error never increases."""

    def update(self, model, x, pm, batch, objective):  # type: ignore[no-untyped-def]
        estimate = self.support(model, pm)
        return estimate, estimate


@algorithms.register("hio")
class HybridInputOutput(Projection):
    """Fienup's HIO: x <- P_M x where it satisfies the constraints, x - beta P_M x elsewhere.

    With beta = 0 and a start inside the support this is exactly ER.
    """

    def update(self, model, x, pm, batch, objective):  # type: ignore[no-untyped-def]
        inside = feasible(pm, model.support, model.constraint)
        estimate = self.support(model, pm)
        return torch.where(inside, estimate, x - self.beta * pm), estimate


@algorithms.register("oss")
class OversamplingSmoothness(HybridInputOutput):
    """OSS (Rodriguez et al., J. Appl. Cryst. 46, 312 (2013)): HIO whose out-of-support values
    are low-pass filtered by a Gaussian of Fourier width alpha, lowered in 10 steps from N
    (no smoothing) to 1/N (flattening) over the stage. Only the out-of-support part is
    filtered, so nothing leaks out of the support and a solution stays a fixed point."""

    def update(self, model, x, pm, batch, objective):  # type: ignore[no-untyped-def]
        nxt, estimate = super().update(model, x, pm, batch, objective)
        n = max(x.shape)
        stage = min(9, int(10 * self.progress))
        alpha = n - (n - 1 / n) * stage / 9  # Fourier pixels
        inside = feasible(pm, model.support, model.constraint)
        outside = torch.where(inside, 0.0, nxt)
        smoothed = gaussian_blur(outside, n / (2 * math.pi * alpha), x.dim())
        return torch.where(inside, nxt, smoothed), estimate


@algorithms.register("raar")
class RelaxedAveragedAlternatingReflections(Projection):
    """RAAR (Luke 2005): x <- beta (x + P_S(2 P_M x - x) - P_M x) + (1 - beta) P_M x."""

    default_feedback = 0.85

    def update(self, model, x, pm, batch, objective):  # type: ignore[no-untyped-def]
        reflected = self.support(model, 2 * pm - x)
        return self.beta * (x + reflected - pm) + (1 - self.beta) * pm, self.support(model, pm)


@algorithms.register("dm")
class DifferenceMap(Projection):
    """Elser's difference map with gamma_S = -1/beta, gamma_M = 1/beta:
    x <- x + beta (P_S f_M(x) - P_M f_S(x)), f_M = P_M + (P_M - 1)/beta,
    f_S = P_S - (P_S - 1)/beta; the estimate is P_S f_M(x). Two Fourier projections a step."""

    def update(self, model, x, pm, batch, objective):  # type: ignore[no-untyped-def]
        beta = self.beta
        estimate = self.support(model, pm + (pm - x) / beta)
        ps = self.support(model, x)
        pm_fs, _ = fourier_projection(model, ps - (ps - x) / beta, batch.measured, batch.valid,
                                      objective.likelihood)
        return x + beta * (estimate - pm_fs), estimate


@dataclasses.dataclass
class Shrinkwrap:
    """Loop callback: every ``every`` epochs, the support becomes the thresholded blurred
    modulus of the object (:func:`shrinkwrap`), with sigma decaying geometrically from
    ``sigma_px[0]`` to ``sigma_px[1]``; idle before ``start`` and frozen after ``stop`` of
    the epochs. With ``border_px`` > 0 an update only removes pixels within ``border_px`` of
    the support's edge and adds none (PyNX's ``support_update_border_n``): a half-converged
    object whose modulus still dips inside (a strained crystal mixed with its twin) cannot
    cut holes into its own support, and the support shrinks gradually from a loose start."""

    every: int
    threshold: float
    sigma_px: tuple[float, float]
    stop: float
    reference: Literal["max", "rms"] = "max"  # what the threshold is a fraction of
    start: float = 0.0  # fraction of the epochs before the first update
    border_px: int = 0  # 0: the new support replaces the old one unrestricted

    def sigma(self, update: int, updates: int) -> float:
        start, end = self.sigma_px
        return start * (end / start) ** (min(update, updates) / max(updates, 1))

    def on_start(self, run: Any) -> None:
        pass

    @torch.no_grad()
    def on_epoch_end(self, run: Any, epoch: int, logs: dict[str, float]) -> None:
        first, last = int(self.start * run.config.epochs), int(self.stop * run.config.epochs)
        if not self.every or (epoch + 1) % self.every or not first < epoch + 1 <= last:
            return
        model = run.model
        sigma = self.sigma((epoch + 1 - first) // self.every - 1,
                           (last - first) // self.every - 1)
        support = shrinkwrap(torch.where(model.support, model.object, 0.0), sigma,
                             self.threshold, self.reference)
        if self.border_px:
            support = model.support & (support | erode(model.support, self.border_px))
        if bool(support.any()):
            model.support.copy_(support)
        logs["support/pixels"] = float(model.support.sum())

    def on_end(self, run: Any) -> None:
        pass
