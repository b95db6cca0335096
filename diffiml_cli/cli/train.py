"""`diffiml train`: Algorithm 1 on real datasets and/or synthetic manipulations; torchrun for multi-GPU."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffiml_cli.cli.common import DeviceOption, SeedOption, stderr
from diffiml_cli.config import DetectorConfig, ModelConfig
from diffiml_cli.data import AugmentConfig
from diffiml_cli.data.training_sets import build_training_data, build_validation_data
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import resolve_device
from diffiml_cli.models.backbone_weights import load_backbone_weights
from diffiml_cli.models.build import (build_localizer, default_vae, load_model, load_mask_vae, with_copy_move_cue,
                                     with_detector)
from diffiml_cli.presets import get_preset
from diffiml_cli.training import STATE_NAME, TrainOptions, Trainer


def train(
    data: Annotated[list[str], typer.Option("--data", help="IMDL-BenCo JSON or Tp/Gt(/Au) folder, optionally PATH:WEIGHT. Repeatable.")] = [],  # noqa: B006
    synthetic_from: Annotated[list[Path], typer.Option("--synthetic-from", help="A folder of authentic photos to manipulate on the fly. Repeatable.")] = [],  # noqa: B006
    synthetic_kinds: Annotated[str | None, typer.Option(help="Comma-separated synthetic edits to train on: splice, "
                               "copy_move, inpaint (default: all three, equally often). Validation keeps all three.")] = None,
    other_camera_donors: Annotated[bool, typer.Option("--other-camera-donors", help="Re-render each splice donor as "
                                   "another camera would (demosaicing, sharpening, noise). Validation stays plain.")] = False,
    val: Annotated[str | None, typer.Option(help="Validation data: a SPEC, or synthetic:DIR[:N] for N held-out synthetic pairs.")] = None,
    authentic_share: Annotated[float, typer.Option(help="Share of untouched photos among the synthetic samples "
                               "(also in synthetic validation).", min=0.0, max=1.0)] = 0.15,
    authentic_per_batch: Annotated[int, typer.Option(help="At least this many untouched photos in every batch "
                                   "(synthetic data; needs --authentic-share of at least K / --batch-size).", min=0)] = 0,
    exclude_photos: Annotated[list[Path], typer.Option("--exclude-photos", help="A text file of photo stems (one per "
                              "line) that --synthetic-from must not use: held-out photos. Repeatable.")] = [],  # noqa: B006
    hard_negatives: Annotated[Path | None, typer.Option(help="A text file of photo stems that untouched samples "
                              "favour (natural repetition, busy texture; see docs/mine_hard_negatives.py).")] = None,
    hard_negative_share: Annotated[float, typer.Option(help="Share of untouched samples taken from --hard-negatives.",
                                   min=0.0, max=1.0)] = 0.5,
    select_by: Annotated[str, typer.Option(help="Validation number that picks best/: pixel_f1 (tampered images), "
                         "pixel_f1_all (authentic images count 1 when nothing is marked, else 0) or image_auc.")] = "pixel_f1",
    train_detector: Annotated[bool, typer.Option("--train-detector", help="Train only the image-level detector "
                              "(added when the model has none) on the frozen localizer's outputs, sampled once per "
                              "training item at the default sampling settings.")] = False,
    preset: Annotated[str, typer.Option(help="Model preset: paper, fast, tiny.")] = "tiny",
    model: Annotated[str | None, typer.Option("--model", help="diffusion (DiffIML, the default) or discriminative "
                     "(the same encoder with a BCE + Dice segmentation head: the paper's Table 5 baseline).")] = None,
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help="Edge supervision: the denoiser also generates the "
                    "edge latent (the paper's default). --no-edge is the ablation: the mask latent alone.")] = True,
    vae: Annotated[str | None, typer.Option(help="MaskVAE checkpoint from distill-vae (default: the shipped weights/lightvae).")] = None,
    init: Annotated[str | None, typer.Option(help="Start from this localizer checkpoint's weights (and its config), e.g. to train the shipped model further.")] = None,
    copy_move_cue: Annotated[bool | None, typer.Option("--copy-move-cue/--no-copy-move-cue", help="Give the "
                             "condition encoder the image's SIFT self-matches, a copy-move cue. With --init, the new "
                             "branch starts at zero. Default: the preset's, or the --init checkpoint's.")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="ImageNet init of the backbone: efficientnet-lite0 (bundled), nvidia/mit-b3 or another Hub id, or a local file or folder.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (or give --epochs).", min=1)] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training data.", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step per process.", min=1)] = 8,
    image_size: Annotated[int | None, typer.Option(help="Training size (default: the preset's).")] = None,
    resolution: Annotated[str | None, typer.Option(help="resize (squeeze every image to the training size, as the paper) or "
                          "native (train on windows at the photo's own resolution; inference keeps each image's size). "
                          "Default: the preset's, or the --init checkpoint's.")] = None,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    backbone_lr_scale: Annotated[float, typer.Option(help="The backbone's learning rate as a fraction of --lr; 0 freezes "
                                                     "it (weights and BatchNorm statistics).", min=0.0)] = 1.0,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.")] = 100,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights; 0 disables.")] = 0.0,
    prior_rate: Annotated[float, typer.Option(help="Error-prior rate lambda.")] = 0.1,
    mask_loss_weight: Annotated[float, typer.Option(help="Loss weight alpha of the mask latent (edge gets 1 - alpha).")] = 0.2,
    amp: Annotated[str, typer.Option(help="none, bf16 or fp16 (CUDA).")] = "none",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: state, logs and checkpoints.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from <out>/state.pt.")] = False,
    seed: SeedOption = 0,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes.", min=0)] = 0,
    save_every: Annotated[int, typer.Option(help="Write the resumable state every N steps.", min=1)] = 200,
    val_every: Annotated[int, typer.Option(help="Validate and write checkpoints every N steps.", min=1)] = 500,
    device: DeviceOption = "auto",
) -> None:
    """Train DiffIML's condition encoder and denoiser on frozen MaskVAE latents (Algorithm 1)."""
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    if init:  # the checkpoint brings its own config and VAE
        localizer, config = load_model(init)
        if model is not None and model != config.kind:
            raise DiffimlError(f"--init {init} is a {config.kind} model; it cannot continue as --model {model}")
        config = dataclasses.replace(config, image_size=image_size or config.image_size,
                                     resolution=resolution or config.resolution)
    else:
        config = _model_config(get_preset(preset), model or "diffusion", edge=edge, image_size=image_size,
                               resolution=resolution)
        if config.kind == "diffusion":
            mask_vae = load_mask_vae(vae) if vae else default_vae()
            config = dataclasses.replace(config, vae=mask_vae.config)  # the scale factor travels with the VAE
        localizer = build_localizer(config)
        if config.kind == "diffusion":
            localizer.vae.load_state_dict(mask_vae.state_dict())
    if copy_move_cue is not None:
        localizer, config = with_copy_move_cue(localizer, config, copy_move_cue)
    if train_detector:
        localizer, config = with_detector(localizer, config, config.detector or DetectorConfig())
    if backbone_weights:
        load_backbone_weights(localizer.encoder, backbone_weights)

    crop = config.resolution == "native"
    kinds = _split_kinds(synthetic_kinds)
    excluded = [stem for path in exclude_photos for stem in read_stems(path)]
    hard = read_stems(hard_negatives) if hard_negatives else []
    train_data = build_training_data(data, synthetic_from, image_size=config.image_size, seed=seed,
                                     augment=AugmentConfig(), crop=crop,
                                     synthetic_kinds=kinds, other_camera_donors=other_camera_donors,
                                     authentic_share=authentic_share, exclude=excluded, hard_negatives=hard,
                                     hard_negative_share=hard_negative_share)
    val_data = build_validation_data(val, image_size=config.image_size, seed=seed, crop=crop,
                                     authentic_share=authentic_share) if val else None
    if (steps is None) == (epochs is None):
        raise DiffimlError("give exactly one of --steps and --epochs")
    if epochs is not None:  # the LR schedule needs the total up front; torchrun sets WORLD_SIZE
        steps = epochs * (len(train_data) // int(os.environ.get("WORLD_SIZE", "1")) // batch_size)
    options = TrainOptions(
        out_dir=out, steps=max(1, steps), batch_size=batch_size, learning_rate=lr, weight_decay=weight_decay,
        backbone_lr_scale=backbone_lr_scale,
        warmup_steps=warmup_steps, ema_decay=ema, prior_rate=prior_rate, mask_loss_weight=mask_loss_weight, amp=amp,
        seed=seed, save_every=save_every, val_every=val_every, num_workers=num_workers,
        authentic_per_batch=authentic_per_batch, select_by=select_by,
        train_part="detector" if train_detector else "all",
        data_sources={"authentic_share": authentic_share, "exclude_photos": [str(p) for p in exclude_photos],
                      "hard_negatives": str(hard_negatives) if hard_negatives else None,
                      "hard_negative_share": hard_negative_share,"data": data, "synthetic_from": [str(path) for path in synthetic_from],
                      "synthetic_kinds": kinds or "all", "other_camera_donors": other_camera_donors,
                      "val": val, "init": init, "backbone_weights": backbone_weights, "vae": vae},
    )
    trainer = Trainer(localizer, config, options, train_data, val_data=val_data, device=torch_device)
    try:
        _fit(trainer, out, resume=resume)
    finally:
        trainer.close()


def read_stems(path: Path) -> list[str]:
    """The photo stems listed in a text file, one per line ('#' starts a comment)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DiffimlError(f"{path}: cannot read the list of photo stems ({error})") from None
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _split_kinds(kinds: str | None) -> list[str] | None:
    """'splice, copy_move' -> ['splice', 'copy_move']; None keeps the generator's default."""
    if kinds is None:
        return None
    names = [name.strip() for name in kinds.split(",") if name.strip()]
    if not names:
        raise DiffimlError("--synthetic-kinds names no edit; give e.g. splice,copy_move")
    return names


def _fit(trainer: Trainer, out: Path, *, resume: bool) -> None:
    """Resume or start the run in `out`, train with a progress bar (main rank only), say where it went."""
    options = trainer.options
    if resume:
        trainer.resume(out / STATE_NAME)
    elif (out / STATE_NAME).exists():
        raise DiffimlError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")

    show = trainer.context.is_main
    with Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[speed]} step/s  {task.fields[val]}"),
        console=stderr, disable=not show,
    ) as progress:
        task = progress.add_task("train", total=options.steps, completed=trainer.step, loss="-", speed="-", val="")

        def on_step(step: int, record: dict) -> None:
            val_text = f"val F1 {record['val_f1']:.3f}" if "val_f1" in record else progress.tasks[task].fields["val"]
            progress.update(task, completed=step, loss=f"{record['loss']:.4f}", speed=f"{record['steps_per_s']:.2f}", val=val_text)

        trainer.fit(on_step)
    if show:
        stderr.print(f"done: {escape(str(out / 'final'))} (inference checkpoint), log {escape(str(out / 'metrics.jsonl'))}",
                     soft_wrap=True)


def _model_config(config: ModelConfig, kind: str, *, edge: bool, image_size: int | None,
                  resolution: str | None = None) -> ModelConfig:
    """The preset's config with the model kind, the edge ablation, the image size and the resolution applied."""
    config = dataclasses.replace(config, kind=kind, image_size=image_size or config.image_size,
                                 resolution=resolution or config.resolution)
    if not edge:
        if kind != "diffusion":
            raise DiffimlError("--no-edge is an ablation of the diffusion model; a discriminative one has no edge latent")
        config = dataclasses.replace(config, denoiser=dataclasses.replace(config.denoiser, latent_channels=config.vae.latent_channels))
    return config
