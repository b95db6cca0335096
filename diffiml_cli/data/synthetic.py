"""Synthetic manipulations of authentic photos: training pairs made on the fly, no files written.

Realism decides how far a localizer trained on these transfers to real tampering (see the data
README: 0.75 F1 on held-out synthetic pairs but 0.16 on CASIA for naive edits), so the edits copy
what forgers and their tools leave behind: object-shaped regions (whole human-annotated segments
when a label map is available), colour matched to the host, a JPEG history of the donor that
differs from the host's, resampling (scale, rotation, interpolation), feathered edges, and
post-processing of the result (resize, blur, single or double JPEG with the 8x8 grid aligned or
shifted).

The mask marks the pixels the edit wrote: a pasted region, a copy-moved region or an inpainted
region. For feathered pastes it is alpha > 0.5, and the feather's faint tail is cut 2 px outside
that mask so that every changed pixel lies within 2 px of it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diffiml_cli.data import regions
from diffiml_cli.data.augment import (INTERPOLATIONS, AugmentConfig, augment, inpaint_region, match_grain,
                                      render_as_other_camera)
from diffiml_cli.data.readers import training_sample
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import list_images, load_rgb
from diffiml_cli.image_ops import gaussian_blur, jpeg_compress, resize_image, resize_mask

MANIPULATION_KINDS = ("splice", "copy_move", "inpaint")
AREA_RANGE = (0.01, 0.40)  # accepted mask area, as a fraction of the image
SOURCE_AREA_RANGE = (0.01, 0.30)  # region drawn in the donor before scaling
INPAINT_AREA_RANGE = (0.01, 0.15)  # large inpaints are smears no forger would keep
SEGMENT_SHARE = 0.6  # how often a whole segment is used when the photo has a label map
_ATTEMPTS = 20
_FEATHER_REACH = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


@dataclass(frozen=True)
class SyntheticSample:
    """One synthetic pair and what it was made from.

    image: (H, W, 3) uint8 RGB. mask: (H, W) bool, True = changed by the edit.
    kind: "splice", "copy_move", "inpaint" or "authentic".
    host: (H0, W0, 3) uint8, the host photo as it entered the edit (after any JPEG history given
        to it, before post-processing); equals `image` outside the mask when nothing was
        post-processed.
    host_path: the photo file the host came from.
    """

    image: np.ndarray
    mask: np.ndarray
    kind: str
    host: np.ndarray
    host_path: Path


def _area_ok(mask: np.ndarray, area_range: tuple[float, float]) -> bool:
    return area_range[0] <= float(mask.mean()) <= area_range[1]


def _match_colour(patch: np.ndarray, patch_weight: np.ndarray, host: np.ndarray, host_weight: np.ndarray,
                  strength: float) -> np.ndarray:
    """Shift the patch's per-channel Lab mean and std towards the host's (Reinhard et al. 2001).

    patch, host: (h, w, 3) uint8; *_weight: (h, w) bool, the pixels whose statistics count.
    strength in [0, 1]: 1 matches fully, lower stops part way, as a quick manual fix would.
    """
    patch_lab = cv2.cvtColor(patch.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    host_lab = cv2.cvtColor(host.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    source, target = patch_lab[patch_weight], host_lab[host_weight]
    if len(source) < 4 or len(target) < 4:
        return patch
    source_std, target_std = source.std(axis=0) + 1e-3, target.std(axis=0) + 1e-3
    ratio = np.clip(target_std / source_std, 0.5, 2.0)  # a flat donor must not explode into noise
    matched = (patch_lab - source.mean(axis=0)) * ratio + target.mean(axis=0)
    blended = patch_lab + strength * (matched - patch_lab)
    rgb = cv2.cvtColor(blended.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _resample(rng: np.random.Generator, photo: np.ndarray, region: np.ndarray,
              allow_resampling: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cut the region's bounding box (plus a margin) and maybe scale and rotate it.

    Returns (patch (h, w, 3) uint8, coverage (h, w) float32 in [0, 1]). Scale 0.6..1.6 and
    rotation +-30 degrees use one random interpolation; coverage is always resampled linearly.
    """
    ys, xs = np.nonzero(region)
    margin = 3
    top, left = max(ys.min() - margin, 0), max(xs.min() - margin, 0)
    bottom, right = min(ys.max() + margin + 1, region.shape[0]), min(xs.max() + margin + 1, region.shape[1])
    patch = photo[top:bottom, left:right]
    coverage = region[top:bottom, left:right].astype(np.float32)
    if not allow_resampling or rng.random() < 0.35:
        return patch, coverage
    interpolation = INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]
    scale = regions.log_uniform(rng, (0.6, 1.6))
    height, width = patch.shape[:2]
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    patch = cv2.resize(patch, size, interpolation=interpolation)
    coverage = cv2.resize(coverage, size, interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        angle = float(rng.uniform(-30, 30))
        height, width = patch.shape[:2]
        rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        cos, sin = abs(rotation[0, 0]), abs(rotation[0, 1])
        new_width, new_height = int(np.ceil(width * cos + height * sin)), int(np.ceil(width * sin + height * cos))
        rotation[:, 2] += ((new_width - width) / 2, (new_height - height) / 2)
        # warpAffine has no area mode; linear is its closest stand-in.
        warp_flags = cv2.INTER_LINEAR if interpolation == cv2.INTER_AREA else interpolation
        patch = cv2.warpAffine(patch, rotation, (new_width, new_height), flags=warp_flags,
                               borderMode=cv2.BORDER_REFLECT)
        coverage = cv2.warpAffine(coverage, rotation, (new_width, new_height), flags=cv2.INTER_LINEAR)
    return patch, coverage


def _paste(rng: np.random.Generator, host: np.ndarray, patch: np.ndarray, coverage: np.ndarray,
           avoid: np.ndarray | None, colour_match: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Composite a patch at a random place in the host, with hard or feathered edges.

    avoid: (H, W) bool region the paste may overlap by at most 30 % (copy-move's source), or None.
    Returns (image, mask) or None when the patch does not fit.
    """
    height, width = host.shape[:2]
    patch_height, patch_width = coverage.shape
    if patch_height > height or patch_width > width:
        return None
    top = int(rng.integers(0, height - patch_height + 1))
    left = int(rng.integers(0, width - patch_width + 1))
    window = (slice(top, top + patch_height), slice(left, left + patch_width))
    hard = np.zeros((height, width), bool)
    hard[window] = coverage >= 0.5
    if not hard.any() or (avoid is not None and (hard & avoid).sum() > 0.3 * hard.sum()):
        return None
    if colour_match:
        ring = cv2.dilate(hard.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        patch = _match_colour(patch, coverage >= 0.5, host, ring, float(rng.uniform(0.5, 1.0)))
    if rng.random() < 0.5:
        alpha = hard.astype(np.float32)
        mask = hard
    else:
        alpha = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), float(rng.uniform(0.6, 2.0)))
        mask = alpha > 0.5
        alpha *= cv2.dilate(mask.astype(np.uint8), _FEATHER_REACH) > 0
    placed = host.astype(np.float32)
    placed[window] = patch
    image = np.round(alpha[..., None] * placed + (1.0 - alpha[..., None]) * host).astype(np.uint8)
    return image, mask


def _post_process(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resize, blur, then JPEG once or twice, the second time possibly on a shifted 8x8 grid."""
    if rng.random() < 0.2:
        scale = regions.log_uniform(rng, (0.5, 1.25))
        size = (max(16, round(image.shape[1] * scale)), max(16, round(image.shape[0] * scale)))
        image = resize_image(image, size, INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))])
        mask = resize_mask(mask, size)
    if rng.random() < 0.1:
        image = gaussian_blur(image, sigma=float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.6:
        image = jpeg_compress(image, int(rng.integers(60, 101)))
        if rng.random() < 0.5:
            if rng.random() < 0.5:
                # Cropping 1..7 px moves the next compression's grid off the first one's.
                shift_y, shift_x = (int(v) for v in rng.integers(0, 8, size=2))
                if shift_y == shift_x == 0:
                    shift_x = int(rng.integers(1, 8))
                image, mask = image[shift_y:, shift_x:], mask[shift_y:, shift_x:]
            image = jpeg_compress(np.ascontiguousarray(image), int(rng.integers(60, 101)))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class SyntheticManipulations:
    """Turns a folder of authentic photos into (image, mask, kind) samples, deterministic in
    (seed, index).

    photos_dir: folder of photos (searched recursively). segments_dir: label maps (PNG, same stem
    as the photo, 0 = unlabelled, 1..K = segment id); defaults to the sibling folder
    `<photos_dir name>-segments` when it exists. authentic_share: probability of an untouched
    photo. post_process: apply `_post_process` after the edit (to authentic photos too, so that
    recompression alone never signals a manipulation). kinds: manipulation kinds to draw from
    (default all of MANIPULATION_KINDS, equally often). other_camera_donors: re-render every splice
    donor with `render_as_other_camera`, so that a splice joins two camera traces, and every host,
    authentic photos included, with probability 0.5, so that another camera's rendering alone is no
    evidence of an edit (off by default; on, later random draws shift, so JPEG histories and
    placements differ too). match_grain: give every edited region its host's grain back with `match_grain`
    (off by default; its noise has its own random stream, so every other draw stays as it was).
    exclude: photo stems to leave out (held-out photos). hard_negatives:
    photo stems that are hard for a localizer when untouched (natural repetition, busy texture);
    an authentic sample takes its photo from them with probability `hard_negative_share`.
    """

    def __init__(self, photos_dir: str | Path, *, segments_dir: str | Path | None = None, seed: int = 0,
                 authentic_share: float = 0.15, post_process: bool = True,
                 kinds: Sequence[str] | None = None, other_camera_donors: bool = False, match_grain: bool = False,
                 exclude: Collection[str] = (), hard_negatives: Collection[str] = (),
                 hard_negative_share: float = 0.5) -> None:
        self.photos_dir = Path(photos_dir)
        excluded = set(exclude)
        self.photos = [path for path in list_images([self.photos_dir]) if path.stem not in excluded]
        if not self.photos:
            raise DiffimlError(f"{self.photos_dir}: every photo is excluded")
        hard = set(hard_negatives)
        self._hard_numbers = np.array([n for n, path in enumerate(self.photos) if path.stem in hard], np.int64)
        if not 0.0 <= hard_negative_share <= 1.0:
            raise DiffimlError(f"hard negative share must be in [0, 1], got {hard_negative_share}")
        self.hard_negative_share = hard_negative_share
        if segments_dir is None:
            sibling = self.photos_dir.parent / f"{self.photos_dir.name}-segments"
            segments_dir = sibling if sibling.is_dir() else None
        self.segments_dir = Path(segments_dir) if segments_dir is not None else None
        self._segment_paths: dict[str, Path] = {}
        if self.segments_dir is not None:
            self._segment_paths = {path.stem: path for path in list_images([self.segments_dir])}
        self.kinds = tuple(MANIPULATION_KINDS if kinds is None else kinds)
        unknown = sorted(set(self.kinds) - set(MANIPULATION_KINDS))
        if unknown:
            raise DiffimlError(f"unknown manipulation kind(s) {unknown}; choose from {list(MANIPULATION_KINDS)}")
        if not 0.0 <= authentic_share <= 1.0 or (not self.kinds and authentic_share < 1.0):
            raise DiffimlError(f"authentic share must be in [0, 1] (1 when no kinds are given), got {authentic_share}")
        self.seed = seed
        self.authentic_share = authentic_share
        self.post_process = post_process
        self.other_camera_donors = other_camera_donors
        self.match_grain = match_grain
        # A fixed per-seed order so that consecutive indices walk through every photo.
        self._order = np.random.default_rng([seed]).permutation(len(self.photos))

    def _labels(self, photo: Path, shape: tuple[int, int]) -> np.ndarray | None:
        path = self._segment_paths.get(photo.stem)
        if path is None:
            return None
        try:
            with Image.open(path) as label_image:
                labels = np.asarray(label_image)
        except Exception as error:  # noqa: BLE001 - any decoder failure is the file's fault
            raise DiffimlError(f"{path}: cannot read label map ({error})") from None
        # A label map for another size (or with colour channels) would mislead; ignore it.
        return labels if labels.shape == shape else None

    def _photo(self, number: int) -> tuple[np.ndarray, np.ndarray | None, Path]:
        path = self.photos[number]
        image = load_rgb(path)
        return image, self._labels(path, image.shape[:2]), path

    def _splice(self, rng: np.random.Generator, host: np.ndarray,
                host_number: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray]:
        count = len(self.photos)
        donor_number = host_number if count == 1 else (host_number + 1 + int(rng.integers(count - 1))) % count
        donor, donor_labels, _ = self._photo(donor_number)
        if self.other_camera_donors:
            donor = render_as_other_camera(donor, rng)
        if rng.random() < 0.5:
            # Different JPEG histories: the donor's region keeps a grid and quality unlike the host's.
            host_quality, donor_quality = rng.choice(np.arange(60, 101, 5), size=2, replace=False)
            host, donor = jpeg_compress(host, int(host_quality)), jpeg_compress(donor, int(donor_quality))
        for _ in range(_ATTEMPTS):
            region, _ = regions.random_region(rng, donor.shape[:2], SOURCE_AREA_RANGE, donor_labels, SEGMENT_SHARE)
            if not region.any():
                continue
            patch, coverage = _resample(rng, donor, region, allow_resampling=True)
            pasted = _paste(rng, host, patch, coverage, None, colour_match=rng.random() < 0.5)
            if pasted is not None and _area_ok(pasted[1], AREA_RANGE):
                return pasted, host
        return None, host

    def _copy_move(self, rng: np.random.Generator, host: np.ndarray,
                   labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        for _ in range(_ATTEMPTS):
            region, _ = regions.random_region(rng, host.shape[:2], SOURCE_AREA_RANGE, labels, SEGMENT_SHARE)
            if not region.any():
                continue
            patch, coverage = _resample(rng, host, region, allow_resampling=rng.random() < 0.6)
            pasted = _paste(rng, host, patch, coverage, region, colour_match=False)
            if pasted is not None and _area_ok(pasted[1], AREA_RANGE):
                return pasted
        return None

    def _inpaint(self, rng: np.random.Generator, host: np.ndarray,
                 labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        region = np.zeros(host.shape[:2], bool)
        for _ in range(_ATTEMPTS):
            region, _ = regions.random_region(rng, host.shape[:2], INPAINT_AREA_RANGE, labels, SEGMENT_SHARE)
            if rng.random() < 0.5:
                # Removal brushes overshoot the object's outline by a few pixels.
                grow = int(rng.integers(1, 5))
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
                region = cv2.dilate(region.astype(np.uint8), kernel) > 0
            if _area_ok(region, INPAINT_AREA_RANGE):
                break
        if not region.any():
            region = regions.ellipse_region(rng, host.shape[:2], 0.05)
        return inpaint_region(host, region, rng), region

    def make_sample(self, index: int) -> SyntheticSample:
        """The sample number `index` (any int >= 0), with its host; see SyntheticSample."""
        rng = np.random.default_rng([self.seed, index])
        host_number = int(self._order[index % len(self.photos)])
        if rng.random() < self.authentic_share:  # the first draw: `is_authentic` repeats it
            kind = "authentic"
            if len(self._hard_numbers) and rng.random() < self.hard_negative_share:
                host_number = int(self._hard_numbers[rng.integers(len(self._hard_numbers))])
        else:
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
        host, labels, host_path = self._photo(host_number)
        if self.other_camera_donors and rng.random() < 0.5:
            host = render_as_other_camera(host, rng)
        result = None
        if kind == "splice":
            result, host = self._splice(rng, host, host_number)
        elif kind == "copy_move":
            result = self._copy_move(rng, host, labels)
        if kind in ("splice", "copy_move") and result is None:
            kind = "inpaint"  # nothing fitted in the attempts allowed: fall back to an edit that always fits
        if kind == "inpaint":
            result = self._inpaint(rng, host, labels)
        if kind == "authentic":
            result = (host, np.zeros(host.shape[:2], bool))
        image, mask = result
        if self.match_grain:  # an authentic sample's empty mask leaves it as it is
            image = match_grain(image, mask, np.random.default_rng([self.seed, index, 1]))
        if self.post_process:
            image, mask = _post_process(rng, image, mask)
        return SyntheticSample(image, mask, kind, host, host_path)

    def is_authentic(self, index: int) -> bool:
        """Whether sample `index` is an untouched photo, without making it (one random draw)."""
        return bool(np.random.default_rng([self.seed, index]).random() < self.authentic_share)

    def make(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(image (H, W, 3) uint8 RGB, mask (H, W) bool, kind) for sample `index`."""
        sample = self.make_sample(index)
        return sample.image, sample.mask, sample.kind


class SyntheticDataset(Dataset):
    """SyntheticManipulations as a torch dataset with PairDataset's items.

    Item i of epoch e is sample e * length + i (a fresh edit every epoch), optionally augmented
    with a generator seeded by (seed, e, i), then resized to (image_size, image_size), or with `crop`
    cut to a window of that size at native resolution.
    """

    def __init__(self, manipulations: SyntheticManipulations, *, image_size: int, length: int,
                 augment: AugmentConfig | None = None, edge_width: int = 7, crop: bool = False) -> None:
        self.manipulations = manipulations
        self.image_size = image_size
        self.crop = crop
        self.length = length
        self.augment = augment
        self.edge_width = edge_width
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the samples and augmentations of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def authentic_flags(self, epoch: int) -> np.ndarray:
        """(length,) bool: which items of `epoch` are untouched photos, for batches of a fixed make-up."""
        first = epoch * self.length
        return np.array([self.manipulations.is_authentic(first + i) for i in range(self.length)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, mask, _ = self.manipulations.make(self.epoch * self.length + index)
        if self.augment is not None:
            rng = np.random.default_rng([self.manipulations.seed, self.epoch, index])
            image, mask = augment(image, mask, rng, self.augment)
        return training_sample(image, mask, index, image_size=self.image_size, edge_width=self.edge_width,
                               crop_key=(self.manipulations.seed, self.epoch, index) if self.crop else None)
