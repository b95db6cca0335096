"""`diffiml train`: Algorithm 1 on real datasets and/or synthetic manipulations; torchrun for multi-GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from diffiml_cli.cli.common import DeviceOption, SeedOption, stderr, with_help_panels
from diffiml_cli.cli.display import markup_safe
from diffiml_cli.cli.progress import progress_bar
from diffiml_cli.defaults import SamplingOptions
from diffiml_cli.errors import DiffimlError
from diffiml_cli.training_options import SELECTION_METRICS, DataRecipe, ModelRecipe, TrainOptions

DEFAULT = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.default is not dataclasses.MISSING}
DATA = DataRecipe()
PANELS = {
    "Data": ("data", "synthetic_from", "synthetic_kinds", "other_camera_donors", "match_grain", "authentic_share",
             "authentic_per_batch", "exclude_photos", "hard_negatives", "hard_negative_share", "synthetic_length"),
    "Model": ("preset", "model", "edge", "vae", "init", "copy_move_cue", "noiseprint", "trace_branch",
              "backbone_weights", "image_size", "resolution"),
    "Optimisation": ("steps", "epochs", "batch_size", "lr", "weight_decay", "backbone_lr_scale", "warmup_steps",
                     "ema", "prior_rate", "mask_loss_weight", "amp", "seed", "num_workers", "device"),
    "Detector": ("train_detector", "detector_grid", "detector_trace", "detector_steps", "detector_ensemble",
                 "detector_precision"),
    "Sampler tuning": ("tune_sampler", "tune_steps", "tune_ensemble", "decoded_loss_weight"),
    "Validation": ("val", "select_by", "val_every"),
    "Output": ("out", "resume", "save_every"),
}


def _read_config(ctx: typer.Context, path: Path | None) -> Path | None:
    """--config: the file's options become the defaults of the others, so flags given beside it override it."""
    if path is None:
        return None
    from diffiml_cli.train_config import read_train_config

    try:
        options = read_train_config(path)
    except DiffimlError as error:
        raise typer.BadParameter(str(error), param_hint="--config") from None
    unknown = sorted(set(options) - {parameter.name for parameter in ctx.command.params} - {"config"})
    if unknown:
        raise typer.BadParameter(f"{path}: unknown options {', '.join(unknown)}", param_hint="--config")
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return path


@with_help_panels(PANELS)
def train(
    config: Annotated[Path | None, typer.Option(help="A TOML file whose keys are these options (batch_size = 8), or a "
                      "run's train_config.json to repeat it; flags given beside it override it.", is_eager=True,
                      callback=_read_config)] = None,
    data: Annotated[list[str], typer.Option("--data", help="IMDL-BenCo JSON or Tp/Gt(/Au) folder, optionally PATH:WEIGHT. Repeatable.")] = [],  # noqa: B006
    synthetic_from: Annotated[list[Path], typer.Option("--synthetic-from", help="A folder of authentic photos to manipulate on the fly. Repeatable.")] = [],  # noqa: B006
    synthetic_kinds: Annotated[str | None, typer.Option(help="Comma-separated synthetic edits to train on: splice, "
                               "copy_move, inpaint (default: all three, equally often). Validation keeps all three.")] = None,
    other_camera_donors: Annotated[bool, typer.Option("--other-camera-donors", help="Re-render each splice donor, and "
                                   "half the hosts (untouched photos too), as another camera would.")] = False,
    match_grain: Annotated[bool, typer.Option("--match-grain", help="Add noise inside each synthetic edit until its "
                           "fine grain is 70-100 % of the host's around it, as a careful forger does.")] = False,
    val: Annotated[str | None, typer.Option(help="Validation data: a SPEC, or synthetic:DIR[:N] for N held-out synthetic pairs.")] = None,
    authentic_share: Annotated[float, typer.Option(help="Share of untouched photos among the synthetic samples "
                               "(also in synthetic validation).", min=0.0, max=1.0)] = DATA.authentic_share,
    authentic_per_batch: Annotated[int, typer.Option(help="At least this many untouched photos in every batch "
                                   "(synthetic data; needs --authentic-share of at least K / --batch-size).", min=0)] = DEFAULT["authentic_per_batch"],
    exclude_photos: Annotated[list[Path], typer.Option("--exclude-photos", help="A text file of photo stems (one per "
                              "line) that --synthetic-from must not use: held-out photos. Repeatable.")] = [],  # noqa: B006
    hard_negatives: Annotated[Path | None, typer.Option(help="A text file of photo stems that untouched samples "
                              "favour (natural repetition, busy texture; see docs/mine_hard_negatives.py).")] = None,
    hard_negative_share: Annotated[float, typer.Option(help="Share of untouched samples taken from --hard-negatives.",
                                   min=0.0, max=1.0)] = DATA.hard_negative_share,
    select_by: Annotated[str, typer.Option(help=f"Validation number that picks best/: {', '.join(SELECTION_METRICS)} "
                         "(pixel_f1_all counts an authentic image 1 when nothing is marked).")] = DEFAULT["select_by"],
    train_detector: Annotated[bool, typer.Option("--train-detector", help="Train only the image-level detector "
                              "(added when the model has none) on the frozen localizer's outputs.")] = False,
    detector_grid: Annotated[bool, typer.Option("--detector-grid", help="With --train-detector: a fresh detector "
                             "that also reads the image's JPEG block grid (replaces one that does not).")] = False,
    detector_trace: Annotated[bool, typer.Option("--detector-trace", help="With --train-detector: a fresh detector "
                              "that also reads the camera-trace channels of the --noiseprint front end.")] = False,
    trace_branch: Annotated[bool | None, typer.Option("--trace-branch/--no-trace-branch", help="Give the condition "
                            "encoder the --noiseprint front end's map; with --init the new branch starts at zero.")] = None,
    noiseprint: Annotated[str | None, typer.Option(help="Add this frozen camera-trace front end to the model: a "
                          "`convert --noiseprint` folder or a LightNP student (GRIP-UNINA's licence: non-profit use "
                          "only). Its weights join the checkpoint.")] = None,
    detector_steps: Annotated[int, typer.Option(help="With --train-detector: the DDIM steps of the localizer's "
                              "outputs (use localize's default).", min=1)] = DEFAULT["detector_sampling"].steps,
    detector_ensemble: Annotated[int, typer.Option(help="With --train-detector: their ensemble size N.", min=1)] = DEFAULT["detector_sampling"].ensemble,
    detector_precision: Annotated[str, typer.Option(help="With --train-detector: their precision (fp32, bf16, fp16).")] = DEFAULT["detector_precision"],
    tune_sampler: Annotated[str | None, typer.Option(help="Tune only the denoiser of --init for this few-step "
                            "sampler (e.g. ddim-trailing), through its steps end to end; the checkpoint then samples "
                            "with it by default (docs/train.md).")] = None,
    tune_steps: Annotated[int, typer.Option(help="With --tune-sampler: its steps.", min=1)] = DEFAULT["tune_sampling"].steps,
    tune_ensemble: Annotated[int, typer.Option(help="With --tune-sampler: members per item in training.", min=1)] = DEFAULT["tune_sampling"].ensemble,
    decoded_loss_weight: Annotated[float, typer.Option(help="With --tune-sampler: weight of the decoded mask's loss "
                                   "beside the latent one.", min=0.0)] = DEFAULT["decoded_loss_weight"],
    synthetic_length: Annotated[int, typer.Option(help="Synthetic training items per epoch.", min=1)] = DATA.synthetic_length,
    preset: Annotated[str, typer.Option(help="Model preset: paper, fast, tiny.")] = ModelRecipe.preset,
    model: Annotated[str | None, typer.Option("--model", help="diffusion (DiffIML, the default) or discriminative "
                     "(the same encoder with a BCE + Dice segmentation head: the paper's Table 5 baseline).")] = None,
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help="Edge supervision (the paper's default); --no-edge is "
                    "the ablation: the denoiser generates the mask latent alone.")] = True,
    vae: Annotated[str | None, typer.Option(help="MaskVAE checkpoint from distill-vae (default: the shipped weights/lightvae).")] = None,
    init: Annotated[str | None, typer.Option(help="Start from this localizer checkpoint's weights (and its config).")] = None,
    copy_move_cue: Annotated[bool | None, typer.Option("--copy-move-cue/--no-copy-move-cue", help="Give the condition "
                             "encoder the image's SIFT self-matches; with --init the new branch starts at zero.")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="ImageNet init of the backbone: efficientnet-lite0 (bundled), nvidia/mit-b3 or another Hub id, or a local file or folder.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (or give --epochs).", min=1)] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training data.", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step per process.", min=1)] = DEFAULT["batch_size"],
    image_size: Annotated[int | None, typer.Option(help="Training size (default: the preset's).")] = None,
    resolution: Annotated[str | None, typer.Option(help="resize (as the paper) or native (windows at the photo's own "
                          "resolution). Default: the preset's, or the --init checkpoint's.")] = None,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = DEFAULT["learning_rate"],
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = DEFAULT["weight_decay"],
    backbone_lr_scale: Annotated[float, typer.Option(help="The backbone's learning rate as a fraction of --lr; 0 freezes "
                                                     "it (weights and BatchNorm statistics).", min=0.0)] = DEFAULT["backbone_lr_scale"],
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.")] = DEFAULT["warmup_steps"],
    ema: Annotated[float, typer.Option(help="EMA decay of the weights; 0 disables.")] = DEFAULT["ema_decay"],
    prior_rate: Annotated[float, typer.Option(help="Error-prior rate lambda.")] = DEFAULT["prior_rate"],
    mask_loss_weight: Annotated[float, typer.Option(help="Loss weight alpha of the mask latent.")] = DEFAULT["mask_loss_weight"],
    amp: Annotated[str, typer.Option(help="none, bf16 or fp16 (CUDA).")] = DEFAULT["amp"],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: state, logs and checkpoints.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from <out>/state.pt.")] = False,
    seed: SeedOption = DEFAULT["seed"],
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes.", min=0)] = DEFAULT["num_workers"],
    save_every: Annotated[int, typer.Option(help="Write the resumable state every N steps.", min=1)] = DEFAULT["save_every"],
    val_every: Annotated[int, typer.Option(help="Validate and write checkpoints every N steps.", min=1)] = DEFAULT["val_every"],
    device: DeviceOption = "auto",
) -> None:
    """Train DiffIML's condition encoder and denoiser on frozen MaskVAE latents (Algorithm 1)."""
    from diffiml_cli.inference import resolve_device
    from diffiml_cli.training_setup import parse_kinds, read_stems, start_training, stems_of

    if (steps is None) == (epochs is None):
        raise DiffimlError("give exactly one of `steps` and `epochs`")
    recipe = ModelRecipe(preset=preset, kind=model, edge=edge, image_size=image_size, resolution=resolution, vae=vae,
                         init=init, copy_move_cue=copy_move_cue, detector=train_detector, detector_grid=detector_grid,
                         detector_trace=detector_trace, noiseprint=noiseprint, trace_branch=trace_branch,
                         backbone_weights=backbone_weights)
    sources = DataRecipe(
        data=tuple(data), synthetic_from=tuple(map(str, synthetic_from)), synthetic_kinds=parse_kinds(synthetic_kinds),
        other_camera_donors=other_camera_donors, match_grain=match_grain, val=val, authentic_share=authentic_share,
        exclude_photos=stems_of(exclude_photos), hard_negatives=tuple(read_stems(hard_negatives)) if hard_negatives else (),
        hard_negative_share=hard_negative_share, synthetic_length=synthetic_length,
        sources={"exclude_photos": list(map(str, exclude_photos)), "hard_negatives": str(hard_negatives or "") or None})
    options = TrainOptions(
        out_dir=out, steps=steps or 1, batch_size=batch_size, learning_rate=lr, weight_decay=weight_decay,
        backbone_lr_scale=backbone_lr_scale, warmup_steps=warmup_steps, ema_decay=ema, prior_rate=prior_rate,
        mask_loss_weight=mask_loss_weight, amp=amp, seed=seed, save_every=save_every, val_every=val_every,
        num_workers=num_workers, authentic_per_batch=authentic_per_batch, select_by=select_by,
        detector_sampling=SamplingOptions(steps=detector_steps, ensemble=detector_ensemble),
        detector_precision=detector_precision, train_part="sampler" if tune_sampler else "all",
        tune_sampling=SamplingOptions(steps=tune_steps, ensemble=tune_ensemble, sampler=tune_sampler or "ddim-trailing"),
        decoded_loss_weight=decoded_loss_weight)
    progress = progress_bar("train", "step", stderr, fields="loss {task.fields[loss]}  {task.fields[val]}")
    task = progress.add_task("train", total=None, loss="-", val="")

    def on_start(trainer) -> None:  # started here, so that a run that cannot start leaves no bar behind
        progress.reset(task, total=trainer.options.steps, completed=trainer.step)  # a resumed run's rate starts here
        if trainer.context.is_main:
            progress.start()

    def on_step(step: int, record: dict) -> None:
        val_text = f"val F1 {record['val_f1']:.3f}" if "val_f1" in record else progress.tasks[task].fields["val"]
        progress.update(task, completed=step, loss=f"{record['loss']:.4f}", val=val_text)

    try:
        trainer = start_training(recipe, sources, options, device=resolve_device(device), resume=resume,
                                 epochs=epochs, on_start=on_start, on_step=on_step)
    finally:
        progress.stop()
    if trainer.context.is_main:
        stderr.print(f"done: {markup_safe(out / 'final')} (inference checkpoint), log {markup_safe(out / 'metrics.jsonl')}",
                     soft_wrap=True)
