"""The baselines SEV-Net is compared with, each (B, 4, Z, Y, X) -> (B, 3, Z, Y, X) region logits.

* ``UNet3D`` - Cicek et al. 2016 at depth 4: two 3x3x3 conv + ReLU per level,
  2x2x2 max-pool down, 2x2x2 transposed conv up, skip connections by concatenation.
* ``SliceUNet2D`` - a 2D U-Net applied to every axial slice, stacked back to 3D.
* ``EENet`` - an efficient-embedding network: an EfficientNet-style encoder of
  MBConv blocks (expand 1x1, depthwise 3x3x3, Squeeze-and-Excitation, project
  1x1, residual) with Group Norm, and a small decoder.

SegResNet (Myronenko 2018) comes from MONAI as it is (see ``model/__init__.py``).
"""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(dims: int, cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return nn.Sequential(conv(cin, cout, 3, padding=1), nn.ReLU(inplace=True), conv(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Classic U-Net in 2D or 3D with ``len(features)`` levels."""

    def __init__(self, dims: int = 3, in_channels: int = 4, out_channels: int = 3, features=(16, 32, 64, 128)):
        super().__init__()
        pool = nn.MaxPool3d if dims == 3 else nn.MaxPool2d
        up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.down = nn.ModuleList()
        cin = in_channels
        for f in features:
            self.down.append(_double_conv(dims, cin, f))
            cin = f
        self.pool = pool(2)
        self.bottom = _double_conv(dims, features[-1], 2 * features[-1])
        self.up = nn.ModuleList()
        self.decode = nn.ModuleList()
        cin = 2 * features[-1]
        for f in reversed(features):
            self.up.append(up(cin, f, 2, stride=2))
            self.decode.append(_double_conv(dims, 2 * f, f))
            cin = f
        self.head = conv(features[0], out_channels, 1)
        self.divisor = 2 ** len(features)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, block in zip(self.up, self.decode):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


class UNet3D(UNet):
    def __init__(self, in_channels: int = 4, out_channels: int = 3, features=(16, 32, 64, 128)):
        super().__init__(3, in_channels, out_channels, tuple(features))


class SliceUNet2D(nn.Module):
    """A 2D U-Net over axial slices: (B, C, Z, Y, X) -> per-slice 2D -> (B, 3, Z, Y, X)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, features=(16, 32, 64, 128)):
        super().__init__()
        self.net = UNet(2, in_channels, out_channels, tuple(features))
        self.divisor = self.net.divisor

    def forward(self, x):
        b, c, z, y, w = x.shape
        slices = x.permute(0, 2, 1, 3, 4).reshape(b * z, c, y, w)
        out = self.net(slices)
        return out.reshape(b, z, -1, y, w).permute(0, 2, 1, 3, 4)


class MBConv3d(nn.Module):
    """Mobile inverted bottleneck with SE (EfficientNet's block), Group Norm, SiLU."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, groups: int = 8):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            nn.Conv3d(cin, hidden, 1, bias=False),
            nn.GroupNorm(min(groups, hidden), hidden),
            nn.SiLU(),
            nn.Conv3d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.GroupNorm(min(groups, hidden), hidden),
            nn.SiLU(),
        )
        squeeze = max(cin // 4, 2)
        self.se = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(hidden, squeeze, 1), nn.SiLU(), nn.Conv3d(squeeze, hidden, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv3d(hidden, cout, 1, bias=False), nn.GroupNorm(min(groups, cout), cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        y = self.project(y * self.se(y))
        return x + y if self.residual else y


class EENet(nn.Module):
    """Large MBConv encoder (stages of ``depths`` blocks, each halving), light upsampling decoder."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, widths=(16, 24, 40, 80, 112), depths=(1, 2, 2, 3, 3), decoder_width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(in_channels, widths[0], 3, padding=1, bias=False), nn.GroupNorm(8, widths[0]), nn.SiLU())
        self.stages = nn.ModuleList()
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = [MBConv3d(cin if j == 0 else w, w, stride=2 if (j == 0 and i > 0) else 1) for j in range(d)]
            self.stages.append(nn.Sequential(*blocks))
            cin = w
        self.lateral = nn.ModuleList(nn.Conv3d(w, decoder_width, 1) for w in widths)
        self.fuse = nn.Sequential(nn.Conv3d(decoder_width, decoder_width, 3, padding=1), nn.GroupNorm(8, decoder_width), nn.SiLU())
        self.head = nn.Conv3d(decoder_width, out_channels, 1)
        self.divisor = 2 ** (len(widths) - 1)

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = nn.functional.interpolate(y, size=f.shape[2:], mode="trilinear", align_corners=False) + lateral(f)
        return self.head(self.fuse(y))
