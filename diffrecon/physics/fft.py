"""Centred, orthonormal FFTs and frequency grids.

``fft2c``/``ifft2c`` treat the array centre (index N//2) as the origin in both spaces and use
``norm="ortho"`` so that Parseval's theorem holds exactly: sum |x|^2 == sum |fft2c(x)|^2.
Hot loops use the uncentred ``torch.fft`` directly on data stored in the *native* layout (see
``diffrecon.physics.propagators.FarField.to_native``), which skips the shifts.
"""

from __future__ import annotations

import itertools

import torch

Tensor = torch.Tensor


def fftnc(x: Tensor, ndim: int = 2) -> Tensor:
    """Centred orthonormal FFT over the last ``ndim`` dimensions."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(
        torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims
    )


def ifftnc(x: Tensor, ndim: int = 2) -> Tensor:
    """Centred orthonormal inverse FFT over the last ``ndim`` dimensions."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(
        torch.fft.ifftn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims
    )


def ifftshift_into(x: Tensor, out: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``out[...] = torch.fft.ifftshift(x, dims)`` without a temporary: one block copy per
    corner (2**len(dims) of them). ``x`` and ``out`` have the same shape and must not overlap.

    ifftshift moves index n//2 to 0 along each dim: out[i] = x[(i + n//2) % n].
    """
    if x.shape != out.shape:
        raise ValueError(f"ifftshift_into: shapes differ, {tuple(x.shape)} and {tuple(out.shape)}")
    halves = []
    for dim in dims:
        n = x.shape[dim]
        a = n // 2  # out[: n - a] = x[a:], out[n - a :] = x[:a]
        halves.append(((slice(0, n - a), slice(a, n)), (slice(n - a, n), slice(0, a))))
    lead = [slice(None)] * x.dim()
    for pieces in itertools.product(*halves):
        target, source = list(lead), list(lead)
        for dim, (to, frm) in zip(dims, pieces, strict=True):
            target[dim], source[dim] = to, frm
        out[tuple(target)].copy_(x[tuple(source)])
    return out


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2D FFT over the last two dimensions, shape (..., H, W)."""
    return fftnc(x, 2)


def ifft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2D inverse FFT over the last two dimensions, shape (..., H, W)."""
    return ifftnc(x, 2)


def frequencies(
    n: int,
    spacing: float = 1.0,
    *,
    centred: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Spatial frequencies of an ``n``-sample grid with ``spacing`` (cycles per unit of spacing).

    Returns shape (n,); DC at index n//2 when ``centred``, else at index 0 (``torch.fft`` order).
    """
    f = torch.fft.fftfreq(n, d=spacing, dtype=dtype, device=device)
    return torch.fft.fftshift(f) if centred else f


def frequency_grid(
    shape: tuple[int, int],
    spacing: tuple[float, float] = (1.0, 1.0),
    *,
    centred: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """2D frequency grid (ky, kx), each shape (H, W), in cycles per unit of ``spacing`` (y, x)."""
    ky = frequencies(shape[0], spacing[0], centred=centred, dtype=dtype, device=device)
    kx = frequencies(shape[1], spacing[1], centred=centred, dtype=dtype, device=device)
    return torch.meshgrid(ky, kx, indexing="ij")


def coordinate_grid(
    shape: tuple[int, int],
    spacing: tuple[float, float] = (1.0, 1.0),
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Real-space grid (y, x), each (H, W), zero at index (H//2, W//2), in units of spacing."""
    y = (torch.arange(shape[0], dtype=dtype, device=device) - shape[0] // 2) * spacing[0]
    x = (torch.arange(shape[1], dtype=dtype, device=device) - shape[1] // 2) * spacing[1]
    return torch.meshgrid(y, x, indexing="ij")
