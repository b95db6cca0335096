"""The copy-move cue: SIFT self-matches find a copied block, the branch starts as a no-op, and `train
--copy-move-cue` adds it to a checkpoint that then saves and loads with it."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from diffiml_cli.models.build import build_localizer, load_model, with_copy_move_cue
from diffiml_cli.models.copy_move_cue import cue_maps
from diffiml_cli.presets import get_preset
from textures import copy_moved_texture, texture as _texture


@pytest.mark.parametrize("seed", [0, 1])
def test_cue_marks_both_ends_of_a_copy_and_little_else(seed):
    image, source, target = copy_moved_texture(seed)
    matched, keypoints = cue_maps(image, (32, 48))
    assert matched.shape == (32, 48) and matched.dtype == np.float32
    assert 0.0 <= matched.min() and matched.max() < 1.0
    elsewhere = ~(cv2.dilate(source.astype(np.uint8), np.ones((5, 5))) | cv2.dilate(target.astype(np.uint8), np.ones((5, 5)))).astype(bool)
    assert matched[target].mean() > 0.3 and matched[source].mean() > 0.3
    assert matched[elsewhere].mean() < 0.05
    assert keypoints.mean() > 0.3  # the texture has keypoints all over

    untouched, _ = cue_maps(_texture(seed), (32, 48))
    assert untouched.mean() < 0.02  # nothing repeats, so (almost) nothing matches


def test_cue_of_a_flat_image_is_empty():
    maps = cue_maps(np.full((64, 64, 3), 128, np.uint8), (8, 8))
    assert maps.shape == (2, 8, 8) and not maps.any()


def test_adding_the_cue_keeps_every_prediction_and_its_gradient_reaches_the_branch():
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), image_size=64)
    plain = build_localizer(config).eval()
    cued, cued_config = with_copy_move_cue(plain, config, True)
    assert cued_config.encoder.copy_move_cue and not config.encoder.copy_move_cue
    image = torch.from_numpy(copy_moved_texture(0)[0][:64 * 3:3, :64 * 3:3].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(cued.encoder(image), plain.encoder(image), rtol=0, atol=0)
    cued.train()
    cued.encoder(torch.from_numpy(copy_moved_texture(0)[0][:128, :128].copy()).permute(2, 0, 1)[None].float() / 255).sum().backward()
    assert cued.encoder.copy_move_cue.out.weight.grad.abs().sum() > 0
    removed, removed_config = with_copy_move_cue(cued, cued_config, False)
    assert removed.encoder.copy_move_cue is None and removed_config == config


def test_train_with_copy_move_cue_saves_a_checkpoint_that_loads_with_the_branch(tmp_path, photo_folder, tiny_checkpoint):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    out = tmp_path / "cue"
    command = ["train", "--synthetic-from", str(photo_folder), "--init", str(tiny_checkpoint), "--copy-move-cue",
               "--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_config.json").read_text())["model"]["encoder"]["copy_move_cue"] is True
    trained, config = load_model(out / "final")
    assert config.encoder.copy_move_cue and trained.encoder.copy_move_cue is not None
    assert trained.encoder.copy_move_cue.out.weight.abs().sum() > 0  # it trained away from zero
    start, start_config = load_model(tiny_checkpoint)
    assert start.encoder.copy_move_cue is None and not start_config.encoder.copy_move_cue
