"""The sampler as a recorded setting: its grids, the schedulers it builds, that the reference DDIM is unchanged
bit for bit, and that the setting travels through checkpoints, calibrations and the warning about them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from typer.testing import CliRunner

from textures import copy_moved_texture

from diffiml_cli.checkpoint import load_checkpoint, save_checkpoint
from diffiml_cli.cli.app import app
from diffiml_cli.config import CalibrationConfig, DetectorConfig, DiffusionConfig, ModelConfig, config_from_dict
from diffiml_cli.diffusion.samplers import sampler_name
from diffiml_cli.diffusion.sampling import make_sampler, make_scheduler, sample, sampling_timesteps
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.calibration import calibrate, write_calibrated
from diffiml_cli.evaluation.datasets import load_datasets
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import build_localizer, load_model
from diffiml_cli.pipeline import load_localizer
from diffiml_cli.presets import get_preset

FAST = ["--steps", "1", "--ensemble", "1", "--device", "cpu", "--precision", "fp32"]


def test_trailing_grids_start_at_the_last_training_timestep_and_leading_two_steps_are_500_and_0():
    config = DiffusionConfig()
    for steps in (1, 2, 3, 8):
        for name in ("ddim-trailing", "dpmsolver++", "dpmsolver++-linspace"):
            assert sampling_timesteps(make_sampler(config, name), steps)[0] == config.num_train_timesteps - 1
    assert sampling_timesteps(make_sampler(config, "ddim-trailing"), 2).tolist() == [999, 499]
    assert sampling_timesteps(make_sampler(config, "ddim-leading"), 2).tolist() == [500, 0]
    assert sampling_timesteps(make_sampler(config), 8).tolist() == [875, 750, 625, 500, 375, 250, 125, 0]
    # The checkpoint's DDIM is the scheduler training builds, field for field; every sampler predicts x0.
    assert dict(make_sampler(config, "ddim").config) == dict(make_scheduler(config).config)
    for name in ("ddim-trailing", "dpmsolver++"):
        assert make_sampler(config, name).config.prediction_type == "sample"
    assert type(make_sampler(config, "dpmsolver++")).__name__ == "DPMSolverMultistepScheduler"
    assert make_sampler(config, "dpmsolver++").config.algorithm_type == "dpmsolver++"


def test_names_are_canonical_and_unknown_ones_are_refused():
    assert sampler_name("ddim") == "ddim-leading" and sampler_name("DPMSolver++") == "dpmsolver++-trailing"
    assert SamplingOptions(sampler="ddim").sampler == "ddim-leading"
    assert SamplingOptions().sampler is None  # the checkpoint's
    for bad in ("euler", "ddim-karras", "leading", ""):
        with pytest.raises(DiffimlError, match="sampler"):
            SamplingOptions(sampler=bad)
    with pytest.raises(DiffimlError):
        DiffusionConfig(timestep_spacing="middle")
    assert DiffusionConfig(sampler="dpmsolver++", timestep_spacing="trailing").sampler_name == "dpmsolver++-trailing"


@pytest.mark.parametrize("name", ["ddim-leading", "ddim-trailing", "dpmsolver++-trailing", "dpmsolver++-leading"])
def test_every_sampler_returns_a_perfect_models_x0_and_clips_to_the_latent_range(name):
    scheduler = make_sampler(DiffusionConfig(), name)
    target = torch.full((2, 8, 4, 4), 0.5)
    for steps in (1, 2, 5):
        torch.testing.assert_close(sample(lambda x_t, t: target, torch.randn(2, 8, 4, 4), scheduler, steps), target)
    wide = torch.full((1, 8, 4, 4), 3.0)  # past the range [-1, 1] SD-scaled latents live in
    torch.testing.assert_close(sample(lambda x_t, t: wide, torch.randn(1, 8, 4, 4), scheduler, 3),
                               torch.ones_like(wide))


def test_the_loop_gives_a_scheduler_only_the_prediction_the_timestep_and_the_sample():
    class Strict:
        """Accepts exactly what diffusers' SchedulerMixin.step has in common: no eta, no generator."""

        timesteps = torch.tensor([7, 3])
        calls = []

        def set_timesteps(self, steps):
            assert steps == 2

        def step(self, model_output, timestep, sample):
            self.calls.append(int(timestep))
            return type("Output", (), {"prev_sample": model_output})()

    seen = []
    out = sample(lambda x_t, t: x_t + 1, torch.zeros(2, 1, 2, 2), Strict(), 2, on_x0=lambda t, x0: seen.append(int(t)))
    assert Strict.calls == seen == [7, 3] and torch.equal(out, torch.full((2, 1, 2, 2), 2.0))


def test_dpm_solver_samples_give_finite_masks_of_the_right_shape_and_differ_from_ddim(tiny_checkpoint):
    localizer, config = load_model(tiny_checkpoint)
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    masks = {}
    for name in ("dpmsolver++", "ddim-trailing", "ddim"):
        for steps in (1, 2, 4):
            prediction = predictor.predict(images, SamplingOptions(sampler=name, steps=steps, ensemble=3, tta=True))
            for field in (prediction.probability, prediction.uncertainty):
                assert field.shape == (2, 1, 64, 96) and torch.isfinite(field).all()
            assert 0 <= prediction.probability.min() and prediction.probability.max() <= 1
            masks[name, steps] = prediction.probability
    assert not torch.equal(masks["dpmsolver++", 4], masks["ddim", 4])
    assert not torch.equal(masks["ddim-trailing", 2], masks["ddim", 2])  # 999, 499 against 500, 0
    # One step of each sampler from t = 999 is the denoiser's x0 at t = 999: the two trailing samplers agree.
    torch.testing.assert_close(masks["dpmsolver++", 1], masks["ddim-trailing", 1], atol=1e-5, rtol=0)
    # DPM-Solver++(2M) takes first-order steps first and last (lower_order_final), and its first-order step is
    # DDIM's (Lu et al. 2022, "DPM-Solver++"): at 2 steps the two agree up to where they clip x0; with 4, the
    # second-order steps between move the maps.
    torch.testing.assert_close(masks["dpmsolver++", 2], masks["ddim-trailing", 2], atol=1e-3, rtol=0)
    assert (masks["dpmsolver++", 4] - masks["ddim-trailing", 4]).abs().max() > 1e-3


def _pre_change_ddim(x0_model, x_T, scheduler, num_steps, on_x0=None):
    """The sampling loop as it was before the sampler was a setting: a DDIM scheduler built field by field from
    the checkpoint's DiffusionConfig, and `step(..., eta=0.0)`."""
    config = DiffusionConfig()
    ddim = DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule=config.beta_schedule, clip_sample=config.clip_sample,
                         clip_sample_range=config.clip_sample_range, set_alpha_to_one=config.set_alpha_to_one,
                         timestep_spacing=config.timestep_spacing, prediction_type="sample")
    ddim.set_timesteps(num_steps)
    x_t = x_T
    for t in ddim.timesteps:
        x0_pred = x0_model(x_t, torch.full((x_T.shape[0],), int(t), device=x_T.device, dtype=torch.long))
        x_t = ddim.step(x0_pred, t, x_t, eta=0.0).prev_sample
    return x_t


# Today's defaults and the paper's 8 DDIM steps on the shipped checkpoint in fp32, computed with the code before
# the sampler became a setting (commit 16207a3, one CPU thread): sums of the maps at the image's size, the mask's
# pixel count and the detection score. Other CPUs round fp32 convolutions differently, hence the tolerances.
REFERENCE = {
    "8 steps": (dict(sampler="ddim", steps=8, ensemble=5, seed=0), 22946.19010913372, 12910.831919279157, 26547,
                0.9669747948646545),
    "defaults": (dict(), 14640.034612506628, 11073.917741491236, 14547, 0.8960479497909546),
}


@pytest.mark.slow  # the shipped model, twice per setting
def test_ddim_reproduces_the_masks_of_the_code_before_samplers_were_settings(monkeypatch):
    image, _, _ = copy_moved_texture(3)
    pipeline = load_localizer(None, device="cpu", precision="fp32")
    assert pipeline.sampling.sampler == "ddim-leading"  # the shipped checkpoint records no sampler: DDIM, leading
    for name, (options, probability_sum, uncertainty_sum, mask_pixels, detection) in REFERENCE.items():
        result = pipeline.predict(image, **options)
        with monkeypatch.context() as patch:
            patch.setattr("diffiml_cli.map_models.sample", _pre_change_ddim)
            before = pipeline.predict(image, **options)
        for now, then in ((result.probability, before.probability), (result.uncertainty, before.uncertainty),
                          (result.mask, before.mask)):
            assert np.array_equal(now, then), name  # bit for bit
        assert result.detection_score == before.detection_score
        assert result.probability.astype(np.float64).sum() == pytest.approx(probability_sum, rel=1e-4), name
        assert result.uncertainty.astype(np.float64).sum() == pytest.approx(uncertainty_sum, rel=1e-4), name
        assert abs(int(result.mask.sum()) - mask_pixels) <= 30, name
        assert result.detection_score == pytest.approx(detection, abs=1e-4), name


def test_a_checkpoints_sampler_round_trips_and_older_checkpoints_are_ddim_leading(tmp_path, tiny_checkpoint):
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), diffusion=DiffusionConfig(sampler="dpmsolver++",
                                                                               timestep_spacing="trailing"))
    save_checkpoint(tmp_path / "dpm", build_localizer(config), config)
    _, loaded, _ = load_checkpoint(tmp_path / "dpm")
    assert loaded.diffusion == config.diffusion and loaded.diffusion.sampler_name == "dpmsolver++-trailing"
    assert json.loads((tmp_path / "dpm" / "config.json").read_text())["config"]["diffusion"]["sampler"] == "dpmsolver++"
    pipeline = load_localizer(tmp_path / "dpm", device="cpu")
    assert pipeline.sampling.sampler == "dpmsolver++-trailing"  # runs sample with the checkpoint's own
    assert pipeline.run_info()["sampling"]["sampler"] == "dpmsolver++-trailing"
    assert load_localizer(tmp_path / "dpm", device="cpu", sampling=SamplingOptions(sampler="ddim")).sampling.sampler \
        == "ddim-leading"
    # A config written before the field (its diffusion has no "sampler") is DDIM on its own grid.
    older = json.loads(json.dumps(dataclasses.asdict(get_preset("test"))))
    del older["diffusion"]["sampler"]
    assert config_from_dict(ModelConfig, older).diffusion.sampler_name == "ddim-leading"
    older["diffusion"]["timestep_spacing"] = "trailing"
    assert config_from_dict(ModelConfig, older).diffusion.sampler_name == "ddim-trailing"


def _calibration_set(root):
    for folder in ("Tp", "Gt", "Au"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "Tp" / f"t{index}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[10:40, 20:50] = 255
        Image.fromarray(mask).save(root / "Gt" / f"t{index}.png")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "Au" / f"a{index}.png")
    return root


@pytest.fixture(scope="module")
def with_detector(tmp_path_factory):
    """A random-init test-preset checkpoint with a detector (its scores are arbitrary, but they are scores)."""
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), detector=DetectorConfig(hidden_channels=8))
    return save_checkpoint(tmp_path_factory.mktemp("with-detector"), build_localizer(config), config)


def test_the_calibration_records_the_sampler_and_it_round_trips(with_detector, tmp_path):
    (name, (spec, pairs)), = load_datasets([str(_calibration_set(tmp_path / "set"))]).items()
    sampling = SamplingOptions(sampler="ddim-trailing", steps=1, ensemble=1)
    pipeline = load_localizer(with_detector, device="cpu", precision="fp32", sampling=sampling)
    calibration, _ = calibrate([pipeline], pairs, target_far=0.34, gate=False, data=spec)
    assert dict(calibration.sampling)["sampler"] == "ddim-trailing"
    write_calibrated(with_detector, calibration, tmp_path / "calibrated")
    _, config = load_model(tmp_path / "calibrated")
    assert config.calibration == calibration
    assert config.calibration.sampled_with(config.diffusion)["sampler"] == "ddim-trailing"
    # A calibration from before the setting names none: it sampled with the checkpoint's DDIM.
    older = CalibrationConfig(threshold=0.5, target_far=0.05, far=0.0, tpr=1.0, n_authentic=1, n_tampered=1,
                              sampling=(("ensemble", 1), ("seed", 0), ("steps", 1), ("tta", False)))
    assert older.sampled_with(config.diffusion)["sampler"] == "ddim-leading"


def _warnings(output: str) -> str:
    return " ".join(output.split())


def test_localize_and_calibrate_warn_when_the_run_samples_with_another_sampler(with_detector, tmp_path):
    data = _calibration_set(tmp_path / "set")
    calibrated = tmp_path / "calibrated"
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", "-d", str(data), "-c", str(with_detector), "-o", str(calibrated),
                                 "--target-far", "0.34", "--sampler", "ddim-trailing", *FAST])
    assert result.exit_code == 0, result.output
    assert dict(load_model(calibrated)[1].calibration.sampling)["sampler"] == "ddim-trailing"
    image = str(data / "Au" / "a0.png")
    same = runner.invoke(app, ["localize", image, "-c", str(calibrated), "-o", str(tmp_path / "a"),
                               "--sampler", "ddim-trailing", *FAST])
    assert same.exit_code == 0 and "calibrated at" not in same.output, same.output
    other = runner.invoke(app, ["localize", image, "-c", str(calibrated), "-o", str(tmp_path / "b"), *FAST])
    assert other.exit_code == 0, other.output
    assert "calibrated at sampler ddim-trailing, not sampler ddim-leading;" in _warnings(other.output)
    run = json.loads((tmp_path / "b" / "results.json").read_text())["run"]
    assert run["sampling"]["sampler"] == "ddim-leading"  # the checkpoint's own, named
    evaluate = runner.invoke(app, ["evaluate", "-d", str(data), "-c", str(calibrated), "-o", str(tmp_path / "e"),
                                   "--sampler", "dpmsolver++", *FAST])
    assert "calibrated at sampler ddim-trailing, not sampler dpmsolver++-trailing;" in _warnings(evaluate.output)
    bad = runner.invoke(app, ["localize", image, "-c", str(calibrated), "-o", str(tmp_path / "c"),
                              "--sampler", "euler", *FAST])
    assert bad.exit_code == 2 and "unknown sampler 'euler'" in _warnings(bad.output)
