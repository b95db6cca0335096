"""The checkpoint shipped in weights/ loads offline and localizes a generated image."""

from __future__ import annotations

import pytest

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from docs_scripts import load_docs_script
from textures import copy_moved_texture

from diffiml_cli.checkpoint import default_checkpoint, default_checkpoint_dir
from diffiml_cli.cli.app import app
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import load_model, load_mask_vae, with_copy_move_cue

pytestmark = pytest.mark.slow  # the shipped 19 MB model, at real sizes


def _make_example(tmp_path: Path) -> Path:
    load_docs_script("make_example").main(tmp_path)
    return tmp_path / "example.png"


def test_default_checkpoint_is_small_self_describing_and_loads():
    weights = default_checkpoint() / "model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    localizer, config = load_model(default_checkpoint())
    assert config.encoder.backbone == "tf_efficientnet_lite0"
    assert config.resolution == "native"  # the model card's results are at native resolution
    assert config.encoder.copy_move_cue and localizer.encoder.copy_move_cue is not None
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


def test_the_shipped_cue_is_what_finds_a_copy_move_with_no_other_trace():
    """A block of a noise texture copied elsewhere in it leaves no seam, colour or camera trace: only
    the repetition. The shipped weights mark it; the same weights without the cue branch do not."""
    image, _, _ = copy_moved_texture(3)
    truth = np.zeros(image.shape[:2], bool)
    truth[43:107, 63:127] = True
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    localizer, config = load_model(default_checkpoint())
    without_cue, _ = with_copy_move_cue(localizer, config, False)
    inside = {}
    for name, model in (("cue", localizer), ("no cue", without_cue)):
        predictor = Predictor(model.float(), config.diffusion, device=torch.device("cpu"))
        probability = predictor.predict(pixels, SamplingOptions(steps=8, ensemble=5, seed=0)).probability[0, 0].numpy()
        inside[name] = probability[truth].mean()
        if name == "cue":
            assert inside[name] > 2 * probability[~truth].mean()
    assert inside["cue"] > 0.45 and inside["no cue"] < 0.3, inside


@pytest.mark.parametrize(("folder", "upsampling", "pattern"), [("resize-decoder", "resize", False),
                                                             ("", "transposed", True)])
def test_only_the_refit_decoder_is_free_of_the_eight_pixel_checkerboard(tmp_path, folder, upsampling, pattern):
    """The reference LightVAE decoder (stride-2 ConvTranspose2d, kernel 3) prints an 8-pixel pattern on every
    soft region of the probability and uncertainty maps: share 0.23-0.40 on these maps, against under 0.01 for
    noise. weights/resize-decoder/ upsamples and then convolves, and its maps stay near the noise level; the
    default weights/ keep the old decoder (weights/README.md says why), and the measure must still see it there."""
    from diffiml_cli.models.mask_vae import checkerboard_share
    from diffiml_cli.pipeline import load_localizer

    example = np.asarray(Image.open(_make_example(tmp_path)).convert("RGB"))[:256, :384]
    localizer = load_localizer(default_checkpoint_dir(folder), device="cpu", precision="fp32")
    assert localizer.config.vae.decoder_upsampling == upsampling
    result = localizer.predict(example, steps=4, ensemble=5)
    share = checkerboard_share(torch.from_numpy(result.probability))
    assert (share > 0.1) if pattern else (share < 0.05), share
    if not pattern:
        assert checkerboard_share(torch.from_numpy(result.uncertainty)) < 0.05


def test_the_two_shipped_checkpoints_share_the_localizer_but_the_decoder_and_are_calibrated():
    """The refit swapped the decoder alone: encoder, denoiser and VAE encoder are bit for bit the same. The
    detector has the same shape in both; the default's was trained further (weights/README.md, *6. The detector
    trained further*)."""
    default, default_config = load_model(default_checkpoint())
    refit, refit_config = load_model(default_checkpoint_dir("resize-decoder"))
    for part in ("encoder", "denoiser"):
        ours, theirs = getattr(default, part).state_dict(), getattr(refit, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part
    assert default_config.detector == refit_config.detector
    assert not all(torch.equal(v, refit.detector.state_dict()[k]) for k, v in default.detector.state_dict().items())
    assert all(torch.equal(v, refit.vae.encoder.state_dict()[k]) for k, v in default.vae.encoder.state_dict().items())
    for config in (default_config, refit_config):
        assert config.calibration is not None and config.calibration.target_far == 0.05
        assert config.calibration.gate is False  # weights/README.md: the gate costs too much tampered F1
    # what `auto` runs on CPUs with and without bf16; chosen per set, on synthetic and on real authentic photos
    assert set(default_config.calibration.precision.split(",")) == {"bf16", "fp32"}
    assert "real-train-val.json" in default_config.calibration.data
    assert {name for name, _, _ in default_config.calibration.rates} == {"bf16", "fp32"}
    assert all(far <= default_config.calibration.target_far for _, far, _ in default_config.calibration.rates)
