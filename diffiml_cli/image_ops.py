"""Image operations that training, inference and evaluation share, each in one copy: resampling, the JPEG
round trip and the Gaussian blur. A tool whose signal is resampling and compression traces must resample and
compress the same way when it learns and when it looks.
"""

from __future__ import annotations

import cv2
import numpy as np

from diffiml_cli.errors import DiffimlError


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: int | None = None) -> np.ndarray:
    """Resize (H, W, C) or (H, W) uint8 (or float32) to size = (width, height): the one resampling that both
    training (augmentation, windows) and inference (a "resize" model's input, maps back to the image's size) use.

    Default interpolation: INTER_AREA along an axis that shrinks (anti-aliased), INTER_LINEAR along
    one that grows; when one axis shrinks and the other grows, the axes are resized one at a time.
    """
    height, width = image.shape[:2]
    new_width, new_height = size
    if (new_width, new_height) == (width, height):
        return image
    if interpolation is not None:
        return cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    shrinking = new_width < width or new_height < height
    growing = new_width > width or new_height > height
    if not (shrinking and growing):
        return cv2.resize(image, (new_width, new_height),
                          interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    image = resize_image(image, (new_width, height))
    return resize_image(image, (new_width, new_height))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W) bool to size = (width, height), aligned with `resize_image`.

    The mask is resampled as a 0/1 float (area when shrinking, linear when growing, which keeps
    pixel centres where the image's interpolation puts them) and thresholded at 0.5.
    """
    if mask.shape[::-1] == tuple(size):
        return mask
    soft = resize_image(mask.astype(np.float32), size)
    return soft >= 0.5


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same after a JPEG encode/decode through OpenCV (4:2:0) at `quality` 1..100."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DiffimlError("OpenCV JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_blur(image: np.ndarray, *, sigma: float = 0.0, kernel: int = 0) -> np.ndarray:
    """Gaussian blur of (H, W, C) or (H, W) uint8, given a `sigma` (the kernel then covers +-3 sigma) or a
    `kernel` side (odd; sigma then follows OpenCV: 0.3 ((k - 1) / 2 - 1) + 0.8), or both."""
    if kernel == 0:
        if sigma <= 0:
            raise ValueError("give a blur sigma > 0 or an odd kernel side")
        kernel = 2 * max(1, int(np.ceil(3 * sigma))) + 1
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"blur kernel must be a positive odd number, got {kernel}")
    return cv2.GaussianBlur(image, (kernel, kernel), sigma)
