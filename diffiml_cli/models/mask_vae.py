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


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
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
        reversed_widths = widths[::-1]  # 128, 64, 32, 1
        self.decoder = nn.Sequential(
            nn.Conv2d(config.latent_channels, reversed_widths[0], 1),
            nn.ReLU(inplace=True),
            *(_up(reversed_widths[i], reversed_widths[i + 1]) for i in range(len(reversed_widths) - 2)),
            nn.ConvTranspose2d(reversed_widths[-2], 1, 3, stride=2, padding=1, output_padding=1),
        )
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


def latent_to_probability(reconstruction: torch.Tensor) -> torch.Tensor:
    """Map a decoded mask in about [-1, 1] to a manipulation probability in [0, 1].

    The reference applies a sigmoid, which squeezes the {-1, 1} targets to [0.27, 0.73]. We use the
    affine map (x + 1) / 2, clamped: the decision at threshold 0.5 is identical (both are x > 0),
    and the probability map uses the full range, which the prob/uncertainty PNGs and AUCs need.
    """
    return ((reconstruction.float() + 1.0) * 0.5).clamp_(0.0, 1.0)
