"""Option types and helpers shared by several sub-commands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

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
AllowPickleOption = Annotated[
    bool,
    typer.Option(help="Accept a pickle (.pth/.pt/.bin) checkpoint, loaded with torch.load(weights_only=True)."),
]
