"""A sampling sweep: the same checkpoint evaluated at every (sampler, steps, ensemble N) cell, over several seeds.

The analog of the paper's Table 7 (ensemble size and steps): each cell is a full clean `evaluate_datasets`
pass per seed, and reports the mean, the sample standard deviation and the standard error over seeds of
a few metrics per dataset. Nothing is reused between cells, so each cell costs exactly what
`diffiml evaluate --sampler A --steps S --ensemble N` costs, and its seconds per image are that run's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffiml_cli.data.readers import Pair
from diffiml_cli.distributed import DistributedContext
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.definitions import SWEEP_METRICS
from diffiml_cli.evaluation.report import csv_bytes, jsonable
from diffiml_cli.evaluation.scoring import EvaluateOptions, evaluate_datasets
from diffiml_cli.files import atomic_write_bytes
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.pipeline import LocalizationPipeline

SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"


def summarize_over_seeds(values: Sequence[float]) -> dict[str, float | list[float]]:
    """{"mean", "std" (sample, ddof=1; 0 for one value), "sem" (std / sqrt(n)), "values"}; nan values are dropped."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "sem": math.nan, "values": [float(v) for v in values]}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "sem": std / math.sqrt(len(finite)),
            "values": [float(v) for v in values]}


def sampling_sweep(
    datasets: Mapping[str, Sequence[Pair]],
    pipeline: LocalizationPipeline,
    *,
    steps_values: Sequence[int],
    ensemble_values: Sequence[int],
    seeds: Sequence[int],
    tta: bool,
    samplers: Sequence[str | None] = (None,),
    options: EvaluateOptions = EvaluateOptions(),
    context: DistributedContext = DistributedContext(),
    on_cell: Callable[[SamplingOptions], None] = lambda sampling: None,
    on_progress: Callable[[str, Pair, "str | None"], None] = lambda stage, pair, error: None,
) -> dict:
    """Evaluate every (sampler, steps, N) cell once per seed; returns the JSON-ready document described below.

    samplers: names of `diffusion/samplers.py`; None is the checkpoint's, named in the document as the run names it.
    {"samplers": [...], "steps": [...], "ensembles": [...], "seeds": [...], "tta": bool, "threshold": float,
     "bad_pairs": {dataset: [reason, ...]},
     "cells": [{"sampler": str, "steps": int, "ensemble": int,
                "datasets": {dataset: {metric: {"mean", "std", "sem", "values": [one per seed]}}}}, ...]}
    Cells are sampler-major, then steps. `on_cell(sampling)` is called before each pass.
    """
    if not samplers or not steps_values or not ensemble_values or not seeds:
        raise DiffimlError("a sweep needs at least one sampler, one steps value, one ensemble size and one seed")
    if options.robustness:
        raise DiffimlError("a sampling sweep evaluates clean images only; run `robustness` separately")
    # Every cell's options are built first: a bad sampler, steps or N fails before any slow pass.
    grid = [[pipeline.predictor.resolve(SamplingOptions(sampler=sampler, steps=steps, ensemble=ensemble, tta=tta,
                                                        seed=seed)) for seed in seeds]
            for sampler in samplers for steps in steps_values for ensemble in ensemble_values]
    cells, bad_pairs = [], {}
    for cell in grid:
        per_seed = []
        for sampling in cell:
            on_cell(sampling)
            report = evaluate_datasets(datasets, pipeline, sampling, replace(options, seed=sampling.seed),
                                       on_progress=on_progress, context=context)
            bad_pairs = {name: [entry.reason for entry in bad] for name, bad in report.bad_pairs.items()}
            per_seed.append({name: r.metrics for name, r in report.datasets.items()})
        cells.append({
            "sampler": cell[0].sampler,
            "steps": cell[0].steps,
            "ensemble": cell[0].ensemble,
            "datasets": {
                name: {key: summarize_over_seeds([run[name][key] for run in per_seed]) for key in SWEEP_METRICS}
                for name in datasets
            },
        })
    return {"samplers": list(dict.fromkeys(cell["sampler"] for cell in cells)), "steps": list(steps_values),
            "ensembles": list(ensemble_values), "seeds": list(seeds), "tta": tta, "threshold": pipeline.threshold,
            "bad_pairs": bad_pairs, "cells": cells}


@dataclass(frozen=True)
class SweepGrid:
    """The (sampler, steps, N) cells of a sweep, the seeds each is sampled with, and flip TTA for all of them.
    A None sampler is the checkpoint's."""

    steps: list[int]
    ensembles: list[int]
    seeds: list[int]
    tta: bool = False
    samplers: list[str | None] = field(default_factory=lambda: [None])


def run_sweep(datasets: Mapping[str, Sequence[Pair]], pipeline: LocalizationPipeline, grid: SweepGrid,
              options: EvaluateOptions = EvaluateOptions(), *, context: DistributedContext = DistributedContext(),
              on_progress: Callable[[str, Pair, "str | None"], None] = lambda stage, pair, error: None) -> dict:
    """`sampling_sweep` over a grid; robustness kinds cannot be swept."""
    if options.robustness:
        raise DiffimlError("`robustness` cannot be combined with a sampling sweep; run them separately")
    return sampling_sweep(datasets, pipeline, steps_values=grid.steps, ensemble_values=grid.ensembles,
                          seeds=grid.seeds, tta=grid.tta, samplers=grid.samplers, options=options, context=context,
                          on_progress=on_progress)


def write_sweep(document: dict, out_dir: Path) -> dict[str, Path]:
    """Write sweep.json and sweep.csv (one row per cell and dataset: mean, std, sem of each metric)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / SWEEP_JSON, "csv": out_dir / SWEEP_CSV}
    atomic_write_bytes(paths["json"], (json.dumps(jsonable(document), indent=2, allow_nan=False) + "\n").encode())
    header = ["sampler", "steps", "ensemble", "dataset"] + [f"{key}_{stat}" for key in SWEEP_METRICS
                                                          for stat in ("mean", "std", "sem")]
    rows = [
        [cell["sampler"], cell["steps"], cell["ensemble"], name]
        + [metrics[key][stat] for key in SWEEP_METRICS for stat in ("mean", "std", "sem")]
        for cell in document["cells"]
        for name, metrics in cell["datasets"].items()
    ]
    atomic_write_bytes(paths["csv"], csv_bytes(header, rows))
    return paths
