"""The training objectives: DiffIML's latent denoising loss, the same loss through the few-step sampler (tuning the
denoiser for the grid it is sampled on), and the discriminative baseline's BCE + Dice.

Each trainable forward pass is one module, so DDP can wrap it; the losses are plain functions.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.config import DiffusionConfig
from diffiml_cli.defaults import SamplingOptions
from diffiml_cli.map_models import DiffusionMaps
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer


class DenoisingObjective(nn.Module):
    """(image, x_t, t) -> x0_pred: the condition encoder and denoiser of Algorithm 1."""

    def __init__(self, localizer: Localizer) -> None:
        super().__init__()
        self.localizer = localizer

    def forward(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.localizer.denoiser(x_t, t, self.localizer.condition(image))


class SegmentationObjective(nn.Module):
    """image (B, 3, H, W) -> mask logits (B, 1, H, W): the discriminative baseline."""

    def __init__(self, localizer: DiscriminativeLocalizer) -> None:
        super().__init__()
        self.localizer = localizer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.localizer(image)


def diffiml_loss(x0_pred: torch.Tensor, z0: torch.Tensor, mask_weight: float, mask_channels: int = 4
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * MSE over the mask-latent channels + (1 - alpha) * MSE over the edge-latent channels.

    x0_pred, z0: (B, 2C, h, w), C = `mask_channels` (the VAE's latent channels) mask then edge channels. With
    (B, C, h, w) (the no-edge ablation) the loss is the mask MSE alone.
    """
    mask_loss = F.mse_loss(x0_pred[:, :mask_channels].float(), z0[:, :mask_channels])
    if z0.shape[1] == mask_channels:
        return mask_loss, {"loss_mask": mask_loss.item()}
    edge_loss = F.mse_loss(x0_pred[:, mask_channels:].float(), z0[:, mask_channels:])
    loss = mask_weight * mask_loss + (1.0 - mask_weight) * edge_loss
    return loss, {"loss_mask": mask_loss.item(), "loss_edge": edge_loss.item()}


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, *, smooth: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice of logits (B, 1, H, W) against mask (B, 1, H, W) in {0, 1}.

    Dice is per image, with `smooth` in numerator and denominator so an authentic image (empty mask)
    predicted empty scores a Dice loss of 0 rather than 0/0.
    """
    logits, mask = logits.float(), mask.float()
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    dice = soft_dice_loss(torch.sigmoid(logits), mask, smooth=smooth)
    return bce + dice, {"loss_bce": bce.item(), "loss_dice": dice.item()}


def soft_dice_loss(probability: torch.Tensor, mask: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, per image then averaged: probability and mask (B, 1, H, W) in [0, 1]. `smooth` in numerator
    and denominator makes an authentic image (empty mask) predicted empty cost 0 rather than 0/0."""
    probability, target = probability.flatten(1), mask.flatten(1)
    overlap = (probability * target).sum(dim=1)
    return (1.0 - (2.0 * overlap + smooth) / (probability.sum(dim=1) + target.sum(dim=1) + smooth)).mean()


class SamplerObjective(nn.Module):
    """(condition (B, C, h, w), seed) -> the N members' final x0 latents (B, N, latent channels, h, w) float32: the
    run's few-step sampler (`sampling`'s sampler, steps and N) from pure noise, with gradients through every
    denoiser call and every scheduler update, as Garcia et al. (2024) tuned Marigold for its one-step grid.

    Only the denoiser is a submodule (what DDP sees and the optimiser trains); the condition comes from the frozen
    encoder. The noise is drawn from `seed`, one draw shared by the batch's images, as `predict` draws it.
    """

    def __init__(self, localizer: Localizer, diffusion: DiffusionConfig, sampling: SamplingOptions) -> None:
        super().__init__()
        self.denoiser = localizer.denoiser
        self.sampling = sampling
        # fp32 throughout: training on the CPU (`Trainer` refuses autocast there) and the gradients of the update.
        self._maps = DiffusionMaps(localizer, diffusion, autocast=nullcontext, memory_format=torch.contiguous_format)

    def forward(self, condition: torch.Tensor, seed: int) -> torch.Tensor:
        return self._maps.sample_latents(condition, dataclasses.replace(self.sampling, seed=seed))


def sampler_loss(members: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor, localizer: Localizer, *,
                 mask_weight: float, decoded_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The few-step sampler's output against the truth: Algorithm 1's latent loss (`diffiml_loss`) on every member's
    final x0, plus `decoded_weight` x the loss of the decoded ensemble mean, the map `localize` thresholds.

    members: (B, N, L, h, w) final latents; z0: (B, L, h, w) the target latents; mask: (B, 1, 8h, 8w) in {0, 1}.
    The decoded loss is a hinge, relu(1 - s * decoded) with s = +1 inside the mask and -1 outside (so a map that
    overshoots past +-1 on the right side is free, and one saturated on the wrong side still has a gradient), plus
    1 - soft Dice of the clamped probability, which weighs small edits as much as large ones.
    """
    batch, N = members.shape[:2]
    latent, parts = diffiml_loss(members.flatten(0, 1), z0.repeat_interleave(N, dim=0), mask_weight,
                                 localizer.mask_latent_channels)
    decoded = localizer.decode_mask(members.mean(dim=1)).float()  # (B, 1, H, W), about [-1, 1]
    mask = mask.float()
    hinge = F.relu(1.0 - (2.0 * mask - 1.0) * decoded).mean()
    dice = soft_dice_loss(((decoded + 1.0) / 2.0).clamp(0.0, 1.0), mask)
    loss = latent + decoded_weight * (hinge + dice)
    return loss, {**parts, "loss_latent": latent.item(), "loss_hinge": hinge.item(), "loss_dice": dice.item()}


class ConditionMemo:
    """The frozen encoder's condition of each training item, computed once and kept (fp32), for tuning the denoiser
    alone. Memory: C x h x w x 4 bytes per item (0.5 MB for a 256^2 window), for every item of the data."""

    def __init__(self, localizer: Localizer) -> None:
        self.localizer = localizer
        self._memo: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, indices: list[int], images: torch.Tensor) -> torch.Tensor:
        """indices: B item numbers; images (B, 3, H, W) in [0, 1] -> condition (B, C, H/8, W/8)."""
        missing = [row for row, index in enumerate(indices) if index not in self._memo]
        if missing:
            for row, condition in zip(missing, self.localizer.condition(images[missing])):
                self._memo[indices[row]] = condition.clone()
        return torch.stack([self._memo[index] for index in indices])


class LocalizerOutputs:
    """What a frozen localizer makes of each training item, computed once and kept: the condition (fp16) and
    the detector's cell maps, for training the detector alone (`Trainer` with train_part "detector").

    Memory: about (C + K) x h x w x 2 bytes per item (0.4 MB for a 320^2 window), for every item of the data.
    """

    def __init__(self, predictor, sampling) -> None:
        self.predictor, self.sampling = predictor, sampling
        self._memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, indices: list[int], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices: B item numbers; images (B, 3, H, W) in [0, 1] -> (condition (B, C, h, w), cells (B, K, h, w))."""
        missing = [row for row, index in enumerate(indices) if index not in self._memo]
        if missing:
            condition, cells = self.predictor.condition_and_cells(images[missing], self.sampling)
            for row, one_condition, one_cells in zip(missing, condition, cells):
                self._memo[indices[row]] = (one_condition.half().clone(), one_cells.clone())
        pairs = [self._memo[index] for index in indices]
        return torch.stack([c for c, _ in pairs]).float(), torch.stack([m for _, m in pairs])


def detection_loss(evidence: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, *, dense_weight: float = 0.5
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE of the image logits (B,) against "any pixel manipulated", plus `dense_weight` x BCE of the evidence
    logits (B, 1, h, w) against each latent cell's manipulated share; mask: (B, 1, 8h, 8w) in {0, 1}."""
    mask = mask.float()
    label = mask.flatten(1).amax(dim=1)
    image_loss = F.binary_cross_entropy_with_logits(logits.float(), label)
    cell_share = F.avg_pool2d(mask, mask.shape[-1] // evidence.shape[-1])
    dense_loss = F.binary_cross_entropy_with_logits(evidence.float(), cell_share)
    return image_loss + dense_weight * dense_loss, {"loss_image": image_loss.item(), "loss_dense": dense_loss.item()}
