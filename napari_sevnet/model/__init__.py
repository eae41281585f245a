"""Network builders shared by the trainer and the Predictor: one name + config -> one module.

A checkpoint stores ``architecture = {"name": ..., "config": {...}}``; this is
the only place that turns it back into a module, so training and inference
can never build different networks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from napari_sevnet.model.sevnet import CONFIGS, SEVNet, SEVNetConfig
from napari_sevnet.model.zoo import EENet, SliceUNet2D, UNet3D


def _sevnet(config: dict) -> nn.Module:
    config = dict(config)
    preset = config.pop("preset", None)
    base = dict(CONFIGS[preset]) if preset else {}
    base.update(config)
    return SEVNet(SEVNetConfig(**base))


def _vnet(config: dict) -> nn.Module:
    return _sevnet({**config, "se": False})


def _segresnet(config: dict) -> nn.Module:
    from monai.networks.nets import SegResNet

    defaults = dict(spatial_dims=3, in_channels=4, out_channels=3, init_filters=16, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.0)
    defaults.update(config)
    return SegResNet(**defaults)


def _zoo(cls):
    return lambda config: cls(**config)


BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "sevnet": _sevnet,
    "vnet": _vnet,
    "segresnet": _segresnet,
    "unet3d": _zoo(UNet3D),
    "unet2d": _zoo(SliceUNet2D),
    "eenet": _zoo(EENet),
}

#: input size multiple of architectures that do not say it themselves
DIVISORS = {"segresnet": 8}


def build_model(name: str, config: dict | None = None) -> nn.Module:
    """Build the network ``name`` ('sevnet', 'vnet', 'segresnet', ...) from its config dict."""
    if name not in BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[name](dict(config or {}))


def size_divisor(model: nn.Module, name: str) -> int:
    """Spatial sizes the model accepts are multiples of this."""
    cfg = getattr(model, "config", None)
    if isinstance(cfg, SEVNetConfig):
        return cfg.divisor
    return getattr(model, "divisor", DIVISORS.get(name, 16))


__all__ = ["BUILDERS", "CONFIGS", "SEVNet", "SEVNetConfig", "build_model", "size_divisor"]
