"""Procedural binary masks for training the mask autoencoder without any data.

The mask VAE must reconstruct whatever a localizer may predict: single objects, several pieces,
scattered specks, thin strokes, regions with holes, and occasionally nothing or everything.
"""

from __future__ import annotations

import numpy as np

from diffiml_cli.data import regions

EMPTY_SHARE = 0.03
FULL_SHARE = 0.03
# Layouts and how often each is drawn.
LAYOUTS = ("single", "few", "many", "strokes")
LAYOUT_WEIGHTS = (0.4, 0.25, 0.2, 0.15)


def _add_shapes(rng: np.random.Generator, canvas: np.ndarray, count: int,
                area_bounds: tuple[float, float]) -> None:
    for _ in range(count):
        canvas |= regions.random_shape(rng, canvas.shape, regions.log_uniform(rng, area_bounds))


def _add_strokes(rng: np.random.Generator, canvas: np.ndarray, count: int, max_thickness: int) -> None:
    for _ in range(count):
        thickness = int(rng.integers(1, max_thickness + 1))
        canvas |= regions.stroke_region(rng, canvas.shape, 0.0, thickness=thickness)


def random_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """One random (size, size) bool mask, True = manipulated.

    About 3 % are empty and 3 % full; the rest are one large shape, a few shapes, many small
    specks, or strokes 1..6 px thick, sometimes with extra strokes, holes cut out, or inverted.
    """
    draw = rng.random()
    if draw < EMPTY_SHARE:
        return np.zeros((size, size), bool)
    if draw < EMPTY_SHARE + FULL_SHARE:
        return np.ones((size, size), bool)
    canvas = np.zeros((size, size), bool)
    layout = LAYOUTS[rng.choice(len(LAYOUTS), p=LAYOUT_WEIGHTS)]
    if layout == "single":
        _add_shapes(rng, canvas, 1, (0.005, 0.5))
    elif layout == "few":
        _add_shapes(rng, canvas, int(rng.integers(2, 5)), (0.003, 0.15))
    elif layout == "many":
        # Specks down to a few pixels: area 2e-4 of a 256 px mask is about 13 pixels.
        _add_shapes(rng, canvas, int(rng.integers(5, 41)), (2e-4, 5e-3))
    else:
        _add_strokes(rng, canvas, int(rng.integers(1, 6)), max_thickness=6)
    if layout != "strokes" and rng.random() < 0.15:
        _add_strokes(rng, canvas, int(rng.integers(1, 3)), max_thickness=3)
    if canvas.any() and rng.random() < 0.2:
        holes = np.zeros_like(canvas)
        _add_shapes(rng, holes, int(rng.integers(1, 4)), (0.002, 0.05))
        canvas &= ~holes
    if rng.random() < 0.05:
        canvas = ~canvas  # mostly-manipulated masks with holes where the shapes were
    return canvas
