"""The Noiseprint parts of two commands: `benchmark --noiseprint` (its rows, diffiml_cli/noiseprint_benchmark.py)
and `localize --noiseprint` (the evidence view, diffiml_cli/noiseprint_view.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from diffiml_cli.cli.common import stderr
from diffiml_cli.cli.display import markup_safe

LICENCE_NOTE = ("Noiseprint++ (TruFor, CVPR 2023) and LightNP, distilled from it, are GRIP-UNINA's, under their "
                "licence: informational and non-profit use only; cite the authors when results are made public")


def noiseprint_rows(sources: list[str], result: dict[str, Any], device, *, warmup: int, iters: int,
                    quiet: bool, allow_pickle: bool = False) -> dict[str, Any]:
    """Time every source at the localizer rows' image size, on their device."""
    from diffiml_cli.noiseprint_benchmark import benchmark_noiseprint

    return benchmark_noiseprint(sources, image_size=result["model"]["image_size"], device=device, warmup=warmup,
                                iters=iters, allow_pickle=allow_pickle,
                                on_progress=None if quiet else lambda m: stderr.print(f"[dim]{m}[/dim]"))


def render_noiseprint(rows: dict[str, Any], console: Console) -> None:
    """One row per front end: parameters, GFLOPs and kFLOP/pixel, ms per image, speed-up over the first row."""
    size = rows["image_size"]
    table = Table(title=f"Noiseprint front ends, per {size}² image (localize --noiseprint)",
                  caption="a MAC is 2 FLOPs; times are median [25th–75th percentile]; Noiseprint++ and what is "
                  "distilled from it: GRIP-UNINA's licence, non-profit use only")
    for column in ("front end", "params k", "GFLOPs", "kFLOP / pixel", "ms / img", "speed-up vs first"):
        table.add_column(column, justify="left" if column == "front end" else "right")
    for row in rows["rows"]:
        ms = row["ms_per_image"]
        table.add_row(row["name"], f"{row['parameters'] / 1e3:.0f}", f"{row['gflops']:.1f}",
                      f"{row['flops_per_pixel'] / 1e3:.0f}", f"{ms['median']:.0f} [{ms['q25']:.0f}–{ms['q75']:.0f}]",
                      f"{row['vs_first']:.2f}×")
    console.print(table)


def noiseprint_source(source: str | None, *, allow_pickle: bool = False) -> str:
    """The extractor `localize --noiseprint` will use, checked by loading it once, before any image runs:
    `source`, or weights/lightnp when one is shipped; else one line saying what to pass."""
    from diffiml_cli.checkpoint import default_checkpoint_dir
    from diffiml_cli.errors import DiffimlError
    from diffiml_cli.models.noiseprint import load_noiseprint

    if source is None:
        try:
            source = str(default_checkpoint_dir("lightnp"))
        except DiffimlError:
            raise DiffimlError("--noiseprint needs --noiseprint-weights: no LightNP is shipped (docs/noiseprint.md); "
                               "convert TruFor's noiseprint++.th with `diffiml convert noiseprint++.th --noiseprint "
                               "--out DIR` and pass DIR") from None
    load_noiseprint(source, allow_pickle=allow_pickle)
    return source


def write_views(summary, source: str, *, overwrite: bool, max_pixels: int, allow_pickle: bool = False) -> None:
    """`<stem>_noiseprint.png` for every image `localize` wrote or kept, by `source` (see `noiseprint_source`)."""
    from diffiml_cli.noiseprint_view import write_noiseprint_views

    items = [(r.image, r.outputs["mask"]) for r in summary.results if r.status != "failed" and r.outputs.get("mask")]

    def on_done(image: str, error: str | None) -> None:
        if error:
            stderr.print(f"[red]noiseprint failed[/red] {markup_safe(error)}", soft_wrap=True)

    written = write_noiseprint_views(items, source, overwrite=overwrite, max_pixels=max_pixels, on_done=on_done,
                                     allow_pickle=allow_pickle)
    stderr.print(f"noiseprint views: {written} written (<stem>_noiseprint.png) by {markup_safe(source)}. "
                 f"{LICENCE_NOTE}.", soft_wrap=True)
