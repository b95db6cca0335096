"""`benchmark --noiseprint`: a row per Noiseprint front end (GFLOPs, ms per image), side by side in one run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from diffiml_cli.checkpoint import save_checkpoint
from diffiml_cli.cli.app import app
from diffiml_cli.models.noiseprint import NoiseprintConfig, build_noiseprint, flops_per_pixel, student_config
from diffiml_cli.noiseprint_benchmark import benchmark_noiseprint

runner = CliRunner()


def test_benchmark_rows_for_teacher_and_student_side_by_side(tmp_path, one_thread):
    torch.manual_seed(0)
    teacher = save_checkpoint(tmp_path / "teacher", build_noiseprint(NoiseprintConfig()), NoiseprintConfig())
    student = save_checkpoint(tmp_path / "student", build_noiseprint(student_config()), student_config())
    result = benchmark_noiseprint([str(teacher), str(student)], image_size=64, warmup=0, iters=2)
    teacher_row, student_row = result["rows"]
    assert (teacher_row["name"], student_row["name"]) == ("noiseprint++", "lightnp")
    assert teacher_row["gflops"] == pytest.approx(flops_per_pixel(NoiseprintConfig()) * 64 * 64 / 1e9)
    assert student_row["flops_per_pixel"] <= teacher_row["flops_per_pixel"] / 6
    assert teacher_row["parameters"] == sum(p.numel() for p in build_noiseprint(NoiseprintConfig()).parameters())
    assert teacher_row["vs_first"] == 1.0 and len(student_row["ms_per_image"]) >= 5
    json.dumps(result)


def test_benchmark_command_prints_the_rows(tmp_path, one_thread):
    config = student_config(layers=3, width=8)
    small_noiseprint = save_checkpoint(tmp_path / "np", build_noiseprint(config), config)
    result = runner.invoke(app, ["benchmark", "--preset", "test", "--image-size", "64", "--ensemble", "1",
                                 "--batch-size", "1", "--warmup", "0", "--iters", "1", "--precision", "fp32",
                                 "--noiseprint", str(small_noiseprint), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["noiseprint"]["rows"]
    assert [row["name"] for row in rows] == ["lightnp"] and rows[0]["gflops"] > 0
