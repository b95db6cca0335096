"""`evaluate` as a library: score a localizer on labelled datasets, clean and under the robustness protocol.

Every image goes through `LocalizationPipeline.predict_many`, the path `localize` takes, so each prediction is
scored at the image's ORIGINAL resolution against its mask, as IMDL-BenCo does, with the mask `localize`
would write (emptied when the pipeline gates), the image score (max of the map) and the detection score.
Images and masks are decoded in a thread pool ahead of the model, at most two batches ahead, so memory does
not grow with the dataset. A pair that cannot be used (unreadable image or mask, mask of another size) is
listed and skipped, never fatal. Under torchrun every rank scores every world_size-th pair and rank 0 gathers
their per-image entries in the original order, so the metrics equal a single process's exactly.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffiml_cli.batch.outputs import output_paths
from diffiml_cli.data.readers import Pair, load_pair_with_form
from diffiml_cli.distributed import DistributedContext
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.accumulator import MetricAccumulator
from diffiml_cli.evaluation.definitions import COUNT_KEYS, METRIC_KEYS, NOT_AVERAGED
from diffiml_cli.evaluation.robustness import Perturbation, perturbations
from diffiml_cli.files import require_inside
from diffiml_cli.image_io import save_png_atomic
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.pipeline import LocalizationPipeline

ProgressCallback = Callable[[Pair, "str | None"], None]


@dataclass(frozen=True)
class BadPair:
    """A pair that was skipped, and why (one line naming the file)."""

    image: str
    mask: str | None
    reason: str


@dataclass
class DatasetReport:
    """One dataset under one condition (clean or one perturbation level).

    metrics: every key of METRIC_KEYS (nan where undefined); per_image: one dict per evaluated pair with
    `image`, `mask` and MetricAccumulator's per-image numbers; bad_pairs: the pairs skipped.
    """

    metrics: dict[str, float]
    per_image: list[dict] = field(default_factory=list)
    bad_pairs: list[BadPair] = field(default_factory=list)

    @property
    def mask_forms(self) -> dict[str, int]:
        """How many masks were read in each form (image_io.MASK_FORMS), over the pairs that have one."""
        forms: dict[str, int] = {}
        for record in self.per_image:
            if record.get("mask_form") is not None:
                forms[record["mask_form"]] = forms.get(record["mask_form"], 0) + 1
        return forms


@dataclass
class RobustnessLevel:
    """Metrics of every dataset, and their average, at one perturbation level."""

    perturbation: Perturbation
    datasets: dict[str, dict[str, float]]
    average: dict[str, float]


@dataclass
class EvaluationReport:
    """Clean results per dataset, their average, and robustness curves per perturbation kind."""

    datasets: dict[str, DatasetReport]
    average: dict[str, float]
    robustness: dict[str, list[RobustnessLevel]] = field(default_factory=dict)

    @property
    def bad_pairs(self) -> dict[str, list[BadPair]]:
        """Dataset name -> its skipped pairs, for datasets that have any."""
        return {name: report.bad_pairs for name, report in self.datasets.items() if report.bad_pairs}


@dataclass(frozen=True)
class EvaluateOptions:
    """Robustness kinds, the noise perturbation's seed, and where to save the clean pass's probability maps.

    The pixel threshold, the gate, the batch size and the tiles are the pipeline's."""

    robustness: tuple[str, ...] = ()
    seed: int = 0  # seeds the Gaussian-noise perturbation
    save_predictions_dir: Path | None = None  # probability PNGs of the clean pass, one folder per dataset


def parse_dataset_arg(text: str) -> tuple[str, str]:
    """'NAME=SPEC' -> (NAME, SPEC); a bare SPEC (or an existing path containing '=') is named by its stem."""
    name, sep, spec = text.partition("=")
    if not sep or Path(text).exists():
        name, spec = Path(text).stem, text
    if not name or not spec:
        raise DiffimlError(f"dataset {text!r}: expected NAME=SPEC or SPEC, SPEC a JSON file or a Tp/Gt[/Au] folder")
    return name, spec


def _load(index: int, pair: Pair, perturbation: Perturbation | None
          ) -> tuple[int, Pair, np.ndarray, tuple[np.ndarray, str | None]]:
    image, mask, form = load_pair_with_form(pair)
    if perturbation is not None:
        image = perturbation(image, index)
    return index, pair, image, (mask, form)


def _loaded_batches(pairs: Sequence[tuple[int, Pair]], perturbation: Perturbation | None, batch_size: int,
                    reject: Callable[[int, Pair, str], None]
                    ) -> Iterator[list[tuple[int, Pair, np.ndarray, np.ndarray]]]:
    """Yield batches of (index, pair, image, mask), decoding at most two batches ahead so memory stays bounded."""
    ahead = 2 * batch_size + 1
    items = iter(pairs)
    queue: deque[tuple[int, Pair, Future]] = deque()
    batch = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        while True:
            while len(queue) < ahead and (item := next(items, None)) is not None:
                queue.append((item[0], item[1], pool.submit(_load, item[0], item[1], perturbation)))
            if not queue:
                break
            index, pair, future = queue.popleft()
            try:
                batch.append(future.result())
            except Exception as error:  # noqa: BLE001 - a DiffimlError names the file; anything else is its failure
                reject(index, pair, str(error) if isinstance(error, DiffimlError) else
                       f"{pair.image}: cannot read the pair ({type(error).__name__}: {error})")
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _predict(pipeline: LocalizationPipeline, batch: list, sampling: SamplingOptions | None,
             reject: Callable[[int, Pair, str], None]) -> tuple[list, list]:
    """Predict a batch of (index, pair, image, mask): (the items that succeeded, their results). When the batch
    raises, each image is tried alone, and one that raises again is a skipped pair with its reason (a stop,
    KeyboardInterrupt or SystemExit, propagates)."""
    try:
        return batch, pipeline.predict_many([image for _, _, image, _ in batch], sampling)
    except Exception:  # noqa: BLE001 - isolated below, image by image
        pass
    kept, results = [], []
    for item in batch:
        try:
            results.extend(pipeline.predict_many([item[2]], sampling))
            kept.append(item)
        except Exception as error:  # noqa: BLE001 - this pair's failure, with its reason
            reason = str(error) if isinstance(error, DiffimlError) else f"{type(error).__name__}: {error}"
            reject(item[0], item[1], f"{item[1].image}: cannot be localized ({' '.join(reason.split())})")
    return kept, results


def _common_root(pairs: Sequence[Pair]) -> Path:
    parents = [str(pair.image.parent.resolve()) for pair in pairs]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def evaluate_dataset(
    pairs: Sequence[Pair],
    pipeline: LocalizationPipeline,
    sampling: SamplingOptions | None = None,
    *,
    perturbation: Perturbation | None = None,
    save_predictions_dir: Path | None = None,
    on_progress: ProgressCallback = lambda pair, error: None,
    context: DistributedContext = DistributedContext(),
) -> DatasetReport:
    """Predict every pair (this rank's share of them) and score it against its mask at the original resolution.

    Args:
        pairs: (image, mask | None) pairs; mask None = authentic.
        pipeline: the localizer, with its threshold, gate, batch size and tiles.
        sampling: the sampling options (default: the pipeline's).
        perturbation: applied to each (H, W, 3) uint8 image at its original resolution, before the model.
        save_predictions_dir: when given, `<dir>/<folder>/<stem>_prob.png` (prob * 255, original size).
        on_progress: called once per pair of this rank, with the reason when the pair was skipped, else None.

    Returns:
        A DatasetReport (complete on rank 0; other ranks get their share); never raises for a bad pair.
    """
    calibration = pipeline.config.calibration
    accumulator = MetricAccumulator(image_threshold=calibration.threshold if calibration else 0.5)
    local: list[tuple[int, dict, tuple, BadPair | None]] = []  # (index, names, accumulator entry, bad)
    root = _common_root(pairs)
    predict_seconds = 0.0

    def reject(index: int, pair: Pair, reason: str) -> None:
        local.append((index, {}, (), BadPair(str(pair.image), None if pair.mask is None else str(pair.mask), reason)))
        on_progress(pair, reason)

    shard = context.shard(list(enumerate(pairs)))
    for batch in _loaded_batches(shard, perturbation, pipeline.batch_size, reject):
        start = time.perf_counter()
        batch, results = _predict(pipeline, batch, sampling, reject)
        predict_seconds += time.perf_counter() - start
        for (index, pair, _, (mask, form)), result in zip(batch, results):
            one = MetricAccumulator()
            one.add(torch.from_numpy(result.probability), torch.from_numpy(mask), result.image_score,
                    threshold=pipeline.threshold, detection_score=result.detection_score,
                    predicted=torch.from_numpy(result.mask))
            names = {"image": str(pair.image), "mask": None if pair.mask is None else str(pair.mask),
                     "mask_form": form}
            local.append((index, names, one.entries()[0], None))
            if save_predictions_dir is not None:
                path = output_paths(pair.image, root, save_predictions_dir)["prob"]
                require_inside(save_predictions_dir, path)  # a planted link never leads a map outside --out
                path.parent.mkdir(parents=True, exist_ok=True)
                save_png_atomic(path, np.round(result.probability * 255).astype(np.uint8))
            on_progress(pair, None)
    gathered = context.gather((local, predict_seconds))
    if gathered is None:  # not rank 0: its share is on rank 0 now
        return DatasetReport(metrics={key: math.nan for key in METRIC_KEYS})
    ordered = sorted((item for part, _ in gathered for item in part), key=lambda item: item[0])
    accumulator.extend([entry for _, _, entry, bad in ordered if bad is None])
    records = accumulator.per_image()
    seconds = sum(part_seconds for _, part_seconds in gathered)
    metrics = {**accumulator.summary(), "seconds_per_image": seconds / len(records) if records else math.nan}
    names = [names for _, names, _, bad in ordered if bad is None]
    return DatasetReport(
        metrics={key: metrics[key] for key in METRIC_KEYS},
        per_image=[{**name, **record} for name, record in zip(names, records)],
        bad_pairs=[bad for _, _, _, bad in ordered if bad is not None],
    )


def average_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average of per-dataset metrics, as AVERAGE_DEFINITION says (counts summed, oracle_threshold left out)."""
    average: dict[str, float] = {}
    for key in METRIC_KEYS:
        values = [float(row[key]) for row in rows]
        if key in COUNT_KEYS:
            average[key] = int(sum(v for v in values if not math.isnan(v)))
        elif key not in NOT_AVERAGED:
            finite = [value for value in values if not math.isnan(value)]
            average[key] = sum(finite) / len(finite) if finite else math.nan
    return average


def evaluate_datasets(
    datasets: Mapping[str, Sequence[Pair]],
    pipeline: LocalizationPipeline,
    sampling: SamplingOptions | None = None,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    on_progress: Callable[[str, Pair, "str | None"], None] = lambda stage, pair, error: None,
    context: DistributedContext = DistributedContext(),
) -> EvaluationReport:
    """Evaluate each dataset clean, then at every level of each robustness kind, and average over datasets.

    Pairs skipped in the clean pass are left out of the robustness passes. `on_progress(stage, pair, error)`
    is called once per pair and pass, `stage` naming the dataset and perturbation.
    """
    clean: dict[str, DatasetReport] = {}
    for name, pairs in datasets.items():
        save_dir = None if options.save_predictions_dir is None else options.save_predictions_dir / name
        clean[name] = evaluate_dataset(
            pairs, pipeline, sampling, save_predictions_dir=save_dir, context=context,
            on_progress=lambda pair, error, name=name: on_progress(name, pair, error),
        )
    report = EvaluationReport(clean, average_metrics([r.metrics for r in clean.values()]))
    skipped = context.broadcast({name: {bad.image for bad in r.bad_pairs} for name, r in clean.items()})
    usable = {name: [pair for pair in pairs if str(pair.image) not in skipped[name]] for name, pairs in datasets.items()}
    for kind in options.robustness:
        levels = []
        for perturbation in perturbations(kind, options.seed):
            per_dataset = {
                name: evaluate_dataset(
                    pairs, pipeline, sampling, perturbation=perturbation, context=context,
                    on_progress=lambda pair, error, name=name, p=perturbation: on_progress(f"{name} {p.label}", pair, error),
                ).metrics
                for name, pairs in usable.items()
            }
            levels.append(RobustnessLevel(perturbation, per_dataset, average_metrics(list(per_dataset.values()))))
        report.robustness[kind] = levels
    return report
