"""Procedural test objects (no downloads): complex transmission functions with known truth."""

from __future__ import annotations

import math

import numpy as np


def smooth_noise(
    shape: tuple[int, ...], correlation_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation."""
    noise = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    k2 = sum(f**2 for f in freqs)
    filtered = np.fft.ifftn(np.fft.fftn(noise) * np.exp(-2 * (math.pi * correlation_px) ** 2 * k2))
    filtered = filtered.real
    return (filtered - filtered.mean()) / (filtered.std() + 1e-12)


def pink_noise(shape: tuple[int, ...], rng: np.random.Generator, exponent: float = 1.0
               ) -> np.ndarray:
    """Noise with a 1/f^exponent amplitude spectrum (natural-image-like texture), unit std."""
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    k = np.sqrt(sum(f**2 for f in freqs))
    k.flat[0] = np.inf
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / k**exponent
    texture = np.fft.ifftn(spectrum).real
    return (texture - texture.mean()) / (texture.std() + 1e-12)


def siemens_star(
    shape: tuple[int, int], spokes: int = 24, radius: float | None = None
) -> np.ndarray:
    """Binary Siemens star (resolution target), values 0/1, shape (H, W)."""
    h, w = shape
    y, x = np.meshgrid(np.arange(h) - h / 2, np.arange(w) - w / 2, indexing="ij")
    radius = radius or min(h, w) * 0.45
    star = np.cos(spokes * np.arctan2(y, x)) > 0
    return (star & (np.hypot(y, x) < radius)).astype(np.float64)


def complex_phantom(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    amplitude_range: tuple[float, float] = (0.6, 1.0),
    phase_range: float = 1.0,
    features: int = 40,
) -> np.ndarray:
    """A complex test object with sharp and smooth structure, shape (H, W), complex128.

    Amplitude: random discs and a Siemens star between ``amplitude_range``; phase: a smooth
    random field plus different random discs, within +-``phase_range`` radians; both carry a
    faint 1/f texture. Amplitude and
    phase are deliberately uncorrelated so cross-talk between them is visible.
    """
    h, w = shape
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    amp = np.zeros(shape)
    phase = 0.4 * smooth_noise(shape, min(h, w) / 12, rng)
    for k in range(features):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(2, min(h, w) / 12)
        disc = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        if k % 2:
            amp[disc] += rng.uniform(0.3, 1.0)
        else:
            phase[disc] += rng.uniform(-1, 1)
    star_size = min(h, w) // 3
    sy, sx = h // 2 - star_size // 2, w // 2 - star_size // 2
    amp[sy : sy + star_size, sx : sx + star_size] += siemens_star((star_size, star_size))
    amp = np.clip(amp, 0, 1)
    low, high = amplitude_range
    # a faint natural texture: real samples are rarely flat anywhere
    amp = np.clip(amp + 0.04 * pink_noise(shape, rng), 0, 1)
    phase = phase + 0.1 * pink_noise(shape, rng)
    amplitude = high - (high - low) * amp
    phase = phase_range * np.tanh(phase / 1.5)
    return amplitude * np.exp(1j * phase)


def blob_support(shape: tuple[int, ...], rng: np.random.Generator, roughness: float = 0.15
                 ) -> np.ndarray:
    """A compact, irregular, non-centrosymmetric blob filling most of ``shape`` (2D or 3D), bool.

    A ball of radius 0.42 min(shape) whose radius is modulated by smooth noise (relative
    amplitude ``roughness``), so the support has no symmetry that would help the twin image.
    """
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    wobble = 1 + roughness * smooth_noise(shape, min(shape) / 5, rng)
    return radius < 0.42 * min(shape) * wobble


def complex_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random complex 3D object (amplitude 0.5-1, phase within +-1 rad), complex128."""
    amplitude = 0.75 + 0.25 * np.tanh(smooth_noise(shape, min(shape) / 10, rng))
    phase = np.tanh(smooth_noise(shape, min(shape) / 8, rng))
    return amplitude * np.exp(1j * phase)
