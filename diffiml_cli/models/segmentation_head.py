"""The discriminative baseline's head: the paper's Table 5 "segmentation head" on the same encoder.

SegFormer's decode head classifies the fused features with a 1x1 conv and upsamples the logits; ours
adds one 3x3 conv block in front (the fused map is at 1/8 here, not SegFormer's 1/4), then upsamples
bilinearly to the input size. Trained with BCE + Dice (`objectives.segmentation_loss`), no diffusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.models.camera_trace import CameraTrace, TracedCondition
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.models.detector import Detector


class SegmentationHead(nn.Module):
    """condition (B, C, h, w) -> mask logits (B, 1, h, w), still at the condition's resolution."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, 1, 1),
        )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.layers(condition)


class DiscriminativeLocalizer(TracedCondition, nn.Module):
    """encoder + segmentation head: image (B, 3, H, W) in [0, 1] -> mask logits (B, 1, H, W).

    `sigmoid(logits)` is the manipulation probability in [0, 1]; one forward pass, no sampling.
    """

    def __init__(self, *, encoder: ConditionEncoder, head: SegmentationHead, detector: Detector | None = None,
                 trace: CameraTrace | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.detector = detector
        self.trace = trace  # the frozen camera-trace front end, when the checkpoint has one

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.segment(self.condition(image), image.shape[-2:])

    def segment(self, condition: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """condition (B, C, h, w) -> mask logits (B, 1, *size), upsampled bilinearly."""
        return F.interpolate(self.head(condition), size=size, mode="bilinear", align_corners=False)
