"""LightVAE: the tiny mask autoencoder of DiffIML (paper Sec. 3.2, Eq. 6).

A fully convolutional autoencoder, no attention, that maps a 1-channel mask in [-1, 1] to a 4-channel
latent at 1/8 resolution and back. It is distilled from the Stable Diffusion VAE (`distill-vae`), so its
latents, multiplied by `scale_factor`, live where the diffusion schedule expects them.
"""

from __future__ import annotations

import torch
from torch import nn

from diffiml_cli.config import MaskVAEConfig


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _upsample(in_channels: int, out_channels: int, upsampling: str) -> nn.Module:
    """Double the resolution. "transposed" (the reference) lets output pixels receive 1, 2 or 4 kernel taps in a
    2-pixel period, which three stages stack into the 8-pixel checkerboard of decoded maps; "resize" upsamples
    bilinearly and then convolves, so every output pixel is computed alike."""
    if upsampling == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1))


def _up(in_channels: int, out_channels: int, upsampling: str) -> nn.Sequential:
    return nn.Sequential(
        _upsample(in_channels, out_channels, upsampling),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_decoder(config: MaskVAEConfig) -> nn.Sequential:
    """raw latent (B, C, h, w) -> (B, 1, 8h, 8w): a 1x1 projection, then one upsampling stage per encoder stage."""
    stages = config.decoder_channels or config.hidden_channels[::-1]  # e.g. 128, 64, 32
    upsampling = config.decoder_upsampling
    if config.decoder_layout == "official":  # the authors' layout, for converted checkpoints
        widths = (*stages, stages[-1])
        return nn.Sequential(
            nn.Conv2d(config.latent_channels, widths[0], 1), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            *(_up(widths[i], widths[i + 1], upsampling) for i in range(len(widths) - 1)),
            nn.Conv2d(widths[-1], 1, 3, padding=1),
        )
    widths = (*stages, 1)
    return nn.Sequential(
        nn.Conv2d(config.latent_channels, widths[0], 1),
        nn.ReLU(inplace=True),
        *(_up(widths[i], widths[i + 1], upsampling) for i in range(len(widths) - 2)),
        _upsample(widths[-2], 1, upsampling),
    )


class MaskVAE(nn.Module):
    """Deterministic mask autoencoder (the "VAE" keeps the paper's name; there is no sampling).

    encode: mask (B, 1, H, W) float in [-1, 1] -> raw latent (B, C, H/8, W/8)
    decode: raw latent (B, C, H/8, W/8) -> reconstruction (B, 1, H, W), trained towards [-1, 1]
    Latents fed to the diffusion model are `encode(y) * scale_factor`; undo that before `decode`.
    """

    def __init__(self, config: MaskVAEConfig) -> None:
        super().__init__()
        self.config = config
        widths = (1, *config.hidden_channels)
        self.encoder = nn.Sequential(
            *(_down(widths[i], widths[i + 1]) for i in range(len(widths) - 1)),
            nn.Conv2d(widths[-1], config.latent_channels, 1),
        )
        self.decoder = build_decoder(config)
        self._trainable = False
        self.train(False)  # modules start in train mode; a frozen VAE must not, or BN statistics drift

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.config.hidden_channels)

    def encode(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: (B, 1, H, W) in [-1, 1] -> raw latent (B, C, H/8, W/8), unscaled."""
        return self.encoder(mask)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """raw latent (B, C, h, w) -> (B, 1, 8h, 8w), about [-1, 1] (not clamped)."""
        return self.decoder(latent)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(mask))

    def train(self, mode: bool = True) -> "MaskVAE":
        """Inside a localizer the VAE stays frozen in eval(); only `distill-vae` trains it (`unfreeze`)."""
        return super().train(mode and self._trainable)

    def unfreeze(self) -> "MaskVAE":
        """Allow train mode (for distillation); BatchNorm statistics then update."""
        self._trainable = True
        return self.train()


def decoded_to_probability(reconstruction: torch.Tensor) -> torch.Tensor:
    """Map a decoded mask in about [-1, 1] to a manipulation probability in [0, 1].

    The reference applies a sigmoid, which squeezes the {-1, 1} targets to [0.27, 0.73]. We use the
    affine map (x + 1) / 2, clamped: the decision at threshold 0.5 is identical (both are x > 0),
    and the probability map uses the full range, which the prob/uncertainty PNGs and AUCs need.
    """
    return ((reconstruction.float() + 1.0) * 0.5).clamp_(0.0, 1.0)


def checkerboard_share(decoded: torch.Tensor, period: int = 8, floor: float = 0.01) -> float:
    """The share of a decoded map's high-pass energy that repeats with a `period`-pixel period.

    decoded: (H, W) or (1, 1, H, W) float, H and W multiples of `period`. The high-pass part is the map minus
    its Gaussian blur (sigma = period / 2, which passes under 1 % of a period-8 pattern). It is cut into
    period x period blocks; the blocks that carry any of it (energy at least `floor` times the 95th percentile
    block's, so flat 0 or 1 regions do not dilute the measure) are averaged phase by phase, and the share is
    that mean pattern's energy, repeated over those blocks, over their whole energy. In [0, 1]: near 1 when
    every active block carries the same pattern (the uneven overlaps of a transposed-convolution decoder print
    one wherever the map is soft); about 1 / blocks for noise; a few hundredths for sharp edges.
    """
    x = decoded.detach().float().reshape(1, 1, *decoded.shape[-2:])
    H, W = x.shape[-2:]
    if H % period or W % period:
        raise ValueError(f"the map's sides ({H}, {W}) must be multiples of {period}")
    sigma = period / 2
    radius = int(3 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    padded = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, taps.view(1, 1, 1, -1))
    blurred = torch.nn.functional.conv2d(blurred, taps.view(1, 1, -1, 1))
    high = (x - blurred)[0, 0].double()
    blocks = high.reshape(H // period, period, W // period, period).permute(0, 2, 1, 3).reshape(-1, period, period)
    energy = (blocks**2).sum(dim=(1, 2))
    if float(energy.max()) == 0.0:
        return 0.0
    active = blocks[energy >= floor * torch.quantile(energy, 0.95)]
    pattern = active.mean(dim=0)
    return float((pattern**2).sum() * len(active) / (active**2).sum())
