"""Training-time augmentation and the synthetic pipeline's editing helpers (inpainting, other-camera rendering).

Two families of augmentation: naive manipulations that change content and therefore extend the
mask (a square copied within the image, an OpenCV inpaint of a random region), and photometric
post-processing that leaves the mask alone except for its size (flip, resize, blur, noise, JPEG).
Manipulations come first and JPEG last, the order in which a forger's edits are then saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from diffiml_cli.data import regions
from diffiml_cli.image_ops import gaussian_blur, jpeg_compress, resize_image, resize_mask

# Interpolations a resampling step may draw from; each leaves a different trace.
INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LANCZOS4)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of each augmentation; ranges are inclusive."""

    hflip: float = 0.5
    blur: float = 0.1
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (60, 100)
    noise: float = 0.1
    noise_std: tuple[float, float] = (1.0, 6.0)  # in 0..255 gray levels
    resize: float = 0.2
    resize_scale: tuple[float, float] = (0.5, 1.5)
    crop_paste: float = 0.1  # naive copy-move of a square; the mask gains the pasted square
    crop_paste_side: tuple[float, float] = (0.08, 0.3)  # square side as a fraction of min(H, W)
    inpaint: float = 0.1  # naive cv2.inpaint of a random region; the mask gains the region
    inpaint_area: tuple[float, float] = (0.005, 0.06)  # region area as a fraction of the image


def crop_at_native_resolution(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator,
                               *, on_manipulation: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """A size x size window of (H, W, 3) uint8 image and (H, W) bool mask, with no resampling, so the
    pixels keep their camera and compression traces as inference at native resolution sees them.

    With probability `on_manipulation` (when the mask has any pixel) the window is drawn among those
    that contain a random manipulated pixel, else uniformly. An image smaller than `size` on a side is
    first enlarged, keeping its aspect ratio, until that side fits (the one case that resamples).
    Returns (image (size, size, 3) uint8, mask (size, size) bool).
    """
    height, width = mask.shape
    if min(height, width) < size:
        scale = size / min(height, width)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        image, mask = resize_image(image, new_size), resize_mask(mask, new_size)
        height, width = mask.shape
    top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    if rng.random() < on_manipulation and mask.any():
        rows, cols = np.nonzero(mask)
        pick = int(rng.integers(rows.size))
        # the windows that contain (row, col) start in [row - size + 1, row], clipped to the image
        top = int(rng.integers(max(0, rows[pick] - size + 1), min(rows[pick], height - size) + 1))
        left = int(rng.integers(max(0, cols[pick] - size + 1), min(cols[pick], width - size) + 1))
    return image[top:top + size, left:left + size], mask[top:top + size, left:left + size]


def inpaint_region(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill `region` ((H, W) bool) of (H, W, 3) uint8 with cv2.inpaint, TELEA or NS at random.

    Only pixels inside `region` change.
    """
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    radius = int(rng.integers(3, 8))
    filled = cv2.inpaint(image, region.astype(np.uint8) * 255, radius, method)
    # cv2.inpaint may touch nothing else, but this makes "only the region changes" a guarantee.
    return np.where(region[..., None], filled, image)


# OpenCV's demosaicing methods for the RGGB layout `bayer_mosaic` writes (OpenCV names that layout "BG"):
# bilinear, edge-aware and variable-number-of-gradients, each with its own colour-interpolation trace.
DEMOSAICS = (cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerBG2RGB_EA, cv2.COLOR_BayerBG2RGB_VNG)


def bayer_mosaic(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 RGGB Bayer mosaic: R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1)."""
    mosaic = np.empty(image.shape[:2], np.uint8)
    mosaic[0::2, 0::2] = image[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = image[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = image[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = image[1::2, 1::2, 2]
    return mosaic


def render_as_other_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo as another camera might have rendered it: (H, W, 3) uint8 RGB in and out.

    Re-mosaics and demosaics with a random OpenCV method (p = 0.7), unsharp-masks (p = 0.5, sigma
    0.8..1.6, amount 0.3..1.0) and adds sensor-like noise (p = 0.7, std 1..4 grey levels, one draw per
    pixel scaled 1 / 0.8 / 1.2 over R, G, B), so a donor pasted into another photo carries a different
    interpolation, sharpening and noise trace, as a splice between two cameras does.
    """
    if rng.random() < 0.7:
        image = cv2.cvtColor(bayer_mosaic(image), DEMOSAICS[rng.integers(len(DEMOSAICS))])
    rendered = image.astype(np.float32)
    if rng.random() < 0.5:
        blurred = cv2.GaussianBlur(rendered, (0, 0), float(rng.uniform(0.8, 1.6)))
        rendered += float(rng.uniform(0.3, 1.0)) * (rendered - blurred)
    if rng.random() < 0.7:
        noise = rng.normal(0.0, float(rng.uniform(1.0, 4.0)), rendered.shape[:2])
        rendered = rendered + noise[..., None] * np.array([1.0, 0.8, 1.2])
    return np.clip(np.round(rendered), 0, 255).astype(np.uint8)


_GRAIN_SIGMA = 1.0  # the high-pass that measures grain: the luma minus its Gaussian blur at this sigma
_GRAIN_RING = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (31, 31))  # the host pixels the grain is matched to


def _robust_std(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of `values` (1-D), 0 for fewer than 16 values."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size >= 16 else 0.0


def _white_noise_gain() -> float:
    """The residual's std for white noise of std 1: sqrt(sum((delta - g)^2)) over the blur kernel g."""
    kernel = cv2.getGaussianKernel(2 * int(np.ceil(4 * _GRAIN_SIGMA)) + 1, _GRAIN_SIGMA)
    kernel = kernel @ kernel.T
    impulse = np.zeros_like(kernel)
    impulse[kernel.shape[0] // 2, kernel.shape[1] // 2] = 1.0
    return float(np.sqrt(((impulse - kernel) ** 2).sum()))


_WHITE_NOISE_GAIN = _white_noise_gain()


def match_grain(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Give the edited region the host's grain back, as a careful forger adds noise after a paste or a fill.

    image: (H, W, 3) uint8 RGB after the edit; mask: (H, W) bool, the edited pixels. Resampling, feathering and
    inpainting smooth a region, so its high-pass energy falls below that of the host around it (a 15-pixel ring):
    far below what real edits leave (docs/camera-traces.md). Gaussian noise (one draw per pixel, channel gains
    1 / 0.8 / 1.2) is added inside the mask so that the region's residual std reaches a random 70–100 % of the
    ring's; a region already as grainy as its ring is left alone. Returns (H, W, 3) uint8; pixels outside the
    mask are unchanged.
    """
    if not mask.any():
        return image
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    residual = luma - cv2.GaussianBlur(luma, (0, 0), _GRAIN_SIGMA)  # the grain, once for both regions
    ring = (cv2.dilate(mask.astype(np.uint8), _GRAIN_RING) > 0) & ~mask
    inside, outside = _robust_std(residual[mask]), _robust_std(residual[ring])
    target = float(rng.uniform(0.7, 1.0)) * outside
    if target <= inside:
        return image
    std = np.sqrt(target ** 2 - inside ** 2) / _WHITE_NOISE_GAIN
    noise = rng.normal(0.0, std, mask.shape).astype(np.float32)[..., None] * np.array([1.0, 0.8, 1.2], np.float32)
    grainy = np.clip(np.round(image.astype(np.float32) + noise), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], grainy, image)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _crop_paste(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    height, width = mask.shape
    side = max(4, int(_uniform(rng, config.crop_paste_side) * min(height, width)))
    if side >= min(height, width) // 2:
        return image, mask
    source_y, target_y = rng.integers(0, height - side + 1, size=2)
    source_x, target_x = rng.integers(0, width - side + 1, size=2)
    if max(abs(source_y - target_y), abs(source_x - target_x)) < side // 2:
        return image, mask  # the square would mostly overlap itself: hardly a manipulation
    image, mask = image.copy(), mask.copy()
    source = image[source_y:source_y + side, source_x:source_x + side]
    image[target_y:target_y + side, target_x:target_x + side] = source
    mask[target_y:target_y + side, target_x:target_x + side] = True
    return image, mask


def _inpaint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
             config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    region = regions.random_shape(rng, mask.shape, _uniform(rng, config.inpaint_area))
    if not region.any():
        return image, mask
    return inpaint_region(image, region, rng), mask | region


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augment one training pair.

    image: (H, W, 3) uint8 RGB. mask: (H, W) bool. rng: the sample's generator (determinism).
    Returns (image, mask) of the same kind; the size changes only under the random resize.
    The inputs are not modified.
    """
    height, width = mask.shape
    if min(height, width) >= 16:
        if rng.random() < config.crop_paste:
            image, mask = _crop_paste(image, mask, rng, config)
        if rng.random() < config.inpaint:
            image, mask = _inpaint(image, mask, rng, config)
    if rng.random() < config.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < config.resize:
        scale = _uniform(rng, config.resize_scale)
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        interpolation = INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]
        image, mask = resize_image(image, size, interpolation), resize_mask(mask, size)
    if rng.random() < config.blur:
        image = gaussian_blur(image, sigma=_uniform(rng, config.blur_sigma))
    if rng.random() < config.noise:
        noise = rng.normal(0.0, _uniform(rng, config.noise_std), size=image.shape)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if rng.random() < config.jpeg:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        image = jpeg_compress(np.ascontiguousarray(image), quality)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
