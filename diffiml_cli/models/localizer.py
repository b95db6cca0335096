"""The DiffIML localizer: composes a condition encoder, a denoiser and a frozen mask VAE.

It never reads a config; `models/build.py` builds the parts and hands them in (the `Sam(*, ...)` pattern).
"""

from __future__ import annotations

import torch
from torch import nn

from diffiml_cli.models.camera_trace import CameraTrace, TracedCondition
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.models.denoiser import Denoiser
from diffiml_cli.models.detector import Detector
from diffiml_cli.models.mask_vae import MaskVAE


class Localizer(TracedCondition, nn.Module):
    """The three trained parts of DiffIML, plus the latent bookkeeping that ties them together.

    Latent layout: (B, 8, H/8, W/8) = 4 mask channels then 4 edge channels, each `vae.encode(y) * scale`.
    """

    def __init__(self, *, encoder: ConditionEncoder, denoiser: Denoiser, vae: MaskVAE,
                 detector: Detector | None = None, trace: CameraTrace | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser
        self.vae = vae
        self.detector = detector  # the image-level detector, when the checkpoint has one
        self.trace = trace  # the frozen camera-trace front end (`camera_trace.py`), when the checkpoint has one
        for parameter in self.vae.parameters():  # the VAE is frozen once distilled
            parameter.requires_grad_(False)

    @property
    def latent_scale(self) -> float:
        return self.vae.config.scale_factor

    @property
    def uses_edges(self) -> bool:
        """False for the "no edge supervision" ablation: the denoiser sees the 4 mask channels only."""
        return self.denoiser.config.latent_channels == 2 * self.vae.config.latent_channels

    def encode_targets(self, mask: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        """mask, edge: (B, 1, H, W) in {0, 1} -> z0, the scaled VAE latents: (B, 8, H/8, W/8), or
        (B, 4, H/8, W/8) (the mask's alone) when the denoiser is built without edge channels."""
        if not self.uses_edges:
            return self.vae.encode(mask * 2.0 - 1.0) * self.latent_scale
        both = torch.cat([mask, edge], dim=0) * 2.0 - 1.0  # the VAE works in {-1, 1}
        z = self.vae.encode(both) * self.latent_scale
        z_mask, z_edge = z.chunk(2, dim=0)
        return torch.cat([z_mask, z_edge], dim=1)

    def decode_mask(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, 8 or 4, h, w) scaled latents -> decoded mask (B, 1, 8h, 8w), about [-1, 1]."""
        mask_channels = self.vae.config.latent_channels
        return self.vae.decode(z[:, :mask_channels] / self.latent_scale)

    @property
    def mask_latent_channels(self) -> int:
        """The leading latent channels that hold the mask (the rest, when present, hold the edge)."""
        return self.vae.config.latent_channels
