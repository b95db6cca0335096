"""Algorithm 2: manipulation maps for a batch of images, with an ensemble and optional flip TTA.

`Predictor` runs a loaded localizer on model-size images; its map model (`map_models.py`) samples the diffusion
localizer or runs the discriminative one. This module also owns the geometry of a model input: `pad_to_multiple`
pads an image to the sides the model needs, and `crop_prediction` cuts the padding off its maps and scores.

Speed rules this module keeps: the condition encoder runs once per image view; all ensemble members
(and both TTA views) go through the denoiser as one batch; sampling runs under `inference_mode` with
no host-device sync inside the loop; CUDA runs in fp16 autocast.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from diffiml_cli.config import DiffusionConfig
from diffiml_cli.defaults import DEFAULT_PRECISION, PRECISIONS, SamplingOptions  # noqa: F401 - re-exported
from diffiml_cli.errors import DiffimlError
from diffiml_cli.map_models import DiffusionMaps, SegmentationMaps, member_spread  # noqa: F401 - re-exported
from diffiml_cli.models.detector import cell_maps
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer


@dataclass(frozen=True)
class ModelInput:
    """One image (or tile) as the model takes it.

    tensor: (3, h, w) float32 in [0, 1]. "resize": h = w = the model's image_size. "native": the image at its
            own resolution, reflection-padded at the bottom and right to multiples of `input_multiple`
            (`pad_to_multiple`).
    valid:  (height, width) of the top-left region of `tensor` that holds the image; the rest is padding, which
            `crop_prediction` cuts off again.
    """

    tensor: torch.Tensor
    valid: tuple[int, int]


@dataclass(frozen=True)
class Prediction:
    """Model-resolution outputs for a batch of B images of H x W input pixels, on the CPU.

    probability: (B, 1, H, W) float32 in [0, 1], decoded from the ensemble-mean latent
                 (a discriminative model: the sigmoid of its logits)
    uncertainty:  (B, 1, H, W) float32 in [0, 0.5], per-pixel std of the N members' probabilities
                 (all 0 for a discriminative model, which makes one deterministic prediction)
    image_score:  (B,) float32 in [0, 1], the maximum of `probability` (the image-level score)
    evidence:     (B, 1, H/8, W/8) float32 detector evidence logits per latent cell, or None without a detector
    cells:        (B, K, H/8, W/8) float32 cell statistics (`models.detector.cell_maps`, K = 4..10), or None
    detection_score: (B,) float32 in [0, 1], the detector's score of the whole image, or None without one
    """

    probability: torch.Tensor
    uncertainty: torch.Tensor
    image_score: torch.Tensor
    evidence: torch.Tensor | None = None
    cells: torch.Tensor | None = None
    detection_score: torch.Tensor | None = None


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffimlError(f"device {name!r} was asked for, but PyTorch sees no CUDA device; use device 'cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise DiffimlError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: x86 AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo), or
    Arm's BF16 extension (Linux `bf16` feature, macOS `hw.optional.arm.FEAT_BF16`). Anything else, and any
    platform where it cannot be read, is False: bf16 emulated in fp32 is slower than fp32."""
    system = platform.system()
    if system == "Linux":
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
        flags = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags.update(value.split())
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if system == "Darwin":
        try:
            result = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                    timeout=5)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.stdout.strip() == "1"
    return False


def bf16_is_emulated(precision: str, device: torch.device) -> bool:
    """Whether `precision` (a resolved one) is bf16 on a CPU without native bf16 (`cpu_has_native_bf16`): it runs,
    but slower than fp32, so `auto` never picks it there."""
    return precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16()


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> fp16 on CUDA, bf16 on a CPU with native bf16 (`cpu_has_native_bf16`), else fp32; an
    explicit choice is checked against the device."""
    if name not in PRECISIONS:
        raise DiffimlError(f"unknown precision {name!r}; use {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise DiffimlError("precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    return name


def named_sampler(options: SamplingOptions, diffusion: DiffusionConfig) -> SamplingOptions:
    """`options` with its sampler named: None becomes the checkpoint's (`DiffusionConfig.sampler_name`), as results
    and calibrations record it."""
    if options.sampler is not None:
        return options
    return dataclasses.replace(options, sampler=diffusion.sampler_name)


class Predictor:
    """Runs a loaded localizer on batches of model-size images: the one interface over its two kinds of map model
    (`map_models.DiffusionMaps` for DiffIML, `map_models.SegmentationMaps` for the discriminative baseline).

    precision: "fp32", "bf16" or "fp16" (CUDA only) autocast of the encoder, the denoiser and the decode of the N
    members. The sampler's update, the ensemble average, its decode (the probability map), the spread of the members
    and the detector always run in fp32: the iterate x_t accumulates every step's update, and the decoded mean is
    compared with the threshold. The members' decodes only feed the uncertainty map and the detector's cell
    statistics, which reduced precision moves by at most a few thousandths (README.md, *Speed*).
    """

    def __init__(
        self,
        localizer: Localizer | DiscriminativeLocalizer,
        diffusion: DiffusionConfig,
        *,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        self.precision = resolve_precision(precision, device)
        self.device = device
        self.diffusion = diffusion
        self.localizer = localizer.eval().to(device)
        # The conv-heavy encoder and UNet run faster in NHWC on both CPU and GPU.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.localizer.to(memory_format=self.memory_format)
        if isinstance(localizer, DiscriminativeLocalizer):
            self.maps: DiffusionMaps | SegmentationMaps = SegmentationMaps(self.localizer, autocast=self._autocast,
                                                                           compile=compile)
        else:
            self.maps = DiffusionMaps(self.localizer, diffusion, autocast=self._autocast,
                                      memory_format=self.memory_format, compile=compile)
        self.input_multiple = self.maps.input_multiple

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def resolve(self, options: SamplingOptions) -> SamplingOptions:
        """`options` with its sampler named (`named_sampler`)."""
        return named_sampler(options, self.diffusion)

    # ----- prediction ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor, options: SamplingOptions) -> Prediction:
        """images: (B, 3, H, W) float in [0, 1], H and W multiples of the model's `input_multiple`
        (the image size for a "resize" model) -> Prediction with (B, 1, H, W) maps. The detection score, when
        the model has a detector, is of the whole (B, 3, H, W) input; `predict_inputs` scores the image alone."""
        prediction = self.predict_maps(images, options)
        if prediction.evidence is None:
            return prediction
        return dataclasses.replace(prediction, detection_score=self.detect(prediction.evidence, prediction.cells))

    def predict_inputs(self, inputs: Sequence[ModelInput], options: SamplingOptions) -> list[Prediction]:
        """One Prediction per input (B = 1), its maps cropped to the input's valid region and its image
        and detection scores taken there (the detector scores each image once, on the crop). Inputs of the same
        shape run through the model as one batch; each image's noise depends only on the seed, so grouping does
        not change any result."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(inputs):
            groups.setdefault(tuple(item.tensor.shape), []).append(index)
        predictions: list[Prediction | None] = [None] * len(inputs)
        for indices in groups.values():
            batch = self.predict_maps(torch.stack([inputs[i].tensor for i in indices]), options)
            for row, index in enumerate(indices):
                predictions[index] = crop_prediction(batch, row, inputs[index].valid, self)
        return predictions  # type: ignore[return-value]

    @torch.inference_mode()
    def predict_maps(self, images: torch.Tensor, options: SamplingOptions) -> Prediction:
        """`predict` without the detection score: images (B, 3, H, W) as there -> the maps, and the detector's
        evidence and cell statistics of the whole input when the model has a detector (`detect` scores them)."""
        _, _, H, W = images.shape
        if H % self.input_multiple or W % self.input_multiple:
            raise DiffimlError(f"image sides must be multiples of {self.input_multiple} for this model, got {H} x {W}; "
                               "pad them (LocalizationPipeline does)")
        images = images.to(self.device, non_blocking=True)
        condition, probability, uncertainty, trace = self._encode_and_map(images, options)
        evidence = cells = None
        if self.localizer.detector is not None:
            cells = cell_maps(probability, uncertainty, self._grid_images(images),
                              trace=trace if self._detector_reads_traces else None)
            evidence = self.localizer.detector(condition.float(), cells).float().cpu()
            cells = cells.cpu()
        probability = probability.float().cpu()
        return Prediction(probability=probability, uncertainty=uncertainty.float().cpu(),
                          image_score=probability.amax(dim=(1, 2, 3)), evidence=evidence, cells=cells)

    @torch.inference_mode()
    def condition_and_cells(self, images: torch.Tensor, options: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
        """What the detector reads, without it: images (B, 3, H, W) in [0, 1] -> (condition (B, C, H/8, W/8),
        cells (B, K, H/8, W/8)), as `predict` computes them without TTA, as ordinary tensors on the CPU."""
        images = images.to(self.device).contiguous(memory_format=self.memory_format)
        options = dataclasses.replace(options, tta=False)
        condition, probability, uncertainty, trace = self._encode_and_map(images, options)
        cells = cell_maps(probability, uncertainty, self._grid_images(images),
                          trace=trace if self._detector_reads_traces else None)
        with torch.inference_mode(False):
            return condition.float().cpu().clone(), cells.cpu().clone()

    def _encode_and_map(self, images: torch.Tensor, options: SamplingOptions
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """images (B, 3, H, W) on the device -> (condition (B, C, H/8, W/8), probability, uncertainty (B, 1, H, W),
        the Noiseprint maps (B, 1, H, W) or None when nothing reads them). The encoder runs once per view; under
        TTA the mirrored view is flipped back and merged by max (the maps) and by mean (the condition), as the
        reference does. The front end runs once per image; the mirrored view gets its map mirrored."""
        B = images.shape[0]
        trace = self._trace_maps(images)
        views = torch.cat([images, images.flip(-1)]) if options.tta else images  # (V*B, 3, H, W)
        views = views.contiguous(memory_format=self.memory_format)
        view_traces = torch.cat([trace, trace.flip(-1)]) if options.tta and trace is not None else trace
        with self._autocast():
            condition = self.localizer.condition(views, view_traces)
        probability, uncertainty = self.maps(condition, views.shape[-2:], options)
        if options.tta:
            probability = torch.maximum(probability[:B], probability[B:].flip(-1))
            uncertainty = torch.maximum(uncertainty[:B], uncertainty[B:].flip(-1))
            condition = 0.5 * (condition[:B] + condition[B:].flip(-1))
        return condition, probability, uncertainty, trace

    def _grid_images(self, images: torch.Tensor) -> torch.Tensor | None:
        """The images (B, 3, H, W) when the detector reads their block grid (`models/block_grid.py`), else None."""
        detector = self.localizer.detector
        return images if detector is not None and detector.config.grid_features else None

    def _trace_maps(self, images: torch.Tensor) -> torch.Tensor | None:
        """The Noiseprint maps (B, 1, H, W) of the images when the detector or the encoder reads them
        (`models/camera_trace.py`), else None."""
        return self.localizer.trace(images) if self._detector_reads_traces or self._encoder_reads_traces else None

    @property
    def _detector_reads_traces(self) -> bool:
        detector = self.localizer.detector
        return detector is not None and detector.config.trace_features

    @property
    def _encoder_reads_traces(self) -> bool:
        return self.localizer.encoder.trace_branch is not None

    def detect(self, evidence: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The detection score (B,) in [0, 1] of the detector's evidence (B, 1, h, w) and cell statistics
        (B, K, h, w): of a whole input, of maps cropped to the image, or stitched from its tiles."""
        with torch.inference_mode():
            logits = self.localizer.detector.score(evidence.to(self.device), cells.to(self.device))
            return torch.sigmoid(logits).cpu()

    # ----- sampling, for callers that need the latents ------------------------------------------------------
    def sample_latents(self, condition: torch.Tensor, options: SamplingOptions,
                       on_x0: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """condition (V, C, h, w) -> the N members' x0 latents (V, N, latent channels, h, w) float32, as `predict`
        samples them (`map_models.DiffusionMaps.sample_latents`); a diffusion model only."""
        return self._diffusion().sample_latents(condition, options, on_x0)

    def scheduler(self, sampler: str | None) -> object:
        """The diffusers scheduler `predict` steps for `sampler` (None: the checkpoint's); a diffusion model only."""
        return self._diffusion().scheduler(sampler)

    def _diffusion(self) -> DiffusionMaps:
        if not isinstance(self.maps, DiffusionMaps):
            raise DiffimlError("a discriminative model does not sample: it has no latents or sampler")
        return self.maps


def pad_to_multiple(image: np.ndarray, multiple: int) -> ModelInput:
    """(H, W, 3) uint8 -> ModelInput, reflection-padded at the bottom and right to multiples of `multiple`;
    `crop_prediction` cuts the padding off the maps again."""
    height, width = image.shape[:2]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    # Reflection needs the padding to be smaller than the side; tiny images fall back to edge replication.
    border = cv2.BORDER_REFLECT_101 if pad_bottom < height and pad_right < width else cv2.BORDER_REPLICATE
    padded = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, border)
    return ModelInput(image_tensor(padded), (height, width))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1] (a new tensor; read-only arrays are fine)."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)


def crop_prediction(batch: Prediction, row: int, valid: tuple[int, int], predictor: Predictor) -> Prediction:
    """Row `row` of a batch Prediction (B = 1), its maps cropped to the top-left `valid` (height, width)
    pixels, and its image and detection scores taken over that region alone (the rest is padding); the detection
    score is `predictor.detect`'s of the cropped evidence and cells."""
    height, width = valid
    probability = batch.probability[row:row + 1, :, :height, :width]
    evidence = cells = detection = None
    if batch.evidence is not None:
        cell_rows, cell_cols = -(-height // 8), -(-width // 8)  # every latent cell that holds image pixels
        evidence = batch.evidence[row:row + 1, :, :cell_rows, :cell_cols]
        cells = batch.cells[row:row + 1, :, :cell_rows, :cell_cols]
        detection = predictor.detect(evidence, cells)
    return Prediction(
        probability=probability,
        uncertainty=batch.uncertainty[row:row + 1, :, :height, :width],
        image_score=probability.amax(dim=(1, 2, 3)),
        evidence=evidence,
        cells=cells,
        detection_score=detection,
    )
