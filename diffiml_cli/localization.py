"""`localize` as a library: run a predictor over many files and write the per-image outputs.

Image decoding and resizing run in a thread pool ahead of the model, and PNG encoding runs in another
behind it, so file I/O stays off the compute path. A file that cannot be read is reported and skipped;
every output is written to a temporary name and renamed, so an interrupted run leaves no truncated PNG
and a re-run skips the images already finished (and removes the temporaries the interrupted run left).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from diffiml_cli.checkpoint import atomic_write_bytes
from diffiml_cli.config import ModelConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, load_rgb, save_png_atomic
from diffiml_cli.inference import ModelInput, Prediction, Predictor, SamplingOptions, prepare_input, to_original_size

OUTPUT_KINDS = ("mask", "prob", "overlay", "uncertainty")
RESULTS_NAME = "results.json"
_TEMPORARY = re.compile(r"^\.(?P<name>.+\.png)\.[0-9a-f]{8}\.tmp$")  # save_png_atomic's temporary names


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
    model_input: ModelInput
    load_seconds: float


def _load(path: Path, model_config: ModelConfig, max_pixels: int) -> _Loaded:
    start = time.perf_counter()
    image = load_rgb(path, max_pixels=max_pixels)
    return _Loaded(path, image, prepare_input(image, model_config), time.perf_counter() - start)


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder (and its parents); a DiffimlError when it cannot be one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DiffimlError(f"{out_dir}: the output folder exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DiffimlError(f"{out_dir}: cannot create the output folder ({error.strerror or error})") from None


def localize_files(
    images: Sequence[Path],
    predictor: Predictor,
    sampling: SamplingOptions,
    options: LocalizeOptions,
    *,
    model_config: ModelConfig,
    on_result: Callable[[ImageResult], None] = lambda result: None,
    run_info: dict | None = None,
) -> list[ImageResult]:
    """Localize every image in `images`, writing outputs and `results.json` under `options.out_dir`.

    Never raises for a single bad file: it becomes a "failed" result, as does an input whose outputs would
    replace an input or another image's outputs (see `_plan`). Raises DiffimlError only when `out_dir`
    cannot be created. Returns one result per input.
    """
    out_dir = options.out_dir
    prepare_out_dir(out_dir)
    results, todo = _plan(images, out_dir, overwrite=options.overwrite)
    _remove_stale_temporaries([path for _, paths in todo for path in paths.values()])
    for result in results.values():
        on_result(result)

    writers: list[tuple[ImageResult, Future]] = []
    with ThreadPoolExecutor(max_workers=2) as loader, ThreadPoolExecutor(max_workers=2) as writer:
        for batch in _batches(todo, options.batch_size, loader, model_config, options.max_pixels, results, on_result):
            start = time.perf_counter()
            predictions = predictor.predict_inputs([item.model_input for item, _ in batch], sampling)
            predict_seconds = (time.perf_counter() - start) / len(batch)
            for (item, paths), prediction in zip(batch, predictions):
                result = _result_for(item, paths, prediction, predict_seconds)
                results[item.path] = result
                future = writer.submit(_finish, item, paths, prediction, options.threshold, result)
                writers.append((result, future))
        for result, future in writers:
            future.result()
            on_result(result)

    ordered = [results[path] for path in images]
    _write_results_json(out_dir / RESULTS_NAME, ordered, run_info or {})
    return ordered


def _plan(images: Sequence[Path], out_dir: Path, *, overwrite: bool
          ) -> tuple[dict[Path, ImageResult], list[tuple[Path, dict[str, Path]]]]:
    """Decide per image: write it (the returned to-do list), skip it (its outputs exist), or fail it
    (its outputs would replace an input, another input's outputs, or an earlier run's outputs of
    another image: each name is `<stem>_<kind>.png`, so a.jpg and a.png collide)."""
    root = _input_root(images)
    inputs = {p.resolve() for p in images}
    earlier = {_mask_output(entry): os.path.realpath(image) for image, entry in _read_results(out_dir / RESULTS_NAME).items()
               if _mask_output(entry) and entry.get("status") in ("ok", "skipped")}
    results: dict[Path, ImageResult] = {}
    todo: list[tuple[Path, dict[str, Path]]] = []
    owners: dict[Path, Path] = {}  # output -> the first input of this run that writes it
    for path in images:
        paths = output_paths(path, root, out_dir)
        clobbers = [str(p) for p in paths.values() if p.resolve() in inputs]
        owner = next((owners[p] for p in paths.values() if p in owners), None)
        for output in paths.values():
            owners.setdefault(output, path)
        earlier_owner = earlier.get(os.path.realpath(paths["mask"]), os.path.realpath(path))
        names = f"({paths['mask'].name}, ...)"
        if clobbers:
            failure = f"refusing to overwrite input {clobbers[0]}"
        elif owner is not None:
            failure = (f"its outputs {names} would overwrite those of {owner}; "
                       "rename one of them or localize it with another --out")
        elif overwrite or not all(p.exists() for p in paths.values()):
            todo.append((path, paths))
            continue
        elif earlier_owner != os.path.realpath(path):
            failure = (f"{paths['mask'].parent} already holds the outputs {names} of another image, {earlier_owner}; "
                       "use another --out, or --overwrite to replace them")
        else:
            results[path] = ImageResult(str(path), "skipped", outputs={k: str(v) for k, v in paths.items()})
            continue
        results[path] = ImageResult(str(path), "failed", error=f"{path}: {failure}")
    return results, todo


def _remove_stale_temporaries(outputs: Sequence[Path]) -> None:
    """Delete the temporaries a run killed mid-write left beside outputs this run is about to write."""
    names_by_folder: dict[Path, set[str]] = {}
    for path in outputs:
        names_by_folder.setdefault(path.parent, set()).add(path.name)
    for folder, names in names_by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # not created yet: nothing stale in it
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match and match["name"] in names:
                Path(entry.path).unlink(missing_ok=True)


def _batches(todo, batch_size, loader, model_config, max_pixels, results, on_result) -> Iterator[list]:
    """Yield loaded batches, keeping up to two batches of decoding in flight ahead of the model."""
    futures = [(path, paths, loader.submit(_load, path, model_config, max_pixels)) for path, paths in todo]
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


def _result_for(item: _Loaded, paths: dict[str, Path], prediction: Prediction, predict_seconds: float):
    """The result of one image; `prediction` is its own (B = 1, cropped to the image)."""
    height, width = item.image.shape[:2]
    return ImageResult(
        image=str(item.path),
        status="ok",
        image_score=float(prediction.image_score[0]),
        width=width,
        height=height,
        outputs={kind: str(p) for kind, p in paths.items()},
        timings={"load_s": round(item.load_seconds, 4), "predict_s": round(predict_seconds, 4)},
    )


def _finish(item: _Loaded, paths, prediction: Prediction, threshold: float, result: ImageResult) -> None:
    start = time.perf_counter()
    height, width = item.image.shape[:2]
    try:
        paths["mask"].parent.mkdir(parents=True, exist_ok=True)  # sub-folders mirror the input's
        probability = np.clip(to_original_size(prediction.probability[0], height, width), 0.0, 1.0)
        uncertainty = to_original_size(prediction.uncertainty[0], height, width)
        result.manipulated_fraction = _write_outputs(item.image, probability, uncertainty, paths, threshold)
    except (DiffimlError, OSError) as error:
        result.status, result.error = "failed", f"{item.path}: cannot write outputs ({error})"
    result.timings["write_s"] = round(time.perf_counter() - start, 4)


def _read_results(path: Path) -> dict[str, dict]:
    """The entries of an earlier run's `results.json` by image; empty when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        entries = {entry["image"]: entry for entry in json.loads(path.read_text()).get("images", [])}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}  # an unreadable old file is replaced, not trusted
    return {image: entry for image, entry in entries.items() if isinstance(image, str) and isinstance(entry, dict)}


def _mask_output(entry: dict) -> str | None:
    """The real path of the mask a results.json entry lists, or None."""
    outputs = entry.get("outputs")
    mask = outputs.get("mask") if isinstance(outputs, dict) else None
    return os.path.realpath(mask) if isinstance(mask, str) and mask else None


def _write_results_json(path: Path, results: list[ImageResult], run_info: dict) -> None:
    """Merge this run's results into `results.json`, keeping entries of earlier runs for other images
    unless this run replaced their outputs (--overwrite)."""
    previous = _read_results(path)
    written = {os.path.realpath(r.outputs["mask"]) for r in results if r.status == "ok"}
    previous = {image: entry for image, entry in previous.items() if _mask_output(entry) not in written}
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
