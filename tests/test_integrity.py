"""Evidence integrity (#35): a broken model is an error, not a verdict; no NaN in any JSON the tool writes; a calibrated
copy never replaces its source; the Python API refuses bad arrays and seeds with DiffimlError."""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffiml_cli.cli.app import app
from diffiml_cli.errors import DiffimlError
from diffiml_cli.jsonsafe import finite_json

NOT_FINITE = (math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"))


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, as JavaScript's JSON.parse, jq and RFC 8259 do."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_finite_json_turns_every_non_finite_number_into_null_and_keeps_the_rest():
    document = {"a": list(NOT_FINITE), "b": (1, 2.5, np.float32(0.25), np.int64(7)), "c": {"d": [{"e": math.nan}]},
                "f": "NaN", "g": True, "h": None, "i": 10 ** 30}
    assert finite_json(document) == {"a": [None] * 5, "b": [1, 2.5, 0.25, 7], "c": {"d": [{"e": None}]}, "f": "NaN",
                                     "g": True, "h": None, "i": 10 ** 30}
    assert type(finite_json(np.int64(7))) is int and type(finite_json(np.float32(0.25))) is float


def test_results_jsonl_and_results_json_never_hold_nan(tmp_path):
    from diffiml_cli.batch.records import ImageResult, append_records, rebuild_results_json

    append_records(tmp_path, [ImageResult("a.png", "ok", image_score=math.nan, detection_score=math.inf,
                                          manipulated_fraction=-math.inf, timings={"predict_s": math.nan})])
    [line] = (tmp_path / "results.jsonl").read_text().splitlines()
    assert strict_loads(line)["detection_score"] is None
    rebuild_results_json(tmp_path, {"threshold": math.nan})
    document = strict_loads((tmp_path / "results.json").read_text())
    assert document["run"]["threshold"] is None and document["images"][0]["image_score"] is None

    legacy = tmp_path / "legacy"  # an older diffiml's results.json, NaN and all: its records are copied over
    legacy.mkdir()
    (legacy / "results.json").write_text(json.dumps({"images": [{"image": "b.png", "status": "ok", "image_score": math.nan}]}))
    rebuild_results_json(legacy, {})
    strict_loads((legacy / "results.json").read_text())
    assert [strict_loads(line) for line in (legacy / "results.jsonl").read_text().splitlines()][0]["image_score"] is None


def test_evaluate_json_has_no_nan_even_from_numpy_scalars():
    from diffiml_cli.evaluation.report import jsonable

    assert jsonable({"auc": np.float32("nan"), "f1": np.float64(0.5), "n": [math.inf]}) == {"auc": None, "f1": 0.5,
                                                                                        "n": [None]}


def test_saving_refuses_a_config_that_loading_would_refuse(tmp_path):
    import dataclasses

    from diffiml_cli.checkpoint import save_checkpoint
    from diffiml_cli.config import CalibrationConfig, DetectorConfig
    from diffiml_cli.models.build import build_localizer
    from diffiml_cli.presets import get_preset

    calibration = CalibrationConfig(threshold=math.nan, target_far=0.05, far=0.05, tpr=0.5, n_authentic=4, n_tampered=4)
    config = dataclasses.replace(get_preset("test"), detector=DetectorConfig(hidden_channels=8), calibration=calibration)
    with pytest.raises(DiffimlError, match=r"not saved, its config is invalid: calibration.threshold is NaN"):
        save_checkpoint(tmp_path / "ckpt", build_localizer(config), config)
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()


def test_calibrating_without_tampered_images_records_no_detection_rate_rather_than_nan(monkeypatch):
    from diffiml_cli.config import CalibrationConfig, config_from_dict
    from diffiml_cli.evaluation import calibration as module
    from diffiml_cli.evaluation.scoring import DatasetReport
    from diffiml_cli.inference import SamplingOptions

    rows = [{"detection_score": score, "tampered": False} for score in np.linspace(0, 0.9, 20)]
    monkeypatch.setattr(module, "evaluate_dataset", lambda pairs, pipeline, **_: DatasetReport(metrics={}, per_image=rows))
    pipeline = SimpleNamespace(config=SimpleNamespace(detector=object()), source="x", gate=False,
                               sampling=SamplingOptions(), predictor=SimpleNamespace(precision="fp32"))
    calibration, _ = module.calibrate([pipeline], [], target_far=0.1, gate=False)
    assert calibration.tpr is None and calibration.rates[0][2] is None and calibration.n_tampered == 0
    stored = json.loads(json.dumps(__import__("dataclasses").asdict(calibration), allow_nan=False))
    assert config_from_dict(CalibrationConfig, stored) == calibration

    rows[:] = [{"detection_score": 1.0, "tampered": False}] * 5  # a saturated detector: no threshold is high enough
    with pytest.raises(DiffimlError, match="score 1.0, the highest detection score"):
        module.calibrate([pipeline], [], target_far=0.1, gate=False)


# --- calibrate --out never replaces the checkpoint being calibrated --------------------------------------------


@pytest.fixture
def source(tmp_path, tiny_checkpoint):
    folder = tmp_path / "source"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def _calibrate_into(source, out):
    return CliRunner().invoke(app, ["calibrate", "-d", str(source.parent / "no-such-set"), "-c", str(source),
                                    "-o", str(out), "--device", "cpu"])


@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "symlinked-weights", "weights-file"])
def test_calibrate_refuses_an_out_that_would_overwrite_its_source(source, how):
    before = {path.name: path.read_bytes() for path in source.iterdir()}
    out, checkpoint = source, source
    if how == "dotted":
        out = source.parent / "." / source.name / ".." / source.name
    elif how == "symlink":
        out = source.parent / "link"
        out.symlink_to(source, target_is_directory=True)
    elif how == "symlinked-weights":  # a folder whose model.safetensors links to the source's
        out = source.parent / "other"
        out.mkdir()
        (out / "model.safetensors").symlink_to(source / "model.safetensors")
    elif how == "weights-file":  # the source given as its weights file, --out its folder
        checkpoint = source / "model.safetensors"
    result = CliRunner().invoke(app, ["calibrate", "-d", str(source.parent / "no-such-set"), "-c", str(checkpoint),
                                      "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line == (f"error: --out {out} holds the checkpoint being calibrated ({checkpoint}), which the calibrated "
                    "copy would overwrite; give another --out")
    assert {path.name: path.read_bytes() for path in source.iterdir()} == before


def test_a_calibrated_copy_may_go_beside_inside_or_above_its_source(source):
    from diffiml_cli.evaluation.calibration import check_copy_target

    for out in (source.parent / "copy", source / "calibrated", source.parent):
        check_copy_target(source, out)  # no file of the source is written there
    result = _calibrate_into(source, source.parent / "copy")
    assert result.exit_code == 1 and "no-such-set" in result.stderr  # got past the check, to the data set


# --- the Python API: one check of every image array and sampling setting, one error type ---------------------------


@pytest.fixture(scope="module")
def localizer(tiny_checkpoint):
    from diffiml_cli.pipeline import load_localizer
    from diffiml_cli.inference import SamplingOptions

    return load_localizer(tiny_checkpoint, device="cpu", precision="fp32", sampling=SamplingOptions(steps=1, ensemble=1))


GOOD = np.zeros((16, 16, 3), np.uint8)
BAD_ARRAYS = {
    "empty": np.zeros((0, 0, 3), np.uint8),
    "no rows": np.zeros((0, 10, 3), np.uint8),
    "no columns": np.zeros((10, 0, 3), np.uint8),
    "float64": np.zeros((16, 16, 3), np.float64),
    "two channels": np.zeros((16, 16, 2), np.uint8),
    "4-D": np.zeros((1, 16, 16, 3), np.uint8),
}


@pytest.mark.parametrize("kind", BAD_ARRAYS)
def test_predict_and_predict_many_refuse_the_same_arrays_with_diffiml_error(localizer, kind):
    with pytest.raises(DiffimlError, match=r"must be an \(H, W, 3\) uint8 RGB array|must be \(H, W, 3\) uint8 RGB"):
        localizer.predict(BAD_ARRAYS[kind])
    with pytest.raises(DiffimlError, match=r"`images\[1\]` must be an \(H, W, 3\) uint8 RGB array"):
        localizer.predict_many([GOOD, BAD_ARRAYS[kind]])


def test_predict_many_refuses_one_bare_image_and_things_that_are_not_images(localizer):
    with pytest.raises(DiffimlError, match=r"one array of shape \(16, 16\); pass \[image\], or use predict"):
        localizer.predict_many(np.zeros((16, 16), np.uint8))
    with pytest.raises(DiffimlError, match=r"one array of shape \(16, 16, 3\)"):
        localizer.predict_many(GOOD)
    with pytest.raises(DiffimlError, match=r"`images\[0\]` must be an \(H, W, 3\) uint8 RGB array, got a list"):
        localizer.predict_many([[[0, 0, 0]]])
    assert len(localizer.predict_many(np.stack([GOOD, GOOD]))) == 2  # one (B, H, W, 3) array is a batch
    assert localizer.predict(np.zeros((16, 16), np.uint8)).probability.shape == (16, 16)  # gray is read as RGB


@pytest.mark.parametrize("seed", [2**64, 2**70, -1])
def test_a_seed_beyond_64_bits_is_a_diffiml_error_as_an_argument_and_in_sampling_options(localizer, seed):
    from diffiml_cli.inference import SamplingOptions

    with pytest.raises(DiffimlError, match=f"seed is {seed}; expected an integer in \\[0, {2**64 - 1}\\]"):
        localizer.predict(GOOD, seed=seed)
    with pytest.raises(DiffimlError, match="seed is"):
        SamplingOptions(seed=seed)
    with pytest.raises(DiffimlError, match="steps is \"2\""):
        SamplingOptions(steps="2")
    sneaked = SamplingOptions()
    object.__setattr__(sneaked, "seed", seed)  # past the dataclass's own check: predict_many checks again
    with pytest.raises(DiffimlError, match="seed is"):
        localizer.predict_many([GOOD], sneaked)
    assert localizer.predict(GOOD, seed=2**64 - 1).probability.shape == (16, 16)  # the largest seed works


def test_a_non_finite_score_is_an_error_of_that_image_not_an_authentic_verdict(tiny_checkpoint):
    """A NaN that slips past loading (a weight broken after it, an overflow in reduced precision) must not become
    an empty mask and "authentic"."""
    from diffiml_cli.inference import SamplingOptions
    from diffiml_cli.pipeline import load_localizer

    localizer = load_localizer(tiny_checkpoint, device="cpu", precision="fp32",
                               sampling=SamplingOptions(steps=1, ensemble=1))
    weights = next(p for name, p in localizer.predictor.localizer.named_parameters() if name.startswith("denoiser."))
    with torch.no_grad():
        weights.fill_(math.nan)
    with pytest.raises(DiffimlError, match="the model gave a non-finite score"):
        localizer.predict(GOOD)
    with pytest.raises(DiffimlError, match="non-finite"):
        localizer.predict_many([GOOD, GOOD])


def test_seed_beyond_64_bits_on_the_command_line_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["localize", str(tmp_path / "x.png"), "--seed", str(2**64)])
    assert result.exit_code == 2 and "--seed" in result.stderr


def test_sweep_seed_beyond_64_bits_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path), "--seeds", f"0,{2**64}"])
    assert result.exit_code == 2 and "--seeds" in result.stderr and str(2**64 - 1) in result.stderr
