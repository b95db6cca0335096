"""The detector's JPEG block-grid channels: where a JPEG photo's 8x8 grid holds and where a paste breaks it."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from diffiml_cli.config import DetectorConfig
from diffiml_cli.image_ops import jpeg_compress
from diffiml_cli.models.block_grid import GRID_CHANNELS, grid_cells
from diffiml_cli.models import detector as detector_module
from diffiml_cli.models.build import load_model
from diffiml_cli.models.detector import CELL_CHANNELS, Detector, cell_maps
from diffiml_cli.pipeline import load_localizer


def _photo(seed: int, height: int = 192, width: int = 256) -> np.ndarray:
    """A textured (H, W, 3) uint8 image: smoothed noise, so that JPEG blocks show at their boundaries."""
    noise = np.random.default_rng(seed).normal(128, 60, (height, width, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 1.5), 0, 255).astype(np.uint8)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


def _pasted():
    """A JPEG host with a region from another JPEG pasted 3 px off its grid: (image, region slices in cells)."""
    host = jpeg_compress(_photo(0), 70)
    donor = jpeg_compress(_photo(1), 70)
    image = host.copy()
    image[64:160, 96:224] = donor[67:163, 99:227]  # moved by 3 px in x and y: the donor's grid lands off the host's
    return image, (slice(10, 18), slice(14, 26))  # the region's cells, 2 cells in from its border


def test_a_paste_off_the_grid_weakens_the_hosts_grid_there_and_shows_another():
    image, (rows, cols) = _pasted()
    grid = grid_cells(_tensor(image))[0]
    assert grid.shape == (GRID_CHANNELS, 192 // 8, 256 // 8)
    aligned, other = grid[0], grid[1]
    outside = torch.ones_like(aligned, dtype=torch.bool)
    outside[6:22, 10:30] = False  # the region and a margin of the 5-cell smoothing window
    assert aligned[rows, cols].mean() < 0.5 * aligned[outside].mean()
    assert other[rows, cols].mean() > 2.0 * other[outside].mean()


def test_the_overall_channel_tells_a_jpeg_from_a_photo_never_compressed():
    raw = grid_cells(_tensor(_photo(2)))[0, 2]
    compressed = grid_cells(_tensor(jpeg_compress(_photo(2), 70)))[0, 2]
    assert torch.all(raw == raw[0, 0]) and torch.all(compressed == compressed[0, 0])  # one value per image
    assert compressed[0, 0] > 0.1 > abs(float(raw[0, 0]))


def test_a_crop_moves_the_grid_and_the_dominant_phase_follows_it():
    image = jpeg_compress(_photo(3, 200, 264), 70)
    whole = grid_cells(_tensor(image[:192, :256]))[0, 0].mean()
    shifted = grid_cells(_tensor(image[5:197, 3:259]))[0, 0].mean()  # the grid now at another phase
    assert shifted == pytest.approx(float(whole), rel=0.25)


def test_cell_maps_append_the_grid_channels_only_when_given_the_images():
    probability = torch.rand(2, 1, 64, 96)
    images = torch.rand(2, 3, 64, 96)
    plain = cell_maps(probability, probability)
    with_grid = cell_maps(probability, probability, images)
    assert plain.shape == (2, CELL_CHANNELS, 8, 12) and with_grid.shape == (2, CELL_CHANNELS + GRID_CHANNELS, 8, 12)
    assert torch.equal(with_grid[:, :CELL_CHANNELS], plain)
    assert torch.equal(with_grid[:, CELL_CHANNELS:], grid_cells(images))
    detector = Detector(DetectorConfig(grid_features=True), condition_channels=5)
    assert detector(torch.rand(2, 5, 8, 12), with_grid).shape == (2, 1, 8, 12)
    with pytest.raises(RuntimeError):
        detector(torch.rand(2, 5, 8, 12), plain)


def test_train_detector_grid_gives_a_fresh_detector_that_predict_feeds_the_grid(tiny_checkpoint, tmp_path,
                                                                              monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(4):
        Image.fromarray(jpeg_compress(_photo(index, 80, 96), 80)).save(photos / f"p{index}.png")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "diffiml_cli", "train", "--init", str(tiny_checkpoint),
                             "--train-detector", "--detector-grid", "--synthetic-from", str(photos),
                             "--steps", "2", "--batch-size", "2", "--authentic-share", "0.5", "--detector-steps", "1",
                             "--detector-ensemble", "1", "--synthetic-length", "4", "--out", str(out), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model, config = load_model(out / "final")
    assert config.detector == DetectorConfig(grid_features=True)
    assert model.detector.local[0].in_channels == config.encoder.out_channels + CELL_CHANNELS + GRID_CHANNELS
    pipeline = load_localizer(str(out / "final"), device="cpu")
    with torch.no_grad():  # two steps leave the score at its start (the map's maximum): let the evidence count
        pipeline.predictor.localizer.detector.pool.weight[0, 0] = 1.0
    image = jpeg_compress(_photo(5, 96, 128), 80)
    first = pipeline.predict(image, steps=1, ensemble=1)
    seen = []

    def spy(images):
        seen.append(images.shape)
        return grid_cells(images) + 5.0  # another grid: the score must move

    monkeypatch.setattr(detector_module, "grid_cells", spy)
    second = pipeline.predict(image, steps=1, ensemble=1)
    assert len(seen) == 1 and tuple(seen[0][:2]) == (1, 3)  # once, on the model's input (64^2 for this tiny one)
    assert 0.0 <= first.detection_score <= 1.0 and second.detection_score != first.detection_score
