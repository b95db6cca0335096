"""Algorithm 1: train the condition encoder and denoiser on frozen MaskVAE latents.

One step: z0 = [VAE(mask), VAE(edge)] * scale; t ~ U{0..T-1};
x_t = sqrt(a_t) (z0 + lambda xi) + sqrt(1 - a_t) eps (the error prior); x0_pred = denoiser(x_t, t, E(image));
loss = alpha * MSE(mask latent) + (1 - alpha) * MSE(edge latent). Two parts can also train alone on the frozen
rest: the detector, and the denoiser through the few-step sampler it will run with (`objectives.sampler_loss`).
AdamW with warm-up then cosine decay,
gradient clipping, an optional EMA of the weights, AMP on CUDA, and DDP under torchrun.

Resumable and reproducible: the data order is a pure function of (seed, epoch, rank), dataset items a
pure function of (seed, epoch, index), and the state file (weights, EMA, optimizer, LR schedule, step,
noise generator) is written atomically, so a killed run resumes into the same trajectory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from diffiml_cli.checkpoint import load_training_state, save_checkpoint, save_training_state
from diffiml_cli.config import ModelConfig, config_from_dict
from diffiml_cli.diffusion.sampling import add_noise_with_error_prior, make_scheduler
from diffiml_cli.data.training_sets import with_authentic_per_batch
from diffiml_cli.distributed import init_distributed
from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import atomic_write_bytes, remove_stale_temporaries
from diffiml_cli.inference import Predictor
from diffiml_cli.evaluation.accumulator import MetricAccumulator
from diffiml_cli.models.build import AnyLocalizer
from diffiml_cli.training_options import TrainOptions
from diffiml_cli.jsonsafe import finite_json
from diffiml_cli.objectives import (ConditionMemo, DenoisingObjective, LocalizerOutputs, SamplerObjective,
                                   SegmentationObjective, detection_loss, diffiml_loss, sampler_loss, segmentation_loss)

TRAIN_STATE_NAME = "state.pt"
LOG_NAME = "metrics.jsonl"


def epoch_indices(length: int, epoch: int, *, seed: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of epoch `epoch`'s permutation of range(length): disjoint across ranks."""
    permutation = np.random.default_rng([seed, epoch]).permutation(length)
    usable = length - length % world_size
    return permutation[:usable][rank::world_size]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Owns the model, optimiser, schedule, EMA and data order for one training run."""

    def __init__(
        self,
        localizer: AnyLocalizer,
        config: ModelConfig,
        options: TrainOptions,
        train_data: Dataset,
        *,
        val_data: Dataset | None = None,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        if len(train_data) < options.batch_size:
            raise DiffimlError(f"the training data has {len(train_data)} items, fewer than one batch of {options.batch_size}")
        if options.amp != "none" and device.type != "cuda":
            raise DiffimlError("`amp` needs CUDA; on the CPU training runs in fp32")
        self.config, self.options, self.device = config, options, device
        self.train_data, self.val_data = train_data, val_data
        self.context = init_distributed(device)
        self.localizer = localizer.to(device)
        self.discriminative = config.kind == "discriminative"
        self.detector_only = options.train_part == "detector"
        self.sampler_tuning = options.train_part == "sampler"
        self.objective = self._objective(config, options, device)
        if self.context.world_size > 1:
            self.objective = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.context.local_rank] if device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=options.learning_rate,
                                           weight_decay=options.weight_decay)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: warmup_cosine(step, warmup_steps=options.warmup_steps, total_steps=options.steps),
        )
        self.ema = (
            AveragedModel(self.localizer, multi_avg_fn=get_ema_multi_avg_fn(options.ema_decay), use_buffers=True)
            if options.ema_decay > 0
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=options.amp == "fp16")
        self.alphas_cumprod = make_scheduler(config.diffusion).alphas_cumprod.to(device)
        # Timesteps and noise come from one generator per rank whose state is checkpointed.
        self.generator = torch.Generator(device=device).manual_seed(options.seed * 1000 + self.context.rank)
        self.step = 0
        self.best_f1 = -1.0
        self.batches_per_epoch = len(train_data) // self.context.world_size // options.batch_size
        if self.batches_per_epoch == 0:
            raise DiffimlError("not enough training data for one batch per process")

    def _objective(self, config: ModelConfig, options: TrainOptions, device: torch.device) -> nn.Module:
        """The trained forward pass of `options.train_part`, freezing what that part leaves alone."""
        if self.detector_only:
            if self.localizer.detector is None:
                raise DiffimlError("training the detector alone needs a model with a detector")
            self.localizer.requires_grad_(False)
            self.localizer.detector.requires_grad_(True)
            # The localizer is frozen here, so it may run channels-last, which oneDNN computes 1.5x faster.
            predictor = Predictor(self.localizer, config.diffusion, device=device, channels_last=True,
                                  precision=options.detector_precision)
            self.outputs = LocalizerOutputs(predictor, options.detector_sampling)
            return self.localizer.detector
        if self.sampler_tuning:
            if self.discriminative:
                raise DiffimlError("tuning for a sampler needs a diffusion model; a discriminative one does not sample")
            self.localizer.requires_grad_(False)
            self.localizer.denoiser.requires_grad_(True)
            self.conditions = ConditionMemo(self.localizer)
            return SamplerObjective(self.localizer, config.diffusion, options.tune_sampling)
        return SegmentationObjective(self.localizer) if self.discriminative else DenoisingObjective(self.localizer)

    def _parameter_groups(self) -> list[dict]:
        """One group, or two when the backbone learns at its own rate (freezing it when the rate is 0)."""
        scale = self.options.backbone_lr_scale
        if scale < 0:
            raise DiffimlError(f"the backbone learning-rate scale must be >= 0, got {scale}")
        if scale == 0:
            self.localizer.encoder.backbone.requires_grad_(False)
        trainable = [p for p in self.localizer.parameters() if p.requires_grad]
        if scale in (0.0, 1.0):  # one group keeps the optimizer state of older runs resumable
            return [{"params": trainable}]
        backbone = {id(p) for p in self.localizer.encoder.backbone.parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in backbone]},
            {"params": [p for p in trainable if id(p) in backbone], "lr": self.options.learning_rate * scale},
        ]

    def _train_mode(self) -> None:
        """train() everything but a frozen backbone, whose BatchNorm keeps its ImageNet statistics (or, when
        the detector or the denoiser trains alone, that part only)."""
        if self.detector_only or self.sampler_tuning:  # the frozen parts stay as they infer
            self.localizer.eval()
        self.objective.train()
        if self.options.backbone_lr_scale == 0:
            self.localizer.encoder.backbone.eval()

    # ----- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "best_f1": self.best_f1,
            "model": self.localizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "config": json.dumps(dataclasses.asdict(self.config)),
        }

    def resume(self, path: Path) -> None:
        """Continue from a state written by this trainer; the config must be the same."""
        state = load_training_state(path)
        # Compared as configs, not JSON text, so a state from before a new config field still resumes.
        if config_from_dict(ModelConfig, json.loads(state["config"])) != self.config:
            raise DiffimlError(f"{path}: the saved run used a different model config; start a new `out_dir`")
        self.localizer.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.step, self.best_f1 = state["step"], state["best_f1"]

    def _save_state(self) -> None:
        if self.context.is_main:
            save_training_state(self.options.out_dir / TRAIN_STATE_NAME, self.state_dict())

    # ----- the loop --------------------------------------------------------------------------------
    def _batches(self):
        """Yield (epoch, batch) from the current step on, in the order a fresh run would see them."""
        epoch, skip = divmod(self.step, self.batches_per_epoch)
        batch_size = self.options.batch_size
        while True:
            if hasattr(self.train_data, "set_epoch"):  # the items' kept outputs (detector, sampler) need the same items
                self.train_data.set_epoch(0 if self.detector_only or self.sampler_tuning else epoch)
            ctx = self.context
            indices = epoch_indices(len(self.train_data), epoch, seed=self.options.seed, rank=ctx.rank, world_size=ctx.world_size)
            if self.options.authentic_per_batch and hasattr(self.train_data, "authentic_flags"):
                indices = with_authentic_per_batch(indices, self.train_data.authentic_flags(epoch), batch_size,
                                                   self.options.authentic_per_batch)
            indices = indices[skip * batch_size : self.batches_per_epoch * batch_size]
            loader = DataLoader(
                self.train_data,
                batch_size=batch_size,
                sampler=indices.tolist(),
                num_workers=self.options.num_workers,
                drop_last=True,
                pin_memory=self.device.type == "cuda",
            )
            yield from ((epoch, batch) for batch in loader)
            epoch, skip = epoch + 1, 0

    def _autocast(self):
        if self.options.amp == "none":
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.options.amp == "bf16" else torch.float16)

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimisation step of Algorithm 1 on `batch`; returns the logged numbers."""
        image = batch["image"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device)
        self._train_mode()
        if self.detector_only:  # the localizer's outputs are computed once per item (`LocalizerOutputs`)
            condition, cells = self.outputs(batch["index"].tolist(), image)
            evidence = self.objective(condition.to(self.device), cells.to(self.device))
            loss, parts = detection_loss(evidence, self.localizer.detector.score(evidence, cells.to(self.device)), mask)
        elif self.sampler_tuning:
            loss, parts = self._sampler_loss(batch, image, mask)
        elif self.discriminative:  # the Table 5 baseline: predict the mask directly
            with self._autocast():
                logits = self.objective(image)
            loss, parts = segmentation_loss(logits, mask)
        else:
            with torch.no_grad():
                z0 = self.localizer.encode_targets(mask, batch["edge"].to(self.device))
            t = torch.randint(0, len(self.alphas_cumprod), (image.shape[0],), generator=self.generator, device=self.device)
            x_t = add_noise_with_error_prior(
                z0, t, self.alphas_cumprod, prior_rate=self.options.prior_rate, generator=self.generator
            )
            with self._autocast():
                x0_pred = self.objective(image, x_t, t)
            loss, parts = diffiml_loss(x0_pred, z0, self.options.mask_loss_weight,
                                       self.localizer.mask_latent_channels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.localizer.parameters(), self.options.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.localizer)
        self.step += 1
        return {"loss": loss.item(), **parts, "grad_norm": float(grad_norm), "lr": self.lr_schedule.get_last_lr()[0]}

    def _sampler_loss(self, batch: dict, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """`objectives.sampler_loss` of one batch: the sampler's noise from a seed of the checkpointed generator."""
        condition = self.conditions(batch["index"].tolist(), image)
        with torch.no_grad():
            z0 = self.localizer.encode_targets(mask, batch["edge"].to(self.device))
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device))
        members = self.objective(condition, seed)
        return sampler_loss(members, z0, mask, self.localizer, mask_weight=self.options.mask_loss_weight,
                            decoded_weight=self.options.decoded_loss_weight)

    def inference_model(self) -> AnyLocalizer:
        """The weights to evaluate and ship: the EMA when enabled, else the live model."""
        return self.ema.module if self.ema is not None else self.localizer

    def fit(self, on_step: Callable[[int, dict], None] = lambda step, record: None) -> dict:
        """Train until `options.steps`; log, validate and checkpoint on schedule. Returns the last record."""
        options, out_dir = self.options, self.options.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.context.is_main:
            remove_stale_temporaries(out_dir, (TRAIN_STATE_NAME,))  # left by a run killed mid-write
            document = {"model": dataclasses.asdict(self.config), "train": asdict(options)}
            text = json.dumps(finite_json(document), indent=2, default=str, allow_nan=False)
            atomic_write_bytes(out_dir / "train_config.json", text.encode())
        self._trim_logs()
        record: dict = {}
        started, steps_at_start = time.perf_counter(), self.step
        # Which items each rank trained on, one line per step: an audit trail for data order and sharding.
        with (out_dir / f"data-indices-rank{self.context.rank}.txt").open("a") as indices_log:
            for epoch, batch in self._batches():
                if self.step >= options.steps:
                    break
                indices_log.write(" ".join(map(str, batch["index"].tolist())) + "\n")
                record = {"step": self.step + 1, "epoch": epoch, **self.train_step(batch)}
                record["steps_per_s"] = (self.step - steps_at_start) / (time.perf_counter() - started)
                if self.step % options.log_every == 0 or self.step == options.steps:
                    self._log(record)
                if self.val_data is not None and (self.step % options.val_every == 0 or self.step == options.steps):
                    record.update(self.validate())
                    self._log({"step": self.step, **{k: v for k, v in record.items() if k.startswith("val_")}})
                    self._save_inference_checkpoints(record.get("val_selection", -1.0))
                if self.step % options.save_every == 0 or self.step == options.steps:
                    self._save_state()
                on_step(self.step, record)
        if self.context.is_main:
            save_checkpoint(out_dir / "final", self.inference_model(), self.config)
        if self.context.world_size > 1:
            dist.barrier()  # every rank leaves once `final/` exists
        return record

    def close(self) -> None:
        """Leave the process group (see `DistributedContext.close`)."""
        self.context.close()

    def _trim_logs(self) -> None:
        """Drop log lines of steps after the state being resumed (a killed run logged steps it never saved),
        so that after a resume each step appears once in metrics.jsonl and in the data-indices logs."""
        log = self.options.out_dir / LOG_NAME
        if self.context.is_main and log.exists():
            kept = [line for line in log.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            atomic_write_bytes(log, "".join(kept).encode())
        indices = self.options.out_dir / f"data-indices-rank{self.context.rank}.txt"  # one line per step
        if indices.exists():
            atomic_write_bytes(indices, "".join(indices.read_text().splitlines(keepends=True)[: self.step]).encode())

    def _log(self, record: dict) -> None:
        if self.context.is_main:
            with (self.options.out_dir / LOG_NAME).open("a") as log:
                log.write(json.dumps(finite_json(record), allow_nan=False) + "\n")  # a NaN loss is null

    def _save_inference_checkpoints(self, f1: float) -> None:
        if not self.context.is_main:
            return
        save_checkpoint(self.options.out_dir / "latest", self.inference_model(), self.config)
        if f1 > self.best_f1:  # nan (no image of the kind the metric needs) never counts as better
            self.best_f1 = f1
            save_checkpoint(self.options.out_dir / "best", self.inference_model(), self.config)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Pixel F1@0.5 (per image, over tampered images) and authentic FPR on `val_data`, at model size."""
        if hasattr(self.val_data, "set_epoch"):
            self.val_data.set_epoch(0)  # the same validation items every time
        model = self.inference_model()
        precision = self.options.detector_precision if self.detector_only else "fp32"
        predictor = Predictor(model, self.config.diffusion, device=self.device, channels_last=self.detector_only,
                              precision=precision)
        accumulator = MetricAccumulator()
        loader = DataLoader(self.val_data, batch_size=self.options.batch_size, num_workers=self.options.num_workers)
        sampling = self.options.detector_sampling if self.detector_only else self.options.val_sampling
        for batch in loader:
            prediction = predictor.predict(batch["image"], sampling)
            scores = prediction.image_score if prediction.detection_score is None else prediction.detection_score
            for probability, mask, score in zip(prediction.probability, batch["mask"], scores):
                accumulator.add(probability[0], mask[0] > 0.5, float(score))
        self._train_mode()
        summary = accumulator.summary()
        keys = ("pixel_f1", "pixel_f1_all", "oracle_f1", "authentic_pixel_fpr", "authentic_any_rate", "image_auc")
        return {f"val_{key}": summary[key] for key in keys if key in summary} | {
            "val_f1": summary["pixel_f1"], "val_selection": summary[self.options.select_by],
        }
