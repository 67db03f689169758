"""Comparison of a model's current results with the ground truth of simulated data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from diffrecon.data.container import Truth
from diffrecon.losses.metrics import align, nrmse, phase_rmse, position_error
from diffrecon.models.base import ForwardModel


def overlap_crop(
    estimate: np.ndarray, estimate_origin: np.ndarray, truth: np.ndarray,
    truth_origin: np.ndarray, pixel: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Crop two (..., H, W) images on the same pixel grid to their common region.

    Returns the cropped estimate, the cropped truth and the slices into the estimate.
    """
    offset = np.round((np.asarray(truth_origin) - np.asarray(estimate_origin)) / pixel).astype(int)
    est_slices, truth_slices = [], []
    for axis in range(2):
        n_est, n_truth = estimate.shape[-2 + axis], truth.shape[-2 + axis]
        start = max(0, offset[axis])
        stop = min(n_est, offset[axis] + n_truth)
        est_slices.append(slice(start, stop))
        truth_slices.append(slice(start - offset[axis], stop - offset[axis]))
    es = (Ellipsis, *est_slices)
    ts = (Ellipsis, *truth_slices)
    return estimate[es], truth[ts], (est_slices[0], est_slices[1])


def truth_evaluator(
    truth: Truth, file_positions_m: np.ndarray | None = None
) -> Callable[[ForwardModel], dict[str, float]]:
    """A function giving the ambiguity-removed errors of a model against ``truth``.

    ``nrmse`` is the complex NRMSE of the object (global phase, phase ramp and sub-pixel shift
    removed) over the model's ``truth_mask``; ``phase_rmse`` in radians over the same region;
    ``position_error_px`` the rms position error (mean offset removed) in object pixels, when
    the positions in the file (``file_positions_m``) differ from the true ones.
    """
    positions_known = truth.positions_m is not None and (
        file_positions_m is None
        or position_error(np.asarray(file_positions_m), truth.positions_m)
        > 1e-3 * float(np.mean(truth.pixel_size_m))
    )

    def evaluate(model: ForwardModel) -> dict[str, float]:
        results: dict[str, Any] = model.results()
        out: dict[str, float] = {}
        if "object" in results:
            obj = np.asarray(results["object"])
            pixel = np.asarray(results.get("pixel_size_m", truth.pixel_size_m))
            est, tru, region = overlap_crop(obj, np.asarray(results.get("origin_m", (0, 0))),
                                            np.asarray(truth.object), np.asarray(truth.origin_m),
                                            pixel)
            mask = model.truth_mask()
            mask = None if mask is None else mask[region]
            est2, tru2 = model.comparable(est), model.comparable(tru)
            if mask is not None:  # one alignment serves both errors
                aligned = align(est2, tru2, mask=mask, **model.alignment)
                out["nrmse"] = nrmse(aligned, tru2, mask=mask, align_first=False)
                out["phase_rmse"] = phase_rmse(aligned, tru2, mask=mask, align_first=False)
            else:  # the phase then counts where the true object is (it is noise elsewhere)
                out["nrmse"] = nrmse(est2, tru2, **model.alignment)
                out["phase_rmse"] = phase_rmse(est2, tru2, mask=np.abs(tru2) > 0,
                                               **model.alignment)
        if positions_known and "positions_m" in results:
            pixel = float(np.mean(results["pixel_size_m"]))
            error = position_error(np.asarray(results["positions_m"]), truth.positions_m)
            out["position_error_px"] = error / pixel
        return out

    return evaluate
