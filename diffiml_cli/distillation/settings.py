"""What decides a LightVAE distillation (`DistillSettings`) and a decoder refit (`RefitSettings`): plain
dataclasses without torch, so that `diffiml distill-vae --help` shows their defaults at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from diffiml_cli.config import MaskVAEConfig
from diffiml_cli.defaults import SamplingOptions
from diffiml_cli.errors import DiffimlError

DEFAULT_TEACHER = "stabilityai/sd-vae-ft-mse"
RECON_LOSSES = ("one-sided-l1", "l1")


@dataclass(frozen=True)
class DistillSettings:
    """Everything that determines a distillation run; saved in the training state and in report.json."""

    teacher: str | None = DEFAULT_TEACHER  # Hub id org/name[@revision] or local folder; None = no teacher
    teacher_subfolder: str | None = None  # e.g. "vae" inside a full Stable Diffusion pipeline repository
    data: tuple[str, ...] = ()  # dataset specs (IMDL-BenCo JSON or Tp/Gt folder) whose masks are mixed in
    steps: int = 14_000  # ~30 min at 256 px with bf16 on one shared CPU core; 9,000 reached F1 0.989
    batch_size: int = 4  # per sample seen, small batches learned fastest (4 > 8 > 16)
    image_size: int = 256  # targets are drawn at this size; the network is fully convolutional
    lambda_lat: float = 0.01  # weight of the latent MSE against the teacher (paper Eq. 6)
    recon_loss: str = "one-sided-l1"  # or "l1", the paper's plain L1 (see the module docstring)
    lr: float = 2e-3  # peak AdamW learning rate, cosine-decayed to MIN_LR_RATIO of it; 2e-3 beat 1e-3 and 5e-3
    weight_decay: float = 0.0
    bf16: bool = False  # bfloat16 autocast for the student: about 2x faster on CPUs with AVX512-BF16 or AMX
    seed: int = 0
    save_every: int = 500  # steps between resumable training states
    data_share: float = 0.5  # share of training targets drawn from `data` when it is given
    edge_share: float = 0.5  # share of training targets that are edge bands rather than masks
    edge_width: int = 7  # the band width the localizer is trained with
    eval_count: int = 256  # held-out procedural masks (and their edge bands) scored and calibrated on
    # Training targets passed through the finished network to re-estimate its BatchNorm statistics:
    # the running averages lag behind the weights and come from small, mixed batches.
    batch_norm_samples: int = 512
    vae: MaskVAEConfig = dataclasses.field(default_factory=MaskVAEConfig)

    def __post_init__(self) -> None:
        factor = 2 ** len(self.vae.hidden_channels)
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.image_size >= factor and self.image_size % factor == 0,
             f"image size must be a positive multiple of {factor}, got {self.image_size}"),
            (self.lambda_lat >= 0, f"lambda_lat must be >= 0, got {self.lambda_lat}"),
            (self.recon_loss in RECON_LOSSES, f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}"),
            (0.0 <= self.data_share <= 1.0, f"data_share must be in [0, 1], got {self.data_share}"),
            (0.0 <= self.edge_share <= 1.0, f"edge_share must be in [0, 1], got {self.edge_share}"),
            (self.eval_count >= 1, f"eval_count must be >= 1, got {self.eval_count}"),
            (self.batch_norm_samples >= 0, f"batch_norm_samples must be >= 0, got {self.batch_norm_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DiffimlError(message)


@dataclass(frozen=True)
class RefitSettings:
    """What decides a decoder refit; the sampler latents come from `photos` (minus `exclude`, photo stems)."""

    photos: str = ""
    exclude: tuple[str, ...] = ()
    decoder_channels: tuple[int, ...] = (64, 32, 16)  # about the old decoder's cost at 4x the convolved pixels
    steps: int = 3000
    batch_size: int = 8
    mask_share: float = 0.5  # of each batch: procedural masks; the rest are sampler latents
    image_size: int = 256  # the synthetic windows, and the held-out masks of the report
    crop: int = 256  # training crops, in pixels (a multiple of 8; 128 gave held-out mask F1 0.936, 256 0.949)
    lr: float = 2e-3
    images: int = 192  # synthetic windows run through the sampler; each gives `latents_per_image` latents
    latents_per_image: int = 8  # the mean, every member, and early-step x0 predictions of one member
    sampling: SamplingOptions = SamplingOptions(steps=8, ensemble=5)
    target_sigma: float = 2.0
    batch_norm_samples: int = 256
    seed: int = 0
