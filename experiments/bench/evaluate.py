"""One accuracy metric for every package: object NRMSE against the simulated truth.

The error is diffrecon's ambiguity-removed complex NRMSE (``losses.metrics.nrmse``: shift,
phase ramp, global phase and complex scale removed) over the well-lit region of the true
scan (true probe at the true positions, above 10% of the maximum illumination). Packages
store the object on arrays of their own size and orientation (CDTools, for one, reads CXI
translations as optics motions, which rotates the object by 180 degrees), so an estimate is
first centre-cropped or zero-padded to the truth's shape and put in whichever of the eight
axis flips/transposes matches best; that choice is a file-convention ambiguity, not accuracy,
and is made once per run on its last snapshot.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffrecon.data.container import DiffractionData
from diffrecon.losses.metrics import nrmse

#: the eight axis conventions: (transpose, flip rows, flip columns)
ORIENTATIONS = [(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)]


def truth_mask(data: DiffractionData, fraction: float = 0.1) -> np.ndarray:
    """bool (H, W) on the truth object's grid: where the true illumination exceeds
    ``fraction`` of its maximum (the region every package is judged on)."""
    import torch

    from diffrecon.models.ptycho import Ptycho, PtychoConfig

    truth = data.truth
    geometry = dataclasses.replace(data, positions_m=truth.positions_m, probe_guess=truth.probe,
                                   truth=None)
    model = Ptycho.from_data(geometry, PtychoConfig(probe_modes=truth.probe.shape[0]))
    with torch.no_grad():
        model.probe.copy_(torch.as_tensor(truth.probe))
    mask = model.truth_mask()
    if mask.shape != truth.object.shape[-2:]:
        raise ValueError(f"illumination grid {mask.shape} != truth {truth.object.shape}")
    return mask


def fit_to(estimate: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad a (H', W') array to ``shape``."""
    out = np.zeros(shape, dtype=np.complex128)
    src, dst = [], []
    for have, want in zip(estimate.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = estimate[tuple(src)]
    return out


def orient(estimate: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, rows, columns = orientation
    out = estimate.T if transpose else estimate
    if rows:
        out = out[::-1]
    if columns:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def object_nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                 orientation: tuple[bool, bool, bool] = (False, False, False)) -> float:
    """NRMSE of ``estimate`` (any (H', W'), slice 0 of a stack) against ``truth`` (H, W)."""
    estimate = np.asarray(estimate).reshape(-1, *np.shape(estimate)[-2:])[0]
    oriented = orient(estimate, orientation)
    return nrmse(fit_to(oriented, truth.shape), truth, mask=mask)


def best_orientation(estimate: np.ndarray, truth: np.ndarray,
                     mask: np.ndarray) -> tuple[tuple[bool, bool, bool], float]:
    """The axis convention giving the lowest NRMSE, and that NRMSE."""
    scores = [(object_nrmse(estimate, truth, mask, o), o) for o in ORIENTATIONS]
    error, orientation = min(scores)
    return orientation, error
