"""Multiple random starts: run, rank by the data error, align and average the best.

Phase retrieval from a single pattern finds a different local solution (and a different
member of each ambiguity class: shift, global phase, twin) from each random start. The starts
are ranked by their Fourier R-factor against the measured data (never against ground truth),
the best ``average_best`` are aligned to the best one (``metrics.align`` with the model's
ambiguities) and averaged; the phase retrieval transfer function (PRTF) of the aligned set says
which spatial frequencies were reproducible (2D data).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffrecon.data.container import DiffractionData
from diffrecon.data.simulate import simulate_patterns
from diffrecon.losses.metrics import align, prtf, r_factor
from diffrecon.models.base import ForwardModel
from diffrecon.recon.evaluation import truth_evaluator

log = logging.getLogger("diffrecon")


def predicted_counts(model: ForwardModel, data: DiffractionData) -> np.ndarray:
    """The model's noise-free counts, DC-centred, shaped like ``data.patterns``."""
    n = 1 if model.propagator.ndim == len(data.patterns.shape) else data.num_patterns
    return simulate_patterns(model, None, n).reshape(data.patterns.shape)


def data_r_factor(model: ForwardModel, data: DiffractionData) -> float:
    """Fourier R-factor of ``model`` against the measured counts over valid pixels."""
    measured = np.asarray(data.patterns, dtype=np.float64)
    valid = np.broadcast_to(data.valid_mask(), measured.shape)
    return r_factor(predicted_counts(model, data), measured, valid)


@torch.no_grad()
def detector_field(model: ForwardModel, obj: np.ndarray) -> np.ndarray:
    """DC-centred detector field of pattern 0 with ``obj`` as the model's object."""
    field: Any = model.named_fields()["object"]
    saved = field.detach().clone()
    field.copy_(torch.as_tensor(obj, dtype=field.dtype, device=field.device))
    index = torch.zeros(1, dtype=torch.long, device=field.device)
    out = model.propagator.from_native(model.trace(index).detector_field[0, 0])
    field.copy_(saved)
    return out.cpu().numpy()


def multistart(
    data: DiffractionData, run_config: Any, run_once: Callable[[Any], Any]
) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """Run ``run_config.recon.starts`` starts (seeds seed, seed+1, ...) with ``run_once``.

    Args:
        data: the measured data.
        run_config: a RunConfig; each start runs it with its own seed and ``starts = 1``.
        run_once: runs one start from a RunConfig and returns an ``api.Result``.

    Returns:
        The best start's Result (its model now holds the average), the averaged results
        (``object``, plus ``start_r_factor`` (starts,), ``prtf_frequency``/``prtf`` for 2D,
        ``start_nrmse`` with ground truth) and the metrics of the average.
    """
    recon = run_config.recon
    runs = []
    for k in range(recon.starts):
        config = dataclasses.replace(
            run_config, recon=dataclasses.replace(recon, seed=recon.seed + k, starts=1))
        result = run_once(config)
        runs.append((data_r_factor(result.model, data), k, result))
        log.info("start %d of %d: R-factor %.4g", k + 1, recon.starts, runs[-1][0])
    runs.sort(key=lambda item: item[0])
    best = runs[0][2]
    model = best.model
    keep = [r for _, _, r in runs[: max(1, recon.average_best)]]
    reference = np.asarray(keep[0].results["object"])
    aligned = [align(np.asarray(r.results["object"]), reference, **model.alignment).numpy()
               for r in keep]
    average = np.mean(aligned, axis=0).astype(reference.dtype)
    results = dict(best.results)
    results["object"] = average
    results["start_r_factor"] = np.array([rf for rf, _, _ in sorted(runs, key=lambda x: x[1])])
    if reference.ndim == 2 and model.propagator.ndim == 2:
        fields = np.stack([detector_field(model, obj) for obj in aligned])
        measured = np.asarray(data.patterns[0], dtype=np.float64)
        frequencies, values = prtf(fields, measured, mask=data.valid_mask())
        results["prtf_frequency"], results["prtf"] = frequencies.numpy(), values.numpy()
    with torch.no_grad():
        model.named_fields()["object"].copy_(torch.as_tensor(average))
    metrics: dict[str, float] = {}
    if data.truth is not None:
        metrics = truth_evaluator(data.truth, data.positions_m)(model)
        by_seed = sorted(runs, key=lambda item: item[1])
        results["start_nrmse"] = np.array([r.metrics.get("nrmse", np.nan) for _, _, r in by_seed])
        metrics["best_start_nrmse"] = float(runs[0][2].metrics.get("nrmse", np.nan))
    return best, results, metrics
