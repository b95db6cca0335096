"""The tables benchmark and evaluate print read whole at 100 columns and lose nothing at 80: no cell is cut ("…")."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from diffiml_cli.benchmarking import run_benchmark
from diffiml_cli.cli.benchmark import _render
from diffiml_cli.cli.tables import print_metrics, print_sweep
from diffiml_cli.evaluation.definitions import METRIC_KEYS, PERTURBATION_LEVELS, SWEEP_METRICS
from diffiml_cli.models.build import build_localizer
from diffiml_cli.presets import get_preset

WIDTHS = (80, 100)


def _rendered(draw, width: int) -> str:
    stream = io.StringIO()
    draw(Console(file=stream, width=width, color_system=None))
    return stream.getvalue()


def _assert_fits(text: str, width: int) -> None:
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text


@pytest.fixture(scope="module")
def benchmark_result():
    torch.manual_seed(0)
    localizer = build_localizer(get_preset("test")).eval()
    return run_benchmark(localizer, get_preset("test"), source="preset:test", random_init=True,
                         device=torch.device("cpu"), precisions=("fp32",), ensembles=(1, 6), batch_sizes=(1, 8),
                         samplings=[("dpmsolver++", 2), ("ddim", 8)], warmup=0, iters=1)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_benchmark_tables_fit(benchmark_result, width):
    text = _rendered(lambda console: _render(benchmark_result, console), width)
    _assert_fits(text, width)
    for header in ("precision", "ms / img", "img/s", "fp32", "per step × calls", "denoiser", "encoder:"):
        assert header in text
    if width == 100:  # every sampler named whole
        assert "dpmsolver++-trailing" in text and "ddim-leading" in text


def _metrics(value: float) -> dict:
    metrics = {key: value for key in METRIC_KEYS}
    return {**metrics, "n_tampered": 1234, "n_authentic": 567, "oracle_threshold": 0.45}


def _report():
    names = ("casia-samples", "synthetic-heldout")
    levels = [SimpleNamespace(perturbation=SimpleNamespace(level=level), datasets={n: {"pixel_f1": 0.5} for n in names},
                              average={"pixel_f1": 0.5}) for level in PERTURBATION_LEVELS["jpeg"]]
    return SimpleNamespace(datasets={name: SimpleNamespace(metrics=_metrics(0.6789)) for name in names},
                           average=_metrics(0.6543), robustness={"jpeg": levels})


@pytest.mark.parametrize("width", WIDTHS)
def test_the_evaluate_tables_fit(width):
    text = _rendered(lambda console: print_metrics(_report(), 0.5, console), width)
    _assert_fits(text, width)
    for header in ("F1@0.5", "trivial", "image", "Au", "ORACLE", "max-score", "casia-samples", "1234 / 567"):
        assert header in text
    assert "0.679 (0.45)" in text  # the oracle F1 with its threshold, whole


@pytest.mark.parametrize("width", WIDTHS)
def test_the_sweep_tables_fit(width):
    summary = {"mean": 0.61234, "std": 0.01234}
    cells = [{"sampler": sampler, "steps": steps, "ensemble": n,
              "datasets": {name: {key: summary for key in SWEEP_METRICS} for name in ("casia-samples", "heldout")}}
             for sampler in ("ddim-leading", "dpmsolver++-trailing") for steps in (2, 8) for n in (1, 6)]
    text = _rendered(lambda console: print_sweep({"cells": cells}, ["casia-samples", "heldout"], [0, 1, 2], console),
                     width)
    _assert_fits(text, width)
    assert "0.612 ± 0.012" in text
