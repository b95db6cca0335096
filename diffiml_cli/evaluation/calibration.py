"""The detector's decision threshold, chosen for a target rate of false alarms on authentic images.

`calibrate` runs a checkpoint over a calibration set (tampered and authentic images: `docs/make_detection_sets.py`
makes one from held-out photos, untouched and post-processed) and picks the lowest threshold on the detection
score at which at most `target_far` of the authentic images are called manipulated, in each of the precisions it
is scored in (the shipped checkpoint: bf16 and fp32, what `auto` runs on CPUs with and without native bf16). The
threshold, the false-alarm and detection rates it gave there, the sampling settings and the precisions are stored
in the checkpoint's config (`CalibrationConfig`); `localize` then writes a verdict. The weights are copied bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from diffiml_cli.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, resolve_checkpoint, save_state
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


def calibrate(pipelines: Iterable[LocalizationPipeline], pairs: Sequence[Pair], *, target_far: float, gate: bool,
              data: str = "", on_progress: Callable[[Pair, str | None], None] = lambda pair, error: None,
              sets: Sequence[str] | None = None) -> tuple[CalibrationConfig, dict[str, DatasetReport]]:
    """Score `pairs` with each pipeline (one checkpoint and sampling, one precision each; ungated) and choose the
    threshold: the highest of the precisions' own thresholds, so that at most `target_far` of the authentic images
    are called manipulated in any of them. With `sets` (the name of each pair's calibration set), the threshold
    also holds in each set that has authentic images: synthetic and real photos are not pooled, where the easy
    ones would hide the others' false alarms. Returns it with each precision's report. `pipelines` may be a
    generator, so that one model is loaded at a time; a second pipeline of a precision already scored is skipped.
    `on_progress(pair, error)` is called once per pair and precision scored."""
    reports: dict[str, DatasetReport] = {}
    sampling = None
    for pipeline in pipelines:
        if pipeline.config.detector is None:
            raise DiffimlError(f"{pipeline.source}: this checkpoint has no detector to calibrate; train one with "
                               "`diffiml train --init ... --train-detector`")
        precision = pipeline.predictor.precision
        if precision in reports:
            continue  # "auto" may resolve to a precision also listed by name
        if sampling not in (None, pipeline.sampling):
            raise DiffimlError(f"calibrate: every pipeline must sample alike (got {pipeline.sampling} after "
                               f"{sampling})")
        sampling = pipeline.sampling
        gate_before, pipeline.gate = pipeline.gate, False  # scored ungated: the threshold is what is being chosen
        try:
            reports[precision] = evaluate_dataset(pairs, pipeline, on_progress=on_progress)
        finally:
            pipeline.gate = gate_before
    if not reports:
        raise DiffimlError("calibrate: no precision to score the set in")
    scores = {name: _scores_by_class(report) for name, report in reports.items()}
    groups = _authentic_sets(reports, pairs, sets)
    threshold = max(threshold_for_far(authentic[members], target_far)
                    for authentic, _ in scores.values() for members in groups.values())
    if threshold > 1.0:  # just above an authentic score of 1.0: no score could ever reach it
        raise DiffimlError(f"calibrate: more than {target_far:g} of the authentic images score 1.0, the highest "
                           "detection score, so no threshold keeps their false alarms within `target_far`")
    rates = tuple((name, float(np.mean(authentic >= threshold)),
                   float(np.mean(tampered >= threshold)) if tampered.size else None)  # None: no tampered image
                  for name, (authentic, tampered) in scores.items())
    detected = [tpr for _, _, tpr in rates if tpr is not None]
    authentic, tampered = next(iter(scores.values()))
    worst = max(float(np.mean(authentic[members] >= threshold))
                for authentic, _ in scores.values() for members in groups.values())
    calibration = CalibrationConfig(
        threshold=threshold, target_far=target_far, far=worst,
        tpr=min(detected) if detected else None, n_authentic=authentic.size, n_tampered=tampered.size, data=data,
        sampling=tuple(sorted(dataclasses.asdict(sampling).items())), precision=",".join(reports), rates=rates,
        gate=gate,
    )
    return calibration, reports


def rates_by_set(reports: dict[str, DatasetReport], pairs: Sequence[Pair], sets: Sequence[str], threshold: float
                 ) -> list[tuple[str, str, float, int]]:
    """(precision, set, false-alarm rate at `threshold`, authentic images) for every precision and every set with
    authentic images, as `calibrate` scored them."""
    groups = _authentic_sets(reports, pairs, sets)
    rows = []
    for precision, report in reports.items():
        authentic, _ = _scores_by_class(report)
        rows += [(precision, name, float(np.mean(authentic[members] >= threshold)), members.size)
                 for name, members in groups.items()]
    return rows


def _authentic_sets(reports: dict[str, DatasetReport], pairs: Sequence[Pair], sets: Sequence[str] | None
                    ) -> dict[str, np.ndarray]:
    """Set name -> the positions of its images among the authentic scores of `_scores_by_class` (the same in every
    precision's report, whose rows follow `pairs`); one set, "all", without `sets`. Sets without authentic
    images are left out."""
    rows = next(iter(reports.values())).per_image
    if sets is None:
        return {"all": np.arange(sum(not row["tampered"] for row in rows))}
    if len(sets) != len(pairs):
        raise DiffimlError(f"calibrate: {len(sets)} set names for {len(pairs)} pairs")
    where = {str(pair.image): name for pair, name in zip(pairs, sets)}
    names = np.asarray([where[row["image"]] for row in rows if not row["tampered"]])
    return {name: np.flatnonzero(names == name) for name in dict.fromkeys(names.tolist())}


def _scores_by_class(report: DatasetReport) -> tuple[np.ndarray, np.ndarray]:
    """(authentic, tampered) detection scores of a report's images, each (n,) float64 in [0, 1]."""
    authentic = [r["detection_score"] for r in report.per_image if not r["tampered"]]
    tampered = [r["detection_score"] for r in report.per_image if r["tampered"]]
    return np.asarray(authentic, np.float64), np.asarray(tampered, np.float64)


def check_copy_target(source: str | Path, out_dir: str | Path) -> None:
    """A DiffimlError when writing a copy of the checkpoint at `source` into `out_dir` would overwrite it: the same
    folder (also through a symbolic link), or a weights or config file there that is (or links to) one of its own."""
    weights = resolve_checkpoint(source)
    own = {os.path.realpath(weights), os.path.realpath(weights.parent / CONFIG_NAME)}
    written = {os.path.realpath(Path(out_dir) / name) for name in (WEIGHTS_NAME, CONFIG_NAME)}
    if os.path.realpath(out_dir) == os.path.realpath(weights.parent) or own & written:
        raise DiffimlError(f"`out_dir` {out_dir} holds the checkpoint being calibrated ({source}), which the calibrated "
                           "copy would overwrite; give another `out_dir`")


def write_calibrated(source: str | Path, calibration: CalibrationConfig, out_dir: str | Path) -> Path:
    """A copy of the checkpoint at `source` (weights unchanged, dtypes kept) whose config has `calibration`, written
    to `out_dir`, which must not hold `source` itself (`check_copy_target`)."""
    check_copy_target(source, out_dir)
    model_type, config, state = load_checkpoint(source)
    if model_type != "localizer":
        raise DiffimlError(f"{source}: a {model_type} checkpoint has no detector")
    return save_state(out_dir, state, dataclasses.replace(config, calibration=calibration))
