"""JPEG block-grid features for the detector: where an image's 8x8 compression grid holds and where it breaks.

A JPEG photo carries an 8x8 block grid: luminance jumps a little more across block boundaries than inside
blocks. An edit pasted into it breaks that grid where it lands: a donor region brings its own grid at another
phase (or none, after resampling), and inpainting or blurring erases it. This is the block-artifact-grid cue
of the forensics literature. Per 8x8 latent cell, smoothed over `window` cells, it gives three channels:

- `aligned`: the contrast of the image's dominant grid phase (boundary jump minus the mean jump over all
  eight phases, relative to that mean), in x and y averaged;
- `other`: how much stronger the locally strongest phase is than the dominant one (a second grid);
- `overall`: the image's mean `aligned`, broadcast, so that a photo that was never compressed (no grid
  anywhere) is not evidence.

Phases are taken per image (a crop moves the grid), over the whole input. Computed in fp32 with a few
pooling ops: about 1 ms for a 512^2 image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRID_CHANNELS = 3  # aligned, other, overall
BLOCK = 8  # the JPEG block, and the latent cell of the detector's maps
_LUMA = (0.299, 0.587, 0.114)


def _phase_jumps(luma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """luma (B, 1, H, W), H and W multiples of 8 -> mean |jump| per cell at each of the 8 boundary phases,
    across columns and across rows: two (B, 8, H/8, W/8) tensors. Phase p is the boundary between offsets
    p and p + 1 of the cell (p = 7: between this cell and the next, where an aligned JPEG grid lies)."""
    B, _, H, W = luma.shape
    across_columns = (luma[..., :, 1:] - luma[..., :, :-1]).abs()
    across_columns = F.pad(across_columns, (0, 1, 0, 0), mode="replicate")  # (B, 1, H, W)
    across_rows = (luma[..., 1:, :] - luma[..., :-1, :]).abs()
    across_rows = F.pad(across_rows, (0, 0, 0, 1), mode="replicate")
    h, w = H // BLOCK, W // BLOCK
    # (B, h, 8, w, 8): the row and the column within a cell as their own axes
    x = across_columns.reshape(B, h, BLOCK, w, BLOCK).mean(dim=2).permute(0, 3, 1, 2)  # (B, 8, h, w)
    y = across_rows.reshape(B, h, BLOCK, w, BLOCK).mean(dim=4).permute(0, 2, 1, 3)  # (B, 8, h, w)
    return x, y


def _contrast(jumps: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """jumps (B, 8, h, w) -> (aligned (B, 1, h, w), other (B, 1, h, w)): the relative contrast of the image's
    dominant phase, and how far the locally strongest phase exceeds it, after smoothing over window^2 cells."""
    smooth = F.avg_pool2d(jumps, window, stride=1, padding=window // 2, count_include_pad=False)
    mean = smooth.mean(dim=1, keepdim=True)
    contrast = (smooth - mean) / (mean + 1.0)  # +1 (in 0..255 luma units) keeps flat regions near 0
    dominant = contrast.mean(dim=(2, 3)).argmax(dim=1)  # (B,) the image's grid phase
    aligned = contrast.gather(1, dominant.view(-1, 1, 1, 1).expand(-1, 1, *contrast.shape[2:]))
    other = contrast.amax(dim=1, keepdim=True) - aligned
    return aligned, other


def grid_cells(images: torch.Tensor, window: int = 5) -> torch.Tensor:
    """images: (B, 3, H, W) in [0, 1], H and W multiples of 8 -> (B, 3, H/8, W/8) float32 grid channels
    (aligned, other, overall), each within about [-1, 7]."""
    weights = torch.tensor(_LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    luma = 255.0 * (images.float() * weights).sum(dim=1, keepdim=True)
    x, y = _phase_jumps(luma)
    aligned_x, other_x = _contrast(x, window)
    aligned_y, other_y = _contrast(y, window)
    aligned = 0.5 * (aligned_x + aligned_y)
    other = 0.5 * (other_x + other_y)
    overall = aligned.mean(dim=(2, 3), keepdim=True).expand_as(aligned)
    return torch.cat([aligned, other, overall], dim=1)
