"""Recipes: registered algorithms run in turn, e.g. ``hio:400,er:100,gradient:50``.

A recipe is written in ``algorithm.name``; its counts (steps, one per epoch for single-pattern
data) set the run length. Every stage starts from the model's current parameters, so classical
phasing hands over to autograd likelihood refinement (``gradient``) with no glue code.
"""

from __future__ import annotations

from typing import Any

import torch

from diffrecon.algorithms.base import Algorithm, AlgorithmConfig, Batch, algorithms
from diffrecon.errors import ConfigError
from diffrecon.models.base import ForwardModel, ParamSpec

Tensor = torch.Tensor


def parse_recipe(name: str, epochs: int) -> list[tuple[str, int]]:
    """Stages ``[(algorithm, count)]`` of ``"hio:400,er:100"``; a count left out (last stage
    only) fills up to ``epochs``."""
    stages: list[tuple[str, int]] = []
    parts = [p.strip() for p in name.split(",") if p.strip()]
    for k, part in enumerate(parts):
        label, _, count = part.partition(":")
        algorithms.get(label)  # unknown names fail here, with a hint
        if not count:
            if k != len(parts) - 1:
                raise ConfigError(f"algorithm.name '{name}': only the last stage may omit "
                                  "its count")
            stages.append((label, max(0, epochs - sum(c for _, c in stages))))
            continue
        try:
            stages.append((label, int(count)))
        except ValueError:
            raise ConfigError(f"algorithm.name '{name}': '{count}' is not a count") from None
    return stages


def scale_recipe(name: str, epochs: int) -> str:
    """The recipe ``name`` (e.g. ``"hio:800,er:100,gradient:200"``) with its stage counts
    scaled in proportion to ``epochs`` in total (each stage at least one step while
    ``epochs`` allows), e.g. to continue from a good start for a given number of epochs."""
    stages = parse_recipe(name, epochs)
    total = sum(count for _, count in stages) or 1
    counts = [max(1, round(count * epochs / total)) for _, count in stages]
    counts[-1] = max(0, epochs - sum(counts[:-1]))
    return ",".join(f"{label}:{count}" for (label, _), count in zip(stages, counts, strict=True)
                    if count > 0)


class Recipe(Algorithm):
    """Runs algorithms in turn, each for a number of steps (one step per epoch for CDI).

    The step counter lives in ``state["step"]``; every stage starts from the model's current
    object (its iterate is reset at the stage boundary).
    """

    def __init__(self, config: AlgorithmConfig, stages: list[tuple[str, int]]) -> None:
        super().__init__(config)
        self.stages = [(algorithms.get(label)(config), count) for label, count in stages]
        self.labels = [label for label, _ in stages]
        self.shardable = all(algorithm.shardable for algorithm, _ in self.stages)

    @property
    def epochs(self) -> int:
        return sum(count for _, count in self.stages)

    def adjust_specs(self, specs: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for algorithm, _ in self.stages:
            specs = algorithm.adjust_specs(specs)
        return specs

    def init_state(self, model: ForwardModel) -> dict[str, Tensor]:
        return {"step": torch.zeros((), dtype=torch.long)}

    def current(self, step: int) -> tuple[Algorithm, int, int]:
        """The algorithm of ``step``, the step within its stage and the stage length."""
        start = 0
        for algorithm, count in self.stages:
            if step < start + count:
                return algorithm, step - start, count
            start += count
        algorithm, count = self.stages[-1]
        return algorithm, step - start + count, count

    def step(self, model: ForwardModel, batch: Batch, objective: Any, plan: Any,
             active: list[str], state: dict[str, Tensor]) -> dict[str, float]:
        step = int(state["step"])
        algorithm, within, length = self.current(step)
        if within == 0:
            state.pop("iterate", None)
        if getattr(algorithm, "staged", False):
            algorithm.progress = within / max(length, 1)  # type: ignore[attr-defined]
        terms = algorithm.step(model, batch, objective, plan, active, state)
        state["step"] = torch.tensor(step + 1)
        return terms


def make_algorithm(config: AlgorithmConfig, epochs: int) -> tuple[Algorithm, int]:
    """The algorithm named in ``config`` and the number of epochs to run it.

    A recipe (``"hio:400,er:100"``) or a single projection algorithm runs as a :class:`Recipe`
    whose counts set the epochs; any other name is the registered algorithm for ``epochs``.
    """
    name = config.name
    if ":" not in name and "," not in name:
        kind = algorithms.get(name)
        if not getattr(kind, "staged", False):
            return kind(config), epochs
    recipe = Recipe(config, parse_recipe(name if ":" in name else f"{name}:{epochs}", epochs))
    return recipe, recipe.epochs
