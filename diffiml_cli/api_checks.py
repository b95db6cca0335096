"""What the Python API accepts, checked at its edge: `LocalizationPipeline.predict` and `predict_many` take an image
array and sampling settings from anyone's code, and anything else must be one DiffimlError, not an IndexError from
OpenCV or a RuntimeError from torch's random generator deep inside.

One path for both: `predict` turns a path, a PIL image or an (H, W) / (H, W, 4) array into RGB (`pipeline.as_rgb`)
and hands it to `predict_many`, which checks every image with `check_images` (and the sampling settings with
`config_values.check_sampling_options`, which `SamplingOptions` runs too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffiml_cli.errors import DiffimlError


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """`image` when it is an (H, W, 3) uint8 RGB array with H, W >= 1 (uint8 values are always finite); else a
    DiffimlError naming `name`, its shape and its dtype."""
    if not isinstance(image, np.ndarray):
        raise DiffimlError(f"`{name}` must be an (H, W, 3) uint8 RGB array, got a {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise DiffimlError(f"`{name}` must be an (H, W, 3) uint8 RGB array with H, W >= 1, got shape "
                           f"{tuple(image.shape)} {image.dtype}")
    return image


def check_images(images: Any) -> list[np.ndarray]:
    """A sequence of (H, W, 3) uint8 RGB arrays, or one (B, H, W, 3) array, as a list of checked images."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise DiffimlError(f"`images` must be a sequence of (H, W, 3) uint8 RGB arrays or one (B, H, W, 3) array, got "
                           f"one array of shape {tuple(images.shape)}; pass [image], or use predict")
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise DiffimlError(f"`images` must be a sequence of (H, W, 3) uint8 RGB arrays, got a {type(images).__name__}")
    return [check_image(image, f"images[{index}]") for index, image in enumerate(images)]
