"""Robustness protocol of DiffIML (ICMR 2026, Fig. 4): JPEG, Gaussian blur and Gaussian noise.

The levels are the authors': JPEG quality 100..50, blur kernel 3..23 (sigma derived from the kernel),
noise variance 3..23 on the 0..255 scale. Each perturbation is a pure function of an (H, W, 3) uint8
RGB image at its original resolution, applied before the image is resized to the model's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.definitions import LEVEL_NAMES, PERTURBATION_LEVELS
from diffiml_cli.image_ops import gaussian_blur, jpeg_compress


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")


def gaussian_noise(image: np.ndarray, variance: float, seed: int | Sequence[int] = 0) -> np.ndarray:
    """(H, W, 3) uint8 -> uint8 plus N(0, variance) noise per pixel and channel, rounded and clipped.

    `seed` (an int or a sequence of ints, e.g. (seed, image index)) fixes the draw; the noise pattern for
    one seed is the same at every variance, only scaled, so levels differ by strength alone.
    """
    _check_image(image)
    if variance < 0:
        raise ValueError(f"noise variance must be >= 0, got {variance}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(np.sqrt(variance))
    return np.clip(np.round(image.astype(np.float32) + noise), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Perturbation:
    """One level of one kind; call it on an image (and the image's index, which seeds the noise)."""

    kind: str
    level: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATION_LEVELS:
            raise DiffimlError(f"unknown perturbation {self.kind!r}; choose from {', '.join(PERTURBATION_LEVELS)}")

    @property
    def label(self) -> str:
        """Short text such as 'jpeg quality=90'."""
        return f"{self.kind} {LEVEL_NAMES[self.kind]}={self.level}"

    def __call__(self, image: np.ndarray, index: int = 0) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB -> perturbed (H, W, 3) uint8 RGB of the same size."""
        if self.kind == "jpeg":
            return jpeg_compress(image, self.level)
        if self.kind == "blur":
            return gaussian_blur(image, kernel=self.level)
        return gaussian_noise(image, self.level, (self.seed, index))


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """'jpeg,blur' -> ('jpeg', 'blur'); None or '' -> (). Unknown or repeated kinds are a DiffimlError."""
    if not text:
        return ()
    kinds = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in PERTURBATION_LEVELS]
    if unknown:
        raise DiffimlError(f"`robustness`: unknown perturbation {unknown[0]!r}; choose from {', '.join(PERTURBATION_LEVELS)}")
    if len(set(kinds)) != len(kinds):
        raise DiffimlError(f"`robustness`: {text!r} names a perturbation twice")
    return kinds


def perturbations(kind: str, seed: int = 0) -> list[Perturbation]:
    """Every level of `kind`, mildest first."""
    if kind not in PERTURBATION_LEVELS:
        raise DiffimlError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATION_LEVELS)}")
    return [Perturbation(kind, level, seed) for level in PERTURBATION_LEVELS[kind]]
