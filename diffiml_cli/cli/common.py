"""Option types and helpers shared by several sub-commands."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import torch
import typer
from rich.console import Console

from diffiml_cli.checkpoint import default_checkpoint
from diffiml_cli.config import ModelConfig
from diffiml_cli.inference import Predictor, SamplingOptions, resolve_device
from diffiml_cli.models.build import load_localizer

stderr = Console(stderr=True)

CheckpointOption = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="A local checkpoint directory or .safetensors file, or a Hub id org/name[@revision]. "
        "Default: the checkpoint shipped in weights/.",
    ),
]
StepsOption = Annotated[int, typer.Option(help="DDIM sampling steps (sigma = 0).", min=1, max=1000)]
EnsembleOption = Annotated[int, typer.Option(help="Noise samples N, run as one batch; their latents are averaged.", min=1)]
TtaOption = Annotated[bool, typer.Option("--tta/--no-tta", help="Also predict the mirrored image and merge by max.")]
ThresholdOption = Annotated[float, typer.Option(help="Probability at or above which a pixel counts as manipulated.", min=0.0, max=1.0)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Fp16Option = Annotated[bool, typer.Option("--fp16/--no-fp16", help="fp16 autocast (CUDA only).")]
SeedOption = Annotated[int, typer.Option(help="Seed of the sampling noise: the same seed gives the same mask.")]
BatchSizeOption = Annotated[int, typer.Option(help="Images per forward pass.", min=1)]
ResolutionOption = Annotated[
    str | None,
    typer.Option(help="How images reach the model: resize (squeezed to the model's training size) or native (each "
                 "image at its own resolution, shrunk only past the model's native_max_side). Default: the checkpoint's."),
]
AllowPickleOption = Annotated[
    bool,
    typer.Option(help="Accept a pickle (.pth/.pt/.bin) checkpoint, loaded with torch.load(weights_only=True)."),
]


def parse_int_list(text: str, option: str, *, minimum: int = 1) -> list[int]:
    """'1,5' -> [1, 5]; every item an integer >= minimum, else a usage error (exit 2) naming the option."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or any(value < minimum for value in values):
        raise typer.BadParameter(f"expected comma-separated integers >= {minimum}, got {text!r}", param_hint=option)
    return values


def load_predictor(
    checkpoint: str | None, *, device: str, fp16: bool, allow_pickle: bool, sampling: SamplingOptions,
    compile: bool = False, resolution: str | None = None,
) -> tuple[Predictor, ModelConfig, dict[str, Any]]:
    """Load a checkpoint (default: the shipped one) onto a device; returns the predictor, its config (with
    `resolution` applied when given), and the run description that `localize` and `evaluate` write beside
    their results."""
    source = checkpoint or default_checkpoint()
    localizer, config = load_localizer(source, allow_pickle=allow_pickle)
    if resolution is not None:
        config = dataclasses.replace(config, resolution=resolution)  # an unknown name is a DiffimlError
    torch_device = resolve_device(device)
    predictor = Predictor(localizer, config.diffusion, device=torch_device, fp16=fp16, compile=compile)
    run_info = {
        "checkpoint": str(source),
        "device": str(torch_device),
        "fp16": fp16,
        "cpu_threads": torch.get_num_threads(),
        "sampling": {"steps": sampling.steps, "ensemble": sampling.ensemble, "tta": sampling.tta, "seed": sampling.seed},
        "image_size": config.image_size,
        "resolution": config.resolution,
    }
    return predictor, config, run_info
