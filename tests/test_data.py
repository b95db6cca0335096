"""Dataset readers, manifest validation, mask binarisation, PairDataset and MixedDataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diffiml_cli.data import (AugmentConfig, MixedDataset, Pair, PairDataset, load_spec, parse_weighted_specs,
                              validate_pairs)
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import load_mask

# Stems whose sorted order differs between Tp/ and Gt/ once the _gt/_mask suffixes are added.
_SIZES = {"img1": (40, 30), "img10": (36, 44), "img2": (50, 24)}
_MASK_NAMES = {"img1": "img1_gt.png", "img10": "img10_mask.png", "img2": "img2.png"}


def _image(size: tuple[int, int], seed: int) -> np.ndarray:
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 2, width // 4: width // 2] = 255
    return mask


@pytest.fixture()
def folder_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for sub in ("Tp", "Gt", "Au"):
        (root / sub).mkdir(parents=True)
    for seed, (stem, size) in enumerate(_SIZES.items()):
        Image.fromarray(_image(size, seed)).save(root / "Tp" / f"{stem}.png")
        Image.fromarray(_mask(size)).save(root / "Gt" / _MASK_NAMES[stem])
    Image.fromarray(_image((32, 32), 9)).save(root / "Au" / "real.jpg")
    return root


def _write_json(path: Path, entries: object) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_folder_pairs_by_stem_not_sorted_order(folder_dataset):
    pairs = load_spec(folder_dataset)
    by_image = {pair.image.stem: pair for pair in pairs}
    for stem in _SIZES:
        assert by_image[stem].mask.name == _MASK_NAMES[stem]
    assert by_image["real"].mask is None and pairs[-1].image.name == "real.jpg"
    validate_pairs(pairs)  # mis-paired masks would have the wrong size


def test_json_paths_resolve_against_json_folder(folder_dataset, monkeypatch, tmp_path):
    spec = _write_json(folder_dataset / "set.json", [
        ["Tp/img2.png", "Gt/img2.png"],
        ["Au/real.jpg", "Negative"],
    ])
    monkeypatch.chdir(tmp_path)
    pairs = load_spec(spec)
    assert pairs == [Pair(folder_dataset / "Tp/img2.png", folder_dataset / "Gt/img2.png"),
                     Pair(folder_dataset / "Au/real.jpg", None)]
    validate_pairs(pairs)


def test_weighted_specs(folder_dataset, tmp_path):
    spec = _write_json(folder_dataset / "set.json", [["Au/real.jpg", "Negative"]])
    colon_folder = tmp_path / "odd:3"
    (colon_folder / "Au").mkdir(parents=True)
    Image.fromarray(_image((16, 16), 1)).save(colon_folder / "Au" / "x.png")
    loaded = parse_weighted_specs([f"{spec}:2.5", str(folder_dataset), str(colon_folder), f"{colon_folder}:0.5"])
    assert [weight for _, weight in loaded] == [2.5, 1.0, 1.0, 0.5]
    assert len(loaded[0][0]) == 1 and len(loaded[1][0]) == 4 and loaded[2][0] == loaded[3][0]
    with pytest.raises(DiffimlError, match="positive"):
        parse_weighted_specs([f"{spec}:-1"])
    with pytest.raises(DiffimlError, match="positive"):
        parse_weighted_specs([f"{spec}:0"])


def test_mask_of_other_size_named(folder_dataset):
    Image.fromarray(_mask((10, 10))).save(folder_dataset / "Gt" / "img2.png")
    expected = r"1 of 4 pairs.*img2\.png: mask is 10x10 but its image .*img2\.png is 50x24"
    with pytest.raises(DiffimlError, match=expected):
        validate_pairs(load_spec(folder_dataset))


def test_validation_reports_all_failures_in_one_line(folder_dataset):
    pairs = load_spec(folder_dataset)
    (folder_dataset / "Tp" / "img1.png").unlink()
    (folder_dataset / "Au" / "real.jpg").write_text("not an image")
    with pytest.raises(DiffimlError) as caught:
        validate_pairs(pairs)
    message = str(caught.value)
    assert message.startswith("2 of 4 pairs") and "img1.png: no such file" in message and "real.jpg" in message
    assert "\n" not in message


def test_tp_without_mask_named(folder_dataset):
    (folder_dataset / "Gt" / "img10_mask.png").unlink()
    with pytest.raises(DiffimlError, match="img10.png has no mask"):
        load_spec(folder_dataset)


@pytest.mark.parametrize(("entries", "expected"), [
    ({"Tp/img2.png": "Gt/img2.png"}, "top level is a JSON dict"),
    ([["Tp/img2.png"]], "entry 0 is"),
    ([["Tp/img2.png", None]], "entry 0 is"),
    ([["Au/real.jpg", "Negativ"]], 'use "Negative" for authentic images'),
    ([["Tp/img2.png", "Gt/missing.png"]], 'mask "Gt/missing.png" is not a file'),
    ([], "dataset is empty"),
])
def test_bad_json_manifests(folder_dataset, entries, expected):
    spec = _write_json(folder_dataset / "bad.json", entries)
    with pytest.raises(DiffimlError, match=expected) as caught:
        load_spec(spec)
    assert str(spec) in str(caught.value)


def test_unreadable_specs(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("[[1, 2")
    with pytest.raises(DiffimlError, match="not valid JSON"):
        load_spec(broken)
    with pytest.raises(DiffimlError, match="no such dataset"):
        load_spec(tmp_path / "absent.json")
    (tmp_path / "layoutless").mkdir()
    with pytest.raises(DiffimlError, match="expected Tp/ and Gt/"):
        load_spec(tmp_path / "layoutless")
    for sub in ("Tp", "Gt"):
        (tmp_path / "hollow" / sub).mkdir(parents=True)
    with pytest.raises(DiffimlError, match="dataset is empty"):
        load_spec(tmp_path / "hollow")


def test_masks_binarised_from_any_mode(tmp_path):
    expected = np.array([[False, True, True, False]])
    rgb = np.array([[[255, 0, 0], [255, 255, 255], [200, 200, 0], [0, 0, 0]]], np.uint8)  # brightest channel 255, 255, 200, 0
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([np.full((1, 4, 3), 255, np.uint8), np.array([[[0], [255], [200], [100]]], np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")  # transparent counts as black
    Image.fromarray(np.array([[20000, 40000, 65535, 0]], np.uint16)).save(tmp_path / "deep.png")
    palette = Image.fromarray(np.array([[0, 1, 1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(expected).save(tmp_path / "bits.png")
    Image.fromarray(np.array([[0, 255, 128, 127]], np.uint8)).save(tmp_path / "gray.png")
    for name in ("rgb", "rgba", "deep", "palette", "bits"):
        mask = load_mask(tmp_path / f"{name}.png")
        # A pixel's value is its brightest channel: red on black marks manipulation as white does.
        wanted = np.array([[True, True, True, False]]) if name == "rgb" else expected
        assert mask.dtype == np.bool_ and np.array_equal(mask, wanted), name
    assert load_mask(tmp_path / "gray.png").tolist() == [[False, True, True, False]]


def _check_item(item: dict, size: int, index: int) -> None:
    assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    for key in ("mask", "edge"):
        assert item[key].shape == (1, size, size) and item[key].dtype == torch.float32
        assert set(item[key].unique().tolist()) <= {0.0, 1.0}
    assert item["index"] == index


def test_pair_dataset_items_and_determinism(folder_dataset):
    pairs = load_spec(folder_dataset)
    strong = AugmentConfig(hflip=0.5, blur=0.5, jpeg=0.5, noise=0.5, resize=0.5, crop_paste=0.5, inpaint=0.5)
    dataset = PairDataset(pairs, image_size=64, augment=strong, edge_width=5, seed=3)
    assert len(dataset) == 4
    photometric_only = PairDataset(pairs, image_size=64, augment=AugmentConfig(crop_paste=0.0, inpaint=0.0))
    for index in range(len(dataset)):
        _check_item(dataset[index], 64, index)
        item = photometric_only[index]
        _check_item(item, 64, index)
        if pairs[index].mask is None:
            assert item["mask"].sum() == 0 and item["edge"].sum() == 0
        else:
            assert item["mask"].sum() > 0 and item["edge"].sum() > 0
    again = PairDataset(pairs, image_size=64, augment=strong, edge_width=5, seed=3)
    for index in range(len(dataset)):
        assert all(torch.equal(dataset[index][key], again[index][key]) for key in ("image", "mask", "edge"))
    first_epoch = [dataset[index]["image"] for index in range(len(dataset))]
    dataset.set_epoch(1)
    assert any(not torch.equal(first_epoch[i], dataset[i]["image"]) for i in range(len(dataset)))
    dataset.set_epoch(0)
    assert all(torch.equal(first_epoch[i], dataset[i]["image"]) for i in range(len(dataset)))


def test_pair_dataset_without_augmentation_resizes_exactly(folder_dataset):
    dataset = PairDataset([Pair(folder_dataset / "Tp" / "img2.png", folder_dataset / "Gt" / "img2.png")],
                          image_size=100, augment=None)
    item = dataset[0]
    _check_item(item, 100, 0)
    # The mask square spans a quarter of each axis, whatever the resize.
    assert abs(item["mask"].mean().item() - 1 / 16) < 0.01


def test_mixed_dataset_weights_determinism_and_epochs(folder_dataset):
    pairs = load_spec(folder_dataset)
    small = PairDataset(pairs[:1], image_size=32, augment=AugmentConfig(), seed=1)
    large = PairDataset(pairs, image_size=32, augment=AugmentConfig(), seed=2)
    mixed = MixedDataset([small, large], [3.0, 1.0], length=40, seed=5)
    sources = [mixed[i]["source"] for i in range(len(mixed))]
    assert 20 <= sources.count(0) <= 38
    item = mixed[7]
    _check_item(item, 32, 7)
    twin = MixedDataset([small, large], [3.0, 1.0], length=40, seed=5)
    assert torch.equal(twin[7]["image"], item["image"])
    mixed.set_epoch(4)
    assert small.epoch == 4 and large.epoch == 4
    assert [mixed[i]["source"] for i in range(len(mixed))] != sources
    with pytest.raises(IndexError):
        mixed[40]


@pytest.mark.parametrize("manipulation", ["crop_paste", "inpaint"])
def test_naive_augment_manipulations_extend_the_mask(manipulation):
    from diffiml_cli.data import augment

    off = dict(hflip=0.0, blur=0.0, jpeg=0.0, noise=0.0, resize=0.0, crop_paste=0.0, inpaint=0.0)
    config = AugmentConfig(**{**off, manipulation: 1.0})
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), bool)
    mask[:8, :8] = True
    grown = 0
    for seed in range(10):
        new_image, new_mask = augment(image, mask, np.random.default_rng(seed), config)
        assert new_image.shape == image.shape and new_mask.shape == mask.shape
        assert new_mask[:8, :8].all()  # the old mask is kept
        assert np.array_equal(new_image[~new_mask], image[~new_mask])  # changes only inside the mask
        grown += int(new_mask.sum() > mask.sum())
    assert grown >= 5


# Property tests of the IMDL-BenCo JSON reader.

_NAMES = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=16).filter(
    lambda name: name not in (".", "..") and name.strip().casefold() != "negative")
_NEGATIVES = st.sampled_from(["Negative", "negative", "NEGATIVE", " Negative", "nEgAtIvE"])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=40, deadline=None)
@given(entries=st.lists(st.tuples(_NAMES, st.none() | _NAMES, _NEGATIVES), min_size=1, max_size=6),
       ensure_ascii=st.booleans())
def test_json_manifest_round_trip(entries, ensure_ascii, tmp_path_factory):
    """Any file names (unicode, spaces, backslashes) and any spelling of Negative read back exactly."""
    root = tmp_path_factory.mktemp("manifest")
    document, expected = [], []
    for image, mask, negative in entries:
        if mask is None:
            document.append([f"img/{image}", negative])
            expected.append(Pair(root / "img" / image, None))
        else:
            (root / "gt").mkdir(exist_ok=True)
            (root / "gt" / mask).write_bytes(b"")  # load_spec checks that masks exist; contents come later
            document.append([f"img/{image}", f"gt/{mask}"])
            expected.append(Pair(root / "img" / image, root / "gt" / mask))
    spec = root / "set.json"
    spec.write_text(json.dumps(document, ensure_ascii=ensure_ascii), encoding="utf-8")
    assert load_spec(spec) == expected


@settings(max_examples=150, deadline=None)
@given(document=_JSON | st.lists(st.lists(st.text(max_size=6) | st.none() | st.integers(), max_size=3), max_size=4))
def test_junk_json_raises_only_diffiml_error(document, tmp_path_factory):
    spec = tmp_path_factory.mktemp("junk") / "set.json"
    spec.write_text(json.dumps(document))
    try:
        pairs = load_spec(spec)
    except DiffimlError as error:
        assert str(error).startswith(str(spec)) and "\n" not in str(error)
        return
    assert pairs and all(isinstance(pair, Pair) and (pair.mask is None or pair.mask.is_file()) for pair in pairs)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64))
def test_junk_bytes_raise_only_diffiml_error(data, tmp_path_factory):
    spec = tmp_path_factory.mktemp("bytes") / "set.json"
    spec.write_bytes(data)
    try:
        load_spec(spec)
    except DiffimlError as error:
        assert str(spec) in str(error)
