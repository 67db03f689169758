"""Random complex objects for training networks: a registry of seeded generators.

Every generator maps ``(shape, rng)`` to a real "structure" map in [0, 1] per channel; the
shared :func:`to_transmission` turns an (amplitude structure, phase structure) pair into a
complex transmission with amplitude in ``amplitude_range`` and phase within +-``phase_rad``,
the same ranges for every class, so a network trained on some classes sees held-out classes
in the same value range. Objects are reproducible from ``(kind, seed)`` alone.

Every class but ``images`` also draws 3D objects (D, H, W) (for 3D CDI; ``blobs`` are then
ellipsoids, ``phantom`` the simulator's test volume).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffrecon.config import doc
from diffrecon.data.hdf5 import open_hdf5
from diffrecon.data.phantoms import complex_phantom, complex_volume, pink_noise, smooth_noise
from diffrecon.errors import ConfigError, DataFormatError
from diffrecon.registry import Registry

Structure = Callable[[tuple[int, ...], np.random.Generator], np.ndarray]

#: generators of real structure maps (H, W) (or (D, H, W) where noted) in [0, 1]
structures: Registry[Structure] = Registry("object generator")


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


@structures.register("smooth")
def smooth_structure(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-correlated noise with a random correlation length (1.5 px to 1/6 of the size);
    2D or 3D."""
    length = rng.uniform(1.5, max(2.0, min(shape) / 6))
    return 0.5 + 0.5 * np.tanh(smooth_noise(shape, length, rng))


@structures.register("blobs")
def blob_structure(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random filled polygons and ellipses of random heights on a zero background (3D:
    ellipsoids)."""
    if len(shape) == 3:
        return _ellipsoids(shape, rng)
    h, w = shape
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.zeros(shape)
    for _ in range(int(rng.integers(4, 14))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = rng.uniform(1.5, min(h, w) / 4)
        angle = np.arctan2(y - cy, x - cx)
        if rng.random() < 0.5:  # polygon: radius of a regular n-gon along each direction
            sides = int(rng.integers(3, 8))
            turn = rng.uniform(0, 2 * math.pi)
            edge = math.pi / sides
            boundary = radius * math.cos(edge) / np.cos((angle - turn) % (2 * edge) - edge)
        else:  # ellipse
            ratio, turn = rng.uniform(0.4, 1.0), rng.uniform(0, math.pi)
            boundary = radius * ratio / np.sqrt(
                (ratio * np.cos(angle - turn)) ** 2 + np.sin(angle - turn) ** 2)
        inside = np.hypot(y - cy, x - cx) <= boundary
        out[inside] = rng.uniform(0.2, 1.0)
    return out


def _ellipsoids(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(int(rng.integers(4, 14))):
        centre = rng.uniform(0, 1, 3) * np.array(shape)
        radii = rng.uniform(1.5, min(shape) / 4, 3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
        out[inside <= 1] = rng.uniform(0.2, 1.0)
    return out


@structures.register("voronoi")
def voronoi_structure(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Voronoi grains, each with a constant random value (polycrystal-like); 2D or 3D (the
    number of grains grows with the area of a 2D section)."""
    area = math.prod(shape[-2:])
    count = int(rng.integers(5, max(6, area // 40)))
    seeds = rng.uniform(0, 1, (count, len(shape))) * np.array(shape)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    distance = sum((g[..., None] - seeds[:, k]) ** 2 for k, g in enumerate(grids))
    return rng.uniform(0, 1, count)[np.argmin(distance, axis=-1)]


@structures.register("texture")
def texture_structure(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A 1/f^a texture (natural-image statistics), a in [0.8, 2]; 2D or 3D."""
    return 0.5 + 0.5 * np.tanh(pink_noise(shape, rng, rng.uniform(0.8, 2.0)))


@dataclasses.dataclass
class ObjectSpec:
    """Which object classes to draw and their value ranges."""

    kinds: list[str] = doc(
        ["smooth", "blobs", "voronoi", "texture"],
        "object classes (registered generators; 'phantom' = the simulator's test object; "
        "'images' = the user images of images_path), drawn with equal probability")
    amplitude_range: list[float] = doc([0.6, 1.0], "transmission amplitude range")
    phase_rad: float = doc(1.0, "phase within +- this value, radians")
    images_path: str = doc("", "folder of PNG/TIFF/NPY images or an HDF5 file (kind 'images')")


def to_transmission(amplitude: np.ndarray, phase: np.ndarray, spec: ObjectSpec) -> np.ndarray:
    """Complex transmission (H, W) complex64 from structure maps in [0, 1]."""
    low, high = spec.amplitude_range
    value = (high - (high - low) * amplitude) * np.exp(1j * spec.phase_rad * (2 * phase - 1))
    return value.astype(np.complex64)


def load_images(path: str | Path) -> list[np.ndarray]:
    """Grey images in [0, 1] from a folder (PNG/TIFF/JPEG/NPY) or an HDF5 file (every 2D/3D
    dataset, 3D read as a stack). Raises DataFormatError naming the path if none is found."""
    import h5py

    source = Path(path)
    images: list[np.ndarray] = []
    if source.is_file():
        with open_hdf5(source) as handle:
            handle.visititems(lambda name, node: images.extend(
                [np.asarray(node)] if isinstance(node, h5py.Dataset) and node.ndim == 2 else
                list(np.asarray(node)) if isinstance(node, h5py.Dataset) and node.ndim == 3
                else []))
    elif source.is_dir():
        from PIL import Image

        for item in sorted(source.iterdir()):
            if item.suffix.lower() == ".npy":
                images.append(np.load(item))
            elif item.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
                images.append(np.asarray(Image.open(item).convert("F")))
    if not images:
        raise DataFormatError(str(path), "images", "a folder of images or an HDF5 file with "
                              "2D/3D datasets", "no images")
    return [_unit(np.asarray(image, dtype=np.float64)) for image in images]


def _crop(image: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    reps = (math.ceil(shape[0] / image.shape[0]), math.ceil(shape[1] / image.shape[1]))
    tiled = np.tile(image, reps) if reps != (1, 1) else image
    y = int(rng.integers(0, tiled.shape[0] - shape[0] + 1))
    x = int(rng.integers(0, tiled.shape[1] - shape[1] + 1))
    return tiled[y : y + shape[0], x : x + shape[1]]


class ObjectGenerator:
    """Reproducible random objects: ``generator(seed, shape)`` is a function of its arguments.

    Args:
        spec: classes and value ranges.
    """

    def __init__(self, spec: ObjectSpec) -> None:
        self.spec = spec
        self.images = load_images(spec.images_path) if "images" in spec.kinds else []
        for kind in spec.kinds:
            if kind not in ("phantom", "images") and kind not in structures:
                structures.get(kind)  # raises the ConfigError with a suggestion
        if not spec.kinds:
            raise ConfigError("config key 'objects.kinds': expected at least one class")

    def __call__(self, seed: int, shape: tuple[int, ...]) -> np.ndarray:
        """Object ``shape`` ((H, W) or (D, H, W)) complex64 number ``seed``."""
        rng = np.random.default_rng([seed, 7919])
        kind = self.spec.kinds[int(rng.integers(len(self.spec.kinds)))]
        if len(shape) == 3:
            return self._volume(kind, shape, rng)
        if kind == "phantom":
            obj = complex_phantom(shape, rng, amplitude_range=tuple(self.spec.amplitude_range),
                                  phase_range=self.spec.phase_rad)
            return obj.astype(np.complex64)
        if kind == "images":
            pick = lambda: _crop(self.images[int(rng.integers(len(self.images)))], shape, rng)  # noqa: E731
            return to_transmission(pick(), pick(), self.spec)
        make = structures.get(kind)
        return to_transmission(make(shape, rng), make(shape, rng), self.spec)

    def _volume(self, kind: str, shape: tuple[int, ...], rng: np.random.Generator
                ) -> np.ndarray:
        if kind == "phantom":
            volume = complex_volume((shape[0], shape[1], shape[2]), rng)
            return to_transmission(_unit(np.abs(volume)), _unit(np.angle(volume)), self.spec)
        if kind == "images":
            raise ConfigError("config key 'objects.kinds': 'images' draws 2D objects only")
        make = structures.get(kind)
        return to_transmission(make(shape, rng), make(shape, rng), self.spec)
