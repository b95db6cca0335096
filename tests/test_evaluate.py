"""`diffiml evaluate` end to end on the tiny checkpoint, the evaluation library, and the robustness protocol."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.cli.app import app
from diffiml_cli.config import CalibrationConfig, DetectorConfig
from diffiml_cli.data.readers import Pair
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.definitions import METRIC_DEFINITIONS
from diffiml_cli.evaluation.robustness import PERTURBATION_LEVELS, Perturbation, gaussian_noise, parse_kinds
from diffiml_cli.evaluation.scoring import COUNT_KEYS, METRIC_KEYS, evaluate_dataset, parse_dataset_arg
from diffiml_cli.image_ops import gaussian_blur, jpeg_compress
from diffiml_cli.inference import Prediction, Predictor, SamplingOptions
from diffiml_cli.pipeline import LocalizationPipeline
from diffiml_cli.presets import get_preset

runner = CliRunner()


def _save_image(path: Path, height: int, width: int) -> None:
    """A random image whose pixels depend only on its name and size, not on which test ran before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([zlib.crc32(path.name.encode()), height, width])
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _save_mask(path: Path, height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return mask


def _trivial_f1(masks: list[np.ndarray]) -> float:
    return float(np.mean([2 * m.sum() / (2 * m.sum() + (~m).sum()) for m in masks]))


@pytest.fixture
def two_datasets(tmp_path) -> tuple[Path, Path, dict[str, float]]:
    """An IMDL-BenCo JSON (with a Negative entry) and a Tp/Gt/Au folder, 1 tampered + 1 authentic each."""
    js = tmp_path / "js"
    _save_image(js / "img/b.png", 70, 50)
    _save_image(js / "img/c.png", 64, 64)
    mask_js = _save_mask(js / "gt/b.png", 70, 50, (30, 10, 60, 45))
    (js / "set.json").write_text(json.dumps([["img/b.png", "gt/b.png"], ["img/c.png", "Negative"]]))
    folder = tmp_path / "fold"
    _save_image(folder / "Tp/x.png", 48, 64)
    _save_image(folder / "Au/z.png", 50, 50)
    mask_folder = _save_mask(folder / "Gt/x.png", 48, 64, (0, 0, 24, 32))
    return js / "set.json", folder, {"js": _trivial_f1([mask_js]), "fold": _trivial_f1([mask_folder])}


def test_two_datasets_with_jpeg_robustness_write_every_report(tiny_checkpoint, two_datasets, tmp_path):
    spec_json, spec_folder, trivial = two_datasets
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--data", f"js={spec_json}", "--data", str(spec_folder),
        "--robustness", "jpeg", "--steps", "1", "--ensemble", "1", "--batch-size", "2", "--out", str(out),
        "--save-predictions",
    ])
    assert result.exit_code == 0, result.output
    assert "ORACLE" in result.output and "robustness: jpeg" in result.output

    document = json.loads((out / "metrics.json").read_text())
    definitions = document["definitions"]
    assert set(METRIC_DEFINITIONS) <= set(definitions)
    assert set(document["datasets"]) == {"js", "fold"}  # the folder is named by its stem
    for name, entry in document["datasets"].items():
        metrics = entry["metrics"]
        assert set(metrics) == set(METRIC_KEYS) and set(metrics) <= set(definitions)
        assert (metrics["n_tampered"], metrics["n_authentic"], entry["bad_pairs"]) == (1, 1, [])
        assert metrics["trivial_f1"] == pytest.approx(trivial[name], abs=1e-9)  # masks at their original size
        assert 0 <= metrics["pixel_f1"] <= metrics["oracle_f1"] <= 1
    rows = [document["datasets"][name]["metrics"] for name in ("js", "fold")]
    average = document["average"]["metrics"]
    assert set(average) <= set(definitions)
    for key in METRIC_KEYS:
        if key in COUNT_KEYS:
            assert average[key] == rows[0][key] + rows[1][key]
        elif key in average:
            assert average[key] == pytest.approx((rows[0][key] + rows[1][key]) / 2)
    assert "pixel_f1" in average and "oracle_threshold" not in average  # thresholds are per dataset
    levels = document["robustness"]["jpeg"]["levels"]
    assert [level["level"] for level in levels] == list(PERTURBATION_LEVELS["jpeg"])
    for level in levels:
        assert set(level["datasets"]) == {"js", "fold"}
        assert level["average"]["pixel_f1"] == pytest.approx(
            (level["datasets"]["js"]["pixel_f1"] + level["datasets"]["fold"]["pixel_f1"]) / 2)

    with open(out / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 + 3 * len(levels)  # (2 datasets + average) clean and at each level
    clean_average = next(r for r in table if r["dataset"] == "average" and r["perturbation"] == "none")
    assert float(clean_average["pixel_f1"]) == pytest.approx(average["pixel_f1"])
    with open(out / "per_image.csv", newline="") as handle:
        per_image = list(csv.DictReader(handle))
    assert {(r["dataset"], Path(r["image"]).name, r["height"], r["width"]) for r in per_image} >= {
        ("js", "b.png", "70", "50"), ("fold", "z.png", "50", "50")}
    with Image.open(out / "robustness_jpeg.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    with Image.open(out / "predictions/js/b_prob.png") as prob:
        assert prob.size == (50, 70)
    assert (out / "predictions/fold/Au/z_prob.png").is_file()


def test_a_mask_of_another_size_is_listed_skipped_and_exits_1(tiny_checkpoint, tmp_path):
    folder = tmp_path / "bad"
    _save_image(folder / "Tp/good.png", 40, 40)
    _save_mask(folder / "Gt/good.png", 40, 40, (0, 0, 10, 10))
    _save_image(folder / "Tp/wrong.png", 40, 40)
    _save_mask(folder / "Gt/wrong.png", 30, 40, (0, 0, 10, 10))
    _save_image(folder / "Au/real.png", 32, 48)
    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", "-c", str(tiny_checkpoint), "-d", str(folder), "--steps", "1",
                                 "--ensemble", "1", "--json", "--out", str(out)])
    assert result.exit_code == 1
    assert "wrong.png" in result.output and "40x30" in result.output
    document = json.loads(result.stdout)
    entry = document["datasets"]["bad"]
    assert [Path(b["image"]).name for b in entry["bad_pairs"]] == ["wrong.png"]
    assert (entry["metrics"]["n_tampered"], entry["metrics"]["n_authentic"]) == (1, 1)
    assert json.loads((out / "metrics.json").read_text())["datasets"]["bad"]["n_bad_pairs"] == 1


class _MaskInThePixels:
    """A stand-in predictor that reads the mask off the image: probability = the red channel."""

    def predict_maps(self, images: torch.Tensor, options: SamplingOptions) -> Prediction:
        probability = images[:, :1].clone()
        return Prediction(probability, torch.zeros_like(probability), probability.amax(dim=(1, 2, 3)))

    predict_inputs = Predictor.predict_inputs  # groups inputs by shape, calls predict_maps, crops


def test_a_perfect_predictor_scores_near_one_at_the_original_resolution(tmp_path):
    pairs = []
    for name, (height, width) in {"p": (48, 80), "q": (90, 60)}.items():
        mask = _save_mask(tmp_path / f"{name}_gt.png", height, width, (height // 4, width // 4, height // 2, width // 2))
        Image.fromarray(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)).save(tmp_path / f"{name}.png")
        pairs.append(Pair(tmp_path / f"{name}.png", tmp_path / f"{name}_gt.png"))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "au.png")
    pairs.append(Pair(tmp_path / "au.png", None))
    pairs.append(Pair(tmp_path / "missing.png", None))
    seen = []
    config = dataclasses.replace(get_preset("test"), image_size=32)
    pipeline = LocalizationPipeline(_MaskInThePixels(), config, sampling=SamplingOptions(steps=1, ensemble=1), batch_size=2)
    report = evaluate_dataset(pairs, pipeline, on_progress=lambda pair, error: seen.append((pair.image.name, error)))
    metrics = report.metrics
    assert metrics["pixel_f1"] > 0.9 and metrics["pixel_auc"] > 0.99
    assert (metrics["image_auc"], metrics["image_accuracy"], metrics["authentic_pixel_fpr"]) == (1.0, 1.0, 0.0)
    assert [(r["height"], r["width"]) for r in report.per_image] == [(48, 80), (90, 60), (40, 40)]
    assert [Path(b.image).name for b in report.bad_pairs] == ["missing.png"]
    assert sorted(name for name, _ in seen) == ["au.png", "missing.png", "p.png", "q.png"]


class _ScoresInThePixels:
    """A stand-in predictor with a detector: probability = the red channel, detection score = the green channel's
    mean, so that a test sets each image's maps and both of its scores independently."""

    def predict_inputs(self, inputs, options: SamplingOptions) -> list[Prediction]:
        predictions = []
        for item in inputs:
            height, width = item.valid
            image = item.tensor[None, :, :height, :width]
            probability = image[:, :1].clone()
            predictions.append(Prediction(probability, torch.zeros_like(probability), probability.amax(dim=(1, 2, 3)),
                                          detection_score=image[:, 1].mean(dim=(1, 2))))
        return predictions


def _auc(positive: list[float], negative: list[float]) -> float:
    """P(a tampered image outscores an authentic one), ties counting half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("gate", [False, True])
def test_image_metrics_read_the_detection_scores_and_rates_average_over_their_own_images(tmp_path, gate):
    """Each image's red channel is its probability map and its green channel its detection score. The scores are
    chosen so that every aggregation differs from its plausible slips: AUC and accuracies of the image scores
    (the map's maximum) instead of the detection scores, a threshold of 0.5 instead of the calibrated 0.35,
    accuracy instead of balanced accuracy, authentic rates over every image, pixel metrics that ignore the masks
    the gate emptied."""
    size = 32
    box = np.zeros((size, size), bool)
    box[:16, :16] = True
    red = {
        "t_exact": box,  # F1 1, no false positive
        "t_loose": np.roll(box, 8, axis=1),  # half the box, and as many pixels beside it
        "t_missed": np.zeros((size, size), bool),  # nothing found
        "a_speck": np.pad(np.ones((8, 8), bool), ((0, 24), (0, 24))),  # 64 pixels marked on an authentic image
        "a_faint": np.full((size, size), 100 / 255),  # max 0.39: below the pixel threshold everywhere
        "a_clean": np.zeros((size, size), bool),
        "a_dark": np.zeros((size, size), bool),
    }
    # 3 tampered and 4 authentic images, so that accuracy and balanced accuracy differ.
    detection = {"t_exact": 0.9, "t_loose": 0.3, "t_missed": 0.45, "a_speck": 0.2, "a_faint": 0.52, "a_clean": 0.1,
                 "a_dark": 0.05}
    pairs, expected_maps = [], {}
    for name, probability in red.items():
        pixels = np.zeros((size, size, 3), np.uint8)
        pixels[..., 0] = np.round(np.asarray(probability, np.float64) * 255)
        pixels[..., 1] = round(detection[name] * 255)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        mask = None
        if name.startswith("t_"):  # t_missed's edit is smaller: the trivial F1 differs between images
            side = 8 if name == "t_missed" else 16
            mask = _save_mask(tmp_path / f"{name}_gt.png", size, size, (0, 0, side, side))
        pairs.append(Pair(tmp_path / f"{name}.png", None if mask is None else tmp_path / f"{name}_gt.png"))
        expected_maps[name] = pixels[..., 0] / 255, mask
    scores = {name: round(detection[name] * 255) / 255 for name in red}
    maxima = {name: float(expected_maps[name][0].max()) for name in red}
    calibrated = 0.35
    preset = get_preset("test")
    config = dataclasses.replace(preset, image_size=32, resolution="native", detector=DetectorConfig(),
                                 calibration=CalibrationConfig(threshold=calibrated, target_far=0.1, far=0.0, tpr=1.0,
                                                               n_authentic=4, n_tampered=3))
    pipeline = LocalizationPipeline(_ScoresInThePixels(), config, sampling=SamplingOptions(steps=1, ensemble=1),
                                    gate=gate, batch_size=2)
    report = evaluate_dataset(pairs, pipeline)
    metrics = report.metrics

    tampered = [name for name in red if name.startswith("t_")]
    authentic = [name for name in red if name.startswith("a_")]
    assert (metrics["n_tampered"], metrics["n_authentic"]) == (3, 4)
    assert [(Path(r["image"]).stem, r["tampered"]) for r in report.per_image] == [(n, n in tampered) for n in red]
    for record in report.per_image:
        name = Path(record["image"]).stem
        assert (record["detection_score"], record["image_score"]) == pytest.approx((scores[name], maxima[name]))
    # Image level: the detection scores, at the calibrated threshold.
    assert metrics["image_auc"] == pytest.approx(_auc([scores[n] for n in tampered], [scores[n] for n in authentic]))
    assert metrics["image_auc"] == pytest.approx(5 / 6)
    assert metrics["max_score_auc"] == pytest.approx(_auc([maxima[n] for n in tampered], [maxima[n] for n in authentic]))
    assert metrics["max_score_auc"] == pytest.approx(2 / 3)
    assert metrics["image_accuracy"] == pytest.approx(5 / 7)  # t_loose and a_faint wrong; 4/7 at 0.5 or on maxima
    assert metrics["image_balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)  # 13/24 at 0.5, 7/12 on maxima
    # Pixel level: F1, IoU and the trivial F1 over the tampered images; false positives over the authentic ones.
    called = {name: not gate or scores[name] >= calibrated for name in red}  # the gate empties the others' masks
    predicted = {name: (expected_maps[name][0] >= 0.5) & called[name] for name in red}
    masks = {name: expected_maps[name][1] for name in tampered}
    f1 = {n: 2 * (predicted[n] & masks[n]).sum() / (predicted[n].sum() + masks[n].sum()) for n in tampered}
    iou = {n: (predicted[n] & masks[n]).sum() / (predicted[n] | masks[n]).sum() for n in tampered}
    assert f1["t_loose"] == (0 if gate else 0.5)
    assert metrics["pixel_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert metrics["pixel_iou"] == pytest.approx(np.mean(list(iou.values())))
    assert metrics["trivial_f1"] == pytest.approx((2 * 512 / (512 + 768) + 2 * 64 / (2 * 64 + 960)) / 3)
    fpr = [predicted[n].mean() for n in authentic]
    assert metrics["authentic_pixel_fpr"] == pytest.approx(np.mean(fpr)) == (0 if gate else 64 / 1024 / 4)
    assert metrics["authentic_any_rate"] == np.mean([predicted[n].any() for n in authentic]) == (0 if gate else 1 / 4)
    assert metrics["pixel_f1_all"] == pytest.approx(
        np.mean([*f1.values(), *(float(not predicted[n].any()) for n in authentic)]))


def test_dataset_arguments_are_named_by_prefix_or_stem(tmp_path):
    assert parse_dataset_arg("casia=/data/casia.json") == ("casia", "/data/casia.json")
    assert parse_dataset_arg("/data/coverage.json") == ("coverage", "/data/coverage.json")
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_dataset_arg(str(odd)) == ("a=b", str(odd))
    with pytest.raises(DiffimlError):
        parse_dataset_arg("=x.json")


def _smooth_image(size: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([x / size * 200 + 20, y / size * 200 + 20, (x + y) / (2 * size) * 150 + 50], axis=2)
    return np.round(image).astype(np.uint8)


def test_jpeg_at_quality_100_changes_little_and_lower_quality_more():
    image = _smooth_image()
    errors = {q: np.abs(jpeg_compress(image, q).astype(int) - image).mean() for q in PERTURBATION_LEVELS["jpeg"]}
    assert errors[100] < 1.0
    assert errors[50] > 2 * errors[100]
    assert jpeg_compress(image, 100).shape == image.shape


@pytest.mark.parametrize("kernel", PERTURBATION_LEVELS["blur"])
def test_blur_uses_the_kernel_size_and_its_opencv_sigma(kernel):
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, 48:] = 255  # a vertical step edge between columns 47 and 48
    row = gaussian_blur(image, kernel=kernel)[32, :, 0].astype(np.float64)
    radius = kernel // 2
    # Only columns within the kernel's reach of the edge change.
    assert (row[: 48 - radius] == 0).all() and (row[48 + radius:] == 255).all()
    # The edge's derivative is the 1-D kernel: its spread is OpenCV's sigma for this size.
    derivative = np.diff(row)
    centres = np.arange(len(derivative)) + 0.5
    mean = (derivative * centres).sum() / derivative.sum()
    sigma = math.sqrt((derivative * (centres - mean) ** 2).sum() / derivative.sum())
    assert sigma == pytest.approx(0.3 * ((kernel - 1) / 2 - 1) + 0.8, rel=0.12)
    with pytest.raises(ValueError):
        gaussian_blur(image, kernel=kernel + 1)


@pytest.mark.parametrize("variance", PERTURBATION_LEVELS["noise"])
def test_noise_has_the_requested_variance_and_is_seeded(variance):
    gray = np.full((256, 256, 3), 128, np.uint8)  # far from 0 and 255: no clipping at these variances
    noisy = gaussian_noise(gray, variance, seed=(0, 7))
    residual = noisy.astype(np.float64) - 128
    assert abs(residual.mean()) < 0.05
    assert residual.var() == pytest.approx(variance + 1 / 12, rel=0.03)  # + rounding to integers
    assert np.array_equal(noisy, Perturbation("noise", variance, seed=0)(gray, 7))
    assert not np.array_equal(noisy, Perturbation("noise", variance, seed=0)(gray, 8))


def test_robustness_kinds_parse_and_reject_unknown_names():
    assert parse_kinds("jpeg, noise") == ("jpeg", "noise")
    assert parse_kinds(None) == ()
    for bad in ("jpeg,fog", "blur,blur"):
        with pytest.raises(DiffimlError):
            parse_kinds(bad)
