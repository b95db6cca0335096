"""`diffiml distill-noiseprint`: train LightNP to reproduce Noiseprint++'s maps, or score a student on held-out photos.

Noiseprint++ is GRIP-UNINA's (TruFor, CVPR 2023), under their non-profit licence: informational and non-profit
use only, keep the notices, cite the authors; a student distilled from it is a derivative under the same terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffiml_cli.cli.common import stderr

_DEFAULTS_NOTE = "(default: the run's own, see diffiml_cli/distillation/noiseprint_distill.py)"


def distill_noiseprint(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: bank/, student/, training_state.pt, "
                                      "evaluation.json.")] = Path("runs/distill-np"),
    photos: Annotated[Path, typer.Option(help="Folder holding bsds500/ and kodak24/ (the fixed held-out split is "
                                         "never trained on).")] = Path("../shared/data/authentic"),
    teacher: Annotated[Path, typer.Option(help="Noiseprint++: noiseprint++.th (read as tensors only, "
                                          "no code unpickled) or its `diffiml convert --noiseprint` folder.")]
    = Path("../shared/weights/noiseprint++/noiseprint++.th"),
    steps: Annotated[int | None, typer.Option(help=f"Optimizer steps {_DEFAULTS_NOTE}.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per step.", min=1)] = None,
    layers: Annotated[int | None, typer.Option(help="Student convolutions, first and last included.", min=2)] = None,
    width: Annotated[int | None, typer.Option(help="Student hidden channels.", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights, the variants and every window.")] = 0,
    init: Annotated[str, typer.Option(help="Start from this student checkpoint (e.g. an earlier run's OUT/student) "
                                      "instead of random weights.")] = "",
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its training_state.pt.")] = False,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Instead of training: score --student (default "
                                           "OUT/student) against the teacher on the held-out photos, beside "
                                           "fixed high-pass filters.")] = False,
    student: Annotated[Path | None, typer.Option(help="With --evaluate: the student checkpoint to score.")] = None,
    limit: Annotated[int | None, typer.Option(help="With --evaluate: score N held-out photos, evenly spaced over "
                                              "the sorted list.", min=1)] = None,
) -> None:
    """Distil Noiseprint++ into LightNP; checkpoints OUT/student/ every few minutes (--resume continues)."""
    from diffiml_cli.distillation.noiseprint_distill import NoiseprintDistillSettings

    given = {"steps": steps, "batch_size": batch_size, "layers": layers, "width": width}
    settings = NoiseprintDistillSettings(photos=str(photos), teacher=str(teacher), seed=seed, init=init,
                                         **{k: v for k, v in given.items() if v is not None})
    if evaluate:
        _evaluate(settings, out, student or out / "student", limit)
        return
    from diffiml_cli.distillation.noiseprint_distill import distill_noiseprint as run

    def on_step(stats) -> None:
        if stats.step % 10 == 0 or stats.step == stats.steps:
            stderr.print(f"step {stats.step}/{stats.steps}  loss {stats.loss:.4f}  pearson {stats.pearson:.4f}  "
                         f"bank {stats.chunks}/{stats.total_chunks} chunks", soft_wrap=True)

    written = run(settings, out, resume=resume, on_step=on_step)
    stderr.print(f"student -> {written}; score it with `diffiml distill-noiseprint --evaluate --out {out}`",
                 soft_wrap=True)


def _evaluate(settings, out: Path, student: Path, limit: int | None) -> None:
    from rich.table import Table

    from diffiml_cli.distillation.noiseprint_eval import evaluate_student

    result = evaluate_student(settings, student, out, limit=limit)
    table = Table(title=f"Pearson r with Noiseprint++'s map, per held-out photo ({result['photos']} photos; "
                  f"median [25th-75th percentile]; interior: {result['interior_band']} px borders left out)")
    parts = {"as_is": "as it is", "as_is_interior": "as it is,\ninterior", "post_processed": "post-processed",
             "post_processed_interior": "post-processed,\ninterior"}
    for column in ("map", "kFLOP / pixel", *parts.values()):
        table.add_column(column, justify="left" if column == "map" else "right")
    for row in result["rows"]:
        cells = [f"{row[part]['median']:.3f} [{row[part]['q25']:.3f}-{row[part]['q75']:.3f}]" for part in parts]
        table.add_row(row["name"], f"{row['flops_per_pixel'] / 1e3:.0f}", *cells)
    stderr.print(table)
    stderr.print(f"-> {out / 'evaluation.json'}", soft_wrap=True)
