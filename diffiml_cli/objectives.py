"""The training objectives: DiffIML's latent denoising loss and the discriminative baseline's BCE + Dice.

Each trainable forward pass is one module, so DDP can wrap it; the losses are plain functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer


class DenoisingObjective(nn.Module):
    """(image, x_t, t) -> x0_pred: the condition encoder and denoiser of Algorithm 1."""

    def __init__(self, localizer: Localizer) -> None:
        super().__init__()
        self.localizer = localizer

    def forward(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.localizer.denoiser(x_t, t, self.localizer.encoder(image))


class SegmentationObjective(nn.Module):
    """image (B, 3, H, W) -> mask logits (B, 1, H, W): the discriminative baseline."""

    def __init__(self, localizer: DiscriminativeLocalizer) -> None:
        super().__init__()
        self.localizer = localizer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.localizer(image)


def diffiml_loss(x0_pred: torch.Tensor, z0: torch.Tensor, mask_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * MSE over the 4 mask-latent channels + (1 - alpha) * MSE over the 4 edge-latent channels.

    x0_pred, z0: (B, 8, h, w). With (B, 4, h, w) (the no-edge ablation) the loss is the mask MSE alone.
    """
    mask_loss = F.mse_loss(x0_pred[:, :4].float(), z0[:, :4])
    if z0.shape[1] == 4:
        return mask_loss, {"loss_mask": mask_loss.item()}
    edge_loss = F.mse_loss(x0_pred[:, 4:].float(), z0[:, 4:])
    loss = mask_weight * mask_loss + (1.0 - mask_weight) * edge_loss
    return loss, {"loss_mask": mask_loss.item(), "loss_edge": edge_loss.item()}


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, *, smooth: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice of logits (B, 1, H, W) against mask (B, 1, H, W) in {0, 1}.

    Dice is per image, with `smooth` in numerator and denominator so an authentic image (empty mask)
    predicted empty scores a Dice loss of 0 rather than 0/0.
    """
    logits, mask = logits.float(), mask.float()
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    probability = torch.sigmoid(logits).flatten(1)
    target = mask.flatten(1)
    overlap = (probability * target).sum(dim=1)
    dice = 1.0 - (2.0 * overlap + smooth) / (probability.sum(dim=1) + target.sum(dim=1) + smooth)
    dice = dice.mean()
    return bce + dice, {"loss_bce": bce.item(), "loss_dice": dice.item()}
