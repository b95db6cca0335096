"""Sampling (Algorithm 2): the samplers and their timestep grids, determinism, ensembles and TTA."""

from __future__ import annotations

import dataclasses

import torch

from diffiml_cli.config import DetectorConfig, DiffusionConfig
from diffiml_cli.diffusion.sampling import add_noise_with_error_prior, make_scheduler, sample, sampling_timesteps
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import build_localizer, load_model
from diffiml_cli.models.detector import cell_maps
from diffiml_cli.models.mask_vae import decoded_to_probability
from diffiml_cli.presets import get_preset


def test_ddim_grid_for_8_steps_is_the_reference_leading_grid():
    scheduler = make_scheduler(DiffusionConfig())
    assert sampling_timesteps(scheduler, 8).tolist() == [875, 750, 625, 500, 375, 250, 125, 0]
    assert scheduler.config.prediction_type == "sample"
    assert scheduler.config.clip_sample and scheduler.config.clip_sample_range == 1.0


def test_ddim_with_a_perfect_x0_model_returns_x0_and_clips_to_the_configured_range():
    target = torch.full((2, 8, 4, 4), 0.5)
    result = sample(lambda x_t, t: target, torch.randn(2, 8, 4, 4), make_scheduler(DiffusionConfig()), 8)
    torch.testing.assert_close(result, target)  # set_alpha_to_one: the last step is x0_pred itself
    wide = torch.full((1, 8, 4, 4), 3.0)
    clipped = sample(lambda x_t, t: wide, torch.randn(1, 8, 4, 4), make_scheduler(DiffusionConfig(clip_sample_range=2.0)), 4)
    assert torch.allclose(clipped, torch.full_like(wide, 2.0))


def test_ddim_passes_each_grid_timestep_to_the_model_for_the_whole_batch():
    seen = []

    def model(x_t, t):
        seen.append(t.clone())
        return torch.zeros_like(x_t)

    sample(model, torch.randn(3, 8, 2, 2), make_scheduler(DiffusionConfig()), 4)
    assert [t.tolist() for t in seen] == [[750] * 3, [500] * 3, [250] * 3, [0] * 3]


def test_error_prior_matches_the_closed_form():
    alphas_cumprod = make_scheduler(DiffusionConfig()).alphas_cumprod
    z0 = torch.randn(4, 8, 3, 3)
    t = torch.tensor([0, 10, 500, 999])
    x_t = add_noise_with_error_prior(z0, t, alphas_cumprod, prior_rate=0.1, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    xi, eps = torch.randn(z0.shape, generator=g), torch.randn(z0.shape, generator=g)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * (z0 + 0.1 * xi) + (1 - a).sqrt() * eps)


def _predictor(checkpoint):
    localizer, config = load_model(checkpoint)
    return Predictor(localizer, config.diffusion, device=torch.device("cpu"))


def test_same_seed_gives_identical_masks_and_another_seed_different_samples(tiny_checkpoint):
    predictor = _predictor(tiny_checkpoint)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = predictor.predict(images, SamplingOptions(steps=4, ensemble=3, seed=7))
    again = predictor.predict(images, SamplingOptions(steps=4, ensemble=3, seed=7))
    other = predictor.predict(images, SamplingOptions(steps=4, ensemble=3, seed=8))
    assert torch.equal(first.probability, again.probability)
    assert not torch.equal(first.probability, other.probability)
    # An image's result does not depend on the batch it was in.
    alone = predictor.predict(images[1:], SamplingOptions(steps=4, ensemble=3, seed=7))
    torch.testing.assert_close(alone.probability[0], first.probability[1], atol=1e-5, rtol=0)


def test_prediction_ranges_ensemble_spread_and_tta(tiny_checkpoint):
    predictor = _predictor(tiny_checkpoint)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    single = predictor.predict(images, SamplingOptions(steps=2, ensemble=1))
    assert single.uncertainty.abs().max() == 0  # one member has no spread
    many = predictor.predict(images, SamplingOptions(steps=2, ensemble=4, tta=True))
    for prediction in (single, many):
        assert prediction.probability.shape == prediction.uncertainty.shape == (1, 1, 64, 64)
        assert 0 <= prediction.probability.min() and prediction.probability.max() <= 1
        assert prediction.image_score[0] == prediction.probability.max()
    assert many.uncertainty.max() > 0
    # TTA merges by max the image's maps and the mirrored image's maps flipped back (the same seed for both views).
    plain = predictor.predict(torch.cat([images, images.flip(-1)]), SamplingOptions(steps=2, ensemble=4, tta=False))
    torch.testing.assert_close(many.probability, torch.maximum(plain.probability[:1], plain.probability[1:].flip(-1)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(many.uncertainty, torch.maximum(plain.uncertainty[:1], plain.uncertainty[1:].flip(-1)),
                               atol=1e-5, rtol=0)
    assert (many.probability - torch.maximum(plain.probability[:1], plain.probability[1:])).abs().max() > 1e-3


def test_condition_encoder_runs_once_per_view(tiny_checkpoint, monkeypatch):
    predictor = _predictor(tiny_checkpoint)
    encoder = predictor.localizer.encoder
    calls = []
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda x: calls.append(x.shape[0]) or original(x))
    predictor.predict(torch.rand(3, 3, 64, 64), SamplingOptions(steps=8, ensemble=5, tta=True))
    assert calls == [6]  # 3 images x 2 views, one call, whatever the steps and ensemble size


def test_condition_term_once_per_view_gives_the_masks_of_the_full_denoiser_at_every_call(tiny_checkpoint):
    """The predictor computes the condition's share of the denoiser once per view and repeats it to the members;
    sampling with the whole denoiser and the repeated condition at every call must give the same maps."""
    predictor = _predictor(tiny_checkpoint)
    denoiser = predictor.localizer.denoiser
    assert denoiser.condition_fuse.weight.abs().sum() > 0
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    options = SamplingOptions(steps=3, ensemble=3, tta=True, seed=5)
    with torch.no_grad():
        views = torch.cat([images, images.flip(-1)])
        condition = predictor.localizer.encoder(views).repeat_interleave(3, dim=0)
        x_T = predictor.maps.initial_noise(4, 3, condition.shape[-2:], options.seed, condition.device)
        z0 = sample(lambda x_t, t: denoiser(x_t, t, condition), x_T, predictor.scheduler(None), options.steps)
        mean = predictor.localizer.decode_mask(z0.unflatten(0, (4, 3)).mean(dim=1))
        expected = decoded_to_probability(mean)
    expected = torch.maximum(expected[:2], expected[2:].flip(-1))
    got = predictor.predict(images, options).probability
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _predictor_with_a_detector() -> Predictor:
    """A random localizer of the test preset with a detector whose weights are random too, so that its score
    depends on every input it reads (a fresh detector scores the map's maximum alone)."""
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), detector=DetectorConfig())
    localizer = build_localizer(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in localizer.detector.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return Predictor(localizer, config.diffusion, device=torch.device("cpu"))


def test_tta_flips_the_mirrored_view_s_maps_and_condition_back_before_the_detector_reads_them():
    """With TTA the detector reads the merged maps (the max of both views, the mirrored one flipped back) and the
    mean of both views' conditions, the mirrored one flipped back as well."""
    predictor = _predictor_with_a_detector()
    localizer = predictor.localizer
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    options = SamplingOptions(steps=2, ensemble=3, tta=True, seed=4)
    merged = predictor.predict(images, options)
    views = torch.cat([images, images.flip(-1)])
    plain = predictor.predict(views, dataclasses.replace(options, tta=False))  # each view alone, the same noise
    probability = torch.maximum(plain.probability[:2], plain.probability[2:].flip(-1))
    uncertainty = torch.maximum(plain.uncertainty[:2], plain.uncertainty[2:].flip(-1))
    torch.testing.assert_close(merged.probability, probability, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.uncertainty, uncertainty, atol=1e-5, rtol=0)
    with torch.no_grad():
        condition = localizer.encoder(views).float()
        condition = 0.5 * (condition[:2] + condition[2:].flip(-1))
        cells = cell_maps(probability, uncertainty)
        evidence = localizer.detector(condition, cells)
        detection = torch.sigmoid(localizer.detector.score(evidence, cells))
    torch.testing.assert_close(merged.cells, cells, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.evidence, evidence, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged.detection_score, detection, atol=1e-5, rtol=0)
    # The mirrored image's merged outputs are the image's, mirrored: the two views only trade places.
    mirrored = predictor.predict(images.flip(-1), options)
    torch.testing.assert_close(mirrored.probability, merged.probability.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(mirrored.uncertainty, merged.uncertainty.flip(-1), atol=1e-5, rtol=0)
