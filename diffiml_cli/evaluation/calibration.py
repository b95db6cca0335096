"""The detector's decision threshold, chosen for a target rate of false alarms on authentic images.

`calibrate` runs a checkpoint over a calibration set (tampered and authentic images: `docs/make_detection_sets.py`
makes one from held-out photos, untouched and post-processed) and picks the lowest threshold on the detection
score at which at most `target_far` of the authentic images are called manipulated. The threshold, the
false-alarm and detection rates it gave there, and the sampling settings are stored in the checkpoint's config
(`CalibrationConfig`); `localize` then writes a verdict. The weights are copied bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffiml_cli.checkpoint import load_checkpoint, save_state
from diffiml_cli.config import CalibrationConfig
from diffiml_cli.data.readers import Pair
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.scoring import DatasetReport, evaluate_dataset
from diffiml_cli.pipeline import LocalizationPipeline


def threshold_for_far(authentic_scores: Sequence[float], target_far: float) -> float:
    """The lowest threshold t such that the share of `authentic_scores` >= t is at most `target_far`:
    just above the (floor(target_far * n) + 1)-th highest score."""
    if not 0.0 <= target_far < 1.0:
        raise DiffimlError(f"target false-alarm rate must be in [0, 1), got {target_far}")
    scores = np.sort(np.asarray(authentic_scores, np.float64))[::-1]
    if scores.size == 0:
        raise DiffimlError("calibration needs authentic images (an Au/ folder or \"Negative\" entries)")
    allowed = math.floor(target_far * scores.size + 1e-9)
    return float(np.nextafter(scores[allowed], np.inf))


def calibrate(pipeline: LocalizationPipeline, pairs: Sequence[Pair], *, target_far: float, gate: bool,
              data: str = "") -> tuple[CalibrationConfig, DatasetReport]:
    """Score `pairs` with the pipeline (ungated) and choose the threshold; returns it with the report."""
    if pipeline.config.detector is None:
        raise DiffimlError(f"{pipeline.source}: this checkpoint has no detector to calibrate; train one with "
                           "`diffiml train --init ... --train-detector`")
    gate_before, pipeline.gate = pipeline.gate, False  # scored ungated: the threshold is what is being chosen
    try:
        report = evaluate_dataset(pairs, pipeline)
    finally:
        pipeline.gate = gate_before
    authentic = [r["detection_score"] for r in report.per_image if not r["tampered"]]
    tampered = [r["detection_score"] for r in report.per_image if r["tampered"]]
    threshold = threshold_for_far(authentic, target_far)
    calibration = CalibrationConfig(
        threshold=threshold, target_far=target_far,
        far=float(np.mean(np.asarray(authentic) >= threshold)),
        tpr=float(np.mean(np.asarray(tampered) >= threshold)) if tampered else math.nan,
        n_authentic=len(authentic), n_tampered=len(tampered), data=data,
        sampling=tuple(sorted(dataclasses.asdict(pipeline.sampling).items())), gate=gate,
    )
    return calibration, report


def write_calibrated(source: str | Path, calibration: CalibrationConfig, out_dir: str | Path) -> Path:
    """A copy of the checkpoint at `source` (weights unchanged, dtypes kept) whose config has `calibration`."""
    model_type, config, state = load_checkpoint(source)
    if model_type != "localizer":
        raise DiffimlError(f"{source}: a {model_type} checkpoint has no detector")
    return save_state(out_dir, state, dataclasses.replace(config, calibration=calibration))
