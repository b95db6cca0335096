"""`diffiml localize`: write mask, probability, overlay and uncertainty PNGs for each input image, and print
each image's verdict, detection score and marked share as it finishes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from diffiml_cli.cli.common import RunOptions, open_run, stderr, stop_on_interrupt, with_run_options
from diffiml_cli.cli.display import markup_safe, visible
from diffiml_cli.cli.progress import progress_bar
from diffiml_cli.defaults import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from diffiml_cli.batch import ImageResult, RunSummary


@with_run_options
def localize(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("diffiml-out"),
    run: RunOptions = RunOptions(),
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs already exist.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images (decompression-bomb guard).", min=1)] = DEFAULT_MAX_PIXELS,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the denoiser.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Also write <out>/report.html, the case report "
                                         "of every image in --out (as `diffiml report` does).")] = False,
    noiseprint: Annotated[bool, typer.Option("--noiseprint", help="Also write <stem>_noiseprint.png, the camera-trace "
                                             "map at full resolution (GRIP-UNINA's licence: non-profit use only).")] = False,
    noiseprint_weights: Annotated[str | None, typer.Option(help="With --noiseprint: the extractor, a noiseprint "
                                                           "checkpoint (`convert --noiseprint`, or a LightNP student) "
                                                           "or noiseprint++.th itself; needed, as none is shipped.")] = None,
) -> None:
    """Localize manipulations: <stem>_mask.png (0/255), _prob.png, _overlay.png, _uncertainty.png, results.json.

    Prints one line per image (verdict, detection score, share of pixels marked), a screenful at most; every
    image's numbers are in results.json."""
    from diffiml_cli.batch import LocalizeOptions, localize_files, prepare_out_dir
    from diffiml_cli.distributed import init_distributed
    from diffiml_cli.image_io import list_images

    images = list_images(inputs)
    prepare_out_dir(out)  # before the model loads and the progress bar starts: a bad --out fails fast, in one line
    if noiseprint:  # so is a missing or bad extractor
        from diffiml_cli.cli.noiseprint_options import noiseprint_source

        noiseprint_weights = noiseprint_source(noiseprint_weights, allow_pickle=run.allow_pickle)
    pipeline = open_run(run, compile=compile)
    context = init_distributed(pipeline.predictor.device)
    options = LocalizeOptions(out_dir=out, batch_size=run.batch_size, overwrite=overwrite, max_pixels=max_pixels)
    start = time.perf_counter()
    try:
        with stop_on_interrupt() as interrupted, progress_bar("localize", "img", stderr, fields="{task.fields[last]}",
                                                               show=context.is_main) as progress:
            # Under torchrun rank 0 shows its own shard and the skips, so the total is unknown there.
            task = progress.add_task("localize", total=len(images) if context.world_size == 1 else None, last="")
            lines = ResultLines(progress.console, show=context.is_main)

            def on_result(result: ImageResult) -> None:
                lines.add(result)
                progress.update(task, advance=1, last=visible(Path(result.image).name))

            summary = localize_files(images, pipeline, options, on_result=on_result, context=context,
                                     should_stop=lambda: bool(interrupted[0]))
    finally:
        context.close()
    if noiseprint and context.is_main and summary.stopped is None and not summary.interrupted:
        from diffiml_cli.cli.noiseprint_options import write_views

        write_views(summary, noiseprint_weights, overwrite=overwrite, max_pixels=max_pixels,
                    allow_pickle=run.allow_pickle)
    if report and context.is_main and summary.stopped is None:
        from diffiml_cli.cli.report import write_report

        stderr.print(f"report -> {markup_safe(write_report(out))}", soft_wrap=True)
    _report(summary, out, time.perf_counter() - start, main=context.is_main, stop_signal=interrupted[0])


class ResultLines:
    """One line per finished image, above the progress bar, until a screenful is shown; then one line saying
    the rest are in results.json. Names are shown escaped (display.visible)."""

    def __init__(self, console, *, show: bool) -> None:
        self.console, self.show, self.shown = console, show, 0
        self.limit = max(5, console.size.height - 4)

    def add(self, result: ImageResult) -> None:
        if not self.show:
            return
        if self.shown == self.limit:
            self.console.print("[dim]... the other images' lines are in results.json[/dim]")
        self.shown += 1
        if self.shown <= self.limit:
            self.console.print(result_line(result), soft_wrap=True, highlight=False)


def result_line(result: ImageResult) -> str:
    """`manipulated  detection 0.912  marked  12.3%  photo.jpg` (rich markup; the name escaped)."""
    name = markup_safe(result.image)
    if result.status == "failed":
        return f"[red]failed[/red] {markup_safe(result.error)}"  # the error names the file
    verdict = result.verdict or "no verdict"
    colour = {"manipulated": "red", "authentic": "green"}.get(verdict, "default")
    score = ("detection " if result.detection_score is not None else "max prob  ") + _number(
        result.detection_score if result.detection_score is not None else result.image_score, ".3f")
    marked = _number(result.manipulated_fraction, "6.1%")
    kept = " [dim](kept: outputs exist)[/dim]" if result.status == "skipped" else ""
    gated = " [dim](mask emptied: gate)[/dim]" if result.gated else ""
    return f"[{colour}]{verdict:<11}[/{colour}]  {score}  marked {marked}  {name}{kept}{gated}"


def _number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def verdict_counts(results: list[ImageResult]) -> str:
    """`verdicts: 2 manipulated, 5 authentic, 1 without a verdict` over the images localized or kept."""
    verdicts = [r.verdict or "without a verdict" for r in results if r.status != "failed"]
    named = ("manipulated", "authentic", "without a verdict")
    return "verdicts: " + (", ".join(f"{verdicts.count(v)} {v}" for v in named if v in verdicts) or "none")


def _report(summary: RunSummary, out: Path, elapsed: float, *, main: bool, stop_signal: int = 0) -> None:
    """The closing lines: counts, failures one per line, then the exit code (128 + the signal's number when a
    stop signal ended the run: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; 1 failures)."""
    from diffiml_cli.batch import RESULTS_JSON

    counts = {status: summary.count(status) for status in ("ok", "skipped", "failed")}
    if main:
        left_out = f", {len(summary.not_analysed)} not analysed (see results.json)" if summary.not_analysed else ""
        stderr.print(f"{counts['ok']} localized, {counts['skipped']} skipped (outputs exist; --overwrite redoes them), "
                     f"{counts['failed']} failed{left_out} in {elapsed:.1f}s -> {markup_safe(out / RESULTS_JSON)}",
                     soft_wrap=True)
        stderr.print(verdict_counts(summary.results), highlight=False)
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
