"""The datasets `diffiml train` builds from its options: real pairs, synthetic edits, validation pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from diffiml_cli.data.augment import AugmentConfig
from diffiml_cli.data.readers import MixedDataset, PairDataset, load_spec, parse_weighted_specs, validate_pairs
from diffiml_cli.data.synthetic import SyntheticDataset, SyntheticManipulations
from diffiml_cli.errors import DiffimlError


def build_training_data(
    data_specs: Sequence[str],
    synthetic_dirs: Sequence[str | Path],
    *,
    image_size: int,
    seed: int,
    augment: AugmentConfig | None,
    edge_width: int = 7,
    synthetic_length: int = 4096,
    crop: bool = False,
    synthetic_kinds: Sequence[str] | None = None,
    other_camera_donors: bool = False,
    match_grain: bool = False,
    authentic_share: float = 0.15,
    exclude: Sequence[str] = (),
    hard_negatives: Sequence[str] = (),
    hard_negative_share: float = 0.5,
) -> Dataset:
    """Mix real datasets (`PATH[:WEIGHT]` specs) with on-the-fly synthetic manipulations of photo folders;
    `crop` cuts image_size windows at native resolution instead of resizing (a "native" model);
    `synthetic_kinds` restricts the synthetic edits (default: every kind in MANIPULATION_KINDS);
    `other_camera_donors` re-renders splice donors as another camera would; `match_grain` gives each edited region
    its host's grain back; `authentic_share`, `exclude`,
    `hard_negatives` and `hard_negative_share` are SyntheticManipulations' (photo stems)."""
    datasets, weights = [], []
    for pairs, weight in parse_weighted_specs(list(data_specs)):
        validate_pairs(pairs)  # a bad manifest fails now, before any training step
        datasets.append(PairDataset(pairs, image_size=image_size, augment=augment, edge_width=edge_width, seed=seed,
                                    crop=crop))
        weights.append(weight)
    for folder in synthetic_dirs:
        manipulations = SyntheticManipulations(folder, seed=seed, kinds=synthetic_kinds,
                                               other_camera_donors=other_camera_donors, match_grain=match_grain,
                                               authentic_share=authentic_share, exclude=exclude,
                                               hard_negatives=hard_negatives,
                                               hard_negative_share=hard_negative_share)
        datasets.append(SyntheticDataset(manipulations, image_size=image_size, length=synthetic_length,
                                         augment=augment, edge_width=edge_width, crop=crop))
        weights.append(1.0)
    if not datasets:
        raise DiffimlError("no training data: give `data` (dataset specs) and/or `synthetic_from` (photo folders)")
    if len(datasets) == 1:
        return datasets[0]
    return MixedDataset(datasets, weights, length=sum(len(d) for d in datasets), seed=seed)


def build_validation_data(spec: str, *, image_size: int, seed: int, limit: int = 64, crop: bool = False,
                          authentic_share: float = 0.15) -> Dataset:
    """`synthetic:DIR[:N]` (N held-out synthetic pairs, a seed apart from training, `authentic_share` of them
    untouched) or a dataset SPEC, resized or (`crop`) cut to image_size windows at native resolution, as
    the model trains."""
    if spec.startswith("synthetic:"):
        folder, _, count = spec.removeprefix("synthetic:").partition(":")
        manipulations = SyntheticManipulations(folder, seed=seed + 1_000_003, authentic_share=authentic_share)
        return SyntheticDataset(manipulations, image_size=image_size, length=int(count or limit), crop=crop)
    pairs = load_spec(spec)[:limit]
    validate_pairs(pairs)
    return PairDataset(pairs, image_size=image_size, augment=None, crop=crop)


def with_authentic_per_batch(indices: np.ndarray, authentic: np.ndarray, batch_size: int, per_batch: int) -> np.ndarray:
    """Reorder `indices` so that each batch of `batch_size` holds at least `per_batch` items whose
    `authentic[index]` is True, while there are any; the order within each kind is kept.

    indices: (n,) int item numbers in epoch order; authentic: (length,) bool over all items.
    """
    if per_batch <= 0:
        return indices
    if per_batch > batch_size:
        raise DiffimlError(f"authentic_per_batch ({per_batch}) exceeds the batch size ({batch_size})")
    flags = authentic[indices]
    authentic_pool, edited_pool = list(indices[flags]), list(indices[~flags])
    ordered: list[int] = []
    while authentic_pool or edited_pool:
        # per_batch authentic items, more once the edited ones run out, fewer once the authentic ones do
        take = min(len(authentic_pool), max(per_batch, batch_size - len(edited_pool)))
        ordered += authentic_pool[:take] + edited_pool[:batch_size - take]
        authentic_pool, edited_pool = authentic_pool[take:], edited_pool[batch_size - take:]
    return np.array(ordered, dtype=indices.dtype)
