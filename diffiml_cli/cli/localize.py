"""`diffiml localize`: write mask, probability, overlay and uncertainty PNGs for each input image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffiml_cli.batch import RESULTS_JSON, ImageResult, LocalizeOptions, RunSummary, localize_files, prepare_out_dir
from diffiml_cli.cli.common import (SAMPLING, TILE_OVERLAP, AllowPickleOption, BatchSizeOption, CheckpointOption,
                                    DeviceOption, EnsembleOption, Fp16Option, GateOption, PrecisionOption,
                                    ResolutionOption, SamplerOption, SeedOption, StepsOption, ThresholdOption, TileOption,
                                    TileOverlapOption, TtaOption, open_pipeline, stderr, stop_on_interrupt)
from diffiml_cli.cli.display import markup_safe, visible
from diffiml_cli.distributed import init_distributed
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, list_images
from diffiml_cli.inference import DEFAULT_PRECISION, SamplingOptions


def localize(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    checkpoint: CheckpointOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("diffiml-out"),
    sampler: SamplerOption = SAMPLING.sampler,
    steps: StepsOption = SAMPLING.steps,
    ensemble: EnsembleOption = SAMPLING.ensemble,
    tta: TtaOption = SAMPLING.tta,
    threshold: ThresholdOption = 0.5,
    gate: GateOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = DEFAULT_PRECISION,
    fp16: Fp16Option = False,
    seed: SeedOption = SAMPLING.seed,
    batch_size: BatchSizeOption = 1,
    tile: TileOption = None,
    tile_overlap: TileOverlapOption = TILE_OVERLAP,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs already exist.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images (decompression-bomb guard).", min=1)] = DEFAULT_MAX_PIXELS,
    resolution: ResolutionOption = None,
    allow_pickle: AllowPickleOption = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the denoiser.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Also write <out>/report.html, the case report "
                                         "of every image in --out (as `diffiml report` does).")] = False,
    noiseprint: Annotated[bool, typer.Option("--noiseprint", help="Also write <stem>_noiseprint.png, the camera-trace "
                                             "map at full resolution (GRIP-UNINA's licence: non-profit use only).")] = False,
    noiseprint_weights: Annotated[str | None, typer.Option(help="With --noiseprint: the extractor, a noiseprint "
                                                           "checkpoint (default: the shipped LightNP, weights/lightnp) "
                                                           "or noiseprint++.th itself.")] = None,
) -> None:
    """Localize manipulations: <stem>_mask.png (0/255), _prob.png, _overlay.png, _uncertainty.png, results.json."""
    images = list_images(inputs)
    prepare_out_dir(out)  # before the model loads and the progress bar starts: a bad --out fails fast, in one line
    sampling = SamplingOptions(steps=steps, ensemble=ensemble, tta=tta, seed=seed, sampler=sampler)
    pipeline = open_pipeline(checkpoint, device=device, precision=precision, fp16=fp16, allow_pickle=allow_pickle,
                             sampling=sampling, compile=compile, resolution=resolution, threshold=threshold,
                             gate=gate, tile=tile, tile_overlap=tile_overlap, batch_size=batch_size)
    context = init_distributed(pipeline.predictor.device)
    options = LocalizeOptions(out_dir=out, batch_size=batch_size, overwrite=overwrite, max_pixels=max_pixels)
    start = time.perf_counter()
    try:
        with stop_on_interrupt() as interrupted, _progress(context.is_main) as progress:
            # Under torchrun rank 0 shows its own shard and the skips, so the total is unknown there.
            task = progress.add_task("localize", total=len(images) if context.world_size == 1 else None, last="")

            def on_result(result: ImageResult) -> None:
                if result.status == "failed":
                    progress.console.print(f"[red]failed[/red] {markup_safe(result.error)}", soft_wrap=True)
                progress.update(task, advance=1, last=visible(Path(result.image).name))

            summary = localize_files(images, pipeline, options, on_result=on_result, context=context,
                                     should_stop=lambda: bool(interrupted[0]))
    finally:
        context.close()
    if noiseprint and context.is_main and summary.stopped is None and not summary.interrupted:
        from diffiml_cli.cli.noiseprint_options import write_views

        write_views(summary, noiseprint_weights, overwrite=overwrite, max_pixels=max_pixels)
    if report and context.is_main and summary.stopped is None:
        from diffiml_cli.report import build_report

        stderr.print(f"report -> {markup_safe(build_report(out))}", soft_wrap=True)
    _report(summary, out, time.perf_counter() - start, main=context.is_main, stop_signal=interrupted[0])


def _progress(show: bool) -> Progress:
    return Progress(TextColumn("[bold]localize"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[last]}", markup=False), console=stderr, disable=not show)


def _report(summary: RunSummary, out: Path, elapsed: float, *, main: bool, stop_signal: int = 0) -> None:
    """The closing lines: counts, failures one per line, then the exit code (128 + the signal's number when a
    stop signal ended the run: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; 1 failures)."""
    counts = {status: summary.count(status) for status in ("ok", "skipped", "failed")}
    if main:
        left_out = f", {len(summary.not_analysed)} not analysed (see results.json)" if summary.not_analysed else ""
        stderr.print(f"{counts['ok']} localized, {counts['skipped']} skipped (outputs exist; --overwrite redoes them), "
                     f"{counts['failed']} failed{left_out} in {elapsed:.1f}s -> {markup_safe(out / RESULTS_JSON)}",
                     soft_wrap=True)
    failures = [r for r in summary.results if r.status == "failed"]
    if failures:
        stderr.print("[red]failures:[/red]")
        for result in failures:
            stderr.print(f"  {markup_safe(result.error)}", soft_wrap=True)
    if summary.stopped:
        stderr.print(f"error: {markup_safe(summary.stopped)}; {summary.left} left: free space, then run the same "
                     "command again to finish", soft_wrap=True)
        raise typer.Exit(code=1)
    if summary.interrupted:
        stderr.print(f"interrupted: {counts['ok'] + counts['failed']} done, {summary.left} left; run the same "
                     "command again to finish", soft_wrap=True, markup=False)
        raise typer.Exit(code=128 + (stop_signal or 2))
    if failures:
        raise typer.Exit(code=1)
