"""What a training run is told: the model (`ModelRecipe`), the data (`DataRecipe`) and the optimisation
(`TrainOptions`). Plain dataclasses without torch, so that `diffiml train --help` shows their defaults at once;
`training_setup` builds a run from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffiml_cli.defaults import SamplingOptions
from diffiml_cli.errors import DiffimlError

SELECTION_METRICS = ("pixel_f1", "pixel_f1_all", "image_auc")
TRAIN_PARTS = ("all", "detector", "sampler")


@dataclass(frozen=True)
class ModelRecipe:
    """Which network to train. `init`: continue a localizer checkpoint (its config and VAE come with it);
    otherwise `preset` with `kind`, `edge`, `image_size`, `resolution` and the mask VAE `vae` (default: the
    shipped LightVAE). `copy_move_cue` None keeps the preset's or checkpoint's; `detector` adds one
    (`detector_grid`: one that reads the block grid; `detector_trace`: one that reads the camera-trace channels of
    the frozen front end `noiseprint`, a `convert --noiseprint` folder or a LightNP student, which joins the model)."""

    preset: str = "tiny"
    kind: str | None = None  # "diffusion" (default) or "discriminative"
    edge: bool = True
    image_size: int | None = None
    resolution: str | None = None
    vae: str | None = None
    init: str | None = None
    copy_move_cue: bool | None = None
    detector: bool = False
    detector_grid: bool = False  # the detector also reads the JPEG block grid (`models/block_grid.py`)
    detector_trace: bool = False  # ... and the camera-trace channels (`models/camera_trace.py`); needs `noiseprint`
    noiseprint: str | None = None  # the front end to add (None: keep the init's, if any)
    trace_branch: bool | None = None  # give the encoder a branch over the front end's maps (None: keep the init's)
    backbone_weights: str | None = None


@dataclass(frozen=True)
class DataRecipe:
    """What to train and validate on: dataset specs (`PATH[:WEIGHT]`), photo folders for synthetic edits and
    their options (photo stems in `exclude_photos` and `hard_negatives`), and `val` (a SPEC or synthetic:DIR[:N])."""

    data: tuple[str, ...] = ()
    synthetic_from: tuple[str, ...] = ()
    synthetic_kinds: tuple[str, ...] | None = None
    other_camera_donors: bool = False
    match_grain: bool = False
    val: str | None = None
    authentic_share: float = 0.15
    exclude_photos: tuple[str, ...] = ()
    hard_negatives: tuple[str, ...] = ()
    hard_negative_share: float = 0.5
    synthetic_length: int = 4096  # synthetic items per epoch (a fresh edit each epoch; the detector keeps its items)
    sources: dict = field(default_factory=dict)  # how the caller named them (files of stems...), for the record


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation and bookkeeping settings; the paper's values are the defaults."""

    out_dir: Path
    steps: int
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    # The pretrained backbone's learning rate as a fraction of learning_rate; 0 freezes it (weights and
    # BatchNorm statistics), keeping its ImageNet features while the head and denoiser learn.
    backbone_lr_scale: float = 1.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables the EMA; 0.999 is typical for long runs
    prior_rate: float = 0.1  # lambda of the error prior
    mask_loss_weight: float = 0.2  # alpha; the edge latent gets 1 - alpha
    amp: str = "none"  # "bf16" or "fp16" autocast on CUDA
    seed: int = 0
    save_every: int = 200
    val_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    val_sampling: SamplingOptions = SamplingOptions(steps=8, ensemble=1)
    # At least this many untouched photos in every batch (synthetic data only; 0 leaves the make-up to chance).
    authentic_per_batch: int = 0
    # The validation number that picks `best/`: pixel_f1 (tampered images only) or pixel_f1_all (authentic
    # images counted: 1 when nothing is marked), which also rewards fewer false alarms.
    select_by: str = "pixel_f1"
    # "all": Algorithm 1 (or the baseline's loss). "detector": only the image-level detector learns, on the
    # frozen localizer's outputs, which are sampled once per item with `detector_sampling` and kept. "sampler": only
    # the denoiser learns, through the few-step sampler of `tune_sampling` end to end (`objectives.sampler_loss`),
    # on the frozen encoder's condition of each item, computed once and kept.
    train_part: str = "all"
    detector_sampling: SamplingOptions = SamplingOptions()
    detector_precision: str = "fp32"  # of the frozen localizer's sampling, as `localize --precision` would run it
    tune_sampling: SamplingOptions = SamplingOptions(steps=2, ensemble=2, sampler="ddim-trailing")
    decoded_loss_weight: float = 1.0  # of the decoded mask's loss beside the latent one, when tuning the sampler

    def __post_init__(self) -> None:
        if self.train_part not in TRAIN_PARTS:
            raise DiffimlError(f"train_part must be one of {', '.join(TRAIN_PARTS)}, got {self.train_part!r}")
        if self.select_by not in SELECTION_METRICS:
            raise DiffimlError(f"select_by must be one of {', '.join(SELECTION_METRICS)}, got {self.select_by!r}")
    # What the run trains and validates on (sources, edit kinds, init), as given; train_config.json records it.
    data_sources: dict = field(default_factory=dict)
