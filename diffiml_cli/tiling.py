"""Full-resolution inference of large images as overlapping tiles, blended with a smooth window.

A native-resolution model reads camera and compression traces that shrinking would blur, so an image whose long
side exceeds the model's `native_max_side` is cut into `tile` x `tile` windows, `overlap` pixels apart from the
next, each run through the same predictor. Every tile's maps are weighted by a window that is 1 inside and falls
off as a raised cosine over the overlap at the sides it shares with a neighbour (not at the image's border),
and the weighted sum is divided by the summed weights, so that the tiles' outputs meet without a seam. The
detector's per-cell maps are stitched the same way at 1/8 resolution, so the image and detection scores are
those of the whole image. Tile corners lie on multiples of 8 pixels so that latent cells line up.
Memory: the model sees one batch of tiles at a time; the stitched maps are the image's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffiml_cli.errors import DiffimlError

CELL = 8  # pixels per latent cell


@dataclass(frozen=True)
class Tile:
    """The window image[top:top + height, left:left + width]; top and left are multiples of 8."""

    top: int
    left: int
    height: int
    width: int


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one side: the fewest windows that overlap by at least `overlap`, spread evenly, each
    start rounded to a multiple of 8 (the last rounded up, so that window may be up to 7 pixels short)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    starts = [round(i * span / (count - 1) / CELL) * CELL for i in range(count - 1)]
    return starts + [-(-span // CELL) * CELL]


PADDED_SIDE = 64  # a model input's sides are padded up to a multiple of at most this (`input_multiple`)


def tile_sides(height: int, width: int, tile: int) -> tuple[int, int]:
    """(tile height, tile width): `tile` x `tile`, except that along the long side of an image thinner than
    `tile` the tiles grow to tile² / (the short side padded to PADDED_SIDE), rounded down to 8, so that a
    pass still holds about tile² pixels and the number of passes follows the pixel count, not the long side."""
    short = min(height, width)
    if short >= tile:
        return tile, tile
    padded = -(-short // PADDED_SIDE) * PADDED_SIDE
    long = max(tile, tile * tile // padded // CELL * CELL)
    return (tile, long) if height <= width else (long, tile)


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles that cover a (height, width) image; `tile` and `overlap` in pixels, multiples of 8; tiles of a
    thin image are longer along its long side (`tile_sides`)."""
    if tile % CELL or overlap % CELL or not 0 <= overlap < tile:
        raise DiffimlError(f"tile ({tile}) and tile overlap ({overlap}) must be multiples of {CELL}, "
                           "with 0 <= overlap < tile")
    tall, wide = tile_sides(height, width, tile)
    return [Tile(top, left, min(tall, height - top), min(wide, width - left))
            for top in _starts(height, tall, overlap) for left in _starts(width, wide, overlap)]


def _ramp(length: int, overlap: int, rise: bool, fall: bool) -> np.ndarray:
    """(length,) weights: a raised cosine from ~0 to 1 over the first `overlap` samples when `rise`, and back
    over the last `overlap` when `fall`; 1 elsewhere."""
    weights = np.ones(length, np.float64)
    if overlap > 0:
        n = min(overlap, length)
        edge = np.sin(0.5 * math.pi * (np.arange(n) + 0.5) / overlap) ** 2
        if rise:
            weights[:n] = np.minimum(weights[:n], edge)
        if fall:
            weights[length - n:] = np.minimum(weights[length - n:], edge[::-1])
    return weights


def blend_window(tile: Tile, height: int, width: int, overlap: int, scale: int = 1) -> np.ndarray:
    """(ceil(tile.height / scale), ceil(tile.width / scale)) float32 weights of `tile` in a (height, width)
    image: the cosine ramps only at sides that are inside the image. scale 8 gives the per-cell weights."""
    rows = _ramp(tile.height, overlap, tile.top > 0, tile.top + tile.height < height)
    cols = _ramp(tile.width, overlap, tile.left > 0, tile.left + tile.width < width)
    if scale > 1:  # the weight at each cell's centre pixel; a last, partial cell takes its last pixel's
        rows, cols = rows[_cell_centres(tile.height, scale)], cols[_cell_centres(tile.width, scale)]
    return np.outer(rows, cols).astype(np.float32)


def _cell_centres(length: int, scale: int) -> np.ndarray:
    """(ceil(length / scale),) indices of each cell's centre pixel, clipped into the `length` pixels."""
    return np.minimum(np.arange(math.ceil(length / scale)) * scale + scale // 2, length - 1)


class Stitcher:
    """Accumulates weighted tile maps into whole-image maps.

    add(tile, maps, cells): maps (2, h, w) = probability and uncertainty of the tile at full resolution;
    cells (K, ceil(h/8), ceil(w/8)) = per-cell maps (detector evidence and cell statistics), or None.
    result() -> (maps (2, H, W), cells (K, ceil(H/8), ceil(W/8)) or None), each float32.
    """

    def __init__(self, height: int, width: int, overlap: int) -> None:
        self.height, self.width, self.overlap = height, width, overlap
        self.maps = np.zeros((2, height, width), np.float32)
        self.weights = np.zeros((height, width), np.float32)
        self.cell_shape = (math.ceil(height / CELL), math.ceil(width / CELL))
        self.cells: np.ndarray | None = None
        self.cell_weights = np.zeros(self.cell_shape, np.float32)

    def add(self, tile: Tile, maps: torch.Tensor, cells: torch.Tensor | None) -> None:
        window = blend_window(tile, self.height, self.width, self.overlap)
        rows, cols = slice(tile.top, tile.top + tile.height), slice(tile.left, tile.left + tile.width)
        self.maps[:, rows, cols] += maps.numpy() * window
        self.weights[rows, cols] += window
        if cells is None:
            return
        cells = cells.numpy()
        if self.cells is None:
            self.cells = np.zeros((cells.shape[0], *self.cell_shape), np.float32)
        top, left = tile.top // CELL, tile.left // CELL
        cell_window = _cell_window(tile, self.height, self.width, self.overlap, cells.shape[1:])
        self.cells[:, top:top + cells.shape[1], left:left + cells.shape[2]] += cells * cell_window
        self.cell_weights[top:top + cells.shape[1], left:left + cells.shape[2]] += cell_window

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        maps = self.maps / np.maximum(self.weights, 1e-12)
        cells = None if self.cells is None else self.cells / np.maximum(self.cell_weights, 1e-12)
        return maps, cells


def _cell_window(tile: Tile, height: int, width: int, overlap: int, shape: tuple[int, int]) -> np.ndarray:
    """Per-cell weights of a tile, padded with the edge weight when its last cell is partial."""
    window = blend_window(tile, height, width, overlap, scale=CELL)
    pad = (max(0, shape[0] - window.shape[0]), max(0, shape[1] - window.shape[1]))
    return np.pad(window, ((0, pad[0]), (0, pad[1])), mode="edge")[:shape[0], :shape[1]]
