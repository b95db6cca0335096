"""Image-level detection: one score in [0, 1] that says whether anything in the image was manipulated.

The localizer's mask answers "where"; a forensic user first asks "whether". The maximum of the probability
map is a poor answer (image AUC 0.60 on casia-samples): every authentic photo has some pixel the sampler is
unsure of. Like TruFor's detector, which reads its localization and confidence maps, this one reads what the
localizer produced, and also the condition it produced it from:

- per latent cell (1/8 of the input): the condition (B, C, h, w), and four cell statistics of the full-size
  maps (`cell_maps`: mean and max probability, share of pixels at probability >= 0.5, mean ensemble spread),
  and, in detectors trained with them (`grid_features`), three JPEG block-grid channels of the image itself
  (`block_grid.py`): where the photo's 8x8 compression grid holds, and where another grid or none replaces it;
  and, in detectors trained with them (`trace_features`), three camera-trace channels of the model's Noiseprint
  map (`camera_trace.py`): where the camera's fingerprint departs from the rest of the image;
- a small convolutional head turns them into an evidence logit per cell (trained to find the edit, with the
  mask's share of each cell as its target);
- the evidence is pooled over the whole image (mean of its top 1 % and top 10 % of cells, and its mean), beside
  three pooled probability statistics (max, mean, marked share) taken to logit space, and one linear layer
  gives the image logit.

That layer starts as the baseline score, the logit of the map's maximum (weight 1 on it, 0 elsewhere): raw
probabilities crowd near 0 and 1, where a linear layer with small weights cannot tell them apart, and a first
detector trained on them scored below the plain maximum. Training moves it only where that helps on its data.

Everything it pools is a per-cell map, so a tiled image (`tiling.py`) is scored from its stitched maps as a
whole, and padding is left out by cropping the maps to the image. It runs once per image, after sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.config import DetectorConfig
from diffiml_cli.models.block_grid import GRID_CHANNELS, grid_cells
from diffiml_cli.models.camera_trace import TRACE_CHANNELS, trace_cells

CELL_CHANNELS = 4  # mean probability, max probability, marked share, mean uncertainty
MARK_THRESHOLD = 0.5  # the marked share the detector reads is at the default pixel threshold, whatever the user's
LOGIT_FLOOR = 1e-4  # probabilities and shares are clamped to [1e-4, 1 - 1e-4] before the logit: about +-9.2


def cell_maps(probability: torch.Tensor, uncertainty: torch.Tensor, images: torch.Tensor | None = None,
              cell: int = 8, trace: torch.Tensor | None = None) -> torch.Tensor:
    """probability, uncertainty: (B, 1, H, W) float, H and W multiples of `cell` -> (B, 4, H/cell, W/cell):
    mean probability, max probability, share of pixels >= 0.5, and mean uncertainty of each cell; with
    `images` (B, 3, H, W) in [0, 1] (a detector with `grid_features`), its 3 block-grid channels follow
    (per 8x8 JPEG block, so they need `cell` = 8, the latent cell); with `trace` (B, 1, H, W), the Noiseprint
    maps (a detector with `trace_features`), its 3 camera-trace channels follow: (B, 4 + 3 + 3, h, w) at most."""
    probability, uncertainty = probability.float(), uncertainty.float()
    maps = [
        F.avg_pool2d(probability, cell),
        F.max_pool2d(probability, cell),
        F.avg_pool2d((probability >= MARK_THRESHOLD).float(), cell),
        F.avg_pool2d(uncertainty, cell),
    ]
    if images is not None:
        maps.append(grid_cells(images).to(maps[0].device))
    if trace is not None:
        maps.append(trace_cells(trace, cell=cell).to(maps[0].device))
    return torch.cat(maps, dim=1)


def cell_channels(config: DetectorConfig) -> int:
    """How many cell channels a detector of `config` reads: 4, plus 3 with the block-grid channels, plus 3 with the
    camera-trace channels."""
    return (CELL_CHANNELS + (GRID_CHANNELS if config.grid_features else 0)
            + (TRACE_CHANNELS if config.trace_features else 0))


def _top_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """values: (B, n) -> (B,) mean of the ceil(fraction * n) largest values of each row."""
    k = max(1, math.ceil(fraction * values.shape[1]))
    return values.topk(k, dim=1).values.mean(dim=1)


class Detector(nn.Module):
    """(condition (B, C, h, w), cells (B, K, h, w), K = `cell_channels`) -> evidence logits (B, 1, h, w); then
    `score(evidence, cells)` -> image logits (B,), whose sigmoid is the detection score."""

    def __init__(self, config: DetectorConfig, condition_channels: int) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_channels
        self.local = nn.Sequential(
            nn.Conv2d(condition_channels + cell_channels(config), width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, 1, 1),
        )
        self.pool = nn.Linear(len(config.top_fractions) + 4, 1)
        with torch.no_grad():  # start as the baseline: the image logit is the logit of the map's maximum
            self.pool.weight.zero_()
            self.pool.weight[0, len(config.top_fractions) + 1] = 1.0
            self.pool.bias.zero_()

    def forward(self, condition: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The per-cell evidence logits (B, 1, h, w)."""
        cells = cells.to(condition.dtype)
        return self.local(torch.cat([condition, cells], dim=1))

    def pooled(self, evidence: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """evidence (B, 1, h, w), cells (B, K, h, w), both over the image alone -> (B, F) pooled features:
        the evidence's top means and mean (logits), then the logits of the maximum probability, the mean
        probability and the marked share (each within about +-9.2)."""
        flat = evidence.float().flatten(1)
        cells = cells.float()
        features = [_top_mean(flat, fraction) for fraction in self.config.top_fractions]
        features.append(flat.mean(dim=1))
        statistics = (cells[:, 1].flatten(1).amax(dim=1), cells[:, 0].flatten(1).mean(dim=1),
                      cells[:, 2].flatten(1).mean(dim=1))
        features += [torch.logit(value.clamp(LOGIT_FLOOR, 1.0 - LOGIT_FLOOR)) for value in statistics]
        return torch.stack(features, dim=1)

    def score(self, evidence: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Image logits (B,) from maps cropped to the image; `torch.sigmoid` gives the detection score."""
        features = self.pooled(evidence, cells)
        return self.pool(features.to(self.pool.weight.dtype)).squeeze(1).float()
