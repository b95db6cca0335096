"""Random region shapes for synthetic manipulations and procedural masks.

Every generator takes the sample's `np.random.Generator`, the canvas shape (H, W) and a target
area as a fraction of the canvas, and returns an (H, W) bool region. The area is a target, not a
guarantee (shapes are clipped at the frame; blobs keep their largest piece), so callers that need
an area range check it and retry.
"""

from __future__ import annotations

import cv2
import numpy as np

SHAPE_KINDS = ("polygon", "ellipse", "blob", "rectangle")
# Object-like outlines dominate: real splices and removals follow objects, rarely boxes.
SHAPE_WEIGHTS = (0.3, 0.2, 0.4, 0.1)


def _centre(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> tuple[float, float]:
    """A centre (x, y) keeping a disc of `radius` inside the canvas where the canvas allows it."""
    height, width = shape
    margin_x, margin_y = min(radius, width / 2), min(radius, height / 2)
    return float(rng.uniform(margin_x, width - margin_x)), float(rng.uniform(margin_y, height - margin_y))


def ellipse_region(rng: np.random.Generator, shape: tuple[int, int], area_frac: float) -> np.ndarray:
    """Filled ellipse of random aspect (0.35..1) and angle."""
    height, width = shape
    aspect = rng.uniform(0.35, 1.0)
    semi_major = np.sqrt(area_frac * height * width / (np.pi * aspect))
    semi_minor = semi_major * aspect
    centre_x, centre_y = _centre(rng, shape, semi_major)
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, (round(centre_x), round(centre_y)), (max(1, round(semi_major)), max(1, round(semi_minor))),
                float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return canvas > 0


def polygon_region(rng: np.random.Generator, shape: tuple[int, int], area_frac: float) -> np.ndarray:
    """Filled star-shaped polygon with 3..12 vertices, scaled to the target area."""
    height, width = shape
    count = int(rng.integers(3, 13))
    gaps = rng.uniform(0.5, 1.5, size=count)
    angles = np.cumsum(gaps) / gaps.sum() * 2 * np.pi + rng.uniform(0, 2 * np.pi)
    radii = rng.uniform(0.45, 1.0, size=count)
    x, y = radii * np.cos(angles), radii * np.sin(angles)
    unit_area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # shoelace
    scale = np.sqrt(area_frac * height * width / max(unit_area, 1e-6))
    centre_x, centre_y = _centre(rng, shape, scale * radii.max())
    points = np.stack([centre_x + scale * x, centre_y + scale * y], axis=1)
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas > 0


def rectangle_region(rng: np.random.Generator, shape: tuple[int, int], area_frac: float) -> np.ndarray:
    """Rectangle of random aspect (0.25..1), axis-aligned half of the time, else rotated."""
    height, width = shape
    aspect = rng.uniform(0.25, 1.0)
    long_side = np.sqrt(area_frac * height * width / aspect)
    angle = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, 180))
    centre_x, centre_y = _centre(rng, shape, long_side / 2)
    corners = cv2.boxPoints(((centre_x, centre_y), (long_side, long_side * aspect), angle))
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], 1)
    return canvas > 0


def _largest_component(region: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    if count <= 2:
        return region
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def blob_region(rng: np.random.Generator, shape: tuple[int, int], area_frac: float) -> np.ndarray:
    """Object-like blob: smooth low-frequency noise plus a radial bump, thresholded, largest piece.

    The bump keeps one compact body; the noise gives it an irregular, organic outline.
    """
    height, width = shape
    target = area_frac * height * width
    # The blob fills about half of its square box.
    side = int(np.clip(np.sqrt(2.0 * target), 4, 2 * max(height, width)))
    grid = int(rng.integers(3, 8))
    noise = cv2.resize(rng.standard_normal((grid, grid)).astype(np.float32), (side, side),
                       interpolation=cv2.INTER_CUBIC)
    axis = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    bump = 1.0 - (axis[None, :] ** 2 + axis[:, None] ** 2)
    field = bump + rng.uniform(0.3, 0.8) * noise
    keep = int(np.clip(target, 1, field.size))
    threshold = np.partition(field.ravel(), field.size - keep)[field.size - keep]
    patch = _largest_component(field >= threshold)
    centre_x, centre_y = _centre(rng, shape, side / 2)
    top, left = round(centre_y - side / 2), round(centre_x - side / 2)
    region = np.zeros(shape, bool)
    # Clip the patch at the frame.
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        region[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return region


def stroke_region(rng: np.random.Generator, shape: tuple[int, int], area_frac: float,
                  thickness: int | None = None) -> np.ndarray:
    """Brush stroke: a random polyline of 2..6 points, `thickness` px wide (derived from the area
    when None). Thin strokes model scratches and wires; thick ones a retouching brush."""
    height, width = shape
    count = int(rng.integers(2, 7))
    step = rng.uniform(0.1, 0.4) * max(height, width)
    start = np.array(_centre(rng, shape, 0.0))
    headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.7, size=count - 1))
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    points = np.vstack([start, start + np.cumsum(steps, axis=0)])
    if thickness is None:
        length = step * (count - 1)
        thickness = int(np.clip(area_frac * height * width / max(length, 1.0), 1, max(1, min(height, width) // 4)))
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, 1, thickness=int(thickness),
                  lineType=cv2.LINE_8)
    return canvas > 0


_SHAPE_MAKERS = {
    "polygon": polygon_region,
    "ellipse": ellipse_region,
    "blob": blob_region,
    "rectangle": rectangle_region,
}


def random_shape(rng: np.random.Generator, shape: tuple[int, int], area_frac: float,
                 kind: str | None = None) -> np.ndarray:
    """A region of the given `kind` from SHAPE_KINDS, or one drawn with SHAPE_WEIGHTS when None."""
    if kind is None:
        kind = SHAPE_KINDS[rng.choice(len(SHAPE_KINDS), p=SHAPE_WEIGHTS)]
    return _SHAPE_MAKERS[kind](rng, shape, area_frac)


def segment_region(rng: np.random.Generator, labels: np.ndarray,
                   area_range: tuple[float, float]) -> np.ndarray | None:
    """One whole segment of a label map whose area fraction lies in `area_range`, or None.

    labels: (H, W) integer, 0 = unlabelled, 1..K = segment id. Segments that touch the frame get
    a quarter of the weight of the others, since a cut along the frame looks wrong once moved.
    """
    flat = labels.ravel().astype(np.int64)
    areas = np.bincount(flat)
    fractions = areas / flat.size
    candidates = np.flatnonzero((fractions >= area_range[0]) & (fractions <= area_range[1]))
    candidates = candidates[candidates > 0]
    if candidates.size == 0:
        return None
    frame = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).astype(np.int64)
    on_frame = np.bincount(frame, minlength=areas.size)[candidates] > 0
    weights = np.where(on_frame, 0.25, 1.0)
    chosen = candidates[rng.choice(candidates.size, p=weights / weights.sum())]
    return labels == chosen


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A value in [low, high] whose logarithm is uniform: small areas as likely as large ones."""
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def random_region(rng: np.random.Generator, shape: tuple[int, int], area_range: tuple[float, float],
                  labels: np.ndarray | None = None, segment_share: float = 0.6) -> tuple[np.ndarray, str]:
    """A region for a manipulation: a whole segment (with probability `segment_share` when a
    label map is given and one fits `area_range`), otherwise a random shape.

    Returns ((H, W) bool region, kind) where kind is "segment" or one of SHAPE_KINDS.
    """
    if labels is not None and rng.random() < segment_share:
        region = segment_region(rng, labels, area_range)
        if region is not None:
            return region, "segment"
    kind = SHAPE_KINDS[rng.choice(len(SHAPE_KINDS), p=SHAPE_WEIGHTS)]
    return random_shape(rng, shape, log_uniform(rng, area_range), kind), kind
