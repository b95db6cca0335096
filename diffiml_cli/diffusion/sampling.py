"""The DDPM schedule, the training-time forward process with DiffIML's error prior, and the sampling loop.

The schedule comes from diffusers' `DDIMScheduler`; sampling runs any scheduler of `diffusion/samplers.py`, built
from the same schedule with `prediction_type="sample"`: the denoiser predicts x0 directly, as in the paper.
Everything here is a function of tensors and a callable `x0_model(x_t, t) -> x0_pred`; nothing knows about the
networks.
"""

from __future__ import annotations

from typing import Callable

import diffusers
import torch
from diffusers import DDIMScheduler, SchedulerMixin

from diffiml_cli.config import DiffusionConfig
from diffiml_cli.diffusion.samplers import ALGORITHMS, SamplerConfig

X0Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(config: DiffusionConfig) -> DDIMScheduler:
    """A diffusers DDIM scheduler for `config`'s training schedule, predicting x0 ("sample"), on its grid
    spacing; training reads its `alphas_cumprod`, and `make_sampler` builds every sampler from its config."""
    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_sample_range,
        set_alpha_to_one=config.set_alpha_to_one,
        timestep_spacing=config.timestep_spacing,
        prediction_type="sample",
    )


def make_sampler(config: DiffusionConfig, sampler: str | None = None) -> SchedulerMixin:
    """The diffusers scheduler of `sampler` (a name of `diffusion/samplers.py`; None: the checkpoint's,
    `config.sampler_name`) on `config`'s schedule, predicting x0 ("sample"): `from_config` of the DDIM scheduler's
    config with the grid spacing and the algorithm's own fields. The checkpoint's own DDIM sampler has exactly the
    config of `make_scheduler(config)`."""
    setting = SamplerConfig.parse(sampler or config.sampler_name)
    algorithm = ALGORITHMS[setting.algorithm]
    scheduler_class = getattr(diffusers, algorithm.scheduler)
    return scheduler_class.from_config(make_scheduler(config).config, timestep_spacing=setting.timestep_spacing,
                                       prediction_type="sample",
                                       **algorithm.overrides(config.clip_sample, config.clip_sample_range))


def sampling_timesteps(scheduler: SchedulerMixin, num_steps: int) -> torch.Tensor:
    """The scheduler's respaced grid (int64), e.g. 875, 750, ..., 125, 0 for 8 "leading" steps out of 1000,
    999, 499 for 2 "trailing" ones."""
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps


def add_noise_with_error_prior(
    z0: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    prior_rate: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Forward process with DiffIML's error prior (Algorithm 1):

        x_t = sqrt(alpha_bar_t) * (z0 + lambda * xi) + sqrt(1 - alpha_bar_t) * eps,   xi, eps ~ N(0, I)

    The prior term perturbs the clean latent, so the denoiser learns to correct imperfect x0 estimates
    like the ones it sees from its own earlier steps at sampling time.
    z0: (B, C, h, w) scaled latents; t: (B,) int64; alphas_cumprod: (T,) float on z0's device.
    """
    xi = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    alpha_bar = alphas_cumprod[t].to(z0.dtype).view(-1, 1, 1, 1)
    return alpha_bar.sqrt() * (z0 + prior_rate * xi) + (1.0 - alpha_bar).sqrt() * eps


def sample(x0_model: X0Model, x_T: torch.Tensor, scheduler: SchedulerMixin, num_steps: int,
           on_x0: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Algorithm 2: from pure noise to x0 with `scheduler` (any diffusers scheduler predicting "sample").

    x_T: (B, C, h, w) standard normal noise -> x0 (B, C, h, w). Each step: x0_pred = x0_model(x_t, t) with t (B,)
    int64, then `scheduler.step(x0_pred, t, x_t)`, which gets nothing else: what a scheduler needs beyond that (DDIM's
    eta = 0 and x0 clip, DPM-Solver's order and thresholding) is in its own config (`make_sampler`). on_x0(t, x0_pred)
    sees every step's prediction. No host-device sync happens inside.
    """
    x_t = x_T
    batch = x_T.shape[0]
    for t in sampling_timesteps(scheduler, num_steps):
        t_batch = torch.full((batch,), int(t), device=x_T.device, dtype=torch.long)
        x0_pred = x0_model(x_t, t_batch)
        if on_x0 is not None:
            on_x0(t, x0_pred)
        x_t = scheduler.step(x0_pred, t, x_t).prev_sample
    return x_t
