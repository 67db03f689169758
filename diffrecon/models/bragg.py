"""Bragg CDI: 3D phasing of the intensity around one Bragg peak, then displacement and strain.

The object is the complex crystal density ``rho = |rho| exp(i Q . u)`` on the grid conjugate
to the detector voxels (rocking frame, row, column); its far-field intensity is the measured
rocking-curve volume. This is conventional 3D CDI (:class:`diffrecon.models.cdi.CDI`: support,
shrinkwrap, HIO/ER/RAAR + Poisson refinement, multiple starts) on a non-orthogonal grid; this
file adds only the geometry (read from the data, :mod:`diffrecon.data.bragg`), the peak
centring and the physical outputs (:func:`diffrecon.physics.bragg.lab_frame_maps`): amplitude,
unwrapped phase, displacement u . Q / |Q| (metres) and strain du_Q/ds on an orthonormal lab
grid (z along the beam, y up, x = y cross z) with voxel sizes in metres.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from diffrecon.config import doc, nonzero
from diffrecon.data.bragg import center_on_peak, read_geometry
from diffrecon.data.container import DiffractionData
from diffrecon.errors import DataFormatError
from diffrecon.models.base import models
from diffrecon.models.cdi import CDI, CDIConfig, measured_intensity
from diffrecon.physics.bragg import BraggGeometry, lab_frame_maps, lab_voxel_size_m
from diffrecon.physics.filters import autocorrelation_support

Tensor = torch.Tensor


@dataclasses.dataclass
class BraggConfig(CDIConfig):
    support_threshold: float = doc(
        0.001, "initial support: autocorrelation threshold, fraction of its maximum (low: "
        "the phase of a strained crystal weakens its autocorrelation away from the centre; "
        "at peak strain 1e-3, 0.003 left 9 % of the crystal outside, and HIO then fails)",
        minimum=0, maximum=1)
    support_margin_px: float = doc(
        2.0, "initial support: grown by about this many voxels (it must contain the crystal)",
        minimum=0)
    shrinkwrap_threshold: float = doc(
        0.2, "shrinkwrap threshold, fraction of the blurred modulus' RMS over the support",
        minimum=0)
    shrinkwrap_start: float = doc(
        0.2, "first shrinkwrap update after this fraction of the epochs (HIO converges on "
        "the loose initial support first)", minimum=0, maximum=1)
    shrinkwrap_border_px: int = doc(
        2, "a shrinkwrap update removes only voxels this close to the support edge (0: any)",
        minimum=0)
    shrinkwrap_reference: Literal["max", "rms"] = doc(
        "rms", "shrinkwrap threshold relative to the max or the RMS inside the support")
    shrinkwrap_sigma_px: tuple[float, float] = doc(
        (2.0, 1.0), "shrinkwrap Gaussian sigma (start, end), voxels; decays geometrically")
    delta_deg: float | None = doc(None, "detector out-of-plane angle, degrees (none: file)")
    gamma_deg: float | None = doc(None, "detector in-plane angle, degrees (none: file or 0)")
    rocking_step_deg: float | None = doc(
        None, "rocking step per frame, degrees (none: file)", check=nonzero)
    rocking_axis: str | None = doc(None, "rocking axis 'x' or 'y' (none: file or 'x')")
    crop_px: tuple[int, int, int] | None = doc(
        None, "crop/pad the volume to (D, H, W) around the peak (none: keep the shape)")
    center_peak: bool = doc(True, "move the brightest voxel to the array centre")
    strain_erosion_px: int = doc(
        2, "lab voxels removed from the crystal edge for strain", minimum=0)


def geometry_of(data: DiffractionData, config: BraggConfig) -> BraggGeometry:
    """The Bragg geometry: config values over the file's metadata."""
    given = {name: getattr(config, name)
             for name in ("delta_deg", "gamma_deg", "rocking_step_deg", "rocking_axis")}
    return read_geometry(data, given)


@models.register("bragg")
class Bragg(CDI):
    """Bragg CDI of one crystal. Parameters and buffers as :class:`CDI` (3D ``object`` on the
    detector-conjugate grid); ``geometry`` maps it to the lab frame."""

    Config = BraggConfig
    run_defaults: ClassVar[dict[str, Any]] = {
        "algorithm": {"name": "hio:400,er:100,gradient:50"},
        "loss": {"likelihood": "poisson"},
        "recon": {"plateau_patience": 0, "checkpoint_every": 100},
        "log": {"metric_every": 50, "image_every": 100},
    }

    def __init__(self, object_: Tensor, support: Tensor, pixel_size_m: tuple[float, float],
                 config: CDIConfig, *, geometry: BraggGeometry | None = None,
                 **kwargs: Any) -> None:
        super().__init__(object_, support, pixel_size_m, config, **kwargs)
        self.geometry = geometry

    @classmethod
    def prepare(cls, data: DiffractionData, config: BraggConfig) -> DiffractionData:
        """Centre the Bragg peak and crop to ``config.crop_px`` (see ``center_on_peak``)."""
        if len(data.patterns.shape) != 3 or data.patterns.shape[0] < 2:
            raise DataFormatError(data.source, "entry_1/data_1/data",
                                  "a (D, H, W) rocking-curve volume (D > 1) for modality 'bragg'",
                                  f"shape {tuple(data.patterns.shape)}")
        if not config.center_peak and config.crop_px is None:
            return data
        return center_on_peak(data, config.crop_px)

    @classmethod
    def from_data(cls, data: DiffractionData, config: BraggConfig, *,
                  generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Bragg:
        geometry = geometry_of(data, config)
        model: Any = super().from_data(data, config, generator=generator, device=device)
        model.geometry = geometry
        voxel = lab_voxel_size_m(geometry.real_basis(tuple(model.object.shape)))
        model.pixel_size_m = (voxel, voxel)
        return model

    @classmethod
    def describe(cls, data: DiffractionData) -> str:
        """Geometry, voxel sizes and the oversampling along each array axis (array size over
        the object's extent, from its autocorrelation at 1 % of the maximum)."""
        intensity, _ = measured_intensity(data)
        support = autocorrelation_support(intensity, 0.01, 1.0)  # halved: the object's extent
        extents = [int(np.ptp(np.nonzero(support.numpy())[axis])) + 1 for axis in range(3)]
        ratios = [n / e for n, e in zip(intensity.shape, extents, strict=True)]
        lines = ["bragg:            oversampling per axis (rocking, rows, columns) "
                 + ", ".join(f"{r:.3g}" for r in ratios)]
        try:
            geometry = geometry_of(data, BraggConfig())
        except DataFormatError as error:  # inspect reports what is missing instead of failing
            return "\n".join(lines + [f"geometry:         {error}"])
        basis = geometry.real_basis(tuple(intensity.shape))  # type: ignore[arg-type]
        q = geometry.q_bragg()
        steps = np.linalg.norm(basis, axis=0) * 1e9
        lines += [
            f"Bragg peak:       |Q| = {np.linalg.norm(q) * 1e-10:.4g} 1/A, d = "
            f"{2 * math.pi / np.linalg.norm(q) * 1e9:.4g} nm, Q (z, y, x) = "
            + ", ".join(f"{v * 1e-10:.3g}" for v in q) + " 1/A",
            "object voxel:     " + " x ".join(f"{s:.3g}" for s in steps)
            + f" nm along the array axes; lab voxel {lab_voxel_size_m(basis) * 1e9:.3g} nm"]
        return "\n".join(lines)

    def callbacks(self) -> list[Any]:
        from diffrecon.algorithms.cdi import Shrinkwrap

        c = self.config
        return [Shrinkwrap(c.shrinkwrap_every, c.shrinkwrap_threshold,
                           tuple(c.shrinkwrap_sigma_px), c.shrinkwrap_stop,
                           c.shrinkwrap_reference, c.shrinkwrap_start, c.shrinkwrap_border_px)]

    def results(self) -> dict[str, Any]:
        out = super().results()
        if self.geometry is not None:
            obj = torch.where(self.support, self.object, 0.0).detach().cpu()
            out.update(lab_frame_maps(obj, self.support.cpu(), self.geometry,
                                      erosion_px=self.config.strain_erosion_px))
            out["lattice_spacing_m"] = 2 * math.pi / float(np.linalg.norm(out["q_bragg"]))
        return out
