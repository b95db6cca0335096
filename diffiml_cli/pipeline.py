"""The user's edge: load a localizer once, then `predict(image)` gives maps, scores and a verdict at the image's size.

    import diffiml_cli
    localizer = diffiml_cli.load_localizer()              # the shipped checkpoint; or a path, or org/name@rev
    result = localizer.predict("photo.jpg")               # also a PIL image or an (H, W, 3) uint8 array
    result.probability, result.mask, result.detection_score, result.verdict

`LocalizationPipeline` is the one place where an image becomes model input and the model's output becomes
original-size maps: it squeezes ("resize" models) or shrinks past `native_max_side` ("native" models) the image,
has it padded to the model's sides (`inference.pad_to_multiple`; the `Predictor` crops the padding off again),
resizes the maps back, and cuts an image that is too large for one pass into tiles (`tiling.py`) instead of
shrinking it. It owns its model config. `localize`, `evaluate`, the sweep and `benchmark` use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from diffiml_cli.api_checks import check_image, check_images
from diffiml_cli.version import __version__
from diffiml_cli.config import ModelConfig
from diffiml_cli.config_values import check_sampling_options
from diffiml_cli.defaults import DEFAULT_TILE_OVERLAP
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, load_rgb, pil_to_rgb
from diffiml_cli.image_ops import resize_image
from diffiml_cli.inference import (DEFAULT_PRECISION, ModelInput, Prediction, Predictor, SamplingOptions, image_tensor,
                                   named_sampler, pad_to_multiple, resolve_device)
from diffiml_cli.tiling import Stitcher, tile_grid

ImageLike = Union[str, Path, Image.Image, np.ndarray]
VERDICTS = ("manipulated", "authentic")


@dataclass(frozen=True)
class LocalizationResult:
    """One image's outputs at its original size.

    probability: (H, W) float32 in [0, 1]; uncertainty: (H, W) float32 in [0, 0.5], the ensemble's spread.
    mask: (H, W) bool, probability >= threshold; empty when `gated` (the verdict was "authentic" and gating on).
    image_score: max of the probability map, in [0, 1]. detection_score: the detector's score of the whole
    image in [0, 1], or None for a checkpoint without a detector. verdict: "manipulated" when
    detection_score >= the calibrated threshold, "authentic" (no manipulation detected) below it, None without
    a calibration. tiles: model passes the image took (1 unless it was tiled).
    """

    probability: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    image_score: float
    detection_score: float | None
    verdict: str | None
    gated: bool
    tiles: int = 1

    @property
    def manipulated_fraction(self) -> float:
        """Share of the image's pixels in `mask`."""
        return float(self.mask.mean())


def as_rgb(image: ImageLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) / (H, W) uint8 array -> (H, W, 3) uint8 RGB (read as `load_rgb` does)."""
    if isinstance(image, (str, Path)):
        return load_rgb(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise DiffimlError(f"an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if image.ndim == 2:
            return check_image(np.repeat(image[..., None], 3, axis=2))
        return check_image(np.ascontiguousarray(image[..., :3]))
    raise DiffimlError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or an array")


def prepare_input(image: np.ndarray, config: ModelConfig) -> ModelInput:
    """image: (H, W, 3) uint8 RGB -> ModelInput, as `config.resolution` says: "resize" squeezes it to
    image_size (with `image_io.resize_image`, as training does); "native" keeps it, area-shrunk (keeping its
    aspect ratio) only when its long side exceeds `native_max_side` (the pipeline tiles such images instead)."""
    if config.resolution == "resize":
        size = config.image_size
        return ModelInput(image_tensor(resize_image(image, (size, size))), (size, size))
    height, width = image.shape[:2]
    scale = config.native_max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = resize_image(image, size)
    return pad_to_multiple(image, config.input_multiple)


def to_original_size(map_: torch.Tensor, height: int, width: int) -> np.ndarray:
    """map_: (1, h, w) or (h, w) float -> (height, width) float32 (resize_image: area when shrinking, linear
    when growing; both are convex, so a map stays within its range). The same array when the size matches."""
    array = np.ascontiguousarray(map_.squeeze(0).numpy().astype(np.float32, copy=False))
    return resize_image(array, (width, height))


class LocalizationPipeline:
    """A loaded localizer and how to run it; see the module docstring.

    sampling: the default SamplingOptions of `predict`. threshold: the mask's probability threshold.
    gate: empty the mask of an image whose verdict is "authentic"; None takes the checkpoint's calibrated
    default (off without a calibration). tile: tile side in pixels for images whose long side exceeds the
    model's `native_max_side`; None = native_max_side, 0 = shrink such images instead (the behaviour before
    tiling). batch_size: model inputs (images of one shape, or tiles) per forward pass.
    """

    def __init__(self, predictor: Predictor, config: ModelConfig, *, source: str = "", model_card: str = "",
                 sampling: SamplingOptions = SamplingOptions(), threshold: float = 0.5, gate: bool | None = None,
                 tile: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP, batch_size: int = 1) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise DiffimlError(f"threshold must be in [0, 1], got {threshold}")
        self.predictor, self.config, self.source, self.model_card = predictor, config, source, model_card
        self.threshold, self.batch_size = threshold, max(1, batch_size)
        self.sampling = named_sampler(sampling, config.diffusion)  # as results.json and calibrations record it
        calibration = config.calibration
        self.gate = (calibration.gate if calibration is not None else False) if gate is None else gate
        if self.gate and calibration is None:
            raise DiffimlError("gating needs a calibrated detector; this checkpoint has none (gate=False)")
        self.tile = config.native_max_side if tile is None else tile
        self.tile_overlap = tile_overlap
        if self.tile and config.resolution == "native":
            tile_grid(self.tile, self.tile, self.tile, tile_overlap)  # validates tile and overlap
            if self.tile % config.input_multiple:
                raise DiffimlError(f"tile must be a multiple of {config.input_multiple} for this model, got {self.tile}")

    # ----- prediction ---------------------------------------------------------------------------------------
    def predict(self, image: ImageLike, *, steps: int | None = None, ensemble: int | None = None,
                tta: bool | None = None, seed: int | None = None, sampler: str | None = None) -> LocalizationResult:
        """One image (a path, a PIL image or an (H, W, 3) uint8 array) -> its LocalizationResult; sampling
        options left None take the pipeline's."""
        changes = {k: v for k, v in dict(steps=steps, ensemble=ensemble, tta=tta, seed=seed, sampler=sampler).items()
                   if v is not None}
        return self.predict_many([as_rgb(image)], dataclasses.replace(self.sampling, **changes))[0]

    def predict_many(self, images: Sequence[np.ndarray], sampling: SamplingOptions | None = None
                     ) -> list[LocalizationResult]:
        """(H, W, 3) uint8 RGB images -> their results, in order. Images of one shape share model batches of
        `batch_size`; an image that needs tiles is run on its own, `batch_size` tiles at a time."""
        sampling = check_sampling_options(sampling or self.sampling)
        images = check_images(images)  # the one check of every array, whether it came through `predict` or not
        results: list[LocalizationResult | None] = [None] * len(images)
        whole = [i for i, image in enumerate(images) if not self._needs_tiles(image)]
        for start in range(0, len(whole), self.batch_size):
            chunk = whole[start:start + self.batch_size]
            predictions = self.predictor.predict_inputs([prepare_input(images[i], self.config) for i in chunk], sampling)
            for i, prediction in zip(chunk, predictions):
                results[i] = self._result(prediction, images[i].shape[:2])
        for i in (i for i, image in enumerate(images) if self._needs_tiles(image)):
            results[i] = self._predict_tiled(images[i], sampling)
        return results  # type: ignore[return-value]

    def _needs_tiles(self, image: np.ndarray) -> bool:
        config = self.config
        return bool(self.tile) and config.resolution == "native" and max(image.shape[:2]) > config.native_max_side

    def _predict_tiled(self, image: np.ndarray, sampling: SamplingOptions) -> LocalizationResult:
        height, width = image.shape[:2]
        tiles = tile_grid(height, width, self.tile, self.tile_overlap)
        stitcher = Stitcher(height, width, self.tile_overlap)
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start:start + self.batch_size]
            inputs = [pad_to_multiple(image[t.top:t.top + t.height, t.left:t.left + t.width], self.config.input_multiple)
                      for t in chunk]
            for tile, prediction in zip(chunk, self.predictor.predict_inputs(inputs, sampling)):
                maps = torch.cat([prediction.probability[0], prediction.uncertainty[0]])
                cells = None if prediction.evidence is None else torch.cat([prediction.evidence[0], prediction.cells[0]])
                stitcher.add(tile, maps, cells)
        maps, cells = stitcher.result()
        detection = None
        if cells is not None:
            cells_tensor = torch.from_numpy(cells)[None]
            detection = float(self.predictor.detect(cells_tensor[:, :1], cells_tensor[:, 1:])[0])
        probability = np.clip(maps[0], 0.0, 1.0)
        return self._finish(probability, maps[1], float(probability.max()), detection, len(tiles))

    def _result(self, prediction: Prediction, size: tuple[int, int]) -> LocalizationResult:
        height, width = size
        probability = np.clip(to_original_size(prediction.probability[0], height, width), 0.0, 1.0)
        uncertainty = to_original_size(prediction.uncertainty[0], height, width)
        detection = None if prediction.detection_score is None else float(prediction.detection_score[0])
        return self._finish(probability, uncertainty, float(prediction.image_score[0]), detection, 1)

    def _finish(self, probability: np.ndarray, uncertainty: np.ndarray, image_score: float,
                detection: float | None, tiles: int) -> LocalizationResult:
        if not np.isfinite(image_score) or (detection is not None and not np.isfinite(detection)):  # broken weights
            raise DiffimlError(f"the model gave a non-finite score (image score {image_score}, detection score "
                               f"{detection}); its weights or arithmetic are broken, so it gives no verdict")
        verdict = self.verdict(detection)
        gated = self.gate and verdict == "authentic"
        mask = np.zeros(probability.shape, bool) if gated else probability >= self.threshold
        return LocalizationResult(probability.astype(np.float32, copy=False), uncertainty.astype(np.float32, copy=False),
                                  mask, image_score, detection, verdict, gated, tiles)

    def verdict(self, detection_score: float | None) -> str | None:
        """"manipulated" or "authentic" at the calibrated threshold; None without a score or a calibration."""
        calibration = self.config.calibration
        if detection_score is None or calibration is None:
            return None
        return VERDICTS[0] if detection_score >= calibration.threshold else VERDICTS[1]

    # ----- description --------------------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        """What produced these results, as `results.json` and `metrics.json` record it."""
        config, sampling = self.config, self.sampling
        calibration = config.calibration
        return {
            "diffiml_version": __version__,
            "checkpoint": self.source,
            "model_card": self.model_card,
            "device": str(self.predictor.device),
            "precision": self.predictor.precision,
            "cpu_threads": torch.get_num_threads(),
            "sampling": dataclasses.asdict(sampling),
            "threshold": self.threshold,
            "gate": self.gate,
            "detector": config.detector is not None,
            "calibration": None if calibration is None else {
                "threshold": calibration.threshold, "target_far": calibration.target_far, "far": calibration.far,
                "tpr": calibration.tpr, "data": calibration.data, "precision": calibration.precision,
                "rates": [list(rate) for rate in calibration.rates]},
            "image_size": config.image_size,
            "resolution": config.resolution,
            "tile": self.tile if config.resolution == "native" else 0,
            "tile_overlap": self.tile_overlap,
        }


def load_localizer(source: str | Path | None = None, *, device: str = "auto", precision: str = DEFAULT_PRECISION,
                   allow_pickle: bool = False, resolution: str | None = None, compile: bool = False,
                   sampling: SamplingOptions = SamplingOptions(), threshold: float = 0.5, gate: bool | None = None,
                   tile: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                   batch_size: int = 1) -> LocalizationPipeline:
    """Load a checkpoint (default: the one shipped in `weights/`; or a directory, a .safetensors file, or a Hub
    id org/name[@revision]) onto a device, ready to `predict`. `resolution` overrides the checkpoint's; sampling,
    threshold, gate, tile, tile_overlap and batch_size are LocalizationPipeline's. Its BatchNorms are folded into
    their convolutions (`models.batchnorm_folding`): to train, use `models.build.load_model`."""
    from diffiml_cli.checkpoint import default_checkpoint, model_card_summary, resolve_checkpoint
    from diffiml_cli.models.batchnorm_folding import fold_batchnorm
    from diffiml_cli.models.build import load_model

    source = source or default_checkpoint()
    model, config = load_model(source, allow_pickle=allow_pickle)
    fold_batchnorm(model)  # inference only: the same maps up to rounding, faster on the CPU
    if resolution is not None:
        config = dataclasses.replace(config, resolution=resolution)  # an unknown name is a DiffimlError
    torch_device = resolve_device(device)
    predictor = Predictor(model, config.diffusion, device=torch_device, precision=precision, compile=compile)
    card = model_card_summary(resolve_checkpoint(source))
    return LocalizationPipeline(predictor, config, source=str(source), model_card=card, sampling=sampling,
                                threshold=threshold, gate=gate, tile=tile, tile_overlap=tile_overlap,
                                batch_size=batch_size)
