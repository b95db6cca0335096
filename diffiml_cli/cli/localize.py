"""`diffiml localize`: write mask, probability, overlay and uncertainty PNGs for each input image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffiml_cli.cli.common import (
    AllowPickleOption,
    BatchSizeOption,
    CheckpointOption,
    DeviceOption,
    EnsembleOption,
    Fp16Option,
    ResolutionOption,
    SeedOption,
    StepsOption,
    ThresholdOption,
    TtaOption,
    load_predictor,
    stderr,
)
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, list_images
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.localization import RESULTS_NAME, ImageResult, LocalizeOptions, localize_files, prepare_out_dir


def localize(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    checkpoint: CheckpointOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("diffiml-out"),
    steps: StepsOption = 8,
    ensemble: EnsembleOption = 5,
    tta: TtaOption = False,
    threshold: ThresholdOption = 0.5,
    device: DeviceOption = "auto",
    fp16: Fp16Option = False,
    seed: SeedOption = 0,
    batch_size: BatchSizeOption = 1,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs already exist.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images (decompression-bomb guard).", min=1)] = DEFAULT_MAX_PIXELS,
    resolution: ResolutionOption = None,
    allow_pickle: AllowPickleOption = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the denoiser (pays off on large folders).")] = False,
) -> None:
    """Localize manipulations: <stem>_mask.png (0/255), _prob.png, _overlay.png, _uncertainty.png, results.json."""
    images = list_images(inputs)
    prepare_out_dir(out)  # before the model loads and the progress bar starts: a bad --out fails fast, in one line
    sampling = SamplingOptions(steps=steps, ensemble=ensemble, tta=tta, seed=seed)
    predictor, config, run_info = load_predictor(
        checkpoint, device=device, fp16=fp16, allow_pickle=allow_pickle, sampling=sampling, compile=compile,
        resolution=resolution,
    )
    run_info["threshold"] = threshold
    options = LocalizeOptions(out_dir=out, threshold=threshold, batch_size=batch_size, overwrite=overwrite, max_pixels=max_pixels)

    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]localize"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"), console=stderr,
    ) as progress:
        task = progress.add_task("localize", total=len(images), last="")

        def on_result(result: ImageResult) -> None:
            if result.status == "failed":
                progress.console.print(f"[red]failed[/red] {escape(result.error)}", soft_wrap=True)
            progress.update(task, advance=1, last=Path(result.image).name)

        results = localize_files(images, predictor, sampling, options, model_config=config,
                                 on_result=on_result, run_info=run_info)
    elapsed = time.perf_counter() - start

    counts = {status: sum(r.status == status for r in results) for status in ("ok", "skipped", "failed")}
    # soft_wrap and escape: each message stays one line, and file names like "[x].jpg" print as they are.
    stderr.print(
        f"{counts['ok']} localized, {counts['skipped']} skipped (outputs exist; --overwrite redoes them), "
        f"{counts['failed']} failed in {elapsed:.1f}s -> {escape(str(out / RESULTS_NAME))}", soft_wrap=True,
    )
    failures = [r for r in results if r.status == "failed"]
    if failures:
        stderr.print("[red]failures:[/red]")
        for result in failures:
            stderr.print(f"  {escape(result.error)}", soft_wrap=True)
        raise typer.Exit(code=1)
