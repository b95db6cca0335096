"""Generated textures for the copy-move tests: colour noise that repeats nowhere, and one block copied."""

from __future__ import annotations

import cv2
import numpy as np


def texture(seed: int, size: tuple[int, int] = (256, 384)) -> np.ndarray:
    """(H, W, 3) uint8: smoothed colour noise, textured everywhere and repeated nowhere."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(*size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def copy_moved_texture(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A texture with its 64^2 block at (150, 250) pasted at (43, 63), 3 px off the 8 px grid; returns
    (image, source mask, target mask) at latent resolution (1/8)."""
    image = texture(seed)
    image[43:107, 63:127] = image[150:214, 250:314].copy()
    source = np.zeros((32, 48), bool)
    source[150 // 8:214 // 8, 250 // 8:314 // 8] = True
    target = np.zeros((32, 48), bool)
    target[43 // 8 + 1:107 // 8, 63 // 8 + 1:127 // 8] = True
    return image, source, target
