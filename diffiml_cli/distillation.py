"""Distil the LightVAE mask autoencoder from the Stable Diffusion VAE (DiffIML paper Sec. 3.2, Eq. 6).

The student (`MaskVAE`) learns to reconstruct binary masks and edge bands in {-1, 1} while its scaled
latent is pulled towards the frozen SD VAE's latent of the same mask repeated to RGB:

    z_T = E_SD(repeat(y, 3)).mean * 0.18215          (teacher, no gradient)
    z_S = E_S(y) * 0.18215                           (student)
    L   = |D_S(E_S(y)) - y|_1 + lambda_lat * |z_S - z_T|_2^2          (Eq. 6, lambda_lat = 0.01)

so the diffusion model trained in the student's latent space sees latents scaled as in Stable Diffusion.

By default the reconstruction term is a one-sided L1: |D_S - y| where the decoded value falls short of
its target, 0 where it overshoots (beyond +1 on a manipulated pixel, below -1 on an authentic one). It
equals the L1 wherever there is anything to correct, and the overshoot it ignores is discarded anyway by
the clamp of `latent_to_probability`. With the plain L1 every already-correct pixel keeps pulling its
value back to exactly +-1, and that constant-size gradient from the ~95 % easy pixels drowns the
boundaries: on 256 px procedural masks after 2,000 steps (batch 4) held-out F1 rose from 0.952 to
0.977 on masks and from 0.964 to 0.992 on edge bands. `recon_loss="l1"` keeps the paper's plain L1.
Without a teacher (`teacher=None`) only the reconstruction term is trained, and the scale factor is then
calibrated as Stable Diffusion calibrated its own: 1 / std of the raw latents of held-out targets.

Training targets are procedural masks (`data.masks.random_mask`), their edge bands (`data.edges.mask_edges`,
which the diffusion model encodes too), and optionally the masks and edge bands of real datasets. Every
target is a pure function of (seed, stream, index), so a run is reproducible and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffiml_cli.checkpoint import (
    atomic_write_bytes,
    load_training_state,
    remove_stale_temporaries,
    save_checkpoint,
    save_training_state,
)
from diffiml_cli.config import MaskVAEConfig, config_to_dict
from diffiml_cli.data.augment import resize_mask
from diffiml_cli.data.edges import mask_edges, to_signed
from diffiml_cli.data.masks import random_mask
from diffiml_cli.data.readers import Pair, load_spec
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import load_mask
from diffiml_cli.metrics import false_positive_rate, pixel_f1, pixel_iou
from diffiml_cli.models.mask_vae import MaskVAE, latent_to_probability

DEFAULT_TEACHER = "stabilityai/sd-vae-ft-mse"
SD_SCALE_FACTOR = 0.18215  # Stable Diffusion's latent scale; AutoencoderKL's config default
STATE_NAME = "training_state.pt"
REPORT_NAME = "report.json"
MIN_LR_RATIO = 0.01  # cosine decay ends at 1 % of the peak learning rate
RECON_LOSSES = ("one-sided-l1", "l1")

# Independent random streams of targets: what is trained on is never what is calibrated or scored on.
TRAIN_STREAM, EVAL_STREAM, CALIBRATION_STREAM, BATCH_NORM_STREAM = 0, 1, 2, 3
_TEACHER_HINT = "pass --teacher none to train without a teacher, or --teacher /path/to/a/local/vae"


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
class StepStats:
    """Losses of one training step, passed to the progress callback."""

    step: int  # steps done so far, 1..steps
    steps: int
    l1: float  # reconstruction L1 (one-sided unless recon_loss is "l1") in the {-1, 1} target range
    latent_mse: float | None  # None without a teacher
    lr: float


@dataclass(frozen=True)
class ReconstructionScores:
    """decode(encode(y)) against y at probability 0.5, over one kind of held-out target."""

    kind: str  # "masks" or "edges"
    count: int  # non-empty targets scored: F1 and IoU are undefined on an empty target
    f1_mean: float
    iou_mean: float
    f1_min: float  # the worst single target
    empty_fpr: float  # mean share of pixels predicted on the empty targets; nan if there were none
    empty_count: int


@dataclass(frozen=True)
class ReconstructionReport:
    """How well a mask VAE reconstructs held-out procedural masks and their edge bands."""

    image_size: int
    scale_factor: float
    latent_std: float  # std of scale_factor * raw latents on held-out targets; the diffusion noise assumes ~1
    rows: tuple[ReconstructionScores, ...]

    def row(self, kind: str) -> ReconstructionScores:
        """The scores of one kind ("masks" or "edges")."""
        return next(row for row in self.rows if row.kind == kind)


@dataclass(frozen=True)
class DistillResult:
    """What `distill_vae` produced: the checkpoint folder, the report, and how the run went."""

    out_dir: Path
    report: ReconstructionReport
    steps: int
    resumed_from: int  # 0 for a fresh run
    seconds: float  # wall time of this invocation


# --- the teacher ---------------------------------------------------------------------------------------


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def _caused_by(error: BaseException, names: tuple[str, ...]) -> bool:
    """Whether `error` or an exception it was raised from has one of these class names."""
    seen = 0
    while error is not None and seen < 10:
        if any(cls.__name__ in names for cls in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' and huggingface_hub's advice (accelerate, symlinks) while loading."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def load_teacher(source: str, subfolder: str | None = None) -> nn.Module:
    """The frozen SD VAE teacher: a diffusers `AutoencoderKL` from a Hub id `org/name[@rev]` or a local folder.

    Returned in eval() with gradients off. Raises a one-line DiffimlError when it cannot be loaded
    (offline without a cached copy, no such repository, not an AutoencoderKL folder).
    """
    from huggingface_hub import constants as hub_constants

    try:
        from diffusers import AutoencoderKL
    except ImportError as error:  # diffusers is a dependency; a broken install should still read clearly
        raise DiffimlError(f"teacher {source} cannot be loaded (diffusers is not importable: {error})") from None

    local = _is_local(source)
    repo, _, revision = (source, "", "") if local else source.partition("@")
    if local:
        folder = Path(source).expanduser() / (subfolder or "")
        if not (folder / "config.json").is_file():
            raise DiffimlError(f"teacher {source} cannot be loaded (no diffusers config.json in {folder}): {_TEACHER_HINT}")
        repo = str(Path(source).expanduser())
    try:
        with _quiet_diffusers():
            teacher = AutoencoderKL.from_pretrained(repo, subfolder=subfolder, revision=revision or None,
                                                    low_cpu_mem_usage=False)
    except Exception as error:  # diffusers and huggingface_hub raise OSError, ValueError, HTTP errors, ...
        if local:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        elif _caused_by(error, ("RepositoryNotFoundError", "GatedRepoError")):
            reason = "no such Hub repository, or it is private or gated: log in with `hf auth login`"
        elif _caused_by(error, ("RevisionNotFoundError",)):
            reason = f"revision {revision!r} does not exist on the Hub"
        elif hub_constants.HF_HUB_OFFLINE or _caused_by(error, ("LocalEntryNotFoundError",)):
            reason = "not in the local Hub cache and the Hub is unreachable"
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {first_line}"[:300]
        where = f"{source} (subfolder {subfolder})" if subfolder else source
        raise DiffimlError(f"teacher {where} cannot be loaded ({reason}): {_TEACHER_HINT}") from None
    if not hasattr(teacher, "encode") or int(teacher.config.latent_channels) != 4:
        raise DiffimlError(f"teacher {source} is not a 4-channel-latent AutoencoderKL: {_TEACHER_HINT}")
    return teacher.eval().requires_grad_(False)


def teacher_scale_factor(teacher: nn.Module) -> float:
    """The teacher's own latent scale (0.18215 for the SD 1.x/2.x VAEs)."""
    return float(getattr(teacher.config, "scaling_factor", None) or SD_SCALE_FACTOR)


def teacher_latent(teacher: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """z_T: y (B, 1, H, W) in {-1, 1} -> the teacher's scaled posterior mean (B, 4, H/8, W/8).

    The mask is repeated to three channels, as an RGB image in [-1, 1] (paper Sec. 3.2).
    """
    with torch.inference_mode():
        z_t = teacher.encode(y.repeat(1, 3, 1, 1)).latent_dist.mean * teacher_scale_factor(teacher)
    return z_t.clone()  # a normal tensor: inference tensors cannot be saved for the student's backward


def reconstruction_l1(decoded: torch.Tensor, y: torch.Tensor, *, one_sided: bool = True) -> torch.Tensor:
    """Mean |decoded - y| for y in {-1, 1}; one-sided: overshoot beyond the target (|decoded| > 1 with
    the target's sign) costs nothing, so only pixels on the wrong side of their target pull."""
    if one_sided:
        decoded = torch.where(y > 0, decoded.clamp(max=1.0), decoded.clamp(min=-1.0))
    return F.l1_loss(decoded, y)


def distillation_loss(student: MaskVAE, y: torch.Tensor, z_t: torch.Tensor | None, *, scale_factor: float,
                      lambda_lat: float, one_sided: bool = True,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Eq. 6: L1(D_S(z_S_raw), y) + lambda_lat * MSE(z_S_raw * scale_factor, z_T), L1 one-sided by default.

    y: (B, 1, H, W) in {-1, 1}; z_t: (B, 4, H/8, W/8) scaled teacher latent, or None (reconstruction only).
    Returns (loss, l1, latent_mse or None), each a scalar tensor.
    """
    z_s_raw = student.encode(y)
    # Losses in fp32, also under bf16 autocast.
    l1 = reconstruction_l1(student.decode(z_s_raw).float(), y, one_sided=one_sided)
    if z_t is None:
        return l1, l1, None
    latent_mse = F.mse_loss(z_s_raw.float() * scale_factor, z_t)
    return l1 + lambda_lat * latent_mse, l1, latent_mse


# --- training targets ----------------------------------------------------------------------------------


def load_data_masks(specs: Sequence[str]) -> list[Path]:
    """The mask files of every tampered pair in these dataset specs (authentic pairs have no mask)."""
    masks: list[Path] = []
    for spec in specs:
        pairs: list[Pair] = load_spec(spec)
        found = [pair.mask for pair in pairs if pair.mask is not None]
        if not found:
            raise DiffimlError(f"{spec}: has no tampered images with masks to train the mask VAE on")
        masks.extend(found)
    return masks


class TrainingTargets:
    """A deterministic stream of (S, S) bool targets: procedural masks, dataset masks, and their edge bands.

    Target `index` of `stream` depends only on (seed, stream, index), so any batch can be redrawn
    exactly (resuming needs only the step). Dataset masks are resized with area averaging and a 0.5
    threshold, then given one of the 8 flips/rotations.
    """

    def __init__(self, image_size: int, *, seed: int, stream: int, data_masks: Sequence[Path] = (),
                 data_share: float = 0.5, edge_share: float = 0.5, edge_width: int = 7) -> None:
        self.image_size = image_size
        self.seed = seed
        self.stream = stream
        self.data_masks = list(data_masks)
        self.data_share = data_share if self.data_masks else 0.0
        self.edge_share = edge_share
        self.edge_width = edge_width

    def _data_mask(self, rng: np.random.Generator) -> np.ndarray:
        path = self.data_masks[int(rng.integers(len(self.data_masks)))]
        mask = resize_mask(load_mask(path), (self.image_size, self.image_size))
        transform = int(rng.integers(8))
        mask = np.rot90(mask, transform % 4)
        return np.ascontiguousarray(mask[:, ::-1] if transform >= 4 else mask)

    def target(self, index: int) -> np.ndarray:
        """Target `index`: (S, S) bool, True = manipulated (or boundary, for an edge band)."""
        rng = np.random.default_rng([self.seed, self.stream, index])
        from_data = rng.random() < self.data_share
        as_edge = rng.random() < self.edge_share
        mask = self._data_mask(rng) if from_data else random_mask(rng, self.image_size)
        return mask_edges(mask, self.edge_width) if as_edge else mask

    def batch(self, start: int, count: int) -> torch.Tensor:
        """Targets start..start+count-1 as (count, 1, S, S) float32 in {-1, 1}."""
        targets = np.stack([self.target(index) for index in range(start, start + count)])
        return to_signed(torch.from_numpy(targets[:, None].astype(np.float32)))


def held_out_targets(image_size: int, *, seed: int, count: int, edge_width: int = 7) -> dict[str, np.ndarray]:
    """`count` held-out procedural masks and their edge bands: {"masks", "edges"} -> (count, S, S) bool."""
    masks = np.stack([random_mask(np.random.default_rng([seed, EVAL_STREAM, index]), image_size)
                      for index in range(count)])
    edges = np.stack([mask_edges(mask, edge_width) for mask in masks])
    return {"masks": masks, "edges": edges}


# --- calibration and evaluation ------------------------------------------------------------------------


def _batches(targets: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(targets), batch_size):
        yield to_signed(torch.from_numpy(targets[start:start + batch_size, None].astype(np.float32)))


@torch.no_grad()
def raw_latent_std(vae: MaskVAE, targets: np.ndarray, *, batch_size: int = 32) -> float:
    """Std over all elements of the raw (unscaled) latents of targets (N, S, S) bool, in eval mode."""
    device = next(vae.parameters()).device
    total = total_sq = 0.0
    elements = 0
    for y in _batches(targets, batch_size):
        z = vae.encode(y.to(device)).double()
        total += float(z.sum())
        total_sq += float(z.square().sum())
        elements += z.numel()
    mean = total / elements
    return math.sqrt(max(total_sq / elements - mean * mean, 0.0))


@torch.no_grad()
def recalibrate_batch_norm(vae: MaskVAE, targets: TrainingTargets, *, count: int, batch_size: int = 32) -> None:
    """Replace BatchNorm running statistics by their exact average over `count` targets ("precise BN").

    Leaves the network in eval mode. Does nothing when count is 0.
    """
    norms = [module for module in vae.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if count <= 0 or not norms:
        vae.eval()
        return
    device = next(vae.parameters()).device
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
    for norm in norms:
        norm.train()
    for start in range(0, count, batch_size):
        vae(targets.batch(start, min(batch_size, count - start)).to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    vae.eval()


def calibrate_scale_factor(vae: MaskVAE, image_size: int, *, seed: int, count: int, edge_width: int = 7) -> float:
    """1 / std of raw latents over `count` held-out targets (half masks, half edge bands), as SD did.

    Uses its own random stream, disjoint from training and from the reconstruction report.
    """
    stream = TrainingTargets(image_size, seed=seed, stream=CALIBRATION_STREAM, edge_width=edge_width)
    targets = np.stack([stream.target(index) for index in range(count)])
    std = raw_latent_std(vae, targets)
    if not math.isfinite(std) or std <= 0:
        raise DiffimlError(f"cannot calibrate the latent scale: the latents' std is {std} (training diverged?)")
    return 1.0 / std


def _scores(kind: str, vae: MaskVAE, targets: np.ndarray, batch_size: int) -> ReconstructionScores:
    device = next(vae.parameters()).device
    f1s: list[float] = []
    ious: list[float] = []
    empty_fprs: list[float] = []
    start = 0
    with torch.no_grad():
        for y in _batches(targets, batch_size):
            predicted = latent_to_probability(vae(y.to(device))).cpu()[:, 0] >= 0.5
            for pred, target in zip(predicted, torch.from_numpy(targets[start:start + len(y)])):
                if target.any():
                    f1s.append(pixel_f1(pred, target))
                    ious.append(pixel_iou(pred, target))
                else:
                    empty_fprs.append(false_positive_rate(pred, target))
            start += len(y)
    mean = lambda values: float(np.mean(values)) if values else math.nan  # noqa: E731
    return ReconstructionScores(kind=kind, count=len(f1s), f1_mean=mean(f1s), iou_mean=mean(ious),
                                f1_min=float(min(f1s)) if f1s else math.nan,
                                empty_fpr=mean(empty_fprs), empty_count=len(empty_fprs))


def reconstruction_report(vae: MaskVAE, image_size: int, *, seed: int, count: int = 256, edge_width: int = 7,
                          batch_size: int = 32) -> ReconstructionReport:
    """Score decode(encode(y)) on `count` held-out procedural masks and on their edge bands (eval mode)."""
    was_training = vae.training
    vae.eval()
    try:
        targets = held_out_targets(image_size, seed=seed, count=count, edge_width=edge_width)
        rows = tuple(_scores(kind, vae, targets[kind], batch_size) for kind in ("masks", "edges"))
        scale = vae.config.scale_factor
        latent_std = scale * raw_latent_std(vae, np.concatenate([targets["masks"], targets["edges"]]))
    finally:
        vae.train(was_training)
    return ReconstructionReport(image_size=image_size, scale_factor=scale, latent_std=latent_std, rows=rows)


# --- the training run ----------------------------------------------------------------------------------


def _comparable(settings: DistillSettings) -> dict[str, Any]:
    """The settings that must match to resume a run (how often it saves may change)."""
    values = config_to_dict(settings)
    values.pop("save_every")
    return json.loads(json.dumps(values))  # tuples -> lists, as stored


def _resume(state_path: Path, settings: DistillSettings, student: MaskVAE, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    state = load_training_state(state_path)
    saved = state.get("settings", {})
    wanted = _comparable(settings)
    differences = [f"{key} {saved.get(key)!r} -> {wanted[key]!r}" for key in wanted if saved.get(key) != wanted[key]]
    if differences:
        raise DiffimlError(f"{state_path}: cannot resume with different settings ({'; '.join(differences)}); "
                           "rerun with the original options or choose another --out")
    student.load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _save_state(state_path: Path, settings: DistillSettings, step: int, student: MaskVAE,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    save_training_state(state_path, {
        "settings": _comparable(settings),
        "step": step,
        "samples_seen": step * settings.batch_size,  # the data position: targets 0..samples_seen-1 are used
        "student": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    })


def _report_dict(report: ReconstructionReport) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    data = dataclasses.asdict(report)
    data["rows"] = [{key: clean(value) for key, value in row.items()} for row in data["rows"]]
    return data


def distill_vae(settings: DistillSettings, out_dir: str | Path, *, resume: bool = False,
                device: torch.device | str = "cpu",
                on_step: Callable[[StepStats], None] | None = None) -> DistillResult:
    """Train a MaskVAE (with or without a teacher), write it to `out_dir` as a `mask_vae` checkpoint.

    out_dir receives model.safetensors + config.json (read by `models.build.load_mask_vae`),
    report.json (settings, reconstruction report, final losses) and training_state.pt, written every
    `settings.save_every` steps; `resume=True` continues from it, bit for bit on the same machine.
    """
    start_time = time.perf_counter()
    out_dir = Path(out_dir)
    device = torch.device(device)
    state_path = out_dir / STATE_NAME
    if not resume and state_path.exists():
        raise DiffimlError(f"{out_dir} holds an earlier run's {STATE_NAME}: pass --resume to continue it, "
                           "or choose another --out")
    remove_stale_temporaries(out_dir, (STATE_NAME, REPORT_NAME))  # of a run killed mid-write
    data_masks = load_data_masks(settings.data)
    teacher = load_teacher(settings.teacher, settings.teacher_subfolder).to(device) if settings.teacher else None
    scale_factor = teacher_scale_factor(teacher) if teacher is not None else 1.0

    torch.manual_seed(settings.seed)
    student = MaskVAE(dataclasses.replace(settings.vae, scale_factor=scale_factor)).unfreeze()
    student = student.to(device, memory_format=torch.channels_last)  # faster convolutions, same results
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps,
                                                           eta_min=settings.lr * MIN_LR_RATIO)
    step = _resume(state_path, settings, student, optimizer, scheduler) if resume else 0
    resumed_from = step
    targets = TrainingTargets(settings.image_size, seed=settings.seed, stream=TRAIN_STREAM, data_masks=data_masks,
                              data_share=settings.data_share, edge_share=settings.edge_share,
                              edge_width=settings.edge_width)

    last_l1 = last_latent_mse = math.nan
    while step < settings.steps:
        y = targets.batch(step * settings.batch_size, settings.batch_size).to(device)
        z_t = teacher_latent(teacher, y) if teacher is not None else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss, l1, latent_mse = distillation_loss(student, y.contiguous(memory_format=torch.channels_last), z_t,
                                                     scale_factor=scale_factor, lambda_lat=settings.lambda_lat,
                                                     one_sided=settings.recon_loss == "one-sided-l1")
        if not torch.isfinite(loss):
            raise DiffimlError(f"the loss became {float(loss)} at step {step + 1}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        last_l1 = l1.item()
        last_latent_mse = latent_mse.item() if latent_mse is not None else math.nan
        if step % settings.save_every == 0 or step == settings.steps:
            _save_state(state_path, settings, step, student, optimizer, scheduler)
        if on_step is not None:
            on_step(StepStats(step=step, steps=settings.steps, l1=last_l1,
                              latent_mse=None if latent_mse is None else last_latent_mse, lr=lr))

    batch_norm_targets = TrainingTargets(
        settings.image_size, seed=settings.seed, stream=BATCH_NORM_STREAM, data_masks=data_masks,
        data_share=settings.data_share, edge_share=settings.edge_share, edge_width=settings.edge_width)
    recalibrate_batch_norm(student, batch_norm_targets, count=settings.batch_norm_samples)
    if teacher is None:
        scale_factor = calibrate_scale_factor(student, settings.image_size, seed=settings.seed,
                                              count=settings.eval_count, edge_width=settings.edge_width)
    student.config = dataclasses.replace(student.config, scale_factor=scale_factor)
    report = reconstruction_report(student, settings.image_size, seed=settings.seed, count=settings.eval_count,
                                   edge_width=settings.edge_width)
    save_checkpoint(out_dir, student, student.config)
    summary = {
        "settings": _comparable(settings) | {"save_every": settings.save_every},
        "vae": config_to_dict(student.config),
        "reconstruction": _report_dict(report),
        "training": {"steps": settings.steps, "resumed_from": resumed_from,
                     "last_l1": None if math.isnan(last_l1) else last_l1,
                     "last_latent_mse": None if math.isnan(last_latent_mse) else last_latent_mse},
    }
    atomic_write_bytes(out_dir / REPORT_NAME, (json.dumps(summary, indent=2) + "\n").encode())
    return DistillResult(out_dir=out_dir, report=report, steps=settings.steps, resumed_from=resumed_from,
                         seconds=time.perf_counter() - start_time)
