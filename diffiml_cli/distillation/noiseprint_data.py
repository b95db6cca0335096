"""Photos for LightNP's distillation: the held-out split, post-processed variants, and the teacher's maps of them.

Split (recorded in the run's report.json): BSDS500's 100 photos that docs/make_splits.py holds out of every
training run (numpy.random.default_rng(20261201).permutation over the 500 sorted stems, items 0-99) and half of
Kodak24 (default_rng(SPLIT_SEED).permutation, items 0-11) are never trained on; the rest are.

Each training photo is seen as `variants` post-processed copies, each a pure function of (seed, photo, variant):
the photo as it is, or another camera's rendering (`data.augment.render_as_other_camera`), a resize with a random
interpolation, a blur, noise and a JPEG at a random quality, in that order. The teacher runs once on each whole
variant (whole photos cost a third of what padded windows do) and its map is kept in fp16 beside the uint8 image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from diffiml_cli.data.augment import INTERPOLATIONS, render_as_other_camera
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import list_images, load_rgb
from diffiml_cli.image_ops import gaussian_blur, jpeg_compress, resize_image

BSDS_SPLIT_SEED = 20261201  # docs/make_splits.py's seed: its items 0-99 are held out of every run
BSDS_HELD_OUT = 100
SPLIT_SEED = 32  # Kodak24's half split, for issue #32
MAX_SIDE = 768  # larger photos (Kodak's are 768 x 512) keep a random window of this side: the teacher's cost


@dataclass(frozen=True)
class PhotoSplit:
    """Training and held-out photo paths, each list sorted."""

    train: tuple[Path, ...]
    held_out: tuple[Path, ...]


def split_photos(root: str | Path) -> PhotoSplit:
    """The fixed split of `root`/bsds500 and `root`/kodak24 (see the module docstring); either may be absent."""
    root = Path(root)
    train: list[Path] = []
    held: list[Path] = []
    for name, seed, count in (("bsds500", BSDS_SPLIT_SEED, BSDS_HELD_OUT), ("kodak24", SPLIT_SEED, None)):
        folder = root / name
        if not folder.is_dir():
            continue
        photos = sorted(list_images([str(folder)]), key=lambda path: path.stem)
        order = np.random.default_rng(seed).permutation(len(photos))
        cut = count if count is not None else len(photos) // 2
        held += [photos[i] for i in order[:cut]]
        train += [photos[i] for i in order[cut:]]
    if not train or not held:
        raise DiffimlError(f"--photos {root}: expected the folders bsds500/ and/or kodak24/ with photos in them")
    return PhotoSplit(tuple(sorted(train)), tuple(sorted(held)))


def post_process(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One random post-processing chain of an (H, W, 3) uint8 photo -> (image, description such as "jpeg75")."""
    steps = []
    if rng.random() < 0.3:
        image = render_as_other_camera(image, rng)
        steps.append("camera")
    if rng.random() < 0.25:
        scale = float(rng.uniform(0.5, 1.5))
        height, width = image.shape[:2]
        size = (max(64, round(width * scale)), max(64, round(height * scale)))
        image = resize_image(image, size, INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))])
        steps.append(f"resize{scale:.2f}")
    if rng.random() < 0.15:
        sigma = float(rng.uniform(0.3, 1.2))
        image = gaussian_blur(image, sigma=sigma)
        steps.append(f"blur{sigma:.1f}")
    if rng.random() < 0.1:
        noise = rng.normal(0.0, float(rng.uniform(1.0, 4.0)), image.shape)
        image = np.clip(np.round(image + noise), 0, 255).astype(np.uint8)
        steps.append("noise")
    if rng.random() < 0.45:
        quality = int(rng.integers(50, 101))
        image = jpeg_compress(np.ascontiguousarray(image), quality)
        steps.append(f"jpeg{quality}")
    return np.ascontiguousarray(image), "+".join(steps) or "as-is"


def photo_variant(path: Path, seed: int, index: int, variant: int) -> tuple[np.ndarray, str]:
    """Variant `variant` of photo number `index`: variant 0 is the photo as it is, others post-processed.
    A photo with a side over MAX_SIDE first keeps a random MAX_SIDE window of it (no resampling)."""
    rng = np.random.default_rng([seed, index, variant])
    image = load_rgb(path)
    height, width = image.shape[:2]
    top, left = int(rng.integers(max(1, height - MAX_SIDE + 1))), int(rng.integers(max(1, width - MAX_SIDE + 1)))
    image = np.ascontiguousarray(image[top:top + MAX_SIDE, left:left + MAX_SIDE])
    return (image, "as-is") if variant == 0 else post_process(image, rng)


def teacher_maps(teacher: torch.nn.Module, config, images: list[np.ndarray]) -> list[np.ndarray]:
    """The teacher's whole-image maps, (H, W) float16 each."""
    from diffiml_cli.models.noiseprint import extract_map

    return [extract_map(teacher, config, image).astype(np.float16) for image in images]


def cv_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 luma in [0, 1]."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
