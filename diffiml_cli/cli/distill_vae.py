"""`diffiml distill-vae`: train the LightVAE mask autoencoder, distilled from the SD VAE or on its own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from diffiml_cli.cli.common import DeviceOption, stderr
from diffiml_cli.cli.progress import progress_bar
from diffiml_cli.distillation.settings import DEFAULT_TEACHER, DistillSettings, RefitSettings

if TYPE_CHECKING:
    from diffiml_cli.distillation import StepStats

DISTILL = DistillSettings()  # the defaults every option shows
REFIT = RefitSettings()
_SMOOTHING = 0.98  # exponential moving average of the losses shown on the progress bar


def distill_vae(
    teacher: Annotated[str, typer.Option(
        help="The SD VAE to distil from: a Hub id org/name (optionally @revision), a local diffusers folder, or 'none' "
        "to train on reconstruction alone and calibrate the latent scale (1/std).")] = DEFAULT_TEACHER,
    teacher_subfolder: Annotated[str | None, typer.Option(
        help="Folder of the VAE inside the teacher repository, e.g. 'vae' for a full pipeline.")] = None,
    data: Annotated[list[str] | None, typer.Option(
        "--data", help="A dataset (IMDL-BenCo JSON or Tp/Gt folder) whose masks are mixed in; repeatable.")] = None,
    steps: Annotated[int | None, typer.Option(
        help=f"Optimizer steps. Default: {DISTILL.steps}; {REFIT.steps} with --refit-decoder.", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Masks per step.", min=1)] = DISTILL.batch_size,
    image_size: Annotated[int, typer.Option(help="Training mask size in pixels (a multiple of 8).", min=8)] = DISTILL.image_size,
    lambda_lat: Annotated[float, typer.Option(help="Weight of the latent MSE to the teacher (paper Eq. 6).", min=0.0)] = DISTILL.lambda_lat,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (cosine decay).", min=0.0)] = DISTILL.lr,
    recon_loss: Annotated[str, typer.Option(
        help="one-sided-l1 (overshoot beyond +-1 is free; learns boundaries faster) or l1 (the paper's).")
    ] = DISTILL.recon_loss,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the mask_vae checkpoint.")] = Path("runs/lightvae"),
    resume: Annotated[bool, typer.Option(help="Continue the run whose training_state.pt is in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and of every training mask.")] = DISTILL.seed,
    save_every: Annotated[int, typer.Option(help="Steps between resumable training states.", min=1)] = DISTILL.save_every,
    device: DeviceOption = "auto",
    bf16: Annotated[bool, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast: about 2x faster on CPUs "
                                       "with AVX512-BF16/AMX and on recent GPUs.")] = DISTILL.bf16,
    refit_decoder: Annotated[str | None, typer.Option(
        help="Instead: refit this localizer checkpoint's decoder as a resize-convolution decoder (no 8-pixel "
        "checkerboard), keeping its encoder and denoiser; --out receives the new localizer checkpoint.")] = None,
    synthetic_from: Annotated[Path | None, typer.Option(
        help="With --refit-decoder: photos whose synthetic edits the sampler runs on, for the latents it decodes.")] = None,
    exclude_photos: Annotated[list[Path], typer.Option(
        "--exclude-photos", help="With --refit-decoder: text files of photo stems to leave out. Repeatable.")] = [],  # noqa: B006
) -> None:
    """Train the mask autoencoder; writes model.safetensors, config.json and report.json to --out."""
    from diffiml_cli.distillation import distill_vae as run_distillation
    from diffiml_cli.inference import resolve_device

    if refit_decoder:
        _refit(refit_decoder, synthetic_from, exclude_photos, steps=steps or REFIT.steps, seed=seed, out=out)
        return
    steps = steps or DISTILL.steps
    settings = DistillSettings(
        teacher=None if teacher.lower() == "none" else teacher, teacher_subfolder=teacher_subfolder,
        data=tuple(data or ()), steps=steps, batch_size=batch_size, image_size=image_size,
        lambda_lat=lambda_lat, recon_loss=recon_loss, lr=lr, bf16=bf16, seed=seed, save_every=save_every,
    )
    progress = progress_bar("distill-vae", "step", stderr, fields="{task.fields[losses]}")
    task = progress.add_task("distill", total=steps, losses="", start=False)
    running: dict[str, float] = {}

    def on_step(stats: StepStats) -> None:
        if not progress.tasks[task].started:  # started here, so a teacher that fails to load leaves no bar behind
            progress.reset(task, start=True, completed=stats.step - 1)
            progress.start()
        losses = {"L1": stats.l1, "latent MSE": stats.latent_mse}
        for name, value in losses.items():
            if value is not None:
                running[name] = value if name not in running else _SMOOTHING * running[name] + (1 - _SMOOTHING) * value
        shown = "  ".join(f"{name} {value:.4f}" for name, value in running.items())
        progress.update(task, completed=stats.step, losses=f"{shown}  lr {stats.lr:.2e}")

    try:
        result = run_distillation(settings, out, resume=resume, device=resolve_device(device), on_step=on_step)
    finally:
        progress.stop()
    _print_report(result)


def _refit(checkpoint: str, photos: Path | None, exclude: list[Path], *, steps: int, seed: int, out: Path) -> None:
    from diffiml_cli.distillation.decoder_refit import refit_checkpoint
    from diffiml_cli.training_setup import read_stems

    settings = RefitSettings(photos=str(photos or ""), steps=steps, seed=seed)
    excluded = [stem for path in exclude for stem in read_stems(path)]
    with progress_bar("refit decoder", "step", stderr, fields="{task.fields[loss]}") as progress:
        task = progress.add_task("refit", total=steps, loss="")
        result = refit_checkpoint(checkpoint, settings, out, exclude=excluded,
                                  on_step=lambda step, loss: progress.update(task, completed=step, loss=f"L1 {loss:.4f}"))
    _print_report(result)
    stderr.print(f"checkerboard share of decoded sampler maps: {result.checkerboard_before:.4f} -> "
                 f"{result.checkerboard_after:.4f}; -> {escape(str(out))}", soft_wrap=True)


def _print_report(result) -> None:
    from diffiml_cli.distillation import DistillResult

    report = result.report
    table = Table(title=f"Reconstruction of {report.rows[0].count + report.rows[0].empty_count} held-out "
                  f"procedural masks at {report.image_size} px (threshold 0.5)")
    for column in ("target", "scored", "F1 mean", "IoU mean", "F1 worst", "empty: FP rate"):
        table.add_column(column, justify="left" if column == "target" else "right")
    number = lambda value: "-" if math.isnan(value) else f"{value:.4f}"  # noqa: E731
    for row in report.rows:
        table.add_row(row.kind, str(row.count), number(row.f1_mean), number(row.iou_mean), number(row.f1_min),
                      f"{number(row.empty_fpr)} ({row.empty_count})")
    stderr.print(table)
    if isinstance(result, DistillResult):
        stderr.print(f"latent scale factor {report.scale_factor:.5f} (scaled latent std {report.latent_std:.3f}); "
                     f"{result.steps} steps in {result.seconds:.0f}s -> {escape(str(result.out_dir))}", soft_wrap=True)
