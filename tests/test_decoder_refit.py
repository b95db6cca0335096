"""The checkerboard-free LightVAE decoder: the metric that sees the pattern, and the refit that removes it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffiml_cli.config import MaskVAEConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.distillation.decoder_refit import RefitSettings, refit_checkpoint
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.models.build import load_model
from diffiml_cli.models.mask_vae import MaskVAE, checkerboard_share


def test_checkerboard_share_sees_an_eight_pixel_pattern_and_not_edges_or_noise():
    y, x = np.mgrid[:256, :256]
    disc = ((y - 128) ** 2 + (x - 120) ** 2 < 70**2).astype(np.float32)
    pattern = 0.1 * np.cos(2 * np.pi * x / 8) * np.cos(2 * np.pi * y / 8)
    assert checkerboard_share(torch.from_numpy(disc)) < 0.01  # a sharp edge is high-pass but not periodic
    assert checkerboard_share(torch.rand(256, 256)) < 0.01
    soft = cv2.GaussianBlur(disc, (0, 0), 6)  # a soft region, where decoded maps carry the pattern
    assert checkerboard_share(torch.from_numpy(soft)) < 0.01
    assert checkerboard_share(torch.from_numpy(soft * (0.5 + pattern))) > 0.5
    assert checkerboard_share(torch.from_numpy(soft * (0.5 + 0.2 * pattern))) > 0.15  # a faint one too
    with pytest.raises(ValueError):
        checkerboard_share(torch.zeros(30, 32))


@pytest.mark.parametrize("upsampling", ["transposed", "resize"])
def test_a_resize_decoder_has_no_uneven_overlap_even_at_random_init(upsampling):
    """At random initialisation, on a smooth latent, the transposed decoder already prints the pattern
    (measured 0.77-0.86 over three seeds: its taps overlap unevenly); the resize decoder does not (0.02-0.03)."""
    torch.manual_seed(0)
    vae = MaskVAE(MaskVAEConfig(decoder_upsampling=upsampling, decoder_channels=(64, 32, 16)))
    latent = torch.nn.functional.interpolate(torch.randn(1, 4, 4, 4), size=(32, 32), mode="bilinear")
    with torch.no_grad():
        share = checkerboard_share(vae.decode(latent)[0, 0])
    assert (share > 0.5) if upsampling == "transposed" else (share < 0.1)


def test_refit_keeps_encoder_and_denoiser_and_swaps_the_decoder(tmp_path, tiny_checkpoint, photo_folder):
    settings = RefitSettings(photos=str(photo_folder), steps=30, batch_size=4, image_size=64, crop=32, images=3,
                             latents_per_image=3, sampling=SamplingOptions(steps=2, ensemble=2), batch_norm_samples=8)
    result = refit_checkpoint(tiny_checkpoint, settings, tmp_path / "refit")
    old, _ = load_model(tiny_checkpoint)
    new, config = load_model(tmp_path / "refit")
    assert config.vae.decoder_upsampling == "resize" and config.vae.decoder_channels == (64, 32, 16)
    assert config.vae.scale_factor == old.vae.config.scale_factor
    for name, tensor in old.state_dict().items():
        if not name.startswith("vae.decoder."):  # fp16 storage: the refit saves as the shipped checkpoint does
            assert torch.equal(new.state_dict()[name].float(), tensor.half().float()), name
    assert not any(name.startswith("vae.decoder.") and name in old.state_dict()
                   and new.state_dict()[name].shape == old.state_dict()[name].shape
                   and torch.equal(new.state_dict()[name], old.state_dict()[name]) for name in new.state_dict())
    assert {row.kind: row.count for row in result.report.rows}["masks"] > 0
    assert np.isfinite(result.last_loss)


@pytest.mark.parametrize(("arguments", "expected"), [([], RefitSettings().steps), (["--steps", "7"], 7)])
def test_the_refit_command_defaults_to_the_refit_step_count_not_the_distillation_one(monkeypatch, tmp_path,
                                                                                     arguments, expected):
    """`distill-vae --refit-decoder` once ran the 14,000 distillation steps when --steps was not given."""
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    seen = {}

    def fake_refit(checkpoint, settings, out, *, exclude, on_step):
        seen["steps"] = settings.steps
        raise DiffimlError("stop here")

    monkeypatch.setattr("diffiml_cli.distillation.decoder_refit.refit_checkpoint", fake_refit)
    result = CliRunner().invoke(app, ["distill-vae", "--refit-decoder", "weights", "--synthetic-from",
                                      str(tmp_path), "--out", str(tmp_path / "out"), *arguments])
    assert seen["steps"] == expected and result.exit_code == 1
