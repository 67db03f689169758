"""Self-supervised fine-tuning of a trained network on one measured scan (no truth needed).

The loss is physics-informed through the whole ptychographic forward model: the network's
patches are stitched (``learn.stitch``; phases synchronised without gradient, the weighted
average differentiable), the stitched object goes through the shared overlap kernel with the
probe at every scan position, and the Poisson likelihood of the measured counts is taken.
Fitting each pattern on its own (``losses.physics_loss``) would let every patch drift within
the ambiguities of a single pattern; through the stitched object, overlapping patches must
agree, which is the redundancy ptychography rests on. Each step uses the whole scan.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

import torch

from diffrecon.data.container import DiffractionData
from diffrecon.learn.infer import network_probe, scan_patches
from diffrecon.learn.losses import probe_weights
from diffrecon.learn.samples import network_input
from diffrecon.learn.stitch import blend, global_factors
from diffrecon.learn.train import TrainedNet
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.physics.overlap import overlap

Tensor = torch.Tensor


@dataclasses.dataclass
class Finetuned:
    """The fine-tuned network (a copy) and its loss per step (NLL per detector pixel)."""

    trained: TrainedNet
    losses: list[float]


def finetune_scan(trained: TrainedNet, data: DiffractionData, steps: int = 20,
                  lr: float = 3e-6, likelihood: str = "poisson",
                  optimizer: Literal["sgd", "adam"] = "sgd") -> Finetuned:
    """Fine-tune a copy of ``trained`` on the patterns of ``data`` (labels are not used).

    Few, small steps: the likelihood keeps falling long after the error against the truth has
    stopped improving (the network leaves the truth's basin for other, better-fitting
    objects), so the number of steps is an early stop, to be chosen on a validation scan with
    known truth (as ``experiments/bench_learn.py`` does).

    Args:
        trained: the network (left unchanged).
        data: a ptychographic scan in the network's geometry.
        steps: optimizer steps, each over the whole scan.
        lr: learning rate (SGD with momentum 0.9 by default; Adam's per-weight normalisation
            takes steps of ~lr in every weight and needs ~1e-5).
        likelihood: registered likelihood of the counts.
        optimizer: "sgd" or "adam".
    """
    tuned = dataclasses.replace(trained, net=copy.deepcopy(trained.net).train())
    model, patches = scan_patches(data, tuned)
    index = torch.arange(data.num_patterns)
    corners, _ = model._placement(index)
    shape = tuple(model.object.shape[-2:])
    probe = network_probe(tuned)
    assert patches.fractions is not None
    weights = probe_weights(probe, patches.fractions)
    nll = make_likelihood(likelihood)
    measured = nll.prepare(model.propagator.to_native(patches.counts))
    inputs = network_input(patches.counts, tuned.scale)
    step = (torch.optim.Adam(tuned.net.parameters(), lr=lr) if optimizer == "adam" else
            torch.optim.SGD(tuned.net.parameters(), lr=lr, momentum=0.9))
    losses = []
    for _ in range(steps):
        estimate = tuned.net(inputs)
        factors = global_factors(estimate.detach(), weights, corners, shape)
        obj = blend(estimate, weights, factors, corners, shape)
        psi = overlap(obj[None], probe, corners, patches.fractions)
        field = model.propagator(psi)
        predicted = (field.real.square() + field.imag.square()).sum(1)
        loss = nll.nll(predicted, measured) / measured.numel()
        step.zero_grad(set_to_none=True)
        loss.backward()
        step.step()
        losses.append(float(loss.detach()))
    tuned.net.eval()
    return Finetuned(tuned, losses)
