"""`diffiml convert`: the authors' official DiffIML checkpoint as a diffiml checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffiml_cli.cli.common import stderr
from diffiml_cli.cli.display import markup_safe


def convert(
    localizer: Annotated[Path, typer.Argument(help="The official DiffIML checkpoint (diffiml_best.pth), read with "
                                              "torch.load(weights_only=True).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the converted checkpoint.")],
    vae: Annotated[Path | None, typer.Option(help="The official LightVAE (light_vae_weights.pth): needed when the "
                                             "checkpoint holds no vae.* tensors, else checked against them.")] = None,
    noiseprint: Annotated[bool, typer.Option("--noiseprint", help="The file is TruFor's noiseprint++.th (GRIP-UNINA, "
                                             "non-profit licence): write it as a noiseprint checkpoint for "
                                             "`localize --noiseprint OUT`.")] = False,
) -> None:
    """Map the official weights strictly onto the `paper` preset and write them to --out, for --checkpoint OUT.
    Every official tensor must find its place and every one of ours be filled, or nothing is written."""
    if noiseprint:
        from diffiml_cli.models.noiseprint import convert_teacher

        convert_teacher(localizer, out)
        stderr.print(f"converted {markup_safe(localizer)} -> {markup_safe(out)}; use it with --noiseprint "
                     f"{markup_safe(out)} (GRIP-UNINA's licence: non-profit use only, cite TruFor)", soft_wrap=True)
        return
    from diffiml_cli.checkpoint import save_checkpoint
    from diffiml_cli.models.official_weights import load_official

    model, config = load_official(localizer, vae)
    save_checkpoint(out, model, config)
    stderr.print(f"converted {markup_safe(localizer)} -> {markup_safe(out)}; use it with --checkpoint "
                 f"{markup_safe(out)}", soft_wrap=True)
