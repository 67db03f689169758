"""The two-step baseline of pAET: ptychography at each tilt, then tomography of the phases.

Each tilt's scan is reconstructed on its own by the ``multislice`` model with one phase slice
(single-slice electron ptychography, the projection approximation), which gives the projected
phase sigma * integral V dz of that tilt on the same lateral grid as ``ptycho_tomo``'s volume
(same scan, same padding); each is offset so that the vacuum in its lit region is at zero
(a global phase is invisible) and set to zero where unlit. The phases are then inverted by
SIRT (``physics.volume.sirt``) with the same rotation code, giving a volume of phases per
voxel comparable to ``ptycho_tomo``'s ``object``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from diffrecon.data.container import DiffractionData
from diffrecon.models.ptycho_tomo import tilt_groups
from diffrecon.physics.volume import sirt


def per_tilt_phases(data: DiffractionData, config: dict[str, Any],
                    overrides: list[str] | tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Projected phases (T, H, W) radians from single-slice ptychography at each tilt, and
    the tilts' orientations (T, 3) radians. ``config`` is a ``multislice`` run config."""
    from diffrecon.api import reconstruct

    angles, tilt_index = tilt_groups(data)
    config = {**config, "model": {**config.get("model", {}), "slices": 1,
                                  "object_kind": "phase"}}
    phases = []
    for tilt in range(len(angles)):
        rows = np.flatnonzero(tilt_index == tilt)
        single = dataclasses.replace(
            data, patterns=np.asarray(data.patterns[rows[0] : rows[-1] + 1])[rows - rows[0]],
            positions_m=np.asarray(data.positions_m)[rows], angles_rad=None, truth=None)
        result = reconstruct(single, "multislice", config, overrides=overrides)
        phase = np.asarray(result.results["phase"])[0]
        # the phase is known up to a constant: the vacuum around the particle is set to 0
        lit = result.results["illumination"] > 0.1 * result.results["illumination"].max()
        phases.append(np.where(lit, phase - np.percentile(phase[lit], 5), 0.0))
    return np.stack(phases), angles


def two_step(data: DiffractionData, config: dict[str, Any], depth: int, *,
             iterations: int = 100, overrides: list[str] | tuple[str, ...] = ()) -> np.ndarray:
    """The baseline volume (D, H, W) of phases per voxel (radians): per-tilt ptychography,
    then SIRT with positivity over ``iterations``."""
    phases, angles = per_tilt_phases(data, config, overrides)
    projections = torch.as_tensor(phases, dtype=torch.float32)
    volume = sirt(projections, torch.as_tensor(angles, dtype=torch.float32), depth,
                  iterations=iterations)
    return volume.numpy()
