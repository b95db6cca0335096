"""The condition encoder: a timm backbone and a SegFormer-style all-MLP fuse head (paper Sec. 3.3).

It runs once per image; its output conditions every denoising step of every ensemble member.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.config import ConditionEncoderConfig
from diffiml_cli.models.camera_trace import TraceBranch
from diffiml_cli.models.copy_move_cue import CopyMoveCue


class ConditionEncoder(nn.Module):
    """image (B, 3, H, W) float in [0, 1], H and W multiples of 32 -> condition (B, C, H/s, W/s), s =
    `output_stride`: the mask VAE's downsampling factor (8), so the condition is at latent resolution.

    Each backbone stage is projected to `embed_channels` by a 1x1 conv, resized to 1/8 of the input
    (the latent resolution), concatenated, and fused by 3x3 conv + BN + ReLU to `out_channels`.
    The reference fixes the output at 64x64; ours follows the input size. With `copy_move_cue`, the
    image's SIFT self-matches (`CopyMoveCue`) add a term to the fused condition; with `trace_branch`, so do the
    image's Noiseprint maps (`TraceBranch`).
    """

    def __init__(self, config: ConditionEncoderConfig, *, output_stride: int = 8) -> None:
        super().__init__()
        self.config = config
        self.output_stride = output_stride
        probe = timm.create_model(config.backbone, features_only=True, pretrained=False, **dict(config.backbone_kwargs))
        out_indices = config.out_indices
        if out_indices is None:  # every stage at stride >= 4; stride-2 maps cost much and add little
            out_indices = tuple(i for i, r in enumerate(probe.feature_info.reduction()) if r >= 4)
        del probe
        self.backbone = timm.create_model(
            config.backbone,
            features_only=True,
            out_indices=out_indices,
            pretrained=False,  # ImageNet weights are loaded by `backbone_weights.py`, from local files or the Hub
            **dict(config.backbone_kwargs),
        )
        if config.layer_norm_eps is not None:
            for module in self.backbone.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = config.layer_norm_eps
        stage_channels = self.backbone.feature_info.channels()
        self.stage_projections = nn.ModuleList(nn.Conv2d(c, config.embed_channels, 1) for c in stage_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(config.embed_channels * len(stage_channels), config.out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(config.out_channels),
            nn.ReLU(inplace=True),
        )
        self.copy_move_cue = CopyMoveCue(config.out_channels) if config.copy_move_cue else None
        self.trace_branch = TraceBranch(config.out_channels) if config.trace_branch else None
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, trace: torch.Tensor | None = None) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1]; trace (B, 1, H, W), the Noiseprint maps, needed with `trace_branch`."""
        B, _, H, W = image.shape
        latent_size = (H // self.output_stride, W // self.output_stride)
        x = (image - self.pixel_mean) / self.pixel_std
        stages = self.backbone(x)
        fused = [
            F.interpolate(project(stage), size=latent_size, mode="bilinear", align_corners=False)
            for project, stage in zip(self.stage_projections, stages)
        ]
        condition = self.fuse(torch.cat(fused, dim=1))
        if self.copy_move_cue is not None:
            condition = condition + self.copy_move_cue(image, latent_size)
        if self.trace_branch is not None:
            if trace is None:
                raise ValueError("this encoder has a trace branch: pass the Noiseprint maps (Localizer.condition does)")
            condition = condition + self.trace_branch(trace, latent_size).to(condition.dtype)
        return condition
