"""Full-resolution tiles: the grid, the blend, equality with one pass when one tile suffices, and no seam."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import load_model
from diffiml_cli.pipeline import LocalizationPipeline
from diffiml_cli.tiling import Stitcher, Tile, blend_window, tile_grid


def test_the_grid_covers_the_image_with_overlaps_of_at_least_the_asked_width():
    for height, width in [(3000, 4000), (1030, 700), (1024, 1024), (500, 2100)]:
        tiles = tile_grid(height, width, 1024, 128)
        covered = np.zeros((height, width), int)
        for tile in tiles:
            assert tile.top % 8 == 0 and tile.left % 8 == 0 and tile.height * tile.width <= 1024 * 1024
            assert max(tile.height, tile.width) <= 8 * 1024
            covered[tile.top:tile.top + tile.height, tile.left:tile.left + tile.width] += 1
        assert covered.min() >= 1
        tops = sorted({t.top for t in tiles})
        assert all(b - a <= 1024 - 128 for a, b in zip(tops, tops[1:]))  # neighbours share >= 128 rows
    assert len(tile_grid(3000, 4000, 1024, 128)) == 4 * 5


@pytest.mark.parametrize("height, width", [(8, 65500), (65500, 8), (2, 4000), (300, 20000)])
def test_a_thin_image_takes_passes_in_proportion_to_its_pixels_not_its_long_side(height, width):
    """A 65500 x 8 image once took 73 square tiles of 1024 (125 s for 0.5 megapixels): its tiles now run along
    the long side, each within 1024² pixels once padded, so the passes follow the (padded) pixel count."""
    tiles = tile_grid(height, width, 1024, 128)
    covered = np.zeros((height, width), np.uint8)
    for tile in tiles:
        covered[tile.top:tile.top + tile.height, tile.left:tile.left + tile.width] = 1
        assert -(-tile.height // 64) * 64 * -(-tile.width // 64) * 64 <= 1024 * 1024 + 64 * 1024
    assert covered.all()
    padded_pixels = -(-min(height, width) // 64) * 64 * max(height, width)
    assert len(tiles) <= -(-padded_pixels // (1024 * 1024)) + 1


def test_blended_tiles_of_a_constant_map_stitch_to_that_constant():
    height, width, overlap = 300, 420, 32
    stitcher = Stitcher(height, width, overlap)
    for tile in tile_grid(height, width, 128, overlap):
        maps = torch.full((2, tile.height, tile.width), 0.25)
        cells = torch.full((5, -(-tile.height // 8), -(-tile.width // 8)), 0.5)
        stitcher.add(tile, maps, cells)
    maps, cells = stitcher.result()
    assert np.allclose(maps, 0.25, atol=1e-6) and np.allclose(cells, 0.5, atol=1e-6)
    window = blend_window(Tile(0, 96, 128, 128), 300, 420, 32)
    assert window[0, 0] < 0.01 and window[64, 64] == 1.0 and window[:, 0].max() < 0.01  # ramps only inside


def _image_with_an_edit(height: int, width: int) -> np.ndarray:
    """A smooth generated scene with a pasted noisy disc: one edit for the map to mark."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    image = np.stack([x / width * 180 + 30, y / height * 180 + 30, (x + y) / (height + width) * 120 + 60], axis=2)
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (height, width, 3)).astype(np.float32)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (width // 2 + 13, height // 2 - 7), min(height, width) // 5, 1, -1)
    return np.where(disc[..., None] > 0, patch, image).round().astype(np.uint8)


def _pipeline(checkpoint, native_max_side: int, tile: int, overlap: int = 32) -> LocalizationPipeline:
    model, config = load_model(checkpoint)
    config = dataclasses.replace(config, resolution="native", native_max_side=native_max_side)
    predictor = Predictor(model, config.diffusion, device=torch.device("cpu"))
    return LocalizationPipeline(predictor, config, sampling=SamplingOptions(steps=2, ensemble=2), tile=tile,
                                tile_overlap=overlap, batch_size=2)


def test_an_image_that_fits_one_tile_gives_the_untiled_prediction(tiny_checkpoint, one_thread):
    image = _image_with_an_edit(100, 90)
    untiled = _pipeline(tiny_checkpoint, native_max_side=512, tile=0).predict(image)
    tiled = _pipeline(tiny_checkpoint, native_max_side=64, tile=128).predict(image)  # "too large": one 128 tile
    assert tiled.tiles == 1 and untiled.tiles == 1
    np.testing.assert_allclose(tiled.probability, untiled.probability, atol=1e-6)
    np.testing.assert_allclose(tiled.uncertainty, untiled.uncertainty, atol=1e-6)
    assert tiled.image_score == pytest.approx(untiled.image_score, abs=1e-6)


@pytest.mark.slow
def test_tiles_of_the_shipped_model_meet_without_a_seam(one_thread):
    """Against one pass over the whole image, the tiled map changes across tile borders no more than the untiled
    map does there (tolerance 0.02 of mean absolute row-to-row change), and is close to it everywhere (mean
    absolute difference under 0.05: each tile's encoder sees less context near its borders)."""
    from diffiml_cli.checkpoint import default_checkpoint

    image = _image_with_an_edit(320, 448)
    whole = _pipeline(default_checkpoint(), native_max_side=1024, tile=0).predict(image).probability
    pipeline = _pipeline(default_checkpoint(), native_max_side=256, tile=256, overlap=64)
    tiled = pipeline.predict(image)
    assert tiled.tiles == len(tile_grid(320, 448, 256, 64)) > 1 and tiled.probability.shape == (320, 448)
    tiles = tile_grid(320, 448, 256, 64)
    borders_y = sorted({t.top + t.height for t in tiles if t.top + t.height < 320} | {t.top for t in tiles if t.top})
    borders_x = sorted({t.left + t.width for t in tiles if t.left + t.width < 448} | {t.left for t in tiles if t.left})
    for border in borders_y:
        jump = lambda p: float(np.abs(p[border] - p[border - 1]).mean())  # noqa: E731
        assert jump(tiled.probability) <= jump(whole) + 0.02
    for border in borders_x:
        jump = lambda p: float(np.abs(p[:, border] - p[:, border - 1]).mean())  # noqa: E731
        assert jump(tiled.probability) <= jump(whole) + 0.02
    assert float(np.abs(tiled.probability - whole).mean()) < 0.05
