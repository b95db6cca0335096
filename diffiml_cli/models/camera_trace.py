"""Camera-trace channels for the detector: how self-consistent the image's Noiseprint map is, per latent cell.

Noiseprint++ (`models/noiseprint.py`) was trained on real camera photos to map an image to a noise-like
fingerprint of its camera model and processing. An authentic photo's fingerprint has the same statistics all
over; a region of another origin (a splice, an inpainted or resampled patch) carries other statistics. Per 8x8
latent cell, smoothed over `window` cells, three channels:

- `energy`: the log of the map's local variance;
- `outlier`: how far the cell's energy lies from the image's own, as a robust z-score (median and 1.4826 x
  MAD over the input's cells), clamped to +-8;
- `spread`: that MAD, broadcast: how much the energy varies over this image at all, so that an image whose
  fingerprint is uneven everywhere (strong texture, heavy JPEG) is not read as an edit cell by cell.

The front end runs once per image (not per ensemble member, not per TTA view), in fp32 whatever the sampling
precision: the fingerprint is a small-amplitude residual that bf16's 8-bit mantissa would coarsen. Statistics are
over the whole input (a tile's own cells, when tiled), as the block-grid channels are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.config import NoiseprintConfig
from diffiml_cli.models.noiseprint import build_noiseprint, freeze

TRACE_CHANNELS = 3  # energy, outlier, spread
_VARIANCE_FLOOR = 1e-6
_MAD_FLOOR = 0.05  # in log-energy units: a perfectly even map does not make every small wobble an outlier
_OUTLIER_CLAMP = 8.0


class CameraTrace(nn.Module):
    """The frozen front end: images (B, 3, H, W) float in [0, 1] -> Noiseprint maps (B, 1, H, W) float32
    (unbounded, about zero-mean), H and W multiples of `config.unshuffle`. `train` never changes it."""

    def __init__(self, config: NoiseprintConfig) -> None:
        super().__init__()
        self.config = config
        self.network = freeze(build_noiseprint(config))

    def train(self, mode: bool = True) -> CameraTrace:
        """Stays in eval mode: its BatchNorm statistics are the teacher's and are never updated."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return self.network(images.float().contiguous()).float()


def trace_cells(trace: torch.Tensor, *, cell: int = 8, window: int = 5) -> torch.Tensor:
    """trace: (B, 1, H, W) Noiseprint maps, H and W multiples of `cell` -> (B, 3, H/cell, W/cell) float32 channels
    (energy about [-14, 5], outlier in [-8, 8], spread >= 0); see the module doc."""
    trace = trace.float()
    mean = F.avg_pool2d(trace, cell)
    variance = (F.avg_pool2d(trace * trace, cell) - mean * mean).clamp_min(0.0)
    energy = torch.log(variance + _VARIANCE_FLOOR)
    energy = F.avg_pool2d(energy, window, stride=1, padding=window // 2, count_include_pad=False)
    flat = energy.flatten(1)
    median = flat.median(dim=1).values.view(-1, 1, 1, 1)
    mad = (flat - median.view(-1, 1)).abs().median(dim=1).values.view(-1, 1, 1, 1)
    outlier = ((energy - median) / (1.4826 * mad + _MAD_FLOOR)).clamp(-_OUTLIER_CLAMP, _OUTLIER_CLAMP)
    return torch.cat([energy, outlier, mad.expand_as(energy)], dim=1)


class TraceBranch(nn.Module):
    """The condition encoder's camera-trace input: Noiseprint maps (B, 1, H, W) -> a condition-sized term
    (B, C, h, w) at the latent grid, added to the fused condition. Three stride-2 3x3 convolutions (16, 32, 64
    channels) bring the full-resolution map to 1/8, then a 1x1 convolution that starts at zero, so that adding
    the branch to a trained encoder changes nothing until it has been trained (as the copy-move cue does).
    The map is normalised per image by its own standard deviation first: cameras differ in overall strength."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(64, out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, trace: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        trace = trace.float()
        trace = trace / (trace.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-6)
        features = self.body(trace.to(self.out.weight.dtype))
        if features.shape[-2:] != latent_size:
            features = F.interpolate(features, size=latent_size, mode="bilinear", align_corners=False)
        return self.out(features)


class TracedCondition:
    """For a localizer (a module with `encoder` and `trace`): the condition of its images, the front end's maps
    computed once and handed to an encoder with a trace branch."""

    def condition(self, image: torch.Tensor, trace: torch.Tensor | None = None) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1]; trace (B, 1, H, W), its Noiseprint maps (computed here when the encoder
        needs them and none are given) -> condition (B, C, H/8, W/8)."""
        if self.encoder.trace_branch is None:
            return self.encoder(image)
        if trace is None:
            with torch.no_grad():
                trace = self.trace(image)
        return self.encoder(image, trace)
