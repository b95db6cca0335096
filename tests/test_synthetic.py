"""Synthetic manipulations: masks match the changed pixels, determinism, segments, post-processing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from diffiml_cli.data import SyntheticDataset, SyntheticManipulations, random_mask, regions
from diffiml_cli.data.augment import DEMOSAICS, bayer_mosaic, jpeg_compress, match_grain, render_as_other_camera
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import load_rgb

_HEIGHT, _WIDTH = 96, 128
_PHOTOS = 4


def _photo(seed: int) -> np.ndarray:
    """Textured (H, W, 3) uint8, distinct per seed so donor and host never coincide."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (_WIDTH, _HEIGHT),
                      interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _labels() -> np.ndarray:
    """A 3 x 4 grid of segments, each 1/12 of the image."""
    rows = np.repeat(np.arange(3), _HEIGHT // 3)[:, None]
    columns = np.repeat(np.arange(4), _WIDTH // 4)[None, :]
    return (1 + rows * 4 + columns).astype(np.uint8)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for number in range(_PHOTOS):
        Image.fromarray(_photo(number)).save(folder / f"p{number}.png")
    return folder


@pytest.fixture()
def photos_with_segments(photos: Path) -> Path:
    segments = photos.parent / "photos-segments"
    segments.mkdir()
    for number in range(_PHOTOS):
        Image.fromarray(_labels()).save(segments / f"p{number}.png")
    return photos


@pytest.mark.parametrize(("kind", "other_camera_donors"),
                         [("splice", False), ("splice", True), ("copy_move", False), ("inpaint", False)])
def test_mask_matches_changed_pixels(photos_with_segments, kind, other_camera_donors):
    maker = SyntheticManipulations(photos_with_segments, seed=1, authentic_share=0.0, post_process=False, kinds=[kind],
                                   other_camera_donors=other_camera_donors)
    originals = {path.name: load_rgb(path) for path in maker.photos}
    near_mask = np.ones((5, 5), np.uint8)  # 2 px around the mask
    for index in range(12):
        sample = maker.make_sample(index)
        assert sample.kind == kind
        original = originals[sample.host_path.name]
        if other_camera_donors:
            pass  # the host may have been re-rendered as by another camera: see the parity test below
        elif kind == "splice":
            # The host may have been given a JPEG history first; otherwise it is the photo itself.
            histories = [original] + [jpeg_compress(original, quality) for quality in range(60, 101, 5)]
            assert any(np.array_equal(sample.host, candidate) for candidate in histories)
        else:
            assert np.array_equal(sample.host, original)
        assert sample.image.shape == sample.host.shape and sample.mask.shape == sample.host.shape[:2]
        assert 0.01 <= sample.mask.mean() <= 0.40
        outside = ~(cv2.dilate(sample.mask.astype(np.uint8), near_mask) > 0)
        assert np.array_equal(sample.image[outside], sample.host[outside])
        changed = (sample.image != sample.host).any(axis=2)
        assert changed[sample.mask].mean() > 0.5


def test_authentic_is_untouched(photos):
    maker = SyntheticManipulations(photos, authentic_share=1.0, post_process=False)
    for index in range(3):
        image, mask, kind = maker.make(index)
        assert kind == "authentic" and not mask.any()
        assert np.array_equal(image, load_rgb(maker.make_sample(index).host_path))


def test_deterministic_in_seed_and_index(photos):
    first = SyntheticManipulations(photos, seed=7)
    second = SyntheticManipulations(photos, seed=7)
    for index in (0, 5, 11):
        a, b = first.make(index), second.make(index)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    other = SyntheticManipulations(photos, seed=8)
    assert any(not np.array_equal(first.make(i)[0], other.make(i)[0]) for i in range(3))


def test_sibling_segments_folder_is_used(photos_with_segments, monkeypatch):
    chosen = []
    original = regions.segment_region

    def spy(*args, **kwargs):
        region = original(*args, **kwargs)
        chosen.append(region is not None)
        return region

    monkeypatch.setattr(regions, "segment_region", spy)
    maker = SyntheticManipulations(photos_with_segments, authentic_share=0.0, post_process=False, kinds=["inpaint"])
    assert maker.segments_dir == photos_with_segments.parent / "photos-segments"
    masks = [maker.make(index)[1] for index in range(10)]
    assert sum(chosen) >= 3
    # An undilated segment is exactly one grid cell.
    cell = (_HEIGHT // 3) * (_WIDTH // 4)
    assert any(mask.sum() == cell for mask in masks)


def test_no_segments_without_sibling(photos, monkeypatch):
    calls = []
    monkeypatch.setattr(regions, "segment_region", lambda *args, **kwargs: calls.append(1))
    maker = SyntheticManipulations(photos, authentic_share=0.0, post_process=False)
    assert maker.segments_dir is None
    for index in range(5):
        maker.make(index)
    assert not calls


def test_post_processed_outputs_stay_aligned(photos_with_segments):
    maker = SyntheticManipulations(photos_with_segments, seed=2, authentic_share=0.2)
    kinds = set()
    for index in range(30):
        image, mask, kind = maker.make(index)
        kinds.add(kind)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.bool_ and mask.shape == image.shape[:2]
        assert mask.any() == (kind != "authentic")
    assert kinds == {"splice", "copy_move", "inpaint", "authentic"}


def test_bad_arguments(photos, tmp_path):
    with pytest.raises(DiffimlError, match="unknown manipulation"):
        SyntheticManipulations(photos, kinds=["morph"])
    with pytest.raises(DiffimlError, match="no such file"):
        SyntheticManipulations(tmp_path / "absent")


def test_synthetic_dataset_items(photos):
    maker = SyntheticManipulations(photos, seed=4)
    dataset = SyntheticDataset(maker, image_size=64, length=6)
    item = dataset[2]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert item["edge"].shape == (1, 64, 64) and item["index"] == 2
    assert torch.equal(SyntheticDataset(maker, image_size=64, length=6)[2]["image"], item["image"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["image"], item["image"])


def test_random_masks_are_varied():
    rng = np.random.default_rng(0)
    masks = [random_mask(rng, 64) for _ in range(200)]
    assert all(mask.shape == (64, 64) and mask.dtype == np.bool_ for mask in masks)
    areas = np.array([mask.mean() for mask in masks])
    components = np.array([cv2.connectedComponents(mask.astype(np.uint8))[0] - 1 for mask in masks])
    assert (areas > 0).mean() > 0.9
    assert (components >= 5).sum() >= 10
    assert (components == 1).sum() >= 40
    assert (areas < 0.02).sum() >= 20 and (areas > 0.2).sum() >= 10
    assert (areas == 0).any() and (areas == 1).any()


def test_bayer_mosaic_is_the_layout_opencvs_demosaicing_expects():
    smooth = cv2.GaussianBlur(_photo(7), (0, 0), 3.0)
    mosaic = bayer_mosaic(smooth)
    assert mosaic[0, 0] == smooth[0, 0, 0] and mosaic[0, 1] == smooth[0, 1, 1] and mosaic[1, 1] == smooth[1, 1, 2]
    for method in DEMOSAICS:  # a wrong layout swaps colours: errors of 15+ grey levels
        assert np.abs(cv2.cvtColor(mosaic, method).astype(int) - smooth).mean() < 3


def test_render_as_other_camera_is_a_seeded_re_rendering():
    photo = cv2.GaussianBlur(_photo(3), (0, 0), 2.0)
    rendered = render_as_other_camera(photo, np.random.default_rng(5))
    assert rendered.shape == photo.shape and rendered.dtype == np.uint8
    assert np.array_equal(rendered, render_as_other_camera(photo, np.random.default_rng(5)))
    changes = np.array([np.abs(render_as_other_camera(photo, np.random.default_rng(seed)).astype(int) - photo).mean()
                        for seed in range(16)])
    assert (changes > 0.5).sum() >= 12  # each step is random; now and then none is drawn
    assert changes.max() < 8  # the same scene, re-rendered, not a new image


def test_other_camera_donors_re_render_every_splice_and_half_the_hosts(photos):
    def samples(kind, other_camera_donors, count):
        maker = SyntheticManipulations(photos, seed=3, authentic_share=0.0, kinds=[kind], post_process=False,
                                       other_camera_donors=other_camera_donors)
        return [maker.make_sample(index) for index in range(count)]

    plain, rendered = samples("copy_move", False, 24), samples("copy_move", True, 24)
    changed = [not np.array_equal(a.host, b.host) for a, b in zip(plain, rendered)]
    assert 0.2 <= np.mean(changed) <= 0.8  # p = 0.5: a copy-move's host, copy and all, as by another camera
    assert not any(np.array_equal(a.image, b.image)
                   for a, b in zip(samples("splice", False, 4), samples("splice", True, 4)))


def test_other_camera_rendering_reaches_authentic_photos_too(photos):
    """With other-camera donors, untouched photos are re-rendered as often as hosts, so that another camera's
    traces alone never mark an image as edited."""
    maker = SyntheticManipulations(photos, seed=3, authentic_share=1.0, post_process=False, other_camera_donors=True)
    originals = {path.name: load_rgb(path) for path in maker.photos}
    rendered = [not np.array_equal(s.image, originals[s.host_path.name]) for s in map(maker.make_sample, range(40))]
    assert all(not maker.make_sample(i).mask.any() for i in range(5))
    assert 0.25 <= np.mean(rendered) <= 0.75  # p = 0.5 per photo
    plain = SyntheticManipulations(photos, seed=3, authentic_share=1.0, post_process=False)
    assert all(np.array_equal(s.image, originals[s.host_path.name]) for s in map(plain.make_sample, range(10)))


def test_excluded_photos_are_never_used_and_hard_negatives_are_favoured(photos):
    stems = sorted(path.stem for path in photos.iterdir())
    maker = SyntheticManipulations(photos, seed=0, authentic_share=1.0, exclude=stems[:2],
                                   hard_negatives=[stems[2]], hard_negative_share=0.8, post_process=False)
    used = [maker.make_sample(i).host_path.stem for i in range(60)]
    assert not set(used) & set(stems[:2])
    assert used.count(stems[2]) / len(used) > 0.6  # 0.8 + 0.2 / (photos left), in expectation
    with pytest.raises(DiffimlError, match="every photo is excluded"):
        SyntheticManipulations(photos, exclude=stems)


def test_is_authentic_predicts_the_kind_without_making_the_sample(photos):
    maker = SyntheticManipulations(photos, seed=5, authentic_share=0.4, post_process=False)
    flags = [maker.is_authentic(i) for i in range(30)]
    assert flags == [maker.make_sample(i).kind == "authentic" for i in range(30)]
    assert 0 < sum(flags) < 30


def _grain(image: np.ndarray, where: np.ndarray) -> float:
    """The std of the luma's high-pass residual over `where`: fine grain, measured independently of the code."""
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float((luma - cv2.GaussianBlur(luma, (0, 0), 1.0))[where].std())


def test_match_grain_gives_a_smoothed_region_its_hosts_grain_and_touches_nothing_else():
    rng = np.random.default_rng(0)
    image = np.clip(128 + rng.normal(0, 6, (128, 128, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[40:90, 40:90] = True
    image[mask] = cv2.GaussianBlur(image, (0, 0), 1.5)[mask]  # a resampled paste: smoother than its host
    ring = (cv2.dilate(mask.astype(np.uint8), np.ones((31, 31), np.uint8)) > 0) & ~mask
    host, before = _grain(image, ring), _grain(image, mask)
    assert before < 0.2 * host
    for seed in range(4):
        out = match_grain(image, mask, np.random.default_rng(seed))
        assert 0.6 * host <= _grain(out, mask) <= 1.05 * host  # 70-100 % of the ring's, up to rounding
        assert np.array_equal(out[~mask], image[~mask])
    grainy = np.clip(128 + rng.normal(0, 6, (128, 128, 3)), 0, 255).astype(np.uint8)
    assert np.array_equal(match_grain(grainy, mask, np.random.default_rng(0)), grainy)  # already as grainy
    assert np.array_equal(match_grain(image, np.zeros_like(mask), np.random.default_rng(0)), image)


def test_grain_matching_changes_only_the_edited_pixels_of_the_same_samples(photos):
    """With match_grain every sample is the one drawn without it (kind, mask, host, untouched pixels) plus noise
    inside its mask: its noise has its own random stream."""
    plain = SyntheticManipulations(photos, seed=5, authentic_share=0.3, post_process=False)
    grainy = SyntheticManipulations(photos, seed=5, authentic_share=0.3, post_process=False, match_grain=True)
    changed = 0
    for index in range(16):
        a, b = plain.make_sample(index), grainy.make_sample(index)
        assert a.kind == b.kind and np.array_equal(a.mask, b.mask) and np.array_equal(a.host, b.host)
        assert np.array_equal(a.image[~a.mask], b.image[~b.mask])
        changed += not np.array_equal(a.image, b.image)
        if a.kind == "authentic":
            assert np.array_equal(a.image, b.image)
    assert changed >= 4  # resampled, feathered and inpainted regions are smoother than their hosts
