"""Refit a trained localizer's LightVAE decoder as a resize-convolution decoder, without its checkerboard.

The reference decoder upsamples with stride-2 `ConvTranspose2d` of kernel 3, whose taps overlap unevenly: every
decoded map carries an 8-pixel checkerboard wherever it is neither 0 nor 1, which is where an examiner looks.
The denoiser predicts *encoder* latents, so the decoder can be replaced on its own: this module keeps the
encoder and the denoiser bit for bit and trains a `decoder_upsampling="resize"` decoder (bilinear upsampling,
then a 3x3 convolution) on two kinds of latents:

- encoder latents of procedural masks and edge bands (`targets.TrainingTargets`), with the mask as target, so
  the new decoder reconstructs real masks as the old one did (F1 >= 0.99 is checked by the report);
- the latents the sampler really decodes, which lie off the encoder's manifold: the ensemble mean, single
  members and early-step x0 predictions of the localizer run on synthetic edits of photos. Their target is
  the old decoder's output smoothed by a Gaussian (sigma `target_sigma` px, which keeps under 6 % of the
  8-pixel pattern), so probabilities keep their meaning and only the pattern goes.

The loss is |clamp(decoded, -1, 1) - target|: overshoot past +-1 is free, as `decoded_to_probability` clamps it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.config import ModelConfig
from diffiml_cli.data.augment import crop_at_native_resolution
from diffiml_cli.data.synthetic import SyntheticManipulations
from diffiml_cli.distillation.settings import RefitSettings  # noqa: F401 - re-exported
from diffiml_cli.distillation.targets import BATCH_NORM_STREAM, TRAIN_STREAM, TrainingTargets, reconstruction_report
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.mask_vae import MaskVAE, build_decoder, checkerboard_share, decoded_to_probability


@dataclass(frozen=True)
class RefitResult:
    """The refit localizer, its config, and what changed: reconstruction report, checkerboard shares
    (held-out sampler latents, mean over images, old and new decoder) and the final loss."""

    localizer: Localizer
    config: ModelConfig
    report: object
    checkerboard_before: float
    checkerboard_after: float
    last_loss: float


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W), reflect-padded."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = (taps / taps.sum()).to(x)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, -1, 1))


@torch.no_grad()
def sampler_latents(predictor: Predictor, windows: list[np.ndarray], sampling: SamplingOptions, per_image: int,
                    seed: int) -> torch.Tensor:
    """Raw (unscaled) mask latents the sampler decodes for each window: (len(windows) * per_image, 4, h, w).

    Per window (with a seed drawn from `seed`): the ensemble mean, the N members, then x0 predictions of member 0
    at random steps, as `predictor.sample_latents` samples them.
    """
    localizer = predictor.localizer
    mask_channels = localizer.vae.config.latent_channels
    rng = np.random.default_rng(seed)
    collected = []
    for window in windows:
        image = torch.from_numpy(window.copy()).permute(2, 0, 1)[None].float().div(255.0)
        options = dataclasses.replace(sampling, seed=int(rng.integers(2**31)))
        steps: list[torch.Tensor] = []
        z0 = predictor.sample_latents(localizer.condition(image), options,
                                      on_x0=lambda t, x0: steps.append(x0[:1, :mask_channels].clamp(-1, 1)))
        z0 = z0[0, :, :mask_channels]  # (N, mask channels, h, w)
        early = [steps[int(i)] for i in rng.integers(0, max(1, len(steps) - 1), per_image)]
        latents = torch.cat([z0.mean(dim=0, keepdim=True), z0, *early])[:per_image]
        collected.append(latents / localizer.latent_scale)
    return torch.cat(collected)


def _windows(settings: RefitSettings, count: int, offset: int) -> list[np.ndarray]:
    """`count` native-resolution windows of synthetic edits (a third of them untouched photos)."""
    maker = SyntheticManipulations(settings.photos, seed=settings.seed + offset, authentic_share=0.3,
                                   exclude=settings.exclude)
    rng = np.random.default_rng([settings.seed, offset])
    return [crop_at_native_resolution(*maker.make(i)[:2], settings.image_size, rng)[0] for i in range(count)]


@torch.no_grad()
def _recalibrate(decoder: nn.Module, latents: torch.Tensor, batch_size: int = 32) -> None:
    """Exact BatchNorm statistics of the decoder over `latents` (the encoder's are left alone)."""
    norms = [m for m in decoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    decoder.train()
    for start in range(0, len(latents), batch_size):
        decoder(latents[start:start + batch_size])
    for norm in norms:
        norm.momentum = 0.1
    decoder.eval()


def mean_checkerboard(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor) -> float:
    """Mean `checkerboard_share` of the probability maps decoded from raw latents (B, 4, h, w)."""
    with torch.no_grad():
        maps = decoded_to_probability(decode(latents))
    return float(np.mean([checkerboard_share(m) for m in maps]))


def _train_decoder(decoder: nn.Module, old_vae: MaskVAE, latents: torch.Tensor, targets: torch.Tensor,
                   settings: RefitSettings, on_step: Callable[[int, float], None]) -> float:
    """AdamW + cosine on `crop`-pixel crops: procedural masks through the frozen encoder (`mask_share` of each
    batch), and crops of the sampler latents with their smoothed targets. Returns the last loss."""
    masks = TrainingTargets(settings.crop, seed=settings.seed, stream=TRAIN_STREAM)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps, eta_min=settings.lr / 100)
    count = max(1, round(settings.batch_size * settings.mask_share))
    cells, limit = settings.crop // 8, latents.shape[-1] - settings.crop // 8
    rng = np.random.default_rng(settings.seed)
    loss = math.nan
    for step in range(settings.steps):
        y = masks.batch(step * count, count)
        with torch.no_grad():
            batch_latents, batch_targets = [old_vae.encode(y)], [y]
        for index in rng.integers(0, len(latents), settings.batch_size - count):
            top, left = (int(v) for v in rng.integers(0, limit + 1, 2))
            batch_latents.append(latents[index:index + 1, :, top:top + cells, left:left + cells])
            batch_targets.append(targets[index:index + 1, :, 8 * top:8 * (top + cells), 8 * left:8 * (left + cells)])
        decoder.train()
        error = F.l1_loss(decoder(torch.cat(batch_latents)).clamp(-1, 1), torch.cat(batch_targets))
        optimizer.zero_grad(set_to_none=True)
        error.backward()
        optimizer.step()
        schedule.step()
        loss = error.item()
        on_step(step + 1, loss)
    return loss


def refit_decoder(localizer: Localizer, config: ModelConfig, settings: RefitSettings, *,
                  on_step: Callable[[int, float], None] = lambda step, loss: None) -> RefitResult:
    """Train a resize-convolution decoder for `localizer` (see the module docstring); returns a new localizer
    whose encoder, denoiser and VAE encoder are the old ones, unchanged. Runs on the CPU."""
    if config.kind != "diffusion":
        raise DiffimlError("only a diffusion localizer has a mask VAE decoder to refit")
    if not settings.photos:
        raise DiffimlError("a decoder refit needs a folder of photos for the sampler's latents")
    torch.manual_seed(settings.seed)
    localizer = localizer.eval()
    old_vae = localizer.vae
    vae_config = dataclasses.replace(config.vae, decoder_upsampling="resize", decoder_channels=settings.decoder_channels)
    new_vae = MaskVAE(vae_config)
    new_vae.encoder.load_state_dict(old_vae.encoder.state_dict())
    decoder = build_decoder(vae_config)
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"), channels_last=False)
    train_latents = sampler_latents(predictor, _windows(settings, settings.images, 1), settings.sampling,
                                    settings.latents_per_image, settings.seed)
    held_out = sampler_latents(predictor, _windows(settings, 16, 2), settings.sampling, 2, settings.seed + 1)
    with torch.no_grad():  # in chunks: (n, 1, 8h, 8w) floats of all of them at once can be large
        train_targets = torch.cat([_smooth(old_vae.decode(chunk).clamp(-1, 1), settings.target_sigma)
                                   for chunk in train_latents.split(64)])
    loss = _train_decoder(decoder, old_vae, train_latents, train_targets, settings, on_step)
    with torch.no_grad():
        bn_masks = TrainingTargets(settings.image_size, seed=settings.seed, stream=BATCH_NORM_STREAM)
        calibration = torch.cat([old_vae.encode(bn_masks.batch(0, settings.batch_norm_samples)), train_latents])
    _recalibrate(decoder, calibration)
    new_vae.decoder.load_state_dict(decoder.state_dict())
    refit = Localizer(encoder=localizer.encoder, denoiser=localizer.denoiser, vae=new_vae,
                      detector=localizer.detector).eval()
    new_config = dataclasses.replace(config, vae=vae_config)
    report = reconstruction_report(new_vae, settings.image_size, seed=settings.seed, count=256)
    return RefitResult(refit, new_config, report, mean_checkerboard(old_vae.decode, held_out),
                       mean_checkerboard(new_vae.decode, held_out), loss)


def refit_checkpoint(source: str | Path, settings: RefitSettings, out_dir: str | Path, *,
                     exclude: Collection[str] = (), on_step: Callable[[int, float], None] = lambda step, loss: None,
                     ) -> RefitResult:
    """Load a localizer checkpoint, refit its decoder, and save the result (fp16, as shipped) to `out_dir`."""
    from diffiml_cli.checkpoint import save_checkpoint
    from diffiml_cli.models.build import load_model

    localizer, config = load_model(source)
    settings = dataclasses.replace(settings, exclude=tuple(settings.exclude) + tuple(exclude))
    result = refit_decoder(localizer, config, settings, on_step=on_step)
    save_checkpoint(out_dir, result.localizer, result.config, half=True)
    return result
