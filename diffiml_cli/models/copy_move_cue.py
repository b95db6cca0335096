"""A copy-move cue for the condition encoder: where the image matches itself.

A copy-move pastes a region of an image elsewhere in the same image. Its pixels come from the same
camera, so the local traces a localizer reads (noise, JPEG grid, colour) can agree on both sides
of the seam; what gives it away is that two distant regions are the same. The shipped model finds
splices far better than copy-moves (see weights/README.md), so this branch hands it that evidence.

It uses the classic keypoint approach to copy-move detection (Amerini et al., TIFS 2011): SIFT
keypoints of the image are matched against each other, ignoring matches nearer than
`MIN_OFFSET` pixels, and kept when the best match is clearly better than the second (Lowe's ratio
test). SIFT's descriptors do not depend on where the 8x8 grids of a CNN fall, and survive the
rotation and scaling a forger applies. Dense deep-feature correlation (BusterNet's) was tried first
and dropped: with the backbone's stride-8 or stride-16 features, a copy shifted by a non-multiple
of the stride matched itself no better than the background matched itself.

The cue is two maps at latent resolution, the density of matched keypoints and of all keypoints
(texture makes chance matches likelier), squashed to [0, 1). Small convolutions turn them into a
condition-sized term whose last layer starts at zero, so adding the branch to a trained encoder
changes nothing until it has been trained. OpenCV runs on the CPU, once per image, with no
gradient; its cost is not in `diffiml benchmark`'s FLOPs.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

MAX_KEYPOINTS = 2000  # bounds the cost: about 0.03 s at 384 x 256 and 0.25 s at 1024 x 683 on one core
MIN_OFFSET = 16.0  # pixels; nearer matches are the keypoint itself, its twin orientation or its neighbour
RATIO = 0.5  # the best match must be at most this fraction of the second best's distance
CANDIDATES = 6  # nearest descriptors examined per keypoint
SPREAD = 1.0  # Gaussian sigma of each keypoint's vote, in latent cells


def keypoint_matches(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints of `gray` ((H, W) uint8) and which of them match another place in the image.

    Returns (points (n, 2) float32 x, y in pixels, matched (n,) bool).
    """
    sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    points = np.array([keypoint.pt for keypoint in keypoints], np.float32).reshape(-1, 2)
    matched = np.zeros(len(points), bool)
    if descriptors is None or len(points) < 3:
        return points, matched
    neighbours = cv2.BFMatcher(cv2.NORM_L2).knnMatch(descriptors, descriptors, k=min(CANDIDATES, len(points)))
    # (n, k) candidate indices and descriptor distances, nearest first; k <= n, so every row is full.
    candidates = np.array([[match.trainIdx for match in row] for row in neighbours])
    distances = np.array([[match.distance for match in row] for row in neighbours], np.float32)
    far = np.linalg.norm(points[candidates] - points[:, None], axis=2) >= MIN_OFFSET
    seen = np.cumsum(far, axis=1)
    first, second = np.argmax(far & (seen == 1), axis=1), np.argmax(far & (seen == 2), axis=1)
    rows = np.arange(len(points))
    good = (seen[:, -1] >= 2) & (distances[rows, first] < RATIO * distances[rows, second])
    matched[rows[good]] = True
    matched[candidates[rows[good], first[good]]] = True
    return points, matched


def cue_maps(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """image (H, W, 3) uint8 RGB -> (2, h, w) float32 in [0, 1) for size (h, w): matched-keypoint
    density, then all-keypoint density, each 1 - exp(-votes) after a Gaussian spread."""
    height, width = size
    points, matched = keypoint_matches(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    maps = np.zeros((2, height, width), np.float32)
    if len(points):
        cells_x = np.clip((points[:, 0] * width / image.shape[1]).astype(int), 0, width - 1)
        cells_y = np.clip((points[:, 1] * height / image.shape[0]).astype(int), 0, height - 1)
        np.add.at(maps[0], (cells_y[matched], cells_x[matched]), 1.0)
        np.add.at(maps[1], (cells_y, cells_x), 1.0)
        for channel in maps:
            cv2.GaussianBlur(channel, (0, 0), SPREAD, dst=channel, borderType=cv2.BORDER_CONSTANT)
    return 1.0 - np.exp(-maps * 2.0 * np.pi * SPREAD**2)  # one isolated vote peaks at 1 - 1/e


class CopyMoveCue(nn.Module):
    """image (B, 3, H, W) float in [0, 1] -> (B, out_channels, h, w), a term added to the condition."""

    def __init__(self, out_channels: int, hidden_channels: int = 32) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(2, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        maps = np.stack([cue_maps(np.ascontiguousarray(one), size) for one in pixels])
        return self.out(self.embed(torch.from_numpy(maps).to(device=image.device, dtype=self.out.weight.dtype)))
