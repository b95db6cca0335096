"""Datasets of (image, mask) pairs: IMDL-BenCo JSON manifests, Tp/Gt/Au folders, torch datasets.

A spec is either an IMDL-BenCo JSON file, `[[image, mask], [image, "Negative"], ...]` with paths
relative to the JSON's folder ("Negative" in any capitalisation), or a folder with `Tp/` (tampered
images), `Gt/` (their masks, same stem, optionally suffixed `_gt` or `_mask`) and optionally `Au/`
(authentic images).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffiml_cli.data.augment import AugmentConfig, augment, crop_at_native_resolution
from diffiml_cli.data.edges import mask_edges
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import IMAGE_EXTENSIONS, load_mask_with_form, load_rgb
from diffiml_cli.image_ops import resize_image, resize_mask
from diffiml_cli.image_io import image_size as read_image_size

NEGATIVE = "Negative"  # IMDL-BenCo's mask entry for an authentic image
MASK_STEM_SUFFIXES = ("", "_gt", "_mask")
_WEIGHT_SUFFIX = re.compile(r":([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
_FAILURES_SHOWN = 5
_CROP_STREAM = 7  # the crop window's generator, apart from the augmentation's (seed, epoch, index)


@dataclass(frozen=True)
class Pair:
    """One sample: an image and its mask file; mask None = authentic (all-zero mask)."""

    image: Path
    mask: Path | None


def _summarise(failures: list[str], total: int, what: str) -> str:
    shown = "; ".join(failures[:_FAILURES_SHOWN])
    more = f" (and {len(failures) - _FAILURES_SHOWN} more)" if len(failures) > _FAILURES_SHOWN else ""
    return f"{len(failures)} of {total} {what}: {shown}{more}"


def _load_json_spec(path: Path) -> list[Pair]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DiffimlError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise DiffimlError(f"{path}: JSON nested too deeply to be a dataset list") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DiffimlError(f"{path}: cannot read ({error})") from None
    expected = 'expected an IMDL-BenCo list [[image, mask], [image, "Negative"], ...]'
    if not isinstance(entries, list):
        raise DiffimlError(f"{path}: top level is a JSON {type(entries).__name__}; {expected}")
    root = path.parent
    pairs: list[Pair] = []
    failures: list[str] = []
    for number, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(item, str) for item in entry)):
            raise DiffimlError(f"{path}: entry {number} is {json.dumps(entry)[:80]}; {expected}")
        image, mask = entry
        # "negative" or "NEGATIVE" cannot be meant as a mask file (it would have no image suffix), and a
        # hand-written manifest easily gets the case wrong: read them all as IMDL-BenCo's "Negative".
        if mask.strip().casefold() == NEGATIVE.casefold():
            pairs.append(Pair(root / image, None))
            continue
        mask_path = root / mask
        if not mask_path.is_file():
            failures.append(f'entry {number}: mask "{mask}" is not a file (use "Negative" for authentic images)')
        pairs.append(Pair(root / image, mask_path))
    if failures:
        raise DiffimlError(f"{path}: " + _summarise(failures, len(entries), "entries have no mask file"))
    return pairs


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."))


def _load_folder_spec(root: Path) -> list[Pair]:
    tampered, truth, authentic = root / "Tp", root / "Gt", root / "Au"
    if not (tampered.is_dir() or authentic.is_dir()):
        raise DiffimlError(f"{root}: expected Tp/ and Gt/ sub-folders (and optionally Au/), or an IMDL-BenCo JSON file")
    pairs: list[Pair] = []
    if tampered.is_dir():
        if not truth.is_dir():
            raise DiffimlError(f"{root}: has Tp/ but no Gt/ folder with the masks")
        masks_by_stem: dict[str, list[Path]] = {}
        for mask in _image_files(truth):
            masks_by_stem.setdefault(mask.stem, []).append(mask)
        failures: list[str] = []
        images = _image_files(tampered)
        for image in images:
            # Pairing by stem, never by sorted position: one missing mask would shift every pair.
            matches = [mask for suffix in MASK_STEM_SUFFIXES for mask in masks_by_stem.get(image.stem + suffix, [])]
            if not matches:
                failures.append(f"{image.name} has no mask in Gt/ (expected {image.stem}[_gt|_mask].<ext>)")
            elif len(matches) > 1:
                failures.append(f"{image.name} matches several masks: {', '.join(m.name for m in matches)}")
            else:
                pairs.append(Pair(image, matches[0]))
        if failures:
            raise DiffimlError(f"{tampered}: " + _summarise(failures, len(images), "images cannot be paired"))
    if authentic.is_dir():
        pairs.extend(Pair(image, None) for image in _image_files(authentic))
    return pairs


def load_spec(spec: str | Path) -> list[Pair]:
    """Read a dataset spec (IMDL-BenCo JSON file or Tp/Gt[/Au] folder) into pairs.

    Tampered pairs come first (in sorted image order), then authentic ones. Raises DiffimlError
    for a missing spec, a malformed JSON, masks that are not files, unpaired images or no samples.
    File contents and sizes are checked later by `validate_pairs`.
    """
    path = Path(spec)
    if path.is_dir():
        pairs = _load_folder_spec(path)
    elif path.is_file():
        pairs = _load_json_spec(path)
    else:
        raise DiffimlError(f"{path}: no such dataset file or folder")
    if not pairs:
        raise DiffimlError(f"{path}: dataset is empty")
    return pairs


def parse_weighted_specs(specs: Sequence[str]) -> list[tuple[list[Pair], float]]:
    """Read `PATH` or `PATH:WEIGHT` specs into (pairs, weight), weight 1.0 by default.

    Only a trailing `:<number>` is a weight, and only when the whole text is not itself an
    existing path, so paths containing ':' still work. Weights must be finite and > 0.
    """
    loaded: list[tuple[list[Pair], float]] = []
    for spec in specs:
        text = str(spec)
        weight = 1.0
        match = _WEIGHT_SUFFIX.search(text)
        if match and not Path(text).exists():
            weight = float(match.group(1))
            text = text[: match.start()]
            if not (math.isfinite(weight) and weight > 0):
                raise DiffimlError(f"{spec}: dataset weight must be a positive number, got {match.group(1)}")
        loaded.append((load_spec(text), weight))
    return loaded


def _pair_problem(pair: Pair) -> str | None:
    try:
        width, height = read_image_size(pair.image)
    except DiffimlError as error:
        return str(error)
    if pair.mask is None:
        return None
    try:
        mask_width, mask_height = read_image_size(pair.mask)
    except DiffimlError as error:
        return str(error)
    if (mask_width, mask_height) != (width, height):
        return (f"{pair.mask}: mask is {mask_width}x{mask_height} but its image {pair.image} "
                f"is {width}x{height}")
    return None


def validate_pairs(pairs: Sequence[Pair]) -> None:
    """Check every file opens and every mask has its image's size, from headers only (fast).

    Checks all pairs and raises one DiffimlError listing the first few problems and their count.
    """
    failures = [problem for problem in map(_pair_problem, pairs) if problem is not None]
    if failures:
        raise DiffimlError(_summarise(failures, len(pairs), "pairs are unusable"))


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair at its original resolution: image (H, W, 3) uint8 RGB, mask (H, W) bool (all False
    for an authentic pair; read by `image_io.load_mask_with_form`'s rule, whatever the mask's form). A mask
    of another size than its image is a DiffimlError naming both."""
    image, mask, _ = load_pair_with_form(pair)
    return image, mask


def load_pair_with_form(pair: Pair) -> tuple[np.ndarray, np.ndarray, str | None]:
    """`load_pair`, and the mask's form (one of image_io.MASK_FORMS; None for an authentic pair)."""
    image = load_rgb(pair.image)
    if pair.mask is None:
        return image, np.zeros(image.shape[:2], bool), None
    mask, form = load_mask_with_form(pair.mask)
    if mask.shape != image.shape[:2]:
        raise DiffimlError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                           f"{pair.image} is {image.shape[1]}x{image.shape[0]}")
    return image, mask, form


def training_sample(image: np.ndarray, mask: np.ndarray, index: int, *, image_size: int,
                    edge_width: int, crop_key: Sequence[int] | None = None) -> dict[str, torch.Tensor | int]:
    """Bring a pair to image_size x image_size and build the model's input dict: resized, or, with
    `crop_key` (the item's (seed, epoch, index)), a window cut at native resolution
    (`crop_at_native_resolution`) whose place is drawn from a generator seeded by that key.

    image: (H, W, 3) uint8 RGB; mask: (H, W) bool.
    Returns image (3, S, S) float32 in [0, 1]; mask and edge (1, S, S) float32 in {0, 1}, the edge
    band computed on the resized or cropped mask; index int.
    """
    if crop_key is not None:
        crop_rng = np.random.default_rng([*crop_key, _CROP_STREAM])
        image, mask = crop_at_native_resolution(image, mask, image_size, crop_rng)
    else:
        size = (image_size, image_size)
        image = resize_image(image, size)
        mask = resize_mask(mask, size)
    edge = mask_edges(mask, edge_width)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
        "mask": torch.from_numpy(mask[None].astype(np.float32)),
        "edge": torch.from_numpy(edge[None].astype(np.float32)),
        "index": index,
    }


class PairDataset(Dataset):
    """Pairs read from disk, augmented, resized to (image_size, image_size), or with `crop` cut to
    a window of that size at native resolution.

    Items are deterministic in (seed, epoch, index); call `set_epoch` each epoch to draw new
    augmentations and crops. Authentic pairs (mask None) get an all-False mask.
    """

    def __init__(self, pairs: Sequence[Pair], *, image_size: int, augment: AugmentConfig | None,
                 edge_width: int = 7, seed: int = 0, crop: bool = False) -> None:
        self.pairs = list(pairs)
        self.image_size = image_size
        self.crop = crop
        self.augment = augment
        self.edge_width = edge_width
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, mask = load_pair(self.pairs[index])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = augment(image, mask, rng, self.augment)
        return training_sample(image, mask, index, image_size=self.image_size, edge_width=self.edge_width,
                               crop_key=(self.seed, self.epoch, index) if self.crop else None)


class MixedDataset(Dataset):
    """Several datasets mixed by weight into a virtual epoch of `length` items.

    Each epoch draws which dataset every position comes from (in proportion to the weights) and
    walks each dataset in a fresh permutation, wrapping around if the epoch needs more items than
    it has; all of it deterministic in (seed, epoch). Items are the sub-dataset's dict with `index`
    replaced by the virtual index and `source` (int) naming the dataset it came from.
    `set_epoch` propagates to the sub-datasets.
    """

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], *, length: int, seed: int = 0) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("need one weight per dataset and at least one dataset")
        if any(len(dataset) == 0 for dataset in datasets):
            raise ValueError("cannot mix an empty dataset")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
        self.datasets = list(datasets)
        self.probabilities = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.length = length
        self.seed = seed
        self.epoch = 0
        self._plan: tuple[np.ndarray, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select `epoch`'s mixture and pass the epoch on to the sub-datasets."""
        self.epoch = epoch
        self._plan = None
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def _epoch_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(source, item) arrays of `length`: which dataset and which of its items per position."""
        if self._plan is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            sources = rng.choice(len(self.datasets), size=self.length, p=self.probabilities)
            items = np.zeros(self.length, np.int64)
            for number, dataset in enumerate(self.datasets):
                positions = np.flatnonzero(sources == number)
                order = rng.permutation(len(dataset))
                items[positions] = order[np.arange(positions.size) % len(dataset)]
            self._plan = (sources, items)
        return self._plan

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        sources, items = self._epoch_plan()
        sample = dict(self.datasets[int(sources[index])][int(items[index])])
        sample["index"] = index
        sample["source"] = int(sources[index])
        return sample
