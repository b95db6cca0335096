"""Frozen configuration dataclasses for every part of a DiffIML localizer.

A resolved `ModelConfig` is saved with every checkpoint (in `config.json` and in the safetensors
metadata), so a checkpoint always says how to rebuild the network that produced it. Hyperparameters are
*chosen* only in `presets.py`; the defaults here are the paper's reference values.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from diffiml_cli.diffusion.samplers import SamplerConfig
from diffiml_cli.config_values import RANGES, check_sampling, check_value
from diffiml_cli.errors import DiffimlError


MODEL_KINDS = ("diffusion", "discriminative")
DECODER_UPSAMPLINGS = ("transposed", "resize")
DECODER_LAYOUTS = ("diffiml", "official")
RESOLUTIONS = ("resize", "native")


@dataclass(frozen=True)
class MaskVAEConfig:
    """LightVAE: a fully convolutional mask autoencoder at 1/8 resolution (paper Sec. 3.2)."""

    hidden_channels: tuple[int, ...] = (32, 64, 128)  # three stride-2 stages: 1/2, 1/4, 1/8
    latent_channels: int = 4  # same as the SD VAE it is distilled from
    # Multiplies raw encoder latents so their std is ~1, which the diffusion noise level assumes.
    # 0.18215 is Stable Diffusion's; a VAE trained without a teacher calibrates its own (1/std).
    scale_factor: float = 0.18215
    # How the decoder upsamples. "transposed": stride-2 ConvTranspose2d with kernel 3, as the reference; its
    # uneven overlaps print an 8-pixel checkerboard on decoded maps. "resize": bilinear upsampling, then a
    # 3x3 convolution (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts"): no uneven overlap.
    decoder_upsampling: str = "transposed"
    # "diffiml": projection, ReLU, one upsampling stage per encoder stage, the last one straight to 1 channel.
    # "official": the authors' LightVAE (scu-zjz/DiffIML): projection, BatchNorm, ReLU, three transposed stages
    # that keep the last width, then a 3x3 convolution to 1 channel; for `diffiml convert`ed checkpoints.
    decoder_layout: str = "diffiml"
    # Widths of the decoder's three upsampling stages' inputs; None mirrors hidden_channels (128, 64, 32).
    # A resize decoder convolves at the higher resolution, so it is given narrower stages to cost the same.
    decoder_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.decoder_upsampling not in DECODER_UPSAMPLINGS:
            raise DiffimlError(f"unknown decoder_upsampling {self.decoder_upsampling!r}; "
                               f"choose one of {', '.join(DECODER_UPSAMPLINGS)}")
        if self.decoder_layout not in DECODER_LAYOUTS:
            raise DiffimlError(f"unknown decoder_layout {self.decoder_layout!r}; choose one of {', '.join(DECODER_LAYOUTS)}")
        if self.decoder_channels is not None and len(self.decoder_channels) != len(self.hidden_channels):
            raise DiffimlError(f"decoder_channels needs {len(self.hidden_channels)} widths, got {self.decoder_channels}")


@dataclass(frozen=True)
class ConditionEncoderConfig:
    """A timm `features_only` backbone plus a SegFormer-style fuse head (paper Sec. 3.3)."""

    backbone: str = "pvt_v2_b3"
    # Extra kwargs for `timm.create_model`, as sorted (name, value) pairs so the config stays hashable.
    # MiT-b3 (SegFormer) is timm's pvt_v2_b3 with mlp_ratios=(4, 4, 4, 4); timm's own uses (8, 8, 4, 4).
    backbone_kwargs: tuple[tuple[str, Any], ...] = (("mlp_ratios", (4, 4, 4, 4)),)
    # Backbone stages to fuse; None takes every stage whose stride is at least 4.
    out_indices: tuple[int, ...] | None = None
    embed_channels: int = 128  # each stage is projected to this width before fusing
    out_channels: int = 128  # channels of the condition fed to the denoiser
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet; 0.5 for EfficientNet-Lite
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Epsilon of every backbone LayerNorm; None keeps timm's (1e-6 in pvt_v2 blocks). MiT weights from
    # transformers (`nvidia/mit-b3`) are computed there with 1e-5 everywhere.
    layer_norm_eps: float | None = None
    # Add the copy-move cue of `models/copy_move_cue.py` (SIFT matches of the image with itself) to the
    # condition. Checkpoints older than this field have none.
    copy_move_cue: bool = False
    # Add a term computed from the model's Noiseprint map (`models/camera_trace.py` TraceBranch) to the condition;
    # needs ModelConfig.noiseprint.
    trace_branch: bool = False


@dataclass(frozen=True)
class DenoiserConfig:
    """A diffusers UNet2DModel that predicts the clean latent x0 from (x_t, t, condition)."""

    latent_channels: int = 8  # 4 mask + 4 edge latent channels; 4 = mask only (no edge supervision)
    condition_channels: int = 128
    block_out_channels: tuple[int, ...] = (128,)
    down_block_types: tuple[str, ...] = ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",)
    layers_per_block: int = 2
    mid_block_attention: bool = True  # the reference has one self-attention in the mid block
    attention_head_dim: int = 8
    norm_num_groups: int = 32


@dataclass(frozen=True)
class DiffusionConfig:
    """The DDPM training schedule and the checkpoint's sampler (diffusers' defaults, as the reference).

    `sampler` on the grid of `timestep_spacing` (`diffusion/samplers.py`) is what inference runs unless a run asks
    for another (`SamplingOptions.sampler`); checkpoints older than the `sampler` field are DDIM ones.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    clip_sample: bool = True
    # SD-scaled latents live in about [-1, 1]; a VAE with another latent scale needs another range.
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True  # DDIM's last step returns x0 itself
    timestep_spacing: str = "leading"  # 8 steps -> 875, 750, ..., 125, 0; 2 steps -> 500, 0
    sampler: str = "ddim"  # an algorithm of diffusion/samplers.py (ddim, dpmsolver++)

    def __post_init__(self) -> None:
        SamplerConfig(self.sampler, self.timestep_spacing)  # validates both

    @property
    def sampler_name(self) -> str:
        """The checkpoint's sampler, "ALGORITHM-SPACING" (e.g. "ddim-leading")."""
        return SamplerConfig(self.sampler, self.timestep_spacing).name


@dataclass(frozen=True)
class NoiseprintConfig:
    """A DnCNN camera-trace extractor. Noiseprint++ is the default; LightNP is `student_config()`."""

    name: str = "noiseprint++"  # "noiseprint++" for the GRIP-UNINA teacher, "lightnp" for a distilled student
    layers: int = 17  # 3x3 convolutions in all, the first and the last included
    width: int = 64  # channels of the hidden convolutions
    unshuffle: int = 1  # the body runs at 1/unshuffle resolution on pixel-unshuffled input (1: none)
    batchnorm: bool = True  # BatchNorm after every hidden convolution (which then has no bias)

    def __post_init__(self) -> None:
        if self.layers < 2 or self.width < 1 or self.unshuffle < 1:
            raise DiffimlError(f"noiseprint config: need layers >= 2, width >= 1, unshuffle >= 1; got {self}")

    @property
    def receptive_radius(self) -> int:
        """Pixels of context on each side that any output pixel can see (17 for Noiseprint++)."""
        return self.layers * self.unshuffle + self.unshuffle - 1


@dataclass(frozen=True)
class DetectorConfig:
    """The image-level detector (`models/detector.py`) over the condition and the localizer's maps."""

    hidden_channels: int = 64
    # The evidence map is pooled as the mean of its highest cells: a small edit lights up few cells.
    top_fractions: tuple[float, ...] = (0.01, 0.1)
    # Also read the image's JPEG block-grid channels (`models/block_grid.py`); off in detectors older than them.
    grid_features: bool = False
    # Also read the camera-trace channels of the model's Noiseprint map (`models/camera_trace.py`); needs a model
    # with `noiseprint`.
    trace_features: bool = False


@dataclass(frozen=True)
class CalibrationConfig:
    """The decision threshold on the detection score, chosen by `diffiml calibrate` for a target rate of false
    alarms on authentic images of a calibration set, and what it measured there."""

    threshold: float  # an image is called manipulated when its detection score >= threshold
    target_far: float  # the authentic false-alarm rate the threshold was chosen for
    # The false-alarm rate it gave on the calibration set's authentic images: the highest over the precisions and,
    # when several sets were given, over each set's own authentic images.
    far: float
    # The share of the set's tampered images it called manipulated (the lowest over `rates`); None without any.
    tpr: float | None
    n_authentic: int
    n_tampered: int
    data: str = ""  # what the calibration set was
    sampling: tuple[tuple[str, Any], ...] = ()  # the sampling settings it was calibrated at, as (name, value)
    # The inference precisions the set was scored in, comma-separated ("bf16,fp32"); "" in configs older than it.
    # Reduced precision moves a detection score by up to about 1e-3, enough to carry an image across the threshold,
    # so the threshold is the highest of each precision's own and `target_far` holds in each.
    precision: str = ""
    rates: tuple[tuple[str, float, float | None], ...] = ()  # (precision, far, tpr) at the threshold, one per precision
    # Whether `localize` empties the mask of an image called authentic unless told otherwise (--gate/--no-gate).
    gate: bool = False

    def sampled_with(self, diffusion: DiffusionConfig) -> dict[str, Any]:
        """The sampling settings the threshold was calibrated at, by name ({} when not recorded). A calibration older
        than the sampler setting sampled with the checkpoint's own sampler (`diffusion`'s), which it names then."""
        sampling = dict(self.sampling)
        if sampling:
            sampling.setdefault("sampler", diffusion.sampler_name)
        return sampling


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a localizer: its parts and the input size it was trained at.

    `kind` "diffusion" is DiffIML (encoder + denoiser + VAE). "discriminative" is the same-backbone
    baseline of the paper's Table 5: the encoder plus a segmentation head (`models/segmentation_head.py`)
    trained with BCE + Dice; its `vae`, `denoiser` and `diffusion` fields are not used.
    """

    image_size: int = 512  # the training size (a multiple of `input_multiple`), and with "resize" the input size
    vae: MaskVAEConfig = field(default_factory=MaskVAEConfig)
    encoder: ConditionEncoderConfig = field(default_factory=ConditionEncoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    kind: str = "diffusion"  # or "discriminative"; checkpoints older than this field are diffusion models
    # "resize": every image is squeezed to image_size x image_size, in training and at inference.
    # "native": training cuts image_size windows from photos at their own resolution, and inference
    # sees each image at its own resolution (reflection-padded to `input_multiple`; shrunk, keeping
    # the aspect ratio, only when its long side exceeds native_max_side), so resampling does not
    # erase the low-level traces of an edit. Checkpoints older than this field are "resize" models.
    resolution: str = "resize"
    native_max_side: int = 1024
    detector: DetectorConfig | None = None  # the image-level detector; checkpoints older than it have none
    # A frozen camera-trace front end (Noiseprint++ or a LightNP student) whose weights travel in the checkpoint;
    # what reads its map: `detector.trace_features`. None in checkpoints older than it.
    noiseprint: NoiseprintConfig | None = None
    calibration: CalibrationConfig | None = None  # its decision threshold, once calibrated

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise DiffimlError(f"unknown model kind {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        if self.denoiser.latent_channels not in (self.vae.latent_channels, 2 * self.vae.latent_channels):
            raise DiffimlError(
                f"the denoiser's latent_channels ({self.denoiser.latent_channels}) must be the VAE's "
                f"{self.vae.latent_channels} (mask only) or {2 * self.vae.latent_channels} (mask and edge)"
            )
        if self.resolution not in RESOLUTIONS:
            raise DiffimlError(f"unknown resolution {self.resolution!r}; choose one of {', '.join(RESOLUTIONS)}")
        multiple = self.input_multiple
        if self.image_size % multiple:
            raise DiffimlError(f"image_size must be a multiple of {multiple} for this model, got {self.image_size}")
        if self.native_max_side < multiple:
            raise DiffimlError(f"native_max_side must be at least {multiple}, got {self.native_max_side}")
        if self.calibration is not None and self.detector is None:
            raise DiffimlError("a calibration needs a detector: this config has a calibration but no detector")
        if self.detector is not None and self.detector.trace_features and self.noiseprint is None:
            raise DiffimlError("a detector with trace_features needs a noiseprint front end: this config has none")
        if self.encoder.trace_branch and self.noiseprint is None:
            raise DiffimlError("an encoder with trace_branch needs a noiseprint front end: this config has none")

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this: the backbone needs 32, and each UNet level below the
        first halves the 1/8 latent."""
        return max(32, 8 * 2 ** (len(self.denoiser.block_out_channels) - 1))


def _as_tuple(value: Any) -> Any:
    """Recursively turn JSON lists back into tuples, so configs stay hashable and compare equal."""
    if isinstance(value, list):
        return tuple(_as_tuple(item) for item in value)
    return value


def config_from_dict(config_type: type, data: dict[str, Any], path: str = "") -> Any:
    """Rebuild a (nested) config dataclass from `dataclasses.asdict` output (JSON read from a checkpoint).

    Unknown keys are an error, and so is every value of the wrong type or out of its range (`check_value`): a
    checkpoint is a file that anyone can edit, and a threshold stored as "0.87" or NaN must not load. `path`
    is the dotted name of `data` in the whole config ("calibration."), for messages.
    """
    if not isinstance(data, dict):
        raise DiffimlError(f"{config_type.__name__}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DiffimlError(f"{config_type.__name__}: unknown config keys {unknown}")
    hints = typing.get_type_hints(config_type)
    values = {}
    for name, value in data.items():
        nested_type = _NESTED_TYPES.get((config_type, name))
        if nested_type is not None and value is not None:
            values[name] = config_from_dict(nested_type, value, f"{path}{name}.")
            continue
        values[name] = _as_tuple(value)  # a part given as null must be an optional one (`DetectorConfig | None`)
        check_value(f"{path}{name}", values[name], hints[name], RANGES.get((config_type.__name__, name)))
    if config_type is CalibrationConfig and "sampling" in values:
        check_sampling(values["sampling"], f"{path}sampling")
    try:
        return config_type(**values)
    except TypeError as error:
        raise DiffimlError(f"{config_type.__name__}: {error}") from error


_NESTED_TYPES = {
    (ModelConfig, "vae"): MaskVAEConfig,
    (ModelConfig, "encoder"): ConditionEncoderConfig,
    (ModelConfig, "denoiser"): DenoiserConfig,
    (ModelConfig, "diffusion"): DiffusionConfig,
    (ModelConfig, "detector"): DetectorConfig,
    (ModelConfig, "calibration"): CalibrationConfig,
    (ModelConfig, "noiseprint"): NoiseprintConfig,
}

