"""`evaluate` as a library: score a predictor on labelled datasets, clean and under the robustness protocol.

Every prediction is compared with its mask at the mask's ORIGINAL resolution: the model-size probability
map is resized back with `metrics.resize_probability` before any metric sees it, as IMDL-BenCo does.
The image score is `Prediction.image_score` (the maximum of the model-size map), the number `localize`
writes. Images and masks are decoded in a thread pool ahead of the model and metrics are accumulated in
another thread behind it, so file I/O and per-image sorting stay off the compute path. A pair that cannot
be used (unreadable image or mask, mask of another size) is listed and skipped, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from diffiml_cli.checkpoint import atomic_write_bytes
from diffiml_cli.config import ModelConfig
from diffiml_cli.data.readers import Pair, load_pair
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import save_png_atomic
from diffiml_cli.inference import ModelInput, Predictor, SamplingOptions, prepare_input
from diffiml_cli.localization import output_paths
from diffiml_cli.metrics import METRIC_DEFINITIONS, MetricAccumulator, resize_probability
from diffiml_cli.robustness import LEVEL_NAMES, PERTURBATION_DEFINITIONS, Perturbation, perturbations

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
PER_IMAGE_CSV = "per_image.csv"

# Column order of every report; all are keys of METRIC_DEFINITIONS.
METRIC_KEYS = (
    "n_tampered", "n_authentic", "pixel_f1", "pixel_iou", "pixel_auc", "oracle_f1", "oracle_threshold",
    "trivial_f1", "authentic_pixel_fpr", "authentic_any_rate", "image_auc", "image_accuracy", "seconds_per_image",
)
COUNT_KEYS = ("n_tampered", "n_authentic")
# Each dataset's oracle picks its own threshold, so a mean of thresholds would describe no prediction.
NOT_AVERAGED = ("oracle_threshold",)
AVERAGE_DEFINITION = (
    "Mean over datasets of each per-dataset value (datasets where it is undefined are left out); "
    "n_tampered and n_authentic are totals; oracle_threshold is not averaged."
)

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
    """Threshold on probabilities and image scores, batch size, robustness kinds, noise seed, outputs."""

    threshold: float = 0.5
    batch_size: int = 1
    robustness: tuple[str, ...] = ()
    seed: int = 0  # seeds the Gaussian-noise perturbation
    save_predictions_dir: Path | None = None  # probability PNGs of the clean pass, one folder per dataset


def parse_dataset_arg(text: str) -> tuple[str, str]:
    """'NAME=SPEC' -> (NAME, SPEC); a bare SPEC (or an existing path containing '=') is named by its stem."""
    name, sep, spec = text.partition("=")
    if not sep or Path(text).exists():
        name, spec = Path(text).stem, text
    if not name or not spec:
        raise DiffimlError(f"--data {text!r}: expected NAME=SPEC or SPEC, SPEC a JSON file or a Tp/Gt[/Au] folder")
    return name, spec


@dataclass
class _Loaded:
    index: int
    pair: Pair
    model_input: ModelInput
    mask: torch.Tensor  # (H, W) bool at the original resolution


def _load_pair(index: int, pair: Pair, *, model_config: ModelConfig, perturbation: Perturbation | None) -> _Loaded:
    image, mask = load_pair(pair)
    if perturbation is not None:
        image = perturbation(image, index)
    return _Loaded(index, pair, prepare_input(image, model_config), torch.from_numpy(mask))


def _loaded_batches(pairs: Sequence[Pair], load: Callable[[int, Pair], _Loaded], batch_size: int,
                    reject: Callable[[Pair, str], None]) -> Iterator[list[_Loaded]]:
    """Yield batches of loaded pairs, decoding at most two batches ahead so memory stays bounded."""
    ahead = 2 * batch_size + 1
    items = iter(enumerate(pairs))
    queue: deque[tuple[Pair, Future]] = deque()
    batch: list[_Loaded] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        def refill() -> None:
            while len(queue) < ahead and (item := next(items, None)) is not None:
                queue.append((item[1], pool.submit(load, *item)))

        refill()
        while queue:
            pair, future = queue.popleft()
            refill()
            try:
                batch.append(future.result())
            except DiffimlError as error:
                reject(pair, str(error))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _common_root(pairs: Sequence[Pair]) -> Path:
    parents = [str(pair.image.parent.resolve()) for pair in pairs]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def evaluate_dataset(
    pairs: Sequence[Pair],
    predictor: Predictor,
    sampling: SamplingOptions,
    *,
    model_config: ModelConfig,
    threshold: float = 0.5,
    batch_size: int = 1,
    perturbation: Perturbation | None = None,
    save_predictions_dir: Path | None = None,
    on_progress: ProgressCallback = lambda pair, error: None,
) -> DatasetReport:
    """Predict every pair and score it against its mask at the original resolution.

    Args:
        pairs: (image, mask | None) pairs; mask None = authentic.
        model_config: the model's config, which says how an image becomes its input (`prepare_input`).
        threshold: pixels with prob >= threshold, and images with score >= threshold, count as manipulated.
        perturbation: applied to each (H, W, 3) uint8 image at its original resolution, before resizing.
        save_predictions_dir: when given, `<dir>/<folder>/<stem>_prob.png` (prob * 255, original size).
        on_progress: called once per pair, with the reason when the pair was skipped, else None.

    Returns:
        A DatasetReport; never raises for a bad pair, which is listed in `bad_pairs` instead.
    """
    accumulator = MetricAccumulator(image_threshold=threshold)
    names: list[dict] = []
    bad: list[BadPair] = []
    root = _common_root(pairs)
    predict_seconds = 0.0

    def reject(pair: Pair, reason: str) -> None:
        bad.append(BadPair(str(pair.image), None if pair.mask is None else str(pair.mask), reason))
        on_progress(pair, reason)

    def finish(item: _Loaded, probability: torch.Tensor, score: float) -> None:
        prob = resize_probability(probability[0], tuple(item.mask.shape))  # (H, W) in [0, 1]
        accumulator.add(prob, item.mask, score, threshold=threshold)
        names.append({"image": str(item.pair.image), "mask": None if item.pair.mask is None else str(item.pair.mask)})
        if save_predictions_dir is not None:
            path = output_paths(item.pair.image, root, save_predictions_dir)["prob"]
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png_atomic(path, np.round(prob.numpy() * 255).astype(np.uint8))
        on_progress(item.pair, None)

    load = partial(_load_pair, model_config=model_config, perturbation=perturbation)
    with ThreadPoolExecutor(max_workers=1) as finisher:  # one worker keeps the accumulator's order
        pending: deque[Future] = deque()
        for batch in _loaded_batches(pairs, load, batch_size, reject):
            start = time.perf_counter()
            predictions = predictor.predict_inputs([item.model_input for item in batch], sampling)
            predict_seconds += time.perf_counter() - start
            for item, prediction in zip(batch, predictions):
                pending.append(finisher.submit(finish, item, prediction.probability[0],
                                               float(prediction.image_score[0])))
            while len(pending) > 2 * batch_size:  # the finisher must not fall behind without bound
                pending.popleft().result()
        for future in pending:
            future.result()

    records = accumulator.per_image()
    metrics = {**accumulator.summary(), "seconds_per_image": predict_seconds / len(records) if records else math.nan}
    return DatasetReport(
        metrics={key: metrics[key] for key in METRIC_KEYS},
        per_image=[{**name, **record} for name, record in zip(names, records)],
        bad_pairs=bad,
    )


def average_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average of per-dataset metrics, as AVERAGE_DEFINITION says (counts summed, oracle_threshold left out)."""
    average: dict[str, float] = {}
    for key in METRIC_KEYS:
        values = [float(row[key]) for row in rows]
        if key in COUNT_KEYS:
            average[key] = int(sum(values))
        elif key not in NOT_AVERAGED:
            finite = [value for value in values if not math.isnan(value)]
            average[key] = sum(finite) / len(finite) if finite else math.nan
    return average


def evaluate_datasets(
    datasets: Mapping[str, Sequence[Pair]],
    predictor: Predictor,
    sampling: SamplingOptions,
    options: EvaluateOptions,
    *,
    model_config: ModelConfig,
    on_progress: Callable[[str, Pair, "str | None"], None] = lambda stage, pair, error: None,
) -> EvaluationReport:
    """Evaluate each dataset clean, then at every level of each robustness kind, and average over datasets.

    Pairs skipped in the clean pass are left out of the robustness passes. `on_progress(stage, pair, error)`
    is called once per pair and pass, `stage` naming the dataset and perturbation.
    """
    clean: dict[str, DatasetReport] = {}
    for name, pairs in datasets.items():
        save_dir = None if options.save_predictions_dir is None else options.save_predictions_dir / name
        clean[name] = evaluate_dataset(
            pairs, predictor, sampling, model_config=model_config, threshold=options.threshold,
            batch_size=options.batch_size, save_predictions_dir=save_dir,
            on_progress=lambda pair, error, name=name: on_progress(name, pair, error),
        )
    report = EvaluationReport(clean, average_metrics([r.metrics for r in clean.values()]))
    usable = {name: _without(pairs, clean[name].bad_pairs) for name, pairs in datasets.items()}
    for kind in options.robustness:
        levels = []
        for perturbation in perturbations(kind, options.seed):
            per_dataset = {
                name: evaluate_dataset(
                    pairs, predictor, sampling, model_config=model_config, threshold=options.threshold,
                    batch_size=options.batch_size, perturbation=perturbation,
                    on_progress=lambda pair, error, name=name, p=perturbation: on_progress(f"{name} {p.label}", pair, error),
                ).metrics
                for name, pairs in usable.items()
            }
            levels.append(RobustnessLevel(perturbation, per_dataset, average_metrics(list(per_dataset.values()))))
        report.robustness[kind] = levels
    return report


def _without(pairs: Sequence[Pair], bad: Sequence[BadPair]) -> list[Pair]:
    skipped = {entry.image for entry in bad}
    return [pair for pair in pairs if str(pair.image) not in skipped]


def metric_definitions(threshold: float) -> dict[str, str]:
    """METRIC_DEFINITIONS with the threshold of this run written in (their text assumes 0.5)."""
    # Every "0.5" in METRIC_DEFINITIONS is the pixel or image-score threshold.
    return {key: text.replace("0.5", f"{threshold:g}") for key, text in METRIC_DEFINITIONS.items()}


def jsonable(value):
    """nan and infinities -> None (JSON has no NaN); nested containers are converted recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def report_document(report: EvaluationReport, *, threshold: float, run_info: Mapping | None = None) -> dict:
    """The metrics.json document: run info, definitions of every key, per dataset, average, robustness."""
    document = {
        "run": dict(run_info or {}),
        "threshold": threshold,
        "definitions": {**metric_definitions(threshold), "average": AVERAGE_DEFINITION},
        "datasets": {
            name: {
                "metrics": r.metrics,
                "n_bad_pairs": len(r.bad_pairs),
                "bad_pairs": [asdict(b) for b in r.bad_pairs],
            }
            for name, r in report.datasets.items()
        },
        "average": {"datasets": list(report.datasets), "metrics": report.average},
        "robustness": {
            kind: {
                "definition": PERTURBATION_DEFINITIONS[kind],
                "level_name": LEVEL_NAMES[kind],
                "levels": [
                    {"level": level.perturbation.level, "datasets": level.datasets, "average": level.average}
                    for level in levels
                ],
            }
            for kind, levels in report.robustness.items()
        },
    }
    return jsonable(document)


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows)
    return buffer.getvalue().encode()


def _metrics_rows(report: EvaluationReport) -> list[list]:
    def row(name: str, kind: str, level, metrics: Mapping[str, float]) -> list:
        return [name, kind, level, *(metrics.get(key, math.nan) for key in METRIC_KEYS)]

    rows = [row(name, "none", "", r.metrics) for name, r in report.datasets.items()]
    rows.append(row("average", "none", "", report.average))
    for kind, levels in report.robustness.items():
        for level in levels:
            rows.extend(row(name, kind, level.perturbation.level, m) for name, m in level.datasets.items())
            rows.append(row("average", kind, level.perturbation.level, level.average))
    return rows


def plot_robustness(kind: str, levels: Sequence[RobustnessLevel], clean_average: float, *, threshold: float) -> bytes:
    """PNG bytes of pixel F1 against the level of one perturbation, one line per dataset plus the average."""
    from matplotlib.figure import Figure  # lazily: matplotlib is slow to import; Figure renders with Agg

    figure = Figure(figsize=(5.5, 3.8), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    x = [level.perturbation.level for level in levels]
    for name in levels[0].datasets:
        axes.plot(x, [level.datasets[name]["pixel_f1"] for level in levels], marker="o", linewidth=1, label=name)
    several = len(levels[0].datasets) > 1
    if several:  # with one dataset the average is that dataset's line
        axes.plot(x, [level.average["pixel_f1"] for level in levels], marker="s", linewidth=2.5, color="black",
                  label="average")
    if math.isfinite(clean_average):
        axes.axhline(clean_average, color="gray", linestyle=":", label="average, unperturbed" if several else "unperturbed")
    if kind == "jpeg":
        axes.invert_xaxis()  # lower quality is the stronger perturbation: keep severity growing rightwards
    axes.set_xticks(x)
    plotted = [v for line in axes.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    axes.set_ylim(0, min(1.0, 1.15 * max(plotted)) if plotted and max(plotted) > 0 else 1.0)
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.set_xlabel(f"{kind} {LEVEL_NAMES[kind]}")
    axes.set_ylabel(f"pixel F1 @ {threshold:g}")
    axes.set_title(f"Robustness to {kind}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(report: EvaluationReport, out_dir: Path, *, threshold: float,
                 run_info: Mapping | None = None) -> dict[str, Path]:
    """Write metrics.json, metrics.csv, per_image.csv (clean pass) and robustness_<kind>.png under `out_dir`.

    Returns the written paths by name. Every file is written to a temporary name and renamed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / METRICS_JSON, "csv": out_dir / METRICS_CSV, "per_image": out_dir / PER_IMAGE_CSV}
    document = report_document(report, threshold=threshold, run_info=run_info)
    atomic_write_bytes(written["json"], (json.dumps(document, indent=2) + "\n").encode())
    atomic_write_bytes(written["csv"], csv_bytes(["dataset", "perturbation", "level", *METRIC_KEYS],
                                                  _metrics_rows(report)))
    per_image = [(name, record) for name, r in report.datasets.items() for record in r.per_image]
    columns = list(per_image[0][1]) if per_image else []
    atomic_write_bytes(written["per_image"], csv_bytes(["dataset", *columns],
                                                        [[name, *record.values()] for name, record in per_image]))
    for kind, levels in report.robustness.items():
        path = out_dir / f"robustness_{kind}.png"
        atomic_write_bytes(path, plot_robustness(kind, levels, report.average["pixel_f1"], threshold=threshold))
        written[f"plot_{kind}"] = path
    return written
