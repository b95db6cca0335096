"""The checkpoint shipped in weights/ loads offline and localizes a generated image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from docs_scripts import load_docs_script

from diffiml_cli.checkpoint import default_checkpoint, default_checkpoint_dir
from diffiml_cli.cli.app import app
from diffiml_cli.models.build import load_localizer, load_mask_vae


def _make_example(tmp_path: Path) -> Path:
    load_docs_script("make_example").main(tmp_path)
    return tmp_path / "example.png"


def test_default_checkpoint_is_small_self_describing_and_loads():
    weights = default_checkpoint() / "model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    localizer, config = load_localizer(default_checkpoint())
    assert config.encoder.backbone == "tf_efficientnet_lite0"
    assert config.resolution == "native"  # the model card's results are at native resolution
    assert load_mask_vae(default_checkpoint_dir("lightvae")).config.latent_channels == 4


def test_localize_with_no_checkpoint_option_uses_the_shipped_model_offline(tmp_path):
    example = _make_example(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["localize", str(example), "--out", str(out), "--steps", "2", "--ensemble", "2"])
    assert result.exit_code == 0, result.output
    width, height = Image.open(example).size
    mask = Image.open(out / "example_mask.png")
    assert mask.size == (width, height) and set(np.unique(np.asarray(mask))) <= {0, 255}
    report = json.loads((out / "results.json").read_text())
    assert report["run"]["checkpoint"] == str(default_checkpoint())
    assert report["images"][0]["status"] == "ok"
