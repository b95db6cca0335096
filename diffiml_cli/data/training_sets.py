"""The datasets `diffiml train` builds from its options: real pairs, synthetic edits, validation pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    authentic_share: float = 0.15,
    exclude: Sequence[str] = (),
    hard_negatives: Sequence[str] = (),
    hard_negative_share: float = 0.5,
) -> Dataset:
    """Mix real datasets (`PATH[:WEIGHT]` specs) with on-the-fly synthetic manipulations of photo folders;
    `crop` cuts image_size windows at native resolution instead of resizing (a "native" model);
    `synthetic_kinds` restricts the synthetic edits (default: every kind in MANIPULATION_KINDS);
    `other_camera_donors` re-renders splice donors as another camera would; `authentic_share`, `exclude`,
    `hard_negatives` and `hard_negative_share` are SyntheticManipulations' (photo stems)."""
    datasets, weights = [], []
    for pairs, weight in parse_weighted_specs(list(data_specs)):
        validate_pairs(pairs)  # a bad manifest fails now, before any training step
        datasets.append(PairDataset(pairs, image_size=image_size, augment=augment, edge_width=edge_width, seed=seed,
                                    crop=crop))
        weights.append(weight)
    for folder in synthetic_dirs:
        manipulations = SyntheticManipulations(folder, seed=seed, kinds=synthetic_kinds,
                                               other_camera_donors=other_camera_donors,
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
