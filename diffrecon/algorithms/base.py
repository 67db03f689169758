"""The Algorithm contract: one update of a model from one batch."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from diffrecon.config import doc
from diffrecon.models.base import ForwardModel, ParamSpec
from diffrecon.recon.distributed import Communicator, SingleProcess
from diffrecon.registry import Registry

Tensor = torch.Tensor


@dataclasses.dataclass
class AlgorithmConfig:
    name: str = doc(
        "gradient",
        "update rule: gradient (autograd optimisers), epie, rpie, er, hio, dm, raar, oss, or a "
        "recipe of stages run in turn, e.g. 'hio:400,er:100,gradient:50' (its counts then set "
        "the number of epochs; the last count may be left out to fill recon.epochs)",
    )
    alpha: float | None = doc(
        None, "PIE object step (ePIE alpha, default 1) or regularisation (rPIE, default 0.1)",
        minimum=0)
    beta: float = doc(1.0, "PIE probe step/regularisation", minimum=0)
    feedback: float | None = doc(
        None, "HIO/OSS/DM/RAAR feedback parameter beta (default 0.9, RAAR 0.85)", minimum=0)
    accumulate_batches: int = doc(
        1, "gradient: sum the gradients of this many minibatches per update (memory of one "
        "minibatch, update of several)", minimum=1)


@dataclasses.dataclass
class Batch:
    """One minibatch: pattern indices (B,), measured counts (B, H, W) native, valid (H, W).

    In a distributed run ``index`` is this process's share of the minibatch and ``comm`` sums
    per-share contributions over the processes (see :mod:`diffrecon.recon.distributed`).
    """

    index: Tensor
    measured: Tensor
    valid: Tensor
    comm: Communicator = dataclasses.field(default_factory=SingleProcess)


class Algorithm:
    """Base class: ``step`` updates ``model`` from ``batch`` and returns the loss terms."""

    #: whether ``step`` sums every per-pattern contribution through ``batch.comm``, so that a
    #: minibatch may be split over processes (data-parallel runs)
    shardable: bool = False

    def __init__(self, config: AlgorithmConfig) -> None:
        self.config = config

    def adjust_specs(self, specs: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        """Change the per-parameter plan this rule needs (e.g. PIE's unit-step SGD)."""
        return specs

    def init_state(self, model: ForwardModel) -> dict[str, Tensor]:
        return {}

    def step(self, model: ForwardModel, batch: Batch, objective: Any, plan: Any,
             active: list[str], state: dict[str, Tensor]) -> dict[str, float]:
        raise NotImplementedError


algorithms: Registry[type[Algorithm]] = Registry("algorithm")
