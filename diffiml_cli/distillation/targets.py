"""Targets for the mask VAE: procedural and dataset masks with their edge bands, and how well a VAE
reconstructs held-out ones.

Every target is a pure function of (seed, stream, index), so a distillation run is reproducible and resumes
exactly; the streams keep what is trained on apart from what is calibrated or scored on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from diffiml_cli.data.edges import mask_edges, to_signed
from diffiml_cli.data.masks import random_mask
from diffiml_cli.data.readers import Pair, load_spec
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import load_mask
from diffiml_cli.image_ops import resize_mask
from diffiml_cli.metrics import false_positive_rate, pixel_f1, pixel_iou
from diffiml_cli.models.mask_vae import MaskVAE, decoded_to_probability

# Independent random streams of targets: what is trained on is never what is calibrated or scored on.
TRAIN_STREAM, EVAL_STREAM, CALIBRATION_STREAM, BATCH_NORM_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class ReconstructionScores:
    """decode(encode(y)) against y at probability 0.5, over one kind of held-out target."""

    kind: str  # "masks" or "edges"
    count: int  # non-empty targets scored: F1 and IoU are undefined on an empty target
    f1_mean: float
    iou_mean: float
    f1_min: float  # the worst single target
    empty_fpr: float  # mean share of pixels predicted on the empty targets; nan if there were none
    empty_count: int


@dataclass(frozen=True)
class ReconstructionReport:
    """How well a mask VAE reconstructs held-out procedural masks and their edge bands."""

    image_size: int
    scale_factor: float
    latent_std: float  # std of scale_factor * raw latents on held-out targets; the diffusion noise assumes ~1
    rows: tuple[ReconstructionScores, ...]


def load_data_masks(specs: Sequence[str]) -> list[Path]:
    """The mask files of every tampered pair in these dataset specs (authentic pairs have no mask)."""
    masks: list[Path] = []
    for spec in specs:
        pairs: list[Pair] = load_spec(spec)
        found = [pair.mask for pair in pairs if pair.mask is not None]
        if not found:
            raise DiffimlError(f"{spec}: has no tampered images with masks to train the mask VAE on")
        masks.extend(found)
    return masks


class TrainingTargets:
    """A deterministic stream of (S, S) bool targets: procedural masks, dataset masks, and their edge bands.

    Target `index` of `stream` depends only on (seed, stream, index), so any batch can be redrawn
    exactly (resuming needs only the step). Dataset masks are resized with area averaging and a 0.5
    threshold, then given one of the 8 flips/rotations.
    """

    def __init__(self, image_size: int, *, seed: int, stream: int, data_masks: Sequence[Path] = (),
                 data_share: float = 0.5, edge_share: float = 0.5, edge_width: int = 7) -> None:
        self.image_size = image_size
        self.seed = seed
        self.stream = stream
        self.data_masks = list(data_masks)
        self.data_share = data_share if self.data_masks else 0.0
        self.edge_share = edge_share
        self.edge_width = edge_width

    def _data_mask(self, rng: np.random.Generator) -> np.ndarray:
        path = self.data_masks[int(rng.integers(len(self.data_masks)))]
        mask = resize_mask(load_mask(path), (self.image_size, self.image_size))
        transform = int(rng.integers(8))
        mask = np.rot90(mask, transform % 4)
        return np.ascontiguousarray(mask[:, ::-1] if transform >= 4 else mask)

    def target(self, index: int) -> np.ndarray:
        """Target `index`: (S, S) bool, True = manipulated (or boundary, for an edge band)."""
        rng = np.random.default_rng([self.seed, self.stream, index])
        from_data = rng.random() < self.data_share
        as_edge = rng.random() < self.edge_share
        mask = self._data_mask(rng) if from_data else random_mask(rng, self.image_size)
        return mask_edges(mask, self.edge_width) if as_edge else mask

    def batch(self, start: int, count: int) -> torch.Tensor:
        """Targets start..start+count-1 as (count, 1, S, S) float32 in {-1, 1}."""
        targets = np.stack([self.target(index) for index in range(start, start + count)])
        return to_signed(torch.from_numpy(targets[:, None].astype(np.float32)))


def held_out_targets(image_size: int, *, seed: int, count: int, edge_width: int = 7) -> dict[str, np.ndarray]:
    """`count` held-out procedural masks and their edge bands: {"masks", "edges"} -> (count, S, S) bool."""
    masks = np.stack([random_mask(np.random.default_rng([seed, EVAL_STREAM, index]), image_size)
                      for index in range(count)])
    edges = np.stack([mask_edges(mask, edge_width) for mask in masks])
    return {"masks": masks, "edges": edges}


# --- calibration and evaluation ------------------------------------------------------------------------


def _batches(targets: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(targets), batch_size):
        yield to_signed(torch.from_numpy(targets[start:start + batch_size, None].astype(np.float32)))


@torch.no_grad()
def raw_latent_std(vae: MaskVAE, targets: np.ndarray, *, batch_size: int = 32) -> float:
    """Std over all elements of the raw (unscaled) latents of targets (N, S, S) bool, in eval mode."""
    device = next(vae.parameters()).device
    total = total_sq = 0.0
    elements = 0
    for y in _batches(targets, batch_size):
        z = vae.encode(y.to(device)).double()
        total += float(z.sum())
        total_sq += float(z.square().sum())
        elements += z.numel()
    mean = total / elements
    return math.sqrt(max(total_sq / elements - mean * mean, 0.0))


@torch.no_grad()
def recalibrate_batch_norm(vae: MaskVAE, targets: TrainingTargets, *, count: int, batch_size: int = 32) -> None:
    """Replace BatchNorm running statistics by their exact average over `count` targets ("precise BN").

    Leaves the network in eval mode. Does nothing when count is 0.
    """
    norms = [module for module in vae.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if count <= 0 or not norms:
        vae.eval()
        return
    device = next(vae.parameters()).device
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
    for norm in norms:
        norm.train()
    for start in range(0, count, batch_size):
        vae(targets.batch(start, min(batch_size, count - start)).to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    vae.eval()


def calibrate_scale_factor(vae: MaskVAE, image_size: int, *, seed: int, count: int, edge_width: int = 7) -> float:
    """1 / std of raw latents over `count` held-out targets (half masks, half edge bands), as SD did.

    Uses its own random stream, disjoint from training and from the reconstruction report.
    """
    stream = TrainingTargets(image_size, seed=seed, stream=CALIBRATION_STREAM, edge_width=edge_width)
    targets = np.stack([stream.target(index) for index in range(count)])
    std = raw_latent_std(vae, targets)
    if not math.isfinite(std) or std <= 0:
        raise DiffimlError(f"cannot calibrate the latent scale: the latents' std is {std} (training diverged?)")
    return 1.0 / std


def _scores(kind: str, vae: MaskVAE, targets: np.ndarray, batch_size: int) -> ReconstructionScores:
    device = next(vae.parameters()).device
    f1s: list[float] = []
    ious: list[float] = []
    empty_fprs: list[float] = []
    start = 0
    with torch.no_grad():
        for y in _batches(targets, batch_size):
            predicted = decoded_to_probability(vae(y.to(device))).cpu()[:, 0] >= 0.5
            for pred, target in zip(predicted, torch.from_numpy(targets[start:start + len(y)])):
                if target.any():
                    f1s.append(pixel_f1(pred, target))
                    ious.append(pixel_iou(pred, target))
                else:
                    empty_fprs.append(false_positive_rate(pred, target))
            start += len(y)
    mean = lambda values: float(np.mean(values)) if values else math.nan  # noqa: E731
    return ReconstructionScores(kind=kind, count=len(f1s), f1_mean=mean(f1s), iou_mean=mean(ious),
                                f1_min=float(min(f1s)) if f1s else math.nan,
                                empty_fpr=mean(empty_fprs), empty_count=len(empty_fprs))


def reconstruction_report(vae: MaskVAE, image_size: int, *, seed: int, count: int = 256, edge_width: int = 7,
                          batch_size: int = 32) -> ReconstructionReport:
    """Score decode(encode(y)) on `count` held-out procedural masks and on their edge bands (eval mode)."""
    was_training = vae.training
    vae.eval()
    try:
        targets = held_out_targets(image_size, seed=seed, count=count, edge_width=edge_width)
        rows = tuple(_scores(kind, vae, targets[kind], batch_size) for kind in ("masks", "edges"))
        scale = vae.config.scale_factor
        latent_std = scale * raw_latent_std(vae, np.concatenate([targets["masks"], targets["edges"]]))
    finally:
        vae.train(was_training)
    return ReconstructionReport(image_size=image_size, scale_factor=scale, latent_std=latent_std, rows=rows)
