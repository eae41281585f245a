"""SEV-Net: V-Net (Milletari et al. 2016) with a Squeeze-and-Excitation block (Hu et al. 2018) in every stage.

V-Net: one residual stage per resolution; down-sampling by a 2x2x2 convolution
of stride 2 that doubles the channels; up-sampling by a 2x2x2 transposed
convolution of stride 2; the decoder stage concatenates the skip connection;
PReLU non-linearities; 5x5x5 convolutions; 16-32-64-128-256 channels with
1-2-3-3-3 convolutions per encoder stage and 3-3-2-1 per decoder stage.

SE: global average pool -> FC(C, C/r) -> ReLU -> FC(C/r, C) -> sigmoid ->
channel rescale, applied to the stage's convolution output before the
residual addition (as in SE-ResNet), in all five encoder and four decoder
stages. ``se=False`` gives plain V-Net for the ablation.

What the squeeze pools (``se_squeeze``). Every convolution here is followed by
InstanceNorm, which removes each channel's mean and scale per case; the mean
of its output is then fixed by the norm's affine parameters (and the PReLU),
whatever the scan, and the excitation becomes a learned constant: the
attention view showed the same bars for every case. ``"pre_norm"`` (the
config's default; stages 1 and 2 of the shipped model) pools the stage's
last convolution output *before* its
normalisation: exactly the per-case statistic the norm is about to remove,
so the excitation responds to the case, while the rescale still acts on the
normalised output as in Hu et al. ``"output"`` is the earlier, post-norm
squeeze, kept for checkpoints trained with it and for the comparison.

``"standardised"`` pools the same pre-norm output and then standardises the
pooled vector across its channels (zero mean, unit variance) before the
excitation MLP. Measured on the real-data model trained with ``"pre_norm"``:
the raw pre-norm means grow with depth (mean magnitude 0.06 at enc1, 11 at
enc5, 21 at dec4), so the deep stages' gates saturated (excitation logits of
+-40, identical in float32 for every case) while the shallow ones' ReLU
hidden units all went dead (a constant excitation): a spread across cases of
0.003. Standardised, the MLP sees a vector of the same scale at every stage
and in every case, the pattern across channels still the case's own.
:meth:`SEVNet.restart_excitations` starts these MLPs from a model trained
with another squeeze at that model's mean excitation. What it gave, as 400
steps on top of stage 2 (training/configs/sevnet_real_brats_se.yaml,
README "The SE blocks"): no gate saturates any more, but the spread across
held-out cases fell from 0.0029 to 0.0010: pooled over a whole brain crop,
the standardised statistics differ little between two brains (their
standard deviation across cases is 0.01-0.19 of their spread across
channels), and training kept the gates near their restart values.

``"mean_max"`` pools the normalised output (as ``"output"``) by its mean and
its maximum, both through the same MLP, their logits added: the channel
attention of CBAM (Woo et al. 2018). The norm fixes each channel's mean and
scale, not its peak, and a tumour shows in the peak: on training cases
(``python -m benchmarks.se_statistics``) the channel maxima differ between
cases 0.13-0.95 times as much as between channels, against 0.001-0.09 for
the standardised pre-norm means. The shipped default is 400 steps of it on
top of stage 2 (training/configs/sevnet_real_brats_se_max.yaml, stage 3):
spread across held-out cases 0.0103 against stage 2's 0.0029, held-out Dice
TC +0.021, WT -0.004, ET -0.005 (README, "The SE blocks").

The faithful configuration and the lighter ones are :class:`SEVNetConfig`
values of the same class (see :data:`CONFIGS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

SE_SQUEEZES = ("pre_norm", "standardised", "output", "mean_max")


@dataclass
class SEVNetConfig:
    in_channels: int = 4
    out_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    encoder_convs: tuple[int, ...] = (1, 2, 3, 3, 3)
    decoder_convs: tuple[int, ...] | None = None  # default: encoder_convs[:-1] reversed (3-3-2-1)
    kernel_size: int = 5
    se: bool = True
    se_reduction: int = 4
    se_squeeze: str = "pre_norm"  # what the SE squeeze pools: "pre_norm", "standardised", "output" or "mean_max" (see module doc)
    norm: str = "instance"  # "instance", "batch" or "none"
    dropout: float = 0.0

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.encoder_convs = tuple(int(c) for c in self.encoder_convs)
        if self.decoder_convs is None:
            self.decoder_convs = tuple(reversed(self.encoder_convs[:-1]))
        self.decoder_convs = tuple(int(c) for c in self.decoder_convs)
        if len(self.channels) != len(self.encoder_convs) or len(self.decoder_convs) != len(self.channels) - 1:
            raise ValueError("channels and encoder_convs need one entry per level, decoder_convs one fewer")
        if any(b != 2 * a for a, b in zip(self.channels, self.channels[1:])):
            raise ValueError(f"V-Net doubles the channels at each level, got {self.channels}")
        if self.kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        if self.norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be instance, batch or none, not {self.norm!r}")
        if self.se_squeeze not in SE_SQUEEZES:
            raise ValueError(f"se_squeeze must be one of {SE_SQUEEZES}, not {self.se_squeeze!r}")

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: named configurations: the paper's, and lighter ones of the same class
CONFIGS: dict[str, dict] = {
    "faithful": dict(channels=(16, 32, 64, 128, 256), encoder_convs=(1, 2, 3, 3, 3), kernel_size=5),
    "middle": dict(channels=(12, 24, 48, 96, 192), encoder_convs=(1, 1, 2, 2, 2), kernel_size=3),  # lite's depth at 1.5x the width
    "lite": dict(channels=(8, 16, 32, 64, 128), encoder_convs=(1, 1, 2, 2, 2), kernel_size=3),
    "tiny": dict(channels=(4, 8, 16, 32), encoder_convs=(1, 1, 1, 1), kernel_size=3),
}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class SqueezeExcitation3d(nn.Module):
    """Channel attention; ``forward`` returns the rescaled features and the excitation (B, C).

    ``standardise``: the pooled mean is standardised across channels before the MLP.
    ``with_max``: the channel maxima go through the same MLP and its logits add to the mean's (CBAM).
    """

    def __init__(self, channels: int, reduction: int, standardise: bool = False, with_max: bool = False):
        super().__init__()
        hidden = max(channels // reduction, 2)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.standardise = standardise
        self.with_max = with_max

    def forward(self, x: torch.Tensor, squeeze_from: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rescale ``x``; the squeeze pools ``squeeze_from`` (same channels) when given, else ``x``."""
        source = x if squeeze_from is None else squeeze_from
        squeeze = source.mean(dim=(2, 3, 4))
        if self.standardise:
            squeeze = nn.functional.layer_norm(squeeze, squeeze.shape[1:])
        logits = self._mlp(squeeze)
        if self.with_max:
            logits = logits + self._mlp(source.amax(dim=(2, 3, 4)))
        excitation = torch.sigmoid(logits)
        return x * excitation[:, :, None, None, None], excitation

    def _mlp(self, squeeze: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(squeeze)))

    @torch.no_grad()
    def restart(self, excitation: torch.Tensor, max_logit: float = 6.0) -> None:
        """Fresh MLP weights whose bias gives ``excitation`` (C,), clipped off saturation (sigmoid(6) = 0.9975).

        With the maxima (not standardised, a few units to tens) the output layer starts at a tenth of its
        default scale, so the restarted block begins within a fraction of a logit of ``excitation``.
        """
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        if self.with_max:
            self.fc2.weight.mul_(0.1)
        logit = torch.logit(excitation.clamp(1e-6, 1 - 1e-6)).clamp(-max_logit, max_logit)
        self.fc2.bias.copy_(logit / 2 if self.with_max else logit)  # with_max: the bias enters the logit twice


class ConvStack(nn.Module):
    """n x (conv k^3 -> norm -> PReLU), the body of a V-Net stage."""

    def __init__(self, in_channels: int, channels: int, n: int, cfg: SEVNetConfig):
        super().__init__()
        layers = []
        for i in range(n):
            layers += [
                nn.Conv3d(in_channels if i == 0 else channels, channels, cfg.kernel_size, padding=cfg.kernel_size // 2),
                _norm(cfg.norm, channels),
                nn.PReLU(channels),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """The stack's output and its last convolution's output before normalisation (for the SE squeeze)."""
        pre_norm = x
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.Conv3d):
                pre_norm = x
        return x, pre_norm


class Stage(nn.Module):
    """Residual V-Net stage with optional SE: out = PReLU(SE(convs(x)) + shortcut)."""

    def __init__(self, in_channels: int, channels: int, n: int, cfg: SEVNetConfig):
        super().__init__()
        self.convs = ConvStack(in_channels, channels, n, cfg)
        self.se = SqueezeExcitation3d(channels, cfg.se_reduction, standardise=cfg.se_squeeze == "standardised", with_max=cfg.se_squeeze == "mean_max") if cfg.se else None
        self.squeeze_pre_norm = cfg.se_squeeze in ("pre_norm", "standardised")
        self.act = nn.PReLU(channels)
        self.drop = nn.Dropout3d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, shortcut):
        y, pre_norm = self.convs(self.drop(x))
        excitation = None
        if self.se is not None:
            y, excitation = self.se(y, pre_norm if self.squeeze_pre_norm else None)
        return self.act(y + shortcut), excitation


class SEVNet(nn.Module):
    """SEV-Net / V-Net for (B, in_channels, Z, Y, X) -> (B, out_channels, Z, Y, X) region logits."""

    def __init__(self, config: SEVNetConfig | None = None, **overrides):
        super().__init__()
        cfg = config or SEVNetConfig(**overrides)
        self.config = cfg
        ch = cfg.channels
        self.input_stage = Stage(cfg.in_channels, ch[0], cfg.encoder_convs[0], cfg)
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for lvl in range(1, len(ch)):
            self.down.append(nn.Sequential(nn.Conv3d(ch[lvl - 1], ch[lvl], 2, stride=2), _norm(cfg.norm, ch[lvl]), nn.PReLU(ch[lvl])))
            self.encoder.append(Stage(ch[lvl], ch[lvl], cfg.encoder_convs[lvl], cfg))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i, lvl in enumerate(range(len(ch) - 1, 0, -1)):
            # decoder stages are twice as wide as the encoder's (up-sampled half + skip half)
            in_ch = ch[lvl] if lvl == len(ch) - 1 else 2 * ch[lvl]
            up_ch = ch[lvl - 1]
            out_ch = 2 * up_ch
            self.up.append(nn.Sequential(nn.ConvTranspose3d(in_ch, up_ch, 2, stride=2), _norm(cfg.norm, up_ch), nn.PReLU(up_ch)))
            self.decoder.append(Stage(out_ch, out_ch, cfg.decoder_convs[i], cfg))
        self.head = nn.Conv3d(2 * ch[0], cfg.out_channels, 1)

    @property
    def stage_names(self) -> list[str]:
        """Names of the stages in forward order: enc1..encN, dec(N-1)..dec1."""
        n = len(self.config.channels)
        return [f"enc{i + 1}" for i in range(n)] + [f"dec{i}" for i in range(n - 1, 0, -1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None, None)

    @property
    def stages(self) -> list[Stage]:
        """The stages in the order of :attr:`stage_names`."""
        return [self.input_stage, *self.encoder, *self.decoder]

    def restart_excitations(self, excitation: dict[str, torch.Tensor]) -> None:
        """Start every SE MLP afresh at the given per-stage excitation (C,).

        For a fine-tune that changes ``se_squeeze``: the old MLPs were fitted to
        another input, so they restart at the excitation the old model gave on
        average (``excitation``, e.g. over training patches) and the network
        begins close to the function it had.
        """
        for name, stage in zip(self.stage_names, self.stages):
            if stage.se is not None:
                stage.se.restart(excitation[name].float())

    def forward_with_attention(self, x: torch.Tensor, keep_features: bool = False):
        """Logits, {stage: excitation (B, C)} and, if asked, {stage: feature map (B, C, ...)}.

        Everything is returned, nothing stored on the module, so concurrent
        calls from worker threads cannot mix their attention.
        """
        attention: dict[str, torch.Tensor] = {}
        features: dict[str, torch.Tensor] | None = {} if keep_features else None
        logits = self._run(x, attention, features)
        return logits, attention, features

    def _run(self, x, attention, features):
        names = iter(self.stage_names)

        def record(name, out, excitation):
            if attention is not None and excitation is not None:
                attention[name] = excitation
            if features is not None:
                features[name] = out

        reps = self.config.channels[0] // self.config.in_channels + 1
        shortcut = x.repeat(1, reps, 1, 1, 1)[:, : self.config.channels[0]]
        out, exc = self.input_stage(x, shortcut)
        record(next(names), out, exc)
        skips = [out]
        for down, stage in zip(self.down, self.encoder):
            d = down(out)
            out, exc = stage(d, d)
            record(next(names), out, exc)
            skips.append(out)
        skips.pop()  # the bottom stage is not a skip
        for up, stage in zip(self.up, self.decoder):
            u = torch.cat([up(out), skips.pop()], dim=1)
            out, exc = stage(u, u)
            record(next(names), out, exc)
        return self.head(out)
