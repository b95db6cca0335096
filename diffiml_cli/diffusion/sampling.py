"""The DDPM schedule, the training-time forward process with DiffIML's error prior, and DDIM sampling.

The schedule and the DDIM update come from diffusers' `DDIMScheduler` with `prediction_type="sample"`:
the denoiser predicts x0 directly, as in the paper. Everything here is a function of tensors and a
callable `x0_model(x_t, t) -> x0_pred`; nothing knows about the networks.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler

from diffiml_cli.config import DiffusionConfig

X0Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(config: DiffusionConfig) -> DDIMScheduler:
    """A diffusers DDIM scheduler for `config`, predicting x0 ("sample"), eta = 0 at `step` time."""
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


def sampling_timesteps(scheduler: DDIMScheduler, num_steps: int) -> torch.Tensor:
    """The respaced DDIM grid, e.g. 875, 750, ..., 125, 0 for 8 "leading" steps out of 1000."""
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


def ddim_sample(x0_model: X0Model, x_T: torch.Tensor, scheduler: DDIMScheduler, num_steps: int) -> torch.Tensor:
    """Deterministic DDIM (sigma = 0, Song et al. 2021, Eq. 12) from pure noise to x0 (Algorithm 2).

    x_T: (B, C, h, w) standard normal noise. Each step: x0_pred = model(x_t, t), optionally clipped to
    the configured range, then x_{t-1} = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev) eps_pred.
    With `set_alpha_to_one` the last step returns x0_pred itself. No host-device sync happens inside.
    """
    x_t = x_T
    batch = x_T.shape[0]
    for t in sampling_timesteps(scheduler, num_steps):
        t_batch = torch.full((batch,), int(t), device=x_T.device, dtype=torch.long)
        x0_pred = x0_model(x_t, t_batch)
        x_t = scheduler.step(x0_pred, t, x_t, eta=0.0).prev_sample
    return x_t
