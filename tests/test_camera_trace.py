"""The camera-trace front end in the model: its cell channels, its weights inside the checkpoint, once per image,
and `train --noiseprint --detector-trace`. Small random front ends (the map's forensic content is judged with
the real weights in tests/test_noiseprint.py and measured by docs/trace_statistics.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffiml_cli.checkpoint import save_checkpoint
from diffiml_cli.config import DetectorConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import load_model, with_camera_trace, with_detector
from diffiml_cli.models.camera_trace import TRACE_CHANNELS, trace_cells
from diffiml_cli.models.noiseprint import build_noiseprint, load_noiseprint, student_config
from diffiml_cli.presets import get_preset

FRONT = student_config(layers=3, width=8)


@pytest.fixture(scope="module")
def small_noiseprint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("np-small"), build_noiseprint(FRONT), FRONT)


@pytest.fixture(scope="module")
def trace_model(tiny_checkpoint, small_noiseprint):
    """The tiny localizer with the small front end and a random detector that reads its channels."""
    localizer, config = with_camera_trace(*load_model(tiny_checkpoint), small_noiseprint)
    localizer, config = with_detector(localizer, config, DetectorConfig(trace_features=True))
    return localizer.eval(), config


def _photos(folder, *, seed: int):
    """Four random 80 x 96 PNG photos in `folder`, for synthetic edits."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    return folder


def test_an_uneven_patch_stands_out_and_an_even_map_does_not():
    generator = torch.Generator().manual_seed(0)
    trace = torch.randn(2, 1, 96, 96, generator=generator)
    trace[0, :, 32:64, 40:72] *= 4.0  # image 0: a patch whose fingerprint is four times as strong
    cells = trace_cells(trace)
    assert cells.shape == (2, TRACE_CHANNELS, 12, 12)
    outlier, spread = cells[:, 1], cells[:, 2]
    assert outlier[0, 5:7, 6:8].min() > 3.0  # well inside the patch (smoothing blurs its rim)
    assert outlier[0, :2].abs().max() < 1.5 and outlier[1].abs().max() < 3.0
    assert torch.equal(spread[0], spread[0, :1, :1].expand(12, 12)) and spread[0, 0, 0] > spread[1, 0, 0]
    # energy is the log variance smoothed over 5 x 5 cells: cell (5, 6)'s window holds 16 cells of the patch
    assert cells[0, 0, 5, 6] - cells[1, 0].median() == pytest.approx(16 / 25 * np.log(16.0), abs=0.15)


def test_adding_the_front_end_changes_no_map_and_its_weights_travel(tiny_checkpoint, small_noiseprint, tmp_path):
    old, old_config = load_model(tiny_checkpoint)
    new, config = with_camera_trace(old, old_config, small_noiseprint)
    assert config.noiseprint == FRONT and config.detector is None
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = Predictor(old, old_config.diffusion, device=torch.device("cpu")).predict(images, SamplingOptions())
    after = Predictor(new, config.diffusion, device=torch.device("cpu")).predict(images, SamplingOptions())
    assert torch.equal(before.probability, after.probability)
    saved = save_checkpoint(tmp_path / "ckpt", new, config)
    loaded, loaded_config = load_model(saved)  # the front end's weights come from the checkpoint alone
    assert loaded_config.noiseprint == FRONT and not loaded.trace.training
    expected = load_noiseprint(small_noiseprint)[0].state_dict()
    got = loaded.trace.network.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(got[key], value) for key, value in expected.items())
    assert not any(parameter.requires_grad for parameter in loaded.trace.parameters())
    removed, removed_config = with_camera_trace(loaded, loaded_config, None)
    assert removed.trace is None and removed_config.noiseprint is None


def test_a_trace_detector_needs_a_front_end():
    with pytest.raises(DiffimlError, match="needs a noiseprint front end"):
        dataclasses.replace(get_preset("test"), detector=DetectorConfig(trace_features=True))


def test_the_front_end_runs_once_per_image_and_feeds_three_cell_channels(trace_model, monkeypatch):
    localizer, config = trace_model
    calls = []
    forward = type(localizer.trace).forward
    monkeypatch.setattr(type(localizer.trace), "forward", lambda self, images: calls.append(images.shape) or
                        forward(self, images))
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    prediction = predictor.predict(images, SamplingOptions(steps=2, ensemble=3, tta=True))
    assert calls == [torch.Size([2, 3, 64, 64])]  # not per member, not per mirrored view
    assert prediction.cells.shape == (2, 4 + TRACE_CHANNELS, 8, 8)
    expected = trace_cells(localizer.trace(images))
    assert torch.allclose(prediction.cells[:, 4:], expected, atol=1e-5)
    assert prediction.detection_score.shape == (2,)


def test_the_detector_score_moves_with_the_trace_channels(trace_model):
    """A detector that ignored its trace channels would score two images with equal maps alike."""
    localizer, config = trace_model
    with torch.no_grad():
        for parameter in localizer.detector.parameters():
            parameter.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(4))
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    prediction = predictor.predict(images, SamplingOptions(steps=1, ensemble=1))
    cells = prediction.cells.clone()
    cells[:, 4:] += 3.0
    moved = predictor.detect(localizer.detector(torch.zeros(1, config.encoder.out_channels, 8, 8), cells), cells)
    same = predictor.detect(localizer.detector(torch.zeros(1, config.encoder.out_channels, 8, 8), prediction.cells),
                            prediction.cells)
    assert not torch.allclose(moved, same)


def test_train_adds_the_front_end_and_a_trace_detector(tiny_checkpoint, small_noiseprint, tmp_path):
    photos = _photos(tmp_path / "photos", seed=0)
    args = [sys.executable, "-m", "diffiml_cli", "train", "--init", str(tiny_checkpoint), "--train-detector",
            "--detector-trace", "--synthetic-from", str(photos), "--steps", "2", "--batch-size", "2",
            "--authentic-share", "0.5", "--detector-steps", "1", "--detector-ensemble", "1", "--synthetic-length", "4",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "--noiseprint" in refused.stderr and "Traceback" not in refused.stderr
    result = subprocess.run([*args, "--noiseprint", str(small_noiseprint)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    localizer, config = load_model(tmp_path / "run" / "final")
    assert config.noiseprint == FRONT and config.detector.trace_features and config.calibration is None
    old, _ = load_model(tiny_checkpoint)
    for name, tensor in old.state_dict().items():  # the localizer itself is unchanged
        assert torch.equal(localizer.state_dict()[name], tensor), name


def test_a_fresh_trace_branch_changes_no_map_and_then_reads_the_map(tiny_checkpoint, small_noiseprint):
    from diffiml_cli.models.build import with_trace_branch

    old, old_config = load_model(tiny_checkpoint)
    with pytest.raises(DiffimlError, match="--noiseprint"):
        with_trace_branch(old, old_config, True)
    traced, config = with_trace_branch(*with_camera_trace(old, old_config, small_noiseprint), True)
    assert config.encoder.trace_branch
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    options = SamplingOptions(steps=2, ensemble=2, tta=True)
    before = Predictor(old, old_config.diffusion, device=torch.device("cpu")).predict(images, options)
    after = Predictor(traced, config.diffusion, device=torch.device("cpu")).predict(images, options)
    assert torch.equal(before.probability, after.probability)  # the branch starts at zero
    with torch.no_grad():
        traced.encoder.trace_branch.out.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(7))
        trace = traced.trace(images)
        assert not torch.allclose(traced.condition(images), old.condition(images))
        assert torch.equal(traced.condition(images), traced.condition(images, trace))  # computed once, or given
        assert not torch.allclose(traced.condition(images, torch.randn_like(trace)), traced.condition(images, trace))
    with pytest.raises(DiffimlError, match="trace_branch"):
        with_camera_trace(traced, config, None)


def test_train_with_a_trace_branch_moves_it_off_zero(tiny_checkpoint, small_noiseprint, tmp_path):
    photos = _photos(tmp_path / "photos", seed=1)
    result = subprocess.run([sys.executable, "-m", "diffiml_cli", "train", "--init", str(tiny_checkpoint),
                             "--noiseprint", str(small_noiseprint), "--trace-branch", "--synthetic-from", str(photos),
                             "--steps", "2", "--batch-size", "2", "--synthetic-length", "4", "--lr", "1e-3",
                             "--warmup-steps", "0", "--ema", "0", "--device", "cpu", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    localizer, config = load_model(tmp_path / "run" / "final")
    assert config.encoder.trace_branch and config.noiseprint == FRONT
    assert localizer.encoder.trace_branch.out.weight.abs().sum() > 0  # it learned from the map
    expected = load_noiseprint(small_noiseprint)[0].state_dict()  # the front end itself never trains
    assert all(torch.equal(localizer.trace.network.state_dict()[key], value) for key, value in expected.items())
