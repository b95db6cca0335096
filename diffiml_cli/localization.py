"""`localize` as a library: run a predictor over many files and write the per-image outputs.

Image decoding and resizing run in a thread pool ahead of the model, and PNG encoding runs in another
behind it, so file I/O stays off the compute path. A file that cannot be read is reported and skipped;
every output is written to a temporary name and renamed, so an interrupted run leaves no truncated PNG
and a re-run skips the images already finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from diffiml_cli.checkpoint import atomic_write_bytes
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, load_rgb, save_png_atomic
from diffiml_cli.inference import Prediction, Predictor, SamplingOptions, image_to_tensor, to_original_size

OUTPUT_KINDS = ("mask", "prob", "overlay", "uncertainty")
RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class LocalizeOptions:
    """Where and how to write: output folder, mask threshold, batch size, and safety limits."""

    out_dir: Path
    threshold: float = 0.5
    batch_size: int = 1
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class ImageResult:
    """What happened to one input file; `status` is "ok", "skipped" (outputs exist) or "failed"."""

    image: str
    status: str
    error: str | None = None
    image_score: float | None = None
    manipulated_fraction: float | None = None
    width: int | None = None
    height: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def output_paths(image: Path, root: Path, out_dir: Path) -> dict[str, Path]:
    """`<out>/<relative folder>/<stem>_<kind>.png` for each output kind; sub-folders mirror the input."""
    try:
        relative = image.parent.resolve().relative_to(root)
    except ValueError:
        relative = Path()
    return {kind: out_dir / relative / f"{image.stem}_{kind}.png" for kind in OUTPUT_KINDS}


def _input_root(images: Sequence[Path]) -> Path:
    parents = [str(p.parent.resolve()) for p in images]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def overlay_heatmap(image: np.ndarray, probability: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A JET heatmap blended on the photo where the model sees manipulation, with the mask outlined.

    image: (H, W, 3) uint8 RGB; probability: (H, W) float in [0, 1]; mask: (H, W) bool -> (H, W, 3) uint8.
    """
    heat = cv2.applyColorMap(np.round(probability * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = (0.7 * probability)[..., None]  # opaque where manipulated, the photo itself where not
    blended = image.astype(np.float32) * (1.0 - alpha) + heat * alpha
    overlay = np.round(blended).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), thickness)
    return overlay


def _write_outputs(
    image: np.ndarray, probability: np.ndarray, uncertainty: np.ndarray, paths: dict[str, Path], threshold: float
) -> float:
    """Write the four PNGs for one image; returns the manipulated fraction."""
    mask = probability >= threshold
    save_png_atomic(paths["mask"], mask.astype(np.uint8) * 255)
    save_png_atomic(paths["prob"], np.round(probability * 255).astype(np.uint8))
    # The member std is at most 0.5, so 255 means maximal disagreement between ensemble members.
    save_png_atomic(paths["uncertainty"], np.round(np.clip(uncertainty * 510, 0, 255)).astype(np.uint8))
    save_png_atomic(paths["overlay"], overlay_heatmap(image, probability, mask))
    return float(mask.mean())


@dataclass
class _Loaded:
    path: Path
    image: np.ndarray
    tensor: torch.Tensor
    load_seconds: float


def _load(path: Path, size: int, max_pixels: int) -> _Loaded:
    start = time.perf_counter()
    image = load_rgb(path, max_pixels=max_pixels)
    return _Loaded(path, image, image_to_tensor(image, size), time.perf_counter() - start)


def localize_files(
    images: Sequence[Path],
    predictor: Predictor,
    sampling: SamplingOptions,
    options: LocalizeOptions,
    *,
    image_size: int,
    on_result: Callable[[ImageResult], None] = lambda result: None,
    run_info: dict | None = None,
) -> list[ImageResult]:
    """Localize every image in `images`, writing outputs and `results.json` under `options.out_dir`.

    Never raises for a single bad file: it becomes a "failed" result. Returns one result per input.
    """
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    root = _input_root(images)
    inputs = {p.resolve() for p in images}
    results: dict[Path, ImageResult] = {}
    todo: list[tuple[Path, dict[str, Path]]] = []
    for path in images:
        paths = output_paths(path, root, out_dir)
        clobbers = [str(p) for p in paths.values() if p.resolve() in inputs]
        if clobbers:
            results[path] = ImageResult(str(path), "failed", error=f"refusing to overwrite input {clobbers[0]}")
        elif not options.overwrite and all(p.exists() for p in paths.values()):
            results[path] = ImageResult(str(path), "skipped", outputs={k: str(v) for k, v in paths.items()})
        else:
            todo.append((path, paths))
    for result in results.values():
        on_result(result)

    writers: list[tuple[ImageResult, Future]] = []
    with ThreadPoolExecutor(max_workers=2) as loader, ThreadPoolExecutor(max_workers=2) as writer:
        for batch in _batches(todo, options.batch_size, loader, image_size, options.max_pixels, results, on_result):
            start = time.perf_counter()
            prediction = predictor.predict(torch.stack([item.tensor for item, _ in batch]), sampling)
            predict_seconds = (time.perf_counter() - start) / len(batch)
            for index, (item, paths) in enumerate(batch):
                result = _result_for(item, paths, prediction, index, predict_seconds)
                results[item.path] = result
                future = writer.submit(_finish, item, paths, prediction, index, options.threshold, result)
                writers.append((result, future))
        for result, future in writers:
            future.result()
            on_result(result)

    ordered = [results[path] for path in images]
    _write_results_json(out_dir / RESULTS_NAME, ordered, run_info or {})
    return ordered


def _batches(todo, batch_size, loader, image_size, max_pixels, results, on_result) -> Iterator[list]:
    """Yield loaded batches, keeping up to two batches of decoding in flight ahead of the model."""
    futures = [(path, paths, loader.submit(_load, path, image_size, max_pixels)) for path, paths in todo]
    batch = []
    for path, paths, future in futures:
        try:
            batch.append((future.result(), paths))
        except DiffimlError as error:
            results[path] = ImageResult(str(path), "failed", error=str(error))
            on_result(results[path])
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _result_for(item: _Loaded, paths: dict[str, Path], prediction: Prediction, index: int, predict_seconds: float):
    height, width = item.image.shape[:2]
    return ImageResult(
        image=str(item.path),
        status="ok",
        image_score=float(prediction.image_score[index]),
        width=width,
        height=height,
        outputs={kind: str(p) for kind, p in paths.items()},
        timings={"load_s": round(item.load_seconds, 4), "predict_s": round(predict_seconds, 4)},
    )


def _finish(item: _Loaded, paths, prediction: Prediction, index: int, threshold: float, result: ImageResult) -> None:
    start = time.perf_counter()
    height, width = item.image.shape[:2]
    try:
        probability = np.clip(to_original_size(prediction.probability[index], height, width), 0.0, 1.0)
        uncertainty = to_original_size(prediction.uncertainty[index], height, width)
        result.manipulated_fraction = _write_outputs(item.image, probability, uncertainty, paths, threshold)
    except (DiffimlError, OSError) as error:
        result.status, result.error = "failed", f"{item.path}: cannot write outputs ({error})"
    result.timings["write_s"] = round(time.perf_counter() - start, 4)


def _write_results_json(path: Path, results: list[ImageResult], run_info: dict) -> None:
    """Merge this run's results into `results.json`, keeping entries of earlier runs for other images."""
    previous: dict[str, dict] = {}
    if path.is_file():
        try:
            previous = {entry["image"]: entry for entry in json.loads(path.read_text()).get("images", [])}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            previous = {}  # an unreadable old file is replaced, not trusted
    for result in results:
        if result.status == "skipped" and result.image in previous:
            continue  # keep the numbers of the run that produced those outputs
        previous[result.image] = asdict(result)
    document = {
        "run": run_info,
        "images": list(previous.values()),
        "failures": [{"image": r.image, "error": r.error} for r in results if r.status == "failed"],
    }
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
