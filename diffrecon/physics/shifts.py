"""Sub-pixel shifts and the patch extract/insert pair that places a probe on an object.

Positions are *pixel* coordinates (y, x) of a probe window's top-left corner on the object
array. ``extract_patches`` and ``insert_patches`` are exact adjoints of each other, so autograd
and the classical algorithms agree on what "putting a patch back" means.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def translate(field: Tensor, shift_px: Tensor) -> Tensor:
    """Translate ``field`` (..., H, W) by ``shift_px`` (..., 2) pixels (y, x), circularly.

    Uses the Fourier shift theorem, so the result is exact for band-limited fields and
    differentiable with respect to the shift. Positive shifts move content to larger indices;
    an integer shift equals ``torch.roll``.
    """
    h, w = field.shape[-2:]
    ky = torch.fft.fftfreq(h, device=field.device, dtype=shift_px.dtype)
    kx = torch.fft.fftfreq(w, device=field.device, dtype=shift_px.dtype)
    sy = shift_px[..., 0, None, None]
    sx = shift_px[..., 1, None, None]
    ramp = torch.polar(
        torch.ones((), dtype=shift_px.dtype, device=field.device),
        -2 * math.pi * (sy * ky[:, None] + sx * kx[None, :]),
    )
    return torch.fft.ifft2(torch.fft.fft2(field) * ramp.to(field.dtype))


def patch_indices(corners: Tensor, patch_shape: tuple[int, int], width: int) -> Tensor:
    """Flat object indices of the patches with integer ``corners`` (B, 2): shape (B, h*w)."""
    h, w = patch_shape
    dy = torch.arange(h, device=corners.device)
    dx = torch.arange(w, device=corners.device)
    offsets = (dy[:, None] * width + dx[None, :]).reshape(-1)
    start = corners[:, 0] * width + corners[:, 1]
    return start[:, None] + offsets[None, :]


def gather_windows(obj: Tensor, corners: Tensor, patch_shape: tuple[int, int]) -> Tensor:
    # A strided view of every window, indexed once: far faster than a flat-index gather.
    h, w = patch_shape
    windows = obj.unfold(-2, h, 1).unfold(-2, w, 1)  # (..., H-h+1, W-w+1, h, w)
    lead = obj.dim() - 2
    return windows[(slice(None),) * lead + (corners[:, 0], corners[:, 1])].movedim(lead, 0)


class _ExtractPatches(torch.autograd.Function):
    """Gather with an ``index_add_`` backward (much faster on CPU than autograd's index_put)."""

    @staticmethod
    def forward(ctx, obj: Tensor, corners: Tensor, patch_shape: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(corners)
        ctx.object_shape = tuple(obj.shape)
        return gather_windows(obj, corners, patch_shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (corners,) = ctx.saved_tensors
        return insert_patches(grad, corners, ctx.object_shape), None, None


def extract_patches(obj: Tensor, corners: Tensor, patch_shape: tuple[int, int]) -> Tensor:
    """Cut patches out of ``obj`` (..., H, W) at integer ``corners`` (B, 2) -> (B, ..., h, w).

    Corners must keep the patches inside the object (the models pad their objects so). The
    gradient with respect to ``obj`` is ``insert_patches`` (the exact adjoint).
    """
    if obj.requires_grad:
        return _ExtractPatches.apply(obj, corners, tuple(patch_shape))
    return gather_windows(obj, corners, patch_shape)


def insert_patches(
    patches: Tensor, corners: Tensor, object_shape: tuple[int, ...],
    out: Tensor | None = None,
) -> Tensor:
    """Adjoint of ``extract_patches``: sum ``patches`` (B, ..., h, w) into a zero object.

    Returns shape ``object_shape`` (..., H, W); overlapping patches add up. ``out``: a zero,
    contiguous tensor of that shape (and the patches' dtype and device) to sum into and
    return, e.g. a recycled gradient (``SpareTensors.zeros``); a new one when None.
    """
    h, w = patches.shape[-2:]
    lead = tuple(object_shape[:-2])
    if out is None:
        out = torch.zeros(object_shape, dtype=patches.dtype, device=patches.device)
    if patches.device.type == "cpu" and not torch.compiler.is_compiling():
        # Accumulate through the strided view of every window (the one ``gather_windows``
        # reads): no (B, h*w) flat-index arithmetic. CPU only: on CUDA, index_put_ would first
        # make the overlapping view contiguous. 400 x 64^2 far field, 1 thread: 208 -> 122 us
        # per batch of 50. Not under torch.compile, whose functionalization refuses writes
        # into overlapping views (experiments/bench_compile.py).
        windows = out.unfold(-2, h, 1).unfold(-2, w, 1).movedim((-4, -3), (0, 1))
        windows.index_put_((corners[:, 0], corners[:, 1]), patches, accumulate=True)
        return out
    index = patch_indices(corners, (h, w), object_shape[-1]).reshape(-1)
    values = patches.reshape(patches.shape[0], *lead, h * w).movedim(0, -2).reshape(*lead, -1)
    out.view(*lead, -1).index_add_(-1, index, values)
    return out


def illumination_map(
    probe_intensity: Tensor, corners: Tensor, object_shape: tuple[int, int], chunk: int = 32
) -> Tensor:
    """Summed probe intensity over all scan positions on the object grid (the overlap map).

    Args:
        probe_intensity: (h, w) real, sum over modes of |P|^2.
        corners: (N, 2) integer probe-window corners in object pixels.
        object_shape: (H, W).
        chunk: positions accumulated at a time: the insertion's index and value arrays are
            (chunk, h, w), so memory stays bounded whatever the number of positions.
    """
    total = probe_intensity.new_zeros(object_shape)
    for part in corners.split(chunk):
        total += insert_patches(probe_intensity.expand(part.shape[0], *probe_intensity.shape),
                                part, object_shape)
    return total


def separable_ramps(shifts_px: Tensor, shape: tuple[int, int], dtype: torch.dtype
                    ) -> tuple[Tensor, Tensor]:
    """The two factors of the Fourier-shift ramps exp(-2 pi i k.s) for shifts ``shifts_px``
    (B, 2) pixels (y, x), uncentred frequency order: (B, 1, h, 1) and (B, 1, 1, w)."""
    real = shifts_px.dtype
    one = torch.ones((), dtype=real, device=shifts_px.device)
    ky = torch.fft.fftfreq(shape[0], device=shifts_px.device, dtype=real)
    kx = torch.fft.fftfreq(shape[1], device=shifts_px.device, dtype=real)
    ramp_y = torch.polar(one, -2 * math.pi * shifts_px[:, 0, None] * ky).to(dtype)
    ramp_x = torch.polar(one, -2 * math.pi * shifts_px[:, 1, None] * kx).to(dtype)
    return ramp_y[:, None, :, None], ramp_x[:, None, None, :]


def phase_ramps(shifts_px: Tensor, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Fourier-shift ramps exp(-2 pi i k.s), shape (B, 1, h, w), uncentred frequency order,
    for shifts ``shifts_px`` (B, 2) pixels (y, x): the product of ``separable_ramps``."""
    ramp_y, ramp_x = separable_ramps(shifts_px, shape, dtype)
    return ramp_y * ramp_x


def shift_modes(probe: Tensor, ramps: Tensor | None) -> Tensor:
    """Probe modes (M, h, w) translated by each ramp: (B, M, h, w) (no ramps: a broadcast).

    One FFT of the M modes, then B*M inverse FFTs."""
    if ramps is None:
        return probe[None]
    return torch.fft.ifft2(torch.fft.fft2(probe)[None] * ramps)


def shifted_copies(field: Tensor, shifts_px: Tensor) -> Tensor:
    """Copies of ``field`` (M, h, w) translated by each of ``shifts_px`` (B, 2): (B, M, h, w).

    Differentiable with respect to both arguments.
    """
    return shift_modes(field, phase_ramps(shifts_px, tuple(field.shape[-2:]), field.dtype))
