"""`localize` as a library: stream any number of image files through a pipeline and write each one's outputs.

Memory does not grow with the folder: at most `2 * batch_size + 1` images are decoded ahead of the model (two
threads), one batch is in the model, and one batch is being written behind it (two threads); each finished
image leaves only its small `ImageResult`. After each batch its records are appended to `results.jsonl`
(`records.py`), so a run killed at any point loses at most the batch in flight, and `results.json` is rebuilt
from the records at the end. A bad input file becomes a failure and the run goes on. A write that fails
removes the image's partial outputs and fails that image; when the disk takes no more writes (full, over
quota, read-only), the run stops after the batch with `RunSummary.stopped` saying why. `should_stop` is asked
after every batch (the CLI sets it on Ctrl-C). Under torchrun each rank takes every world_size-th image.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffiml_cli.batch.outputs import write_outputs
from diffiml_cli.batch.plan import KEPT, plan
from diffiml_cli.batch.records import (LOCK_NAME, RESULTS_JSON, RESULTS_JSONL, ImageResult, append_records,
                                       rebuild_results_json)
from diffiml_cli.distributed import DistributedContext
from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import is_out_of_space, remove_stale_temporaries, require_inside
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, load_rgb_hashed
from diffiml_cli.pipeline import LocalizationPipeline, LocalizationResult


@dataclass(frozen=True)
class LocalizeOptions:
    """Where to write, how many images per model batch, whether to redo finished images, and the pixel guard."""

    out_dir: Path
    batch_size: int = 1
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class RunSummary:
    """How a run ended. results: one per input of this rank (those not reached are absent); interrupted:
    `should_stop` said so; stopped: why the run could not go on (the disk), else None; left: inputs of this
    rank that were neither written nor failed."""

    results: list[ImageResult] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None
    left: int = 0
    run_id: str = ""
    attempted: int = 0  # inputs of the to-do list that ended ok or failed
    not_analysed: list[dict] = field(default_factory=list)  # diffiml's own outputs among the inputs: {image, reason}

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder (and its parents); a DiffimlError when it cannot be one, or when a file the run
    writes there (results.jsonl, results.json, the lock) is a symbolic link, which could lead outside it."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise DiffimlError(f"{out_dir}: the output folder exists and is not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DiffimlError(f"{out_dir}: cannot create the output folder ({error.strerror or error})") from None
    for name in (RESULTS_JSONL, RESULTS_JSON, LOCK_NAME):
        if (out_dir / name).is_symlink():
            raise DiffimlError(f"{out_dir / name}: is a symbolic link; refusing to write through it (it could lead "
                               "outside the output folder)")


@dataclass
class _Loaded:
    path: Path
    paths: dict[str, Path]
    image: np.ndarray
    sha256: str
    load_seconds: float
    out_dir: Path


def _load(path: Path, paths: dict[str, Path], max_pixels: int, out_dir: Path) -> _Loaded:
    start = time.perf_counter()
    image, digest = load_rgb_hashed(path, max_pixels=max_pixels)
    return _Loaded(path, paths, image, digest, time.perf_counter() - start, out_dir)


def _write(item: _Loaded, result: LocalizationResult) -> None:
    folder = item.paths["mask"].parent
    require_inside(item.out_dir, item.paths["mask"])  # checked when planned; a link may have been put there since
    folder.mkdir(parents=True, exist_ok=True)  # sub-folders mirror the input's
    write_outputs(item.image, result, item.paths, item.sha256)


def localize_files(
    images: Sequence[Path],
    pipeline: LocalizationPipeline,
    options: LocalizeOptions,
    *,
    on_result: Callable[[ImageResult], None] = lambda result: None,
    should_stop: Callable[[], bool] = lambda: False,
    context: DistributedContext = DistributedContext(),
    run_info: dict | None = None,
) -> RunSummary:
    """Localize `images` (this rank's share of them) into `options.out_dir`; see the module docstring.

    Never raises for a single bad file. Raises DiffimlError when `out_dir` cannot be created.
    """
    out_dir = options.out_dir
    prepare_out_dir(out_dir)
    summary = RunSummary(run_id=context.broadcast(uuid.uuid4().hex))
    planned = plan(images, out_dir, overwrite=options.overwrite)
    summary.not_analysed = planned.not_analysed
    decided = [result for result in planned.decided if context.is_main]  # skips and refusals: recorded once
    todo = planned.todo
    todo = context.shard(todo)
    # A skip whose earlier record survives keeps that record (and its run's numbers); the others are recorded.
    fresh = [result for result in decided if not (result.status == "skipped" and result.note == KEPT)]
    for result in fresh:
        result.run_id = summary.run_id
    _record(out_dir, fresh, summary, on_result)
    recorded = {id(result) for result in fresh}
    for result in decided:
        if id(result) not in recorded:
            result.note = None
            summary.results.append(result)
            on_result(result)
    names_by_folder: dict[Path, list[str]] = {}
    for _, paths in todo:
        for path in paths.values():
            names_by_folder.setdefault(path.parent, []).append(path.name)
    for folder, names in names_by_folder.items():  # of a run killed mid-write
        remove_stale_temporaries(folder, names)
    if summary.stopped is None:
        _stream(todo, pipeline, options, summary, on_result, should_stop)
    summary.left = len(todo) - summary.attempted
    context.barrier()  # every rank's records are in before rank 0 rebuilds results.json
    if context.is_main:
        try:
            rebuild_results_json(out_dir, {**pipeline.run_info(), **(run_info or {})}, summary.not_analysed)
        except (OSError, DiffimlError) as error:
            summary.stopped = summary.stopped or _disk_reason(out_dir, error)
    return summary


def _stream(todo, pipeline: LocalizationPipeline, options: LocalizeOptions, summary: RunSummary,
            on_result, should_stop) -> None:
    """Decode ahead, predict, write behind; record each batch once its outputs are written."""
    pending: deque[tuple[list[ImageResult], list[Future]]] = deque()
    with ThreadPoolExecutor(max_workers=2) as loader, ThreadPoolExecutor(max_workers=2) as writer:
        for batch, failures in _batches(todo, options, loader):
            for failure in failures:
                failure.run_id = summary.run_id
            summary.attempted += len(failures)
            _record(options.out_dir, failures, summary, on_result)
            if batch:
                batch, predictions, seconds, failed = _predict(pipeline, batch)
                for failure in failed:
                    failure.run_id = summary.run_id
                summary.attempted += len(failed)
                _record(options.out_dir, failed, summary, on_result)
                results = [_result_for(item, prediction, seconds, summary.run_id)
                           for item, prediction in zip(batch, predictions)]
                pending.append((results, [writer.submit(_write, item, p) for item, p in zip(batch, predictions)]))
            while len(pending) > 1:  # write-behind of one batch: the model goes on meanwhile
                _finish(pending.popleft(), options.out_dir, summary, on_result)
            if summary.stopped is not None or should_stop():
                summary.interrupted = summary.stopped is None
                break
        while pending:
            _finish(pending.popleft(), options.out_dir, summary, on_result)


def _predict(pipeline: LocalizationPipeline, batch: list[_Loaded]
             ) -> tuple[list[_Loaded], list[LocalizationResult], float, list[ImageResult]]:
    """Predict a batch: (the items that succeeded, their predictions, seconds per image, failures). When the
    batch raises, each image is tried alone, so an exception (anything but a stop: KeyboardInterrupt and
    SystemExit propagate) fails only the image that raised it, with its reason, and the run goes on."""
    start = time.perf_counter()
    try:
        predictions = pipeline.predict_many([item.image for item in batch])
        return batch, predictions, (time.perf_counter() - start) / len(batch), []
    except Exception:  # noqa: BLE001 - isolated below, image by image
        if len(batch) == 1:
            return [], [], 0.0, [_prediction_failure(batch[0], pipeline)]
    kept, predictions, failed = [], [], []
    start = time.perf_counter()
    for item in batch:
        try:
            predictions.extend(pipeline.predict_many([item.image]))
            kept.append(item)
        except Exception:  # noqa: BLE001 - this image's failure, with its reason
            failed.append(_prediction_failure(item, pipeline))
    return kept, predictions, (time.perf_counter() - start) / max(len(batch), 1), failed


def _prediction_failure(item: _Loaded, pipeline: LocalizationPipeline) -> ImageResult:
    """The failure record of an image whose prediction raised (the exception being handled)."""
    error = sys.exc_info()[1]
    reason = str(error) if isinstance(error, DiffimlError) else f"{type(error).__name__}: {error}"
    reason = " ".join(reason.split()) or type(error).__name__
    return ImageResult(str(item.path), "failed", error=f"{item.path}: cannot be localized ({reason})",
                       path=os.path.realpath(item.path), sha256=item.sha256)


def _batches(todo, options: LocalizeOptions, loader: ThreadPoolExecutor
             ) -> Iterator[tuple[list[_Loaded], list[ImageResult]]]:
    """Yield (decoded batch, the files of it that could not be read), at most 2 * batch_size + 1 decodes ahead."""
    ahead = 2 * options.batch_size + 1
    queue: deque[tuple[Path, Future]] = deque()
    items = iter(todo)
    batch: list[_Loaded] = []
    failures: list[ImageResult] = []
    while True:
        while len(queue) < ahead and (item := next(items, None)) is not None:
            queue.append((item[0], loader.submit(_load, item[0], item[1], options.max_pixels, options.out_dir)))
        if not queue:
            break
        path, future = queue.popleft()
        try:
            batch.append(future.result())
        except Exception as error:  # noqa: BLE001 - a DiffimlError names the file; anything else is its failure too
            message = str(error) if isinstance(error, DiffimlError) else f"{path}: cannot read image ({error!r})"
            failures.append(ImageResult(str(path), "failed", error=message, path=os.path.realpath(path)))
        if len(batch) == options.batch_size or len(failures) >= options.batch_size:
            yield batch, failures
            batch, failures = [], []
    if batch or failures:
        yield batch, failures


def _result_for(item: _Loaded, prediction: LocalizationResult, seconds: float, run_id: str) -> ImageResult:
    height, width = item.image.shape[:2]
    return ImageResult(
        image=str(item.path), status="ok", path=os.path.realpath(item.path), sha256=item.sha256,
        image_score=round(prediction.image_score, 6),
        # unrounded: the verdict compares it with the calibrated threshold, which can lie within 1e-6 of it
        detection_score=prediction.detection_score,
        verdict=prediction.verdict, gated=prediction.gated, manipulated_fraction=prediction.manipulated_fraction,
        width=width, height=height, tiles=prediction.tiles, outputs={k: str(v) for k, v in item.paths.items()},
        timings={"load_s": round(item.load_seconds, 4), "predict_s": round(seconds, 4)}, run_id=run_id,
    )


def _finish(entry: tuple[list[ImageResult], list[Future]], out_dir: Path, summary: RunSummary, on_result) -> None:
    """Wait for one batch's writes; an image whose write failed becomes a failure; then record the batch."""
    results, futures = entry
    summary.attempted += len(results)
    for result, future in zip(results, futures):
        start = time.perf_counter()
        try:
            future.result()
        except (DiffimlError, OSError) as error:
            result.status, result.error = "failed", f"{result.image}: cannot write outputs ({error})"
            result.outputs = {}
            if is_out_of_space(error.__cause__ if isinstance(error, DiffimlError) else error):
                summary.stopped = _disk_reason(out_dir, error)
        result.timings["write_s"] = round(time.perf_counter() - start, 4)
    _record(out_dir, results, summary, on_result)


def _record(out_dir: Path, results: list[ImageResult], summary: RunSummary, on_result) -> None:
    """Append the records durably; when even that fails for lack of space, stop the run (records written
    before stay valid)."""
    if not results:
        return
    try:
        append_records(out_dir, results)
    except OSError as error:
        summary.stopped = _disk_reason(out_dir, error)
    summary.results.extend(results)
    for result in results:
        on_result(result)


def _disk_reason(out_dir: Path, error: BaseException) -> str:
    cause = error.__cause__ if isinstance(error, DiffimlError) and error.__cause__ else error
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return f"{out_dir}: {reason.lower()}; nothing more can be written there"
