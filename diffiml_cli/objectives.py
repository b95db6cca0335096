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
    probability = torch.sigmoid(logits).flatten(1)
    target = mask.flatten(1)
    overlap = (probability * target).sum(dim=1)
    dice = 1.0 - (2.0 * overlap + smooth) / (probability.sum(dim=1) + target.sum(dim=1) + smooth)
    dice = dice.mean()
    return bce + dice, {"loss_bce": bce.item(), "loss_dice": dice.item()}


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
