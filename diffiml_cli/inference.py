"""Algorithm 2: sample manipulation masks for a batch of images, with an ensemble and optional flip TTA.

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

import torch

from diffiml_cli.config import DiffusionConfig
from diffiml_cli.diffusion.samplers import sampler_name
from diffiml_cli.diffusion.sampling import make_sampler, sample
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.detector import cell_maps
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.mask_vae import decoded_to_probability
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# bf16 on CPUs that compute it natively, fp16 on CUDA: chosen on held-out synthetic validation with the defaults
# below (weights/README.md, "Speed"); fp32 elsewhere.
DEFAULT_PRECISION = "auto"


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: the sampler and its steps, ensemble size N, horizontal-flip TTA, and the noise seed.

    The defaults, 2 steps and N = 6, were chosen on held-out synthetic validation as the setting with the fewest
    denoiser calls within 0.01 pixel F1 of the paper's 8 steps and N = 5 and within 0.45 s per 512² image on two
    CPU threads (weights/README.md, "3. The defaults"); the paper's remain a flag away.

    sampler: a name of `diffusion/samplers.py` ("ddim", "ddim-trailing", "dpmsolver++", ...), kept in its canonical
    "ALGORITHM-SPACING" form; None samples with the checkpoint's own (`DiffusionConfig.sampler_name`: "ddim-leading"
    for every checkpoint so far), which `Predictor.resolve` names.
    """

    steps: int = 2
    ensemble: int = 6
    tta: bool = False
    seed: int = 0
    sampler: str | None = None

    def __post_init__(self) -> None:
        if self.sampler is not None:
            object.__setattr__(self, "sampler", sampler_name(self.sampler))  # "ddim" -> "ddim-leading"
        if not 1 <= self.steps <= 1000:
            raise DiffimlError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.ensemble < 1:
            raise DiffimlError(f"ensemble must be at least 1, got {self.ensemble}")


@dataclass(frozen=True)
class ModelInput:
    """One image (or tile) as the model takes it.

    tensor: (3, h, w) float32 in [0, 1]. "resize": h = w = the model's image_size. "native": the image at its
            own resolution, reflection-padded at the bottom and right to multiples of `input_multiple`.
    valid:  (height, width) of the top-left region of `tensor` that holds the image; the rest is padding.
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
    cells:        (B, 4, H/8, W/8) float32 cell statistics of the maps (`models.detector.cell_maps`), or None
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


class Predictor:
    """Runs a loaded localizer on batches of model-size images.

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
        self._schedulers: dict[str, object] = {}  # by sampler name, built on first use
        self.localizer = localizer.eval().to(device)
        # The conv-heavy encoder and UNet run faster in NHWC on both CPU and GPU.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.localizer.to(memory_format=self.memory_format)
        self.discriminative = isinstance(localizer, DiscriminativeLocalizer)
        # The backbone needs sides that are multiples of 32; each UNet level below the first halves the latent.
        levels = 1 if self.discriminative else len(localizer.denoiser.config.block_out_channels)
        self.input_multiple = max(32, 8 * 2 ** (levels - 1))
        if self.discriminative:  # sampling options are ignored: one forward pass per view
            segment = self.localizer.segment
            self.segment = torch.compile(segment, dynamic=False) if compile else segment
            return
        # The denoiser runs steps x (1 + TTA) times per batch with fixed shapes: the part worth compiling.
        denoise = self.localizer.denoiser.denoise
        self.denoise = torch.compile(denoise, dynamic=False) if compile else denoise

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, options: SamplingOptions) -> Prediction:
        """images: (B, 3, H, W) float in [0, 1], H and W multiples of the model's `input_multiple`
        (the image size for a "resize" model) -> Prediction with (B, 1, H, W) maps. The detection score, when
        the model has a detector, is of the whole (B, 3, H, W) input; `predict_inputs` scores the image alone."""
        B, _, H, W = images.shape
        if H % self.input_multiple or W % self.input_multiple:
            raise DiffimlError(f"image sides must be multiples of {self.input_multiple} for this model, got {H} x {W}; "
                               "pad them (LocalizationPipeline does)")
        images = images.to(self.device, non_blocking=True)
        views = torch.cat([images, images.flip(-1)]) if options.tta else images  # (V*B, 3, S, S)
        views = views.contiguous(memory_format=self.memory_format)
        with self._autocast():
            condition = self.localizer.encoder(views)
            if self.discriminative:  # one forward pass; no members, so no disagreement to report
                probability = torch.sigmoid(self.segment(condition, views.shape[-2:]).float())
                uncertainty = torch.zeros_like(probability)
        if not self.discriminative:
            probability, uncertainty = self._sample(condition, options)
        if options.tta:  # flip the mirrored view back and merge by max, as the reference does
            probability = torch.maximum(probability[:B], probability[B:].flip(-1))
            uncertainty = torch.maximum(uncertainty[:B], uncertainty[B:].flip(-1))
            condition = 0.5 * (condition[:B] + condition[B:].flip(-1))
        evidence = cells = detection = None
        if self.localizer.detector is not None:
            cells = cell_maps(probability, uncertainty, self._grid_images(images))
            evidence = self.localizer.detector(condition.float(), cells).float()
            detection = torch.sigmoid(self.localizer.detector.score(evidence, cells)).cpu()
            evidence, cells = evidence.cpu(), cells.cpu()
        probability = probability.float().cpu()
        return Prediction(
            probability=probability,
            uncertainty=uncertainty.float().cpu(),
            image_score=probability.amax(dim=(1, 2, 3)),
            evidence=evidence,
            cells=cells,
            detection_score=detection,
        )

    @torch.inference_mode()
    def condition_and_cells(self, images: torch.Tensor, options: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
        """What the detector reads, without it: images (B, 3, H, W) in [0, 1] -> (condition (B, C, H/8, W/8),
        cells (B, K, H/8, W/8)), as `predict` computes them, as ordinary tensors on the CPU."""
        images = images.to(self.device).contiguous(memory_format=self.memory_format)
        with self._autocast():
            condition = self.localizer.encoder(images)
            if self.discriminative:
                probability = torch.sigmoid(self.segment(condition, images.shape[-2:]).float())
                uncertainty = torch.zeros_like(probability)
        if not self.discriminative:
            probability, uncertainty = self._sample(condition, options)
        cells = cell_maps(probability, uncertainty, self._grid_images(images))
        with torch.inference_mode(False):
            return condition.float().cpu().clone(), cells.cpu().clone()

    def _grid_images(self, images: torch.Tensor) -> torch.Tensor | None:
        """The images (B, 3, H, W) when the detector reads their block grid (`models/block_grid.py`), else None."""
        detector = self.localizer.detector
        return images if detector is not None and detector.config.grid_features else None

    def detect(self, evidence: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The detection score (B,) in [0, 1] of maps cropped to the image (or stitched from its tiles)."""
        with torch.inference_mode():
            logits = self.localizer.detector.score(evidence.to(self.device), cells.to(self.device))
            return torch.sigmoid(logits).cpu()

    def predict_inputs(self, inputs: Sequence[ModelInput], options: SamplingOptions) -> list[Prediction]:
        """One Prediction per input (B = 1), its maps cropped to the input's valid region and its image
        and detection scores taken there. Inputs of the same shape run through the model as one batch;
        each image's noise depends only on the seed, so grouping does not change any result."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(inputs):
            groups.setdefault(tuple(item.tensor.shape), []).append(index)
        predictions: list[Prediction | None] = [None] * len(inputs)
        for indices in groups.values():
            batch = self.predict(torch.stack([inputs[i].tensor for i in indices]), options)
            for row, index in enumerate(indices):
                predictions[index] = crop_prediction(batch, row, inputs[index].valid, self)
        return predictions  # type: ignore[return-value]

    def resolve(self, options: SamplingOptions) -> SamplingOptions:
        """`options` with its sampler named: None becomes the checkpoint's (`DiffusionConfig.sampler_name`)."""
        if options.sampler is not None:
            return options
        return dataclasses.replace(options, sampler=self.diffusion.sampler_name)

    def scheduler(self, sampler: str | None) -> object:
        """The diffusers scheduler of `sampler` (None: the checkpoint's) on this model's schedule, built once."""
        name = sampler or self.diffusion.sampler_name
        if name not in self._schedulers:
            self._schedulers[name] = make_sampler(self.diffusion, name)
        return self._schedulers[name]

    def sample_latents(self, condition: torch.Tensor, options: SamplingOptions,
                       on_x0: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """condition: (V, C, h, w), the encoder's output for V image views -> the N members' x0 latents
        (V, N, latent channels, h, w) float32 (scaled: the VAE's latents times its scale), from `options`' seed,
        sampler and steps; on_x0(t, x0_pred (V*N, latent channels, h, w)) sees every step's prediction.

        The condition's share of the denoiser is computed once per view; all members run as one batch. Run it under
        `torch.inference_mode()` or `torch.no_grad()`.
        """
        N, views = options.ensemble, condition.shape[0]
        with self._autocast():  # the condition's share of the denoiser, once per view rather than per call
            term = self.localizer.denoiser.condition_term(condition)
        # (V*N, W, h, w): one batch for all members. repeat_interleave returns NCHW; converting once here
        # spares the denoiser a conversion of its input at every step.
        term = term.repeat_interleave(N, dim=0).contiguous(memory_format=self.memory_format)
        x_T = self._initial_noise(views, N, condition.shape[-2:], options.seed)
        x_T = x_T.contiguous(memory_format=self.memory_format)  # as the latents the steps return
        with self._autocast():  # the denoiser in the chosen precision; its x0 and the scheduler's update in fp32
            z0 = sample(lambda x_t, t: self.denoise(x_t, t, term).float(), x_T, self.scheduler(options.sampler),
                        options.steps, on_x0)
        return z0.float().unflatten(0, (views, N))

    def _sample(self, condition: torch.Tensor, options: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
        """condition (V*B, C, h, w) -> (probability, uncertainty), each (V*B, 1, 8h, 8w): Algorithm 2."""
        views, N = condition.shape[0], options.ensemble
        z0 = self.sample_latents(condition, options)  # (V*B, N, latent channels, h, w)
        probability = decoded_to_probability(self.localizer.decode_mask(z0.mean(dim=1)))
        with self._autocast():  # the members only feed the uncertainty: see the class docstring
            members = decoded_to_probability(self.localizer.decode_mask(z0.flatten(0, 1)).float())
        return probability, member_spread(members.unflatten(0, (views, N)))

    def _initial_noise(self, num_views: int, N: int, latent_size: torch.Size, seed: int) -> torch.Tensor:
        """x_T: (num_views * N, 8, h, w). Each view draws from a generator seeded with `seed` alone, so an
        image's mask does not depend on which batch it landed in or on the batch size."""
        channels = self.localizer.denoiser.config.latent_channels
        generator = torch.Generator(device=self.device)
        draws = []
        for _ in range(num_views):
            generator.manual_seed(seed)
            draws.append(torch.randn((N, channels, *latent_size), generator=generator, device=self.device))
        return torch.cat(draws)


def member_spread(members: torch.Tensor) -> torch.Tensor:
    """members (V, N, 1, H, W) float32 probabilities -> (V, 1, H, W), their population standard deviation over N.

    Written out rather than `Tensor.std`, whose CPU reduction over a middle dimension took 27 ms for 5 members of
    512² on 2 threads, against 1.3 ms for these four element-wise passes (same values to float rounding).
    """
    deviation = members - members.mean(dim=1, keepdim=True)
    return deviation.square().mean(dim=1).sqrt()


def crop_prediction(batch: Prediction, row: int, valid: tuple[int, int], predictor: Predictor) -> Prediction:
    """Row `row` of a batch Prediction (B = 1), its maps cropped to the top-left `valid` (height, width)
    pixels, and its image and detection scores taken over that region alone (the rest is padding)."""
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
