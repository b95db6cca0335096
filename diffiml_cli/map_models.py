"""The two ways a localizer turns the encoder's condition into maps, behind one interface for `inference.Predictor`.

`DiffusionMaps` samples DiffIML's latent diffusion (Algorithm 2): N noise samples per view, all as one batch through
the denoiser, stepped by the run's sampler (`diffusion/samplers.py`), decoded by the mask VAE. `SegmentationMaps` is
the discriminative baseline's one pass of its segmentation head. Both are called as

    maps(condition (V, C, H/8, W/8), size (H, W), options) -> (probability, uncertainty), each (V, 1, H, W)

in the predictor's precision (`autocast`), and both say which input sides they need (`input_multiple`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

from diffiml_cli.config import DiffusionConfig
from diffiml_cli.diffusion.sampling import make_sampler, sample
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.mask_vae import decoded_to_probability
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer

if TYPE_CHECKING:
    from diffiml_cli.defaults import SamplingOptions

Autocast = Callable[[], AbstractContextManager]


class DiffusionMaps:
    """Algorithm 2 for a diffusion `Localizer`: the ensemble-mean latent decoded to the probability map, and the
    members' spread as the uncertainty map.

    The denoiser runs in the predictor's precision (`autocast`); the sampler's update, the ensemble average and its
    decode run in fp32: the iterate x_t accumulates every step's update, and the decoded mean is compared with the
    threshold. The members' decodes, which only feed the uncertainty and the detector's cell statistics, run in the
    chosen precision. No host-device sync happens inside the sampling loop.
    """

    def __init__(self, localizer: Localizer, diffusion: DiffusionConfig, *, autocast: Autocast,
                 memory_format: torch.memory_format, compile: bool = False) -> None:
        self.localizer, self.diffusion = localizer, diffusion
        self.autocast, self.memory_format = autocast, memory_format
        # The backbone needs sides that are multiples of 32; each UNet level below the first halves the latent.
        self.input_multiple = max(32, 8 * 2 ** (len(localizer.denoiser.config.block_out_channels) - 1))
        # The denoiser runs steps x (1 + TTA) times per batch with fixed shapes: the part worth compiling.
        denoise = localizer.denoiser.denoise
        self.denoise = torch.compile(denoise, dynamic=False) if compile else denoise
        self._schedulers: dict[str, object] = {}  # by sampler name, built on first use

    def __call__(self, condition: torch.Tensor, size: tuple[int, int], options: SamplingOptions
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """condition (V, C, h, w) -> (probability, uncertainty), each (V, 1, 8h, 8w) float32 in [0, 1] and [0, 0.5]."""
        views, N = condition.shape[0], options.ensemble
        z0 = self.sample_latents(condition, options)  # (V, N, latent channels, h, w)
        probability = decoded_to_probability(self.localizer.decode_mask(z0.mean(dim=1)))
        with self.autocast():  # the members only feed the uncertainty: see the class docstring
            members = decoded_to_probability(self.localizer.decode_mask(z0.flatten(0, 1)).float())
        return probability, member_spread(members.unflatten(0, (views, N)))

    def scheduler(self, sampler: str | None) -> object:
        """The diffusers scheduler of `sampler` (None: the checkpoint's) on this model's schedule, built once."""
        name = sampler or self.diffusion.sampler_name
        if name not in self._schedulers:
            self._schedulers[name] = make_sampler(self.diffusion, name)
        return self._schedulers[name]

    def sample_latents(self, condition: torch.Tensor, options: SamplingOptions,
                       on_x0: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """condition: (V, C, h, w), the encoder's output for V image views -> the N members' x0 latents
        (V, N, latent channels, h, w) float32 (scaled: the VAE's latents times its scale), from `options`' seed,
        sampler and steps; on_x0(t, x0_pred (V*N, latent channels, h, w)) sees every step's prediction.

        The condition's share of the denoiser is computed once per view; all members run as one batch. Run it under
        `torch.inference_mode()` or `torch.no_grad()`.
        """
        N, views = options.ensemble, condition.shape[0]
        with self.autocast():  # the condition's share of the denoiser, once per view rather than per call
            term = self.localizer.denoiser.condition_term(condition)
        # (V*N, W, h, w): one batch for all members. repeat_interleave returns NCHW; converting once here
        # spares the denoiser a conversion of its input at every step.
        term = term.repeat_interleave(N, dim=0).contiguous(memory_format=self.memory_format)
        x_T = self.initial_noise(views, N, condition.shape[-2:], options.seed, condition.device)
        x_T = x_T.contiguous(memory_format=self.memory_format)  # as the latents the steps return
        with self.autocast():  # the denoiser in the chosen precision; its x0 and the scheduler's update in fp32
            z0 = sample(lambda x_t, t: self.denoise(x_t, t, term).float(), x_T, self.scheduler(options.sampler),
                        options.steps, on_x0)
        return z0.float().unflatten(0, (views, N))

    def initial_noise(self, num_views: int, N: int, latent_size: torch.Size, seed: int,
                      device: torch.device) -> torch.Tensor:
        """x_T: (num_views * N, latent channels, h, w) standard normal. Each view draws from a generator seeded with
        `seed` alone, so an image's mask does not depend on which batch it landed in or on the batch size."""
        channels = self.localizer.denoiser.config.latent_channels
        generator = torch.Generator(device=device)
        draws = []
        for _ in range(num_views):
            generator.manual_seed(seed)
            draws.append(torch.randn((N, channels, *latent_size), generator=generator, device=device))
        return torch.cat(draws)


class SegmentationMaps:
    """The discriminative baseline (`models/segmentation_head.py`): one forward pass of its head per view; the
    sampling options are not used, and there are no members, so no disagreement to report."""

    def __init__(self, localizer: DiscriminativeLocalizer, *, autocast: Autocast, compile: bool = False) -> None:
        self.autocast = autocast
        self.input_multiple = 32  # the backbone's coarsest stride
        self.segment = torch.compile(localizer.segment, dynamic=False) if compile else localizer.segment

    def __call__(self, condition: torch.Tensor, size: tuple[int, int], options: SamplingOptions
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """condition (V, C, h, w) -> (probability (V, 1, H, W) float32 in [0, 1], uncertainty: zeros like it)."""
        with self.autocast():
            probability = torch.sigmoid(self.segment(condition, size).float())
        return probability, torch.zeros_like(probability)


def member_spread(members: torch.Tensor) -> torch.Tensor:
    """members (V, N, 1, H, W) float32 probabilities -> (V, 1, H, W), their population standard deviation over N.

    Written out rather than `Tensor.std`, whose CPU reduction over a middle dimension took 27 ms for 5 members of
    512² on 2 threads, against 1.3 ms for these four element-wise passes (same values to float rounding).
    """
    deviation = members - members.mean(dim=1, keepdim=True)
    return deviation.square().mean(dim=1).sqrt()
