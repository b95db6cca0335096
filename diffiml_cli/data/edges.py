"""Boundary bands of manipulation masks, and the {0, 1} <-> {-1, 1} mapping used before the VAE.

DiffIML supervises the boundary of the manipulated region as well as the region itself: the edge
map is Canny on the binary mask, dilated into a band a few pixels wide.
"""

from __future__ import annotations

from typing import TypeVar

import cv2
import numpy as np
import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def mask_edges(mask: np.ndarray, width: int = 7) -> np.ndarray:
    """Band around the boundary of a binary mask.

    mask: (H, W) bool, True = manipulated.
    width: side of the elliptical (disc-like, so the band is equally wide in every direction)
        dilation kernel; the band extends about width // 2 pixels to each side of the one-pixel
        Canny contour. 1 keeps the bare contour.
    Returns (H, W) bool: empty for an all-False or all-True mask; the image frame is never an edge
    (Canny replicates the border).
    """
    if width < 1:
        raise ValueError(f"edge width must be >= 1, got {width}")
    # Thresholds well below the 0 -> 255 step's gradient so every boundary is kept, whatever its angle.
    contour = cv2.Canny(mask.astype(np.uint8) * 255, 50, 150)
    if width > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
        contour = cv2.dilate(contour, kernel)
    return contour > 0


def to_signed(x: ArrayOrTensor) -> ArrayOrTensor:
    """{0, 1} (or [0, 1]) -> {-1, 1} (or [-1, 1]): masks and edges enter the mask VAE signed."""
    return x * 2 - 1


def from_signed(x: ArrayOrTensor) -> ArrayOrTensor:
    """Inverse of `to_signed`: [-1, 1] -> [0, 1] (no clamping)."""
    return (x + 1) / 2
