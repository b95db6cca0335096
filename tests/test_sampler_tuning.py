"""Tuning the denoiser for the few-step sampler it runs with (issue #33, item 3): `train --tune-sampler`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from squares import Squares

from diffiml_cli.cli.app import app
from diffiml_cli.defaults import SamplingOptions
from diffiml_cli.models.build import build_localizer, load_model
from diffiml_cli.objectives import sampler_loss
from diffiml_cli.presets import get_preset
from diffiml_cli.train_config import read_train_config
from diffiml_cli.training import TrainOptions, Trainer

TUNE = SamplingOptions(steps=2, ensemble=2, sampler="ddim-trailing")


def _decoding_stand_in() -> SimpleNamespace:
    """A 'localizer' whose decoder upsamples latent channel 0 by 8: decoded values are what the test sets."""
    return SimpleNamespace(mask_latent_channels=1,
                           decode_mask=lambda z: F.interpolate(z[:, :1], scale_factor=8, mode="nearest"))


def test_the_decoded_loss_is_free_past_the_right_side_and_pulls_from_the_wrong_side():
    localizer = _decoding_stand_in()
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0  # the left half is manipulated
    right = torch.full((1, 2, 1, 2, 2), -1.5)
    right[..., 0] = 1.5  # overshoot past +1 inside the mask, past -1 outside
    _, parts = sampler_loss(right, right[:, 0], mask, localizer, mask_weight=1.0, decoded_weight=1.0)
    assert parts["loss_hinge"] == 0.0 and parts["loss_dice"] < 0.01
    wrong = torch.full((1, 2, 1, 2, 2), -1.5, requires_grad=True)  # saturated "authentic" over the edit too
    loss, parts = sampler_loss(wrong, right[:, 0], mask, localizer, mask_weight=0.0, decoded_weight=1.0)
    loss.backward()
    assert parts["loss_hinge"] == pytest.approx(0.5 * 2.5)
    assert (wrong.grad[..., 0] < 0).all() and (wrong.grad[..., 1] == 0).all()  # pushed up inside the edit only


def test_the_decoded_loss_reads_the_ensemble_mean_as_localize_does():
    mask = torch.ones(1, 1, 8, 8)
    members = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1)  # each member alone would be right or wrong
    _, parts = sampler_loss(members, members[:, 0], mask, _decoding_stand_in(), mask_weight=1.0, decoded_weight=1.0)
    assert parts["loss_hinge"] == pytest.approx(1.0)  # the mean, 0, is half-way


def _tuner(tmp_path, **overrides) -> Trainer:
    torch.manual_seed(0)
    config = get_preset("test")
    options = TrainOptions(out_dir=tmp_path, steps=100, batch_size=4, warmup_steps=1, learning_rate=3e-3,
                           train_part="sampler", tune_sampling=TUNE, **overrides)
    return Trainer(build_localizer(config), config, options, Squares(length=8))


def _batch(trainer: Trainer) -> dict:
    batch = {key: torch.stack([trainer.train_data[i][key] for i in range(4)]) for key in ("image", "mask", "edge")}
    batch["index"] = torch.arange(4)
    return batch


def test_tuning_trains_the_denoiser_alone_and_keeps_the_rest_bit_for_bit(tmp_path):
    trainer = _tuner(tmp_path)
    localizer = trainer.localizer
    frozen = {name: value.clone() for name, value in localizer.state_dict().items() if not name.startswith("denoiser.")}
    denoiser = [p.clone() for p in localizer.denoiser.parameters()]
    calls = []
    # the sampler calls `denoise`, not `forward`; the UNet's first conv runs once per call
    localizer.denoiser.unet.conv_in.register_forward_hook(lambda module, args, output: calls.append(output.requires_grad))
    batch = _batch(trainer)
    for _ in range(2):
        trainer.train_step(batch)
    assert all(torch.equal(frozen[name], value) for name, value in localizer.state_dict().items() if name in frozen)
    assert any(not torch.equal(a, b) for a, b in zip(denoiser, localizer.denoiser.parameters()))
    assert calls == [True] * (2 * TUNE.steps)  # every step of the sampler is differentiated through
    assert not localizer.encoder.training  # its BatchNorm statistics are the shipped ones


@pytest.mark.slow
def test_tuning_fits_the_few_step_samplers_output_on_a_fixed_batch(tmp_path):
    """The test preset's VAE is random, so even the target latents decode far from the mask and the decoded terms
    cannot fall much here: the latent terms show the chain is learned through, a gradient shows the decoded one is."""
    trainer = _tuner(tmp_path)
    batch = _batch(trainer)
    condition = trainer.conditions(batch["index"].tolist(), batch["image"])
    z0 = trainer.localizer.encode_targets(batch["mask"], batch["edge"])

    def fixed_loss(decoded_weight: float = 1.0) -> tuple[torch.Tensor, dict]:  # the same noise every time
        members = trainer.objective(condition, 7)
        return sampler_loss(members, z0, batch["mask"], trainer.localizer, mask_weight=0.2,
                            decoded_weight=decoded_weight)

    def denoiser_gradient(decoded_weight: float) -> torch.Tensor:
        trainer.localizer.zero_grad()
        fixed_loss(decoded_weight)[0].backward()
        return trainer.localizer.denoiser.unet.conv_in.weight.grad.clone()

    assert not torch.allclose(denoiser_gradient(1.0), denoiser_gradient(0.0))
    with torch.no_grad():
        start = fixed_loss()[1]["loss_latent"]
    for _ in range(20):
        trainer.train_step(batch)
    with torch.no_grad():
        assert fixed_loss()[1]["loss_latent"] < 0.3 * start


def test_train_tune_sampler_records_the_grid_in_the_checkpoint_and_repeats(tmp_path, photo_folder, tiny_checkpoint):
    out = tmp_path / "tuned"
    result = CliRunner().invoke(app, ["train", "--init", str(tiny_checkpoint), "--tune-sampler", "ddim-trailing",
                                      "--tune-steps", "1", "--tune-ensemble", "2", "--synthetic-from", str(photo_folder),
                                      "--steps", "1", "--batch-size", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    _, config = load_model(out / "final")
    assert config.diffusion.sampler_name == "ddim-trailing" and config.calibration is None
    train = json.loads((out / "train_config.json").read_text())["train"]
    assert train["train_part"] == "sampler" and train["val_sampling"]["sampler"] == "ddim-trailing"
    options = read_train_config(out / "train_config.json")
    assert (options["tune_sampler"], options["tune_steps"], options["tune_ensemble"]) == ("ddim-trailing", 1, 2)


def test_tuning_and_training_the_detector_in_one_run_is_refused(tmp_path, photo_folder, tiny_checkpoint):
    result = CliRunner().invoke(app, ["train", "--init", str(tiny_checkpoint), "--tune-sampler", "ddim-trailing",
                                      "--train-detector", "--synthetic-from", str(photo_folder), "--steps", "1",
                                      "--batch-size", "2", "--out", str(tmp_path / "both")])
    assert result.exit_code == 1 and "not both" in result.output
