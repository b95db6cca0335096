"""Distil LightNP from Noiseprint++: a student trained to reproduce the frozen teacher's map on real photos.

Targets: the teacher's whole-image maps of the training photos and their post-processed variants
(`noiseprint_data`), built into a bank of chunks under OUT/bank/ while training runs (one chunk every
`build_every` steps until all are built), so the student starts learning within a minute and no teacher map is
computed twice, even across `--resume`. A training sample is a `window` x `window` square of a map with
`context` pixels of the photo around it as the student's input, so neither network's zero padding enters the
loss (context 24 >= LightNP's receptive radius 21 and the teacher's 17):

    s, t = student(window + context)[centre], teacher map[centre]
    L = mean((s - t)^2) / var(t) + mean_b(1 - pearson_b(s, t))

The first term keeps the map's scale (so LightNP can stand in for the teacher), the second is what is reported.
Every draw is a pure function of (seed, step), so a resumed run continues as it would have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffiml_cli.checkpoint import load_training_state, save_checkpoint, save_training_state
from diffiml_cli.distillation.noiseprint_data import photo_variant, split_photos, teacher_maps
from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import atomic_write_bytes
from diffiml_cli.models.noiseprint import build_noiseprint, flops_per_pixel, load_noiseprint, student_config

STATE_NAME = "training_state.pt"
STUDENT_DIR = "student"
WARMUP = 50


@dataclass(frozen=True)
class NoiseprintDistillSettings:
    """Everything that determines a run; saved in its training state and report."""

    photos: str = "../shared/data/authentic"  # holds bsds500/ and kodak24/
    teacher: str = "../shared/weights/noiseprint++/noiseprint++.th"  # or a converted checkpoint folder
    steps: int = 1200  # ~40 minutes of one free CPU core, the teacher's maps included
    batch_size: int = 8
    window: int = 96  # side of the square the loss sees
    context: int = 24  # photo pixels around it that the student reads; >= its receptive radius
    variants: int = 2  # copies of each training photo: as it is, and post-processed
    chunk: int = 16  # photo variants per bank chunk
    build_every: int = 100  # training steps between bank chunks until the bank is complete
    start_chunks: int = 2  # chunks built before the first step
    lr: float = 1e-3  # peak AdamW learning rate, after WARMUP steps, cosine-decayed to 1 % of it
    seed: int = 0
    save_every: int = 50  # steps between resumable states (~2 minutes)
    layers: int = 11
    width: int = 64
    unshuffle: int = 2
    border: float = 0.3  # share of windows snapped to an image edge, per axis (the map's borders are learned too)
    init: str = ""  # a student checkpoint to start from (e.g. an earlier run's), "" for random weights

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.window, self.variants, self.chunk, self.build_every,
               self.start_chunks, self.save_every) < 1 or self.lr <= 0:
            raise DiffimlError(f"distill-noiseprint: steps, sizes and counts must be >= 1 and lr > 0 ({self})")
        if self.context < student_config(self.layers, self.width, self.unshuffle).receptive_radius:
            raise DiffimlError(f"--context {self.context} is below the student's receptive radius")


@dataclass(frozen=True)
class StepStats:
    """One step: the loss, the batch's mean Pearson correlation with the teacher, the bank's size."""

    step: int
    steps: int
    loss: float
    pearson: float
    chunks: int
    total_chunks: int


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson correlation of (B, ...) tensors -> (B,), in [-1, 1]."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def distill_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-sample Pearson) of (B, 1, w, w) maps; see the module docstring."""
    r = pearson(student_map, teacher_map)
    mse = (student_map - teacher_map).square().mean() / teacher_map.var().clamp_min(1e-8)
    return mse + (1 - r).mean(), r


class Bank:
    """The teacher's maps of the training variants, chunk by chunk under `folder` (safetensors, uint8 images
    and fp16 maps), built in a fixed seeded order; `load` reads the built ones, `build_next` adds one."""

    def __init__(self, folder: Path, settings: NoiseprintDistillSettings) -> None:
        self.folder, self.settings = folder, settings
        self.photos = split_photos(settings.photos).train
        items = [(index, variant) for variant in range(settings.variants) for index in range(len(self.photos))]
        order = np.random.default_rng([settings.seed, 1]).permutation(len(items))
        self.items = [items[i] for i in order]
        self.total = math.ceil(len(self.items) / settings.chunk)
        self.images: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.built = 0
        self._teacher = None

    def _path(self, number: int) -> Path:
        return self.folder / f"chunk-{number:04d}.safetensors"

    def load(self, limit: int) -> None:
        """Read the first `limit` chunks that exist on disk (a resumed run reads what it had at its step)."""
        from safetensors.numpy import load_file

        while self.built < min(limit, self.total) and self._path(self.built).is_file():
            tensors = load_file(self._path(self.built))
            count = len(tensors) // 2
            self.images += [tensors[f"image{i}"] for i in range(count)]
            self.maps += [tensors[f"map{i}"] for i in range(count)]
            self.built += 1

    def build_next(self) -> None:
        """Run the teacher on the next chunk's variants and write it atomically (or read it, when an earlier
        run wrote it); nothing when the bank is complete."""
        from safetensors.numpy import save_file

        if self.built >= self.total:
            return
        if self._path(self.built).is_file():  # built before a resume: the same chunk, read back
            self.load(self.built + 1)
            return
        if self._teacher is None:
            self._teacher = load_noiseprint(self.settings.teacher, allow_pickle=True)
        start = self.built * self.settings.chunk
        chosen = self.items[start:start + self.settings.chunk]
        images = [photo_variant(self.photos[index], self.settings.seed, index, variant)[0] for index, variant in chosen]
        maps = teacher_maps(*self._teacher, images)
        tensors = {f"image{i}": image for i, image in enumerate(images)} | {f"map{i}": m for i, m in enumerate(maps)}
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self._path(self.built).with_suffix(".tmp")
        save_file(tensors, str(temporary))
        temporary.replace(self._path(self.built))
        self.images += images
        self.maps += maps
        self.built += 1

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(inputs (B, 3, w + 2c, w + 2c) float in [0, 1], targets (B, 1, w, w) float, offsets (B, 2) int: where
        each target lies in its input). A window is snapped to an image edge with probability `border` per side
        pair, its target then touching that edge, so that the student learns the map's borders as the teacher
        computed them on the whole image (zero padding; a replicated last row or column where a side is odd)."""
        w, c = self.settings.window, self.settings.context
        inputs, targets, offsets = [], [], []
        while len(inputs) < size:
            k = int(rng.integers(len(self.images)))
            image, target = self.images[k], self.maps[k]
            height, width = target.shape
            if min(height, width) < w + 2 * c:
                continue
            (top, dy, pad_y), (left, dx, pad_x) = (_window(rng, length, w, c, self.settings.border)
                                                     for length in (height, width))
            if pad_y or pad_x:  # as extract_map pads for a 2x unshuffle
                image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
            inputs.append(image[top:top + w + 2 * c, left:left + w + 2 * c])
            targets.append(target[top + dy:top + dy + w, left + dx:left + dx + w])
            offsets.append((dy, dx))
        x = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).float() / 255.0
        return x, torch.from_numpy(np.stack(targets).astype(np.float32))[:, None], np.array(offsets)


def _window(rng: np.random.Generator, length: int, w: int, c: int, border: float) -> tuple[int, int, int]:
    """(start of the input window, offset of the target in it, rows of padding) along one side of `length`."""
    span = w + 2 * c
    padded = length + length % 2
    draw = rng.random()
    if draw < border / 2:
        return 0, 0, padded - length  # at the start: the target touches the image's first row
    if draw < border:
        return padded - span, 2 * c - (padded - length), padded - length  # at the end: its last row
    return int(rng.integers(0, length - span + 1)) // 2 * 2, c, 0  # inside; even, so a 2x unshuffle keeps its phase


def _learning_rate(settings: NoiseprintDistillSettings, step: int) -> float:
    if step < WARMUP:
        return settings.lr * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, settings.steps - WARMUP)
    return settings.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def distill_noiseprint(settings: NoiseprintDistillSettings, out_dir: str | Path, *, resume: bool = False,
                       on_step: Callable[[StepStats], None] | None = None) -> Path:
    """Train LightNP (module docstring); writes OUT/student/ (a noiseprint checkpoint) and OUT/training_state.pt
    every `save_every` steps, and OUT/settings.json. Returns OUT/student."""
    out = Path(out_dir)
    config = student_config(settings.layers, settings.width, settings.unshuffle)
    torch.manual_seed(settings.seed)
    student = build_noiseprint(config)
    if settings.init:
        from diffiml_cli.checkpoint import load_checkpoint, load_state_strict

        _, init_config, state = load_checkpoint(settings.init)
        if init_config != config:
            raise DiffimlError(f"--init {settings.init}: its config {init_config} is not this run's {config}")
        load_state_strict(student, state, settings.init)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    step = 0
    if resume:
        state = load_training_state(out / STATE_NAME)
        if state["settings"] != {k: v for k, v in dataclasses.asdict(settings).items() if k != "steps"}:
            raise DiffimlError(f"--resume: {out / STATE_NAME} was written with other settings (only --steps may change)")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    elif (out / STATE_NAME).exists():
        raise DiffimlError(f"{out}: a run is there already; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    split = split_photos(settings.photos)
    record = {"settings": dataclasses.asdict(settings), "student": dataclasses.asdict(config),
              "student_flops_per_pixel": flops_per_pixel(config),
              "held_out": [str(path) for path in split.held_out], "train": [str(path) for path in split.train]}
    atomic_write_bytes(out / "settings.json", (json.dumps(record, indent=1) + "\n").encode())
    bank = Bank(out / "bank", settings)
    bank.load(settings.start_chunks + math.ceil(step / settings.build_every))  # what the run had at `step`
    while bank.built < min(settings.start_chunks, bank.total):
        bank.build_next()
    student.train()
    last_save = time.monotonic()
    while step < settings.steps:
        if step % settings.build_every == 0:
            bank.build_next()
        rng = np.random.default_rng([settings.seed, 2, step])
        inputs, targets, offsets = bank.batch(rng, settings.batch_size)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, step)
        w, outputs = settings.window, student(inputs)
        predicted = torch.stack([outputs[i, :, dy:dy + w, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
        loss, r = distill_loss(predicted, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if on_step:
            on_step(StepStats(step, settings.steps, loss.item(), r.mean().item(), bank.built, bank.total))
        if step % settings.save_every == 0 or step == settings.steps or time.monotonic() - last_save > 300:
            _save(out, settings, config, student, optimizer, step)
            last_save = time.monotonic()
    return out / STUDENT_DIR


def _save(out: Path, settings: NoiseprintDistillSettings, config, student: torch.nn.Module,
          optimizer: torch.optim.Optimizer, step: int) -> None:
    comparable = {k: v for k, v in dataclasses.asdict(settings).items() if k != "steps"}
    save_training_state(out / STATE_NAME, {"settings": comparable, "student": student.state_dict(),
                                           "optimizer": optimizer.state_dict(), "step": step})
    save_checkpoint(out / STUDENT_DIR, student, config)
    atomic_write_bytes(out / STUDENT_DIR / "step.txt", f"{step}\n".encode())
