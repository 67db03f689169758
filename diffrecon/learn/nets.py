"""Inversion networks (registry ``nets``): normalised patterns in, complex objects out.

Every network maps a float32 input (B, 1, H, W) (or (B, 1, D, H, W) for ``unet3d``) from
:func:`diffrecon.learn.samples.network_input` to a complex64 object of the same spatial shape,
built from an amplitude head (``amplitude_max * sigmoid``) and a phase head
(``pi * tanh``). Spatial sizes must be divisible by 2**depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from diffrecon.registry import Registry

Tensor = torch.Tensor

nets: Registry[Callable[..., nn.Module]] = Registry("network")


def _block(conv: type[nn.Module], channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(conv(channels_in, channels_out, 3, padding=1), nn.LeakyReLU(0.1),
                         conv(channels_out, channels_out, 3, padding=1), nn.LeakyReLU(0.1))


def to_complex(amplitude_logit: Tensor, phase_logit: Tensor, amplitude_max: float) -> Tensor:
    """Complex object (complex64) from the two head outputs (same real shape); the heads may
    be reduced precision (autocast), the complex object is always float32-based."""
    amplitude = amplitude_max * torch.sigmoid(amplitude_logit.float())
    return torch.polar(amplitude, math.pi * torch.tanh(phase_logit.float()))


class PtychoNN(nn.Module):
    """PtychoNN-style network (Cherukara et al. 2020): one convolutional encoder, two decoders
    (amplitude, phase). Input (B, 1, H, W) -> complex (B, H, W).

    Args:
        width: channels of the first encoder stage (doubling per stage).
        depth: number of 2x down/up-sampling stages.
        amplitude_max: largest representable object amplitude.
    """

    def __init__(self, width: int = 16, depth: int = 3, amplitude_max: float = 1.5,
                 frame_px: int = 0) -> None:
        super().__init__()
        self.amplitude_max = amplitude_max
        encoder: list[nn.Module] = []
        channels = 1
        for stage in range(depth):
            encoder += [_block(nn.Conv2d, channels, width * 2**stage), nn.MaxPool2d(2)]
            channels = width * 2**stage
        self.encoder = nn.Sequential(*encoder)
        # Diffraction space and object space are related globally (a Fourier transform), which
        # local convolutions see only slowly; a dense layer across the bottleneck (when the
        # frame size is known) lets every object pixel depend on every detector pixel.
        side = frame_px // 2**depth
        features = channels * side * side
        self.dense = (nn.Sequential(nn.Flatten(), nn.Linear(features, features),
                                    nn.LeakyReLU(0.1), nn.Unflatten(1, (channels, side, side)))
                      if frame_px else nn.Identity())
        self.decoders = nn.ModuleList([self._decoder(channels, width, depth) for _ in range(2)])

    @staticmethod
    def _decoder(channels: int, width: int, depth: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for stage in reversed(range(depth)):
            layers += [_block(nn.Conv2d, channels, width * 2**stage),
                       nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            channels = width * 2**stage
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        code = self.dense(self.encoder(x))
        amplitude, phase = (decoder(code)[:, 0] for decoder in self.decoders)
        return to_complex(amplitude, phase, self.amplitude_max)


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with skip connections; 2D or 3D.

    Input (B, 1, *S) -> complex (B, *S), S = (H, W) for ``dims=2`` or (D, H, W) for 3.

    Args:
        width: channels of the first stage (doubling per stage).
        depth: number of 2x down-sampling stages.
        dims: 2 or 3.
        amplitude_max: largest representable object amplitude.
        channels_in: input channels.
    """

    def __init__(self, width: int = 16, depth: int = 3, dims: int = 2,
                 amplitude_max: float = 1.5, channels_in: int = 1) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)
        self.amplitude_max = amplitude_max
        widths = [width * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = channels_in
        for w in widths:
            self.down.append(_block(conv, channels, w))
            channels = w
        up_conv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.up = nn.ModuleList(up_conv(w2, w1, 2, stride=2)
                                for w1, w2 in zip(widths[:-1], widths[1:], strict=True))
        self.merge = nn.ModuleList(_block(conv, 2 * w, w) for w in widths[:-1])
        self.head = conv(width, 2, 1)

    def features(self, x: Tensor) -> Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return to_complex(out[:, 0], out[:, 1], self.amplitude_max)


@nets.register("ptychonn")
def ptychonn(width: int = 16, depth: int = 3, amplitude_max: float = 1.5,
             frame_px: int = 0) -> nn.Module:
    return PtychoNN(width, depth, amplitude_max, frame_px)


@nets.register("unet")
def unet(width: int = 16, depth: int = 3, amplitude_max: float = 1.5,
         frame_px: int = 0) -> nn.Module:
    return UNet(width, depth, 2, amplitude_max)


@nets.register("unet3d")
def unet3d(width: int = 8, depth: int = 2, amplitude_max: float = 1.5,
           frame_px: int = 0) -> nn.Module:
    return UNet(width, depth, 3, amplitude_max)


def build_net(name: str, width: int, depth: int, amplitude_max: float = 1.5,
              frame_px: int = 0) -> nn.Module:
    """The registered network ``name`` (ConfigError naming the known ones if unknown).

    ``frame_px`` (the pattern side) gives ``ptychonn`` its dense bottleneck; the U-Nets are
    fully convolutional and ignore it.
    """
    return nets.get(name)(width=width, depth=depth, amplitude_max=amplitude_max,
                          frame_px=frame_px)
