"""The image-level detector: training it alone, its calibrated verdict, the gate, and what evaluate makes of it."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.checkpoint import save_checkpoint
from diffiml_cli.cli.app import app
from diffiml_cli.config import DetectorConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.calibration import threshold_for_far
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.models.build import build_localizer, load_model
from diffiml_cli.models.detector import Detector, cell_maps
from diffiml_cli.pipeline import load_localizer, pad_to_multiple
from diffiml_cli.presets import get_preset

FAST = ["--steps", "1", "--ensemble", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint with a detector trained for a few steps on generated photos."""
    root = tmp_path_factory.mktemp("detector")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos / f"p{index}.png")
    out = root / "run"
    result = subprocess.run([sys.executable, "-m", "diffiml_cli", "train", "--init", str(tiny_checkpoint),
                             "--train-detector", "--synthetic-from", str(photos), "--val", f"synthetic:{photos}:4",
                             "--steps", "6", "--batch-size", "2", "--val-every", "3", "--authentic-share", "0.5",
                             "--detector-steps", "1", "--detector-ensemble", "1", "--synthetic-length", "8",
                             "--select-by", "image_auc", "--out", str(out), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "final"


@pytest.fixture(scope="module")
def random_detector_checkpoint(tmp_path_factory):
    """A random localizer of the test preset with a detector whose weights are random too, so that its score
    depends on everything it reads (a fresh detector scores the map's maximum alone, and a briefly trained one
    ranks images almost as the maximum does); its scores straddle 0.5."""
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), detector=DetectorConfig())
    localizer = build_localizer(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in localizer.detector.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
        localizer.detector.pool.bias -= 1.8  # the logit of its typical score, about 0.86 on noise images
    return save_checkpoint(tmp_path_factory.mktemp("random-detector"), localizer, config)


def test_training_the_detector_changes_nothing_else(tiny_checkpoint, detector_checkpoint):
    old, _ = load_model(tiny_checkpoint)
    new, config = load_model(detector_checkpoint)
    assert config.detector == DetectorConfig() and config.calibration is None
    for name, tensor in old.state_dict().items():
        assert torch.equal(new.state_dict()[name], tensor), name
    fresh = Detector(DetectorConfig(), config.encoder.out_channels).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in new.detector.state_dict().items())


def test_the_score_pools_the_image_alone_and_cells_summarise_the_maps():
    probability = torch.zeros(1, 1, 16, 24)
    probability[..., :8, :8] = 0.75  # one hot cell
    cells = cell_maps(probability, torch.full_like(probability, 0.1))
    assert cells.shape == (1, 4, 2, 3)
    assert cells[0, :, 0, 0].tolist() == pytest.approx([0.75, 0.75, 1.0, 0.1])
    assert cells[0, :3, 1, 2].tolist() == [0.0, 0.0, 0.0]
    detector = Detector(DetectorConfig(), 8).eval()
    condition = torch.randn(1, 8, 2, 3)
    with torch.no_grad():
        evidence = detector(condition, cells)
        features = detector.pooled(evidence, cells)
    assert features.shape == (1, 6)
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    assert features[0, 3] == pytest.approx(logit(0.75)) and features[0, 5] == pytest.approx(logit(1 / 6))
    # a fresh detector scores the image by its maximum probability, the baseline it is trained to beat
    assert torch.sigmoid(detector.score(evidence, cells)).item() == pytest.approx(0.75)


@pytest.mark.parametrize("size", [(37, 45), (33, 41)])
def test_the_detector_reads_every_cell_that_holds_image_pixels(random_detector_checkpoint, size):
    """A native-resolution image of 37 x 45 (or 33 x 41) pixels is padded to 64 x 64; its detection score is that
    of the 5 x 6 latent cells that hold its pixels (the last row and column partly padding), not of the 4 x 5
    whole ones (nor, for 33 x 41, of the 4 x 5 that rounding the sides / 8 would give)."""
    pipeline = load_localizer(random_detector_checkpoint, device="cpu", precision="fp32", resolution="native",
                              sampling=SamplingOptions(steps=1, ensemble=2))
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    result = pipeline.predict(image)

    padded = pad_to_multiple(image, pipeline.config.input_multiple)
    assert tuple(padded.tensor.shape[-2:]) == (64, 64)
    whole = pipeline.predictor.predict(padded.tensor[None], pipeline.sampling)  # the padded input's 8 x 8 cells
    detector = pipeline.predictor.localizer.detector

    def score(rows: int, cols: int) -> float:
        with torch.no_grad():
            return torch.sigmoid(detector.score(whole.evidence[..., :rows, :cols], whole.cells[..., :rows, :cols])).item()

    assert result.detection_score == pytest.approx(score(5, 6), abs=1e-5)
    assert abs(score(5, 6) - score(4, 5)) > 1e-3  # the partial cells change the score: the test can tell
    [alone] = pipeline.predictor.predict_inputs([padded], pipeline.sampling)
    assert tuple(alone.cells.shape[-2:]) == tuple(alone.evidence.shape[-2:]) == (5, 6)
    assert tuple(alone.probability.shape[-2:]) == size and result.probability.shape == size
    height, width = size  # the image score is the maximum over the image's pixels alone, padding left out
    assert result.image_score == pytest.approx(whole.probability[..., :height, :width].max().item(), abs=1e-6)
    assert whole.probability[..., :height, :width].max() != whole.probability.max()  # the test can tell


def test_threshold_for_far_allows_exactly_the_target_share_of_false_alarms():
    scores = np.linspace(0.0, 0.99, 100)
    threshold = threshold_for_far(scores, 0.05)
    assert (scores >= threshold).sum() == 5 and threshold > scores[-6]
    assert (scores >= threshold_for_far(scores, 0.0)).sum() == 0
    with pytest.raises(DiffimlError, match="needs authentic images"):
        threshold_for_far([], 0.05)


@pytest.mark.parametrize("order", [("bf16", "fp32", "bf16"), ("fp32", "bf16", "fp32")])
def test_calibrating_in_two_precisions_keeps_the_false_alarm_rate_in_each(monkeypatch, order):
    """The threshold is the higher of the two precisions' own, so neither calls more than the target share of the
    authentic images manipulated, whichever is listed first; a precision listed twice (auto resolving to a named
    one) is scored once."""
    from types import SimpleNamespace

    from diffiml_cli.evaluation import calibration as module
    from diffiml_cli.evaluation.scoring import DatasetReport
    from diffiml_cli.inference import SamplingOptions

    authentic = {"fp32": np.linspace(0.0, 0.85, 20), "bf16": np.linspace(0.0, 0.95, 20)}
    tampered = {"fp32": np.array([0.5, 0.92, 0.97]), "bf16": np.array([0.5, 0.93, 0.99])}

    def fake_scores(pairs, pipeline):
        precision = pipeline.predictor.precision
        rows = [{"detection_score": s, "tampered": False} for s in authentic[precision]]
        return DatasetReport(metrics={}, per_image=rows + [{"detection_score": s, "tampered": True}
                                                           for s in tampered[precision]])

    scored = []
    monkeypatch.setattr(module, "evaluate_dataset", lambda pairs, pipeline, **progress: scored.append(pipeline) or
                        fake_scores(pairs, pipeline))
    pipelines = [SimpleNamespace(config=SimpleNamespace(detector=object()), source="x", gate=True,
                                 sampling=SamplingOptions(steps=2, ensemble=5), predictor=SimpleNamespace(precision=p))
                 for p in order]
    calibration, reports = module.calibrate(pipelines, [], target_far=0.1, gate=False)
    own = {p: threshold_for_far(authentic[p], 0.1) for p in authentic}
    assert own["bf16"] > own["fp32"] and calibration.threshold == own["bf16"]
    assert len(scored) == 2 and list(reports) == list(order[:2]) and calibration.precision == ",".join(order[:2])
    rates = {p: (far, tpr) for p, far, tpr in calibration.rates}
    assert rates["bf16"][0] == 0.1 and rates["fp32"][0] < 0.1  # at most the target in each
    assert rates == {p: ((authentic[p] >= calibration.threshold).mean(), (tampered[p] >= calibration.threshold).mean())
                     for p in authentic}
    assert calibration.far == max(far for far, _ in rates.values())
    assert calibration.tpr == min(tpr for _, tpr in rates.values())
    assert (calibration.n_authentic, calibration.n_tampered) == (20, 3)
    assert all(p.gate for p in pipelines)  # each pipeline's gate restored after scoring ungated
    pipelines[1].sampling = SamplingOptions(steps=4, ensemble=5)
    with pytest.raises(DiffimlError, match="sample alike"):
        module.calibrate(pipelines[:2], [], target_far=0.1, gate=False)


def _set(root, count=4):
    for folder in ("Tp", "Gt", "Au"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(root / "Tp" / f"t{index}.png")
        mask = np.zeros((64, 80), np.uint8)
        mask[10:40, 20:50 + index] = 255
        Image.fromarray(mask).save(root / "Gt" / f"t{index}.png")
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(root / "Au" / f"a{index}.png")
    return root


def test_calibrate_then_localize_writes_scores_verdicts_and_gates(detector_checkpoint, tmp_path):
    data = _set(tmp_path / "cal")
    calibrated = tmp_path / "calibrated"
    result = CliRunner().invoke(app, ["calibrate", "-d", str(data), "-c", str(detector_checkpoint), "--target-far",
                                      "0.25", "--gate", "--precision", "fp32", "-o", str(calibrated), *FAST])
    assert result.exit_code == 0, result.output
    _, config = load_model(calibrated)
    calibration = config.calibration
    assert calibration.far <= 0.25 and calibration.n_authentic == 4 and calibration.n_tampered == 4 and calibration.gate
    assert dict(calibration.sampling)["steps"] == 1
    assert calibration.precision == "fp32"  # the precision the scores were computed in
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["localize", str(data / "Au"), str(data / "Tp"), "-c", str(calibrated), "-o",
                                   str(out), "--precision", "fp32", *FAST])  # as calibrated
    assert run.exit_code == 0, run.output
    assert "calibrated in" not in run.output
    other = CliRunner().invoke(app, ["localize", str(data / "Au" / "a0.png"), "-c", str(calibrated), "-o",
                                     str(tmp_path / "bf16"), "--precision", "bf16", *FAST])
    assert other.exit_code == 0 and "calibrated in fp32, not bf16" in " ".join(other.output.split()), other.output
    assert "calibrated at" not in run.output + other.output  # both sample as calibrated
    steps = CliRunner().invoke(app, ["localize", str(data / "Au" / "a0.png"), "-c", str(calibrated), "-o",
                                     str(tmp_path / "steps"), "--precision", "fp32", "--steps", "2",
                                     "--ensemble", "1", "--seed", "4", "--device", "cpu"])
    assert steps.exit_code == 0, steps.output
    assert "calibrated at steps 1, not steps 2;" in " ".join(steps.output.split())  # the seed does not count
    entries = json.loads((out / "results.json").read_text())["images"]
    for entry in entries:
        assert 0 <= entry["detection_score"] <= 1
        assert entry["verdict"] == ("manipulated" if entry["detection_score"] >= calibration.threshold else "authentic")
        assert entry["gated"] == (entry["verdict"] == "authentic")
        mask = np.asarray(Image.open(entry["outputs"]["mask"]))
        assert not entry["gated"] or not mask.any()  # a gated image's mask is empty
    assert sum(e["verdict"] == "authentic" for e in entries if "/Au/" in e["image"]) >= 3  # far <= 0.25 of 4
    python = load_localizer(calibrated, device="cpu", gate=False).predict(data / "Au" / "a0.png", steps=1, ensemble=1)
    assert python.gated is False and python.verdict in ("manipulated", "authentic")


def test_calibrate_keeps_the_higher_threshold_of_two_precisions_when_the_lower_is_listed_first(
        random_detector_checkpoint, tmp_path):
    """Each precision's own threshold is computed here through the Python API; `calibrate` given both, the one
    with the lower threshold first, must keep the higher."""
    data = _set(tmp_path / "cal")
    authentic = sorted((data / "Au").iterdir())
    own = {}
    for precision in ("fp32", "bf16"):
        localizer = load_localizer(random_detector_checkpoint, device="cpu", precision=precision)
        own[precision] = threshold_for_far([localizer.predict(path, steps=1, ensemble=1).detection_score
                                            for path in authentic], 0.25)
    assert abs(own["fp32"] - own["bf16"]) > 1e-5  # bf16 moves the scores enough for the order to matter
    order = sorted(own, key=own.get)  # the lower threshold first
    out = tmp_path / "calibrated"
    result = CliRunner().invoke(app, ["calibrate", "-d", str(data), "-c", str(random_detector_checkpoint),
                                      "--target-far", "0.25", "--precision", ",".join(order), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    calibration = load_model(out)[1].calibration
    assert calibration.precision == ",".join(order) and [rate[0] for rate in calibration.rates] == order
    assert calibration.threshold == pytest.approx(own[order[1]], abs=1e-7)
    assert calibration.far <= 0.25 and all(far <= 0.25 for _, far, _ in calibration.rates)


def _auc(positive, negative) -> float:
    """P(a tampered image outscores an authentic one), ties counting half."""
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in positive for n in negative]))


@pytest.mark.parametrize("checkpoint", ["detector_checkpoint", "random_detector_checkpoint"])
def test_evaluate_reports_detection_from_the_detector(request, tmp_path, checkpoint):
    """evaluate's per-image detection and image scores are those the Python API computes for the same images and
    seed, and its image-level metrics are of the detection scores (max_score_auc of the image scores). The random
    detector ranks and calls the images otherwise than their maxima do, so reading the wrong score shows."""
    detector_checkpoint = request.getfixturevalue(checkpoint)
    data = _set(tmp_path / "set")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "-d", str(data), "-c", str(detector_checkpoint), "--json", "-o",
                                      str(out), "--seed", "3", "--precision", "fp32", *FAST])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    metrics = document["datasets"]["set"]["metrics"]
    assert "detection_score" in document["definitions"] and "image_balanced_accuracy" in document["definitions"]
    with open(out / "per_image.csv", newline="") as handle:
        rows = {Path(row["image"]).name: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted([f"a{i}.png" for i in range(4)] + [f"t{i}.png" for i in range(4)])

    localizer = load_localizer(detector_checkpoint, device="cpu", precision="fp32")
    detection, maxima, labels = [], [], []
    for name, row in rows.items():
        image = data / ("Tp" if name.startswith("t") else "Au") / name
        expected = localizer.predict(image, steps=1, ensemble=1, seed=3)
        assert float(row["detection_score"]) == pytest.approx(expected.detection_score, abs=1e-5), name
        assert float(row["image_score"]) == pytest.approx(expected.image_score, abs=1e-5), name
        assert row["tampered"] == str(name.startswith("t"))
        detection.append(expected.detection_score)
        maxima.append(expected.image_score)
        labels.append(name.startswith("t"))
    detection, maxima, labels = np.array(detection), np.array(maxima), np.array(labels)
    assert metrics["image_auc"] == pytest.approx(_auc(detection[labels], detection[~labels]))
    assert metrics["max_score_auc"] == pytest.approx(_auc(maxima[labels], maxima[~labels]))
    called = detection >= 0.5  # no calibration: the detection scores at 0.5
    assert metrics["image_accuracy"] == pytest.approx(np.mean(called == labels))
    assert metrics["image_balanced_accuracy"] == pytest.approx((called[labels].mean() + (~called[~labels]).mean()) / 2)
    assert (metrics["n_tampered"], metrics["n_authentic"]) == (4, 4)
    if checkpoint == "random_detector_checkpoint":  # what the test can tell apart
        assert _auc(detection[labels], detection[~labels]) != _auc(maxima[labels], maxima[~labels])
        assert np.mean(called == labels) != np.mean((maxima >= 0.5) == labels)


def test_training_from_a_calibrated_checkpoint_drops_its_calibration(detector_checkpoint, tmp_path):
    """A threshold measured on one model's scores says nothing about the model training makes of it."""
    from diffiml_cli.training_setup import ModelRecipe, build_model

    data = _set(tmp_path / "cal")
    calibrated = tmp_path / "calibrated"
    result = CliRunner().invoke(app, ["calibrate", "-d", str(data), "-c", str(detector_checkpoint), "-o",
                                      str(calibrated), *FAST])
    assert result.exit_code == 0, result.output
    assert load_model(calibrated)[1].calibration is not None
    _, config = build_model(ModelRecipe(init=str(calibrated)))
    assert config.calibration is None and config.detector is not None


def test_calibrating_two_sets_keeps_the_false_alarm_rate_in_each_not_only_pooled(monkeypatch, tmp_path):
    """Easy synthetic authentic images must not hide the false alarms of real ones: pooled, 5 % of 40 would allow
    two real false alarms out of 10 (20 %); per set, at most floor(0.05 * 10) = 0 of them."""
    from types import SimpleNamespace

    from diffiml_cli.data.readers import Pair
    from diffiml_cli.evaluation import calibration as module
    from diffiml_cli.evaluation.scoring import DatasetReport
    from diffiml_cli.inference import SamplingOptions

    synthetic = {f"s{i}.png": score for i, score in enumerate(np.linspace(0.0, 0.5, 30))}
    real = {f"r{i}.png": score for i, score in enumerate(np.linspace(0.3, 0.9, 10))}
    pairs = [Pair(image=tmp_path / name, mask=None) for name in [*synthetic, *real]]
    rows = [{"image": str(tmp_path / name), "detection_score": score, "tampered": False}
            for name, score in {**synthetic, **real}.items()]
    monkeypatch.setattr(module, "evaluate_dataset", lambda pairs, pipeline, **_: DatasetReport(metrics={},
                                                                                               per_image=rows))
    pipeline = SimpleNamespace(config=SimpleNamespace(detector=object()), source="x", gate=False,
                               sampling=SamplingOptions(), predictor=SimpleNamespace(precision="fp32"))
    pooled, _ = module.calibrate([pipeline], pairs, target_far=0.05, gate=False)
    assert sum(score >= pooled.threshold for score in real.values()) == 2
    sets = ["synthetic"] * 30 + ["real"] * 10
    each, reports = module.calibrate([pipeline], pairs, target_far=0.05, gate=False, sets=sets)
    assert each.threshold == threshold_for_far(list(real.values()), 0.05) > pooled.threshold
    assert not any(score >= each.threshold for score in real.values()) and each.far == 0.0
    assert module.rates_by_set(reports, pairs, sets, pooled.threshold) == [("fp32", "synthetic", 0.0, 30),
                                                                           ("fp32", "real", 0.2, 10)]


def test_calibrate_takes_several_sets_and_holds_the_rate_in_each(detector_checkpoint, tmp_path):
    first, second = _set(tmp_path / "one"), _set(tmp_path / "two", count=3)
    calibrated = tmp_path / "calibrated"
    result = CliRunner().invoke(app, ["calibrate", "-d", f"one={first}", "-d", f"two={second}", "-c",
                                      str(detector_checkpoint), "--target-far", "0.25", "--precision", "fp32", "-o",
                                      str(calibrated), *FAST])
    assert result.exit_code == 0, result.output
    calibration = load_model(calibrated)[1].calibration
    assert (calibration.n_authentic, calibration.n_tampered) == (7, 7) and calibration.data.startswith("one: ")
    rates = {line.split(",")[1].split(":")[0].strip(): float(line.split("false alarms ")[1].split()[0])
             for line in result.output.splitlines() if line.startswith("fp32, ")}
    assert set(rates) == {"one", "two"} and max(rates.values()) == calibration.far <= 0.25
