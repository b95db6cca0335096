"""Training and evaluation data: dataset readers, augmentation, edge maps, synthetic manipulations."""

from diffiml_cli.data.augment import AugmentConfig, augment
from diffiml_cli.data.edges import from_signed, mask_edges, to_signed
from diffiml_cli.data.masks import random_mask
from diffiml_cli.data.readers import (MixedDataset, Pair, PairDataset, load_pair, load_spec, parse_weighted_specs,
                                      training_sample, validate_pairs)
from diffiml_cli.data.synthetic import SyntheticDataset, SyntheticManipulations, SyntheticSample

__all__ = [
    "AugmentConfig",
    "MixedDataset",
    "Pair",
    "PairDataset",
    "SyntheticDataset",
    "SyntheticManipulations",
    "SyntheticSample",
    "augment",
    "from_signed",
    "load_pair",
    "load_spec",
    "mask_edges",
    "parse_weighted_specs",
    "random_mask",
    "to_signed",
    "training_sample",
    "validate_pairs",
]
