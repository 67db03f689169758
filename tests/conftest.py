"""Shared fixtures: tiny simulated problems that run in seconds on two cores."""

from __future__ import annotations

import pytest
import torch

from diffrecon.data.simulate import ProbeSpec, PtychoSimulation, simulate_ptycho


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def small_ptycho_settings(**changes: object) -> PtychoSimulation:
    """A 32x32-frame far-field scan of ~80 positions (about 120x120 object pixels)."""
    settings = PtychoSimulation(
        frame_px=32, scan_points=80, photons_per_pattern=1e6, distance_m=1.0,
        probe=ProbeSpec(kind="zone_plate", numerical_aperture=8e-4, defocus_m=6e-4),
    )
    for key, value in changes.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture(scope="session")
def small_ptycho():
    return simulate_ptycho(small_ptycho_settings())
