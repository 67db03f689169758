"""The objective: a likelihood of the data plus weighted regularizers on named parameters."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from diffrecon.algorithms.base import Batch
from diffrecon.config import doc
from diffrecon.errors import ConfigError
from diffrecon.losses.likelihoods import Likelihood, make_likelihood
from diffrecon.losses.regularizers import regularizers
from diffrecon.models.base import ForwardModel

Tensor = torch.Tensor


@dataclasses.dataclass
class RegularizerConfig:
    name: str = doc("tv", "registered regularizer: tv, sparsity, amplitude_max")
    param: str = doc("object", "parameter it applies to")
    weight: float = doc(1e-3, "weight relative to the likelihood of a whole scan", minimum=0)


@dataclasses.dataclass
class LossConfig:
    likelihood: Literal["amplitude", "poisson", "gaussian"] = doc(
        "amplitude", "data term: amplitude (robust default), poisson, gaussian"
    )
    regularizers: list[RegularizerConfig] = doc([], "list of {name, param, weight} tables")


class Objective:
    """Sum of the likelihood of a batch and its share of each regularizer.

    A regularizer's weight applies to a whole scan; each batch of B out of N patterns carries
    B/N of it, so an epoch adds it once whatever the batch size.
    """

    def __init__(self, config: LossConfig, num_patterns: int) -> None:
        self.likelihood: Likelihood = make_likelihood(config.likelihood)
        self.likelihood_name = config.likelihood
        self.terms = [(r.name, regularizers.get(r.name), r.param, r.weight)
                      for r in config.regularizers]
        self.num_patterns = num_patterns

    def check(self, model: ForwardModel) -> None:
        fields = model.named_fields()
        for name, _, param, _ in self.terms:
            if param not in fields:
                raise ConfigError(f"loss.regularizers: '{name}' applies to unknown parameter "
                                  f"'{param}' (known: {', '.join(sorted(fields))})")

    def __call__(self, model: ForwardModel, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        total = model.nll(batch.index, batch.measured, batch.valid, self.likelihood)
        values = {self.likelihood_name: float(total.detach())}
        if self.terms:
            fields = model.named_fields()
            share = batch.index.shape[0] / self.num_patterns
            for name, penalty, param, weight in self.terms:
                value = weight * share * penalty(fields[param])
                values[name] = float(value.detach())
                total = total + value
        return total, values
