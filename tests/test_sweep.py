"""The sampling sweep behind `evaluate --sweep-steps/--sweep-ensemble/--seeds` (the Table 7 analog)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from diffiml_cli.data.readers import load_spec
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.scoring import EvaluateOptions, evaluate_datasets
from diffiml_cli.evaluation.sweep import SWEEP_METRICS, sampling_sweep, summarize_over_seeds, write_sweep
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.pipeline import load_localizer


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("Tp", "Gt", "Au"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "set" / "Tp" / f"t{index}.png")
        mask = np.zeros((40, 56), np.uint8)
        mask[5:25, 10 + index:40] = 255
        Image.fromarray(mask).save(tmp_path / "set" / "Gt" / f"t{index}.png")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "set" / "Au" / "a.png")
    return {"set": load_spec(str(tmp_path / "set"))}


def test_summary_over_seeds_is_mean_sample_std_and_standard_error():
    summary = summarize_over_seeds([0.2, 0.4, 0.6])
    assert summary["mean"] == pytest.approx(0.4)
    assert summary["std"] == pytest.approx(0.2)  # ddof = 1
    assert summary["sem"] == pytest.approx(0.2 / math.sqrt(3))
    assert summarize_over_seeds([0.5])["std"] == 0.0
    assert summarize_over_seeds([0.5, math.nan])["mean"] == 0.5
    assert math.isnan(summarize_over_seeds([math.nan])["mean"])


def test_every_cell_equals_a_plain_evaluate_at_its_settings(tiny_checkpoint, dataset, tmp_path):
    pipeline = load_localizer(tiny_checkpoint, device="cpu", batch_size=2)
    options = EvaluateOptions()
    visited = []
    document = sampling_sweep(dataset, pipeline, steps_values=[1, 2], ensemble_values=[1, 3], seeds=[0, 1], tta=False,
                              options=options, on_cell=visited.append)
    assert visited == [SamplingOptions(sampler="ddim-leading", steps=s, ensemble=n, seed=seed)
                       for s in (1, 2) for n in (1, 3) for seed in (0, 1)]
    assert [(c["sampler"], c["steps"], c["ensemble"]) for c in document["cells"]] == [
        ("ddim-leading", 1, 1), ("ddim-leading", 1, 3), ("ddim-leading", 2, 1), ("ddim-leading", 2, 3)]
    cell = document["cells"][3]["datasets"]["set"]
    assert set(cell) == set(SWEEP_METRICS)
    for seed in (0, 1):  # each seed's value is what a plain evaluate with that seed gives
        plain = evaluate_datasets(dataset, pipeline, SamplingOptions(steps=2, ensemble=3, seed=seed),
                                  options).datasets["set"].metrics
        assert cell["pixel_f1"]["values"][seed] == pytest.approx(plain["pixel_f1"])
        assert cell["oracle_f1"]["values"][seed] == pytest.approx(plain["oracle_f1"])
    assert cell["pixel_f1"]["mean"] == pytest.approx(np.mean(cell["pixel_f1"]["values"]))

    paths = write_sweep(document, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["cells"][0]["steps"] == 1
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 4 and rows[3]["steps"] == "2" and rows[3]["ensemble"] == "3" and rows[3]["dataset"] == "set"
    assert rows[3]["sampler"] == "ddim-leading"
    assert float(rows[3]["pixel_f1_mean"]) == pytest.approx(cell["pixel_f1"]["mean"])


def test_a_sweep_refuses_empty_grids_and_robustness(tiny_checkpoint, dataset):
    pipeline = load_localizer(tiny_checkpoint, device="cpu")
    with pytest.raises(DiffimlError, match="at least one"):
        sampling_sweep(dataset, pipeline, steps_values=[], ensemble_values=[1], seeds=[0], tta=False,
                       options=EvaluateOptions())
    with pytest.raises(DiffimlError, match="clean images only"):
        sampling_sweep(dataset, pipeline, steps_values=[1], ensemble_values=[1], seeds=[0], tta=False,
                       options=EvaluateOptions(robustness=("jpeg",)))


def test_evaluate_cli_sweeps_and_rejects_bad_grids(tiny_checkpoint, tmp_path, dataset):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    runner = CliRunner()
    data = str(tmp_path / "set")
    base = ["evaluate", "-c", str(tiny_checkpoint), "-d", data, "--out", str(tmp_path / "sweep")]
    result = runner.invoke(app, [*base, "--sweep-steps", "1,2", "--ensemble", "2", "--seeds", "0,3"])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [(c["steps"], c["ensemble"]) for c in document["cells"]] == [(1, 2), (2, 2)]
    assert document["seeds"] == [0, 3] and len(document["cells"][0]["datasets"]["set"]["pixel_f1"]["values"]) == 2
    assert "pixel_f1: mean ± std over seeds 0, 3" in result.output

    result = runner.invoke(app, [*base, "--sweep-sampler", "ddim,dpmsolver++", "--sweep-steps", "1,2", "--ensemble", "1"])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert document["samplers"] == ["ddim-leading", "dpmsolver++-trailing"]
    assert [(c["sampler"], c["steps"]) for c in document["cells"]] == [
        ("ddim-leading", 1), ("ddim-leading", 2), ("dpmsolver++-trailing", 1), ("dpmsolver++-trailing", 2)]
    result = runner.invoke(app, [*base, "--sweep-sampler", "ddim,euler"])
    assert result.exit_code == 2 and "--sweep-sampler" in result.output

    result = runner.invoke(app, [*base, "--sweep-steps", "1,x"])
    assert result.exit_code == 2 and "--sweep-steps" in result.output
    result = runner.invoke(app, [*base, "--seeds", "-1"])
    assert result.exit_code == 2 and "--seeds" in result.output
    result = runner.invoke(app, [*base, "--sweep-ensemble", "1,3", "--robustness", "jpeg"])
    assert result.exit_code == 1 and "cannot be combined" in result.output
