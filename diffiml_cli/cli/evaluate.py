"""`diffiml evaluate`: metrics on labelled datasets, clean and under JPEG, blur and noise (paper Fig. 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from diffiml_cli.cli.common import (RunOptions, open_run, parse_int_list, parse_sampler_list, stderr,
                                    with_run_options)
from diffiml_cli.cli.display import markup_safe
from diffiml_cli.cli.progress import progress_bar
from diffiml_cli.cli.tables import evaluate_help, print_metrics, print_sweep

if TYPE_CHECKING:
    from diffiml_cli.evaluation.sweep import SweepGrid


@with_run_options
def evaluate(
    data: Annotated[list[str], typer.Option("--data", "-d", help="A dataset as NAME=SPEC (repeatable); SPEC is an "
                    "IMDL-BenCo JSON list of (image, mask or \"Negative\") pairs, or a folder with Tp/ + Gt/ (+ Au/). "
                    "Without NAME= the file or folder stem names it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for metrics.json, metrics.csv, "
                                      "per_image.csv and robustness_<kind>.png.")] = Path("diffiml-eval"),
    run: RunOptions = RunOptions(),
    save_predictions: Annotated[bool, typer.Option(help="Also write <out>/predictions/<dataset>/.../<stem>_prob.png "
                                                   "(probability x 255 at the original size, clean pass).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of the tables.")] = False,
    robustness: Annotated[str | None, typer.Option(help="Comma-separated subset of jpeg,blur,noise: re-evaluate at "
                                                   "each of the paper's levels.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N pairs of each dataset, in the spec's order "
                                              "(a folder lists Tp/ before Au/); for a quick look.", min=1)] = None,
    sweep_sampler: Annotated[str | None, typer.Option(help="Comma-separated samplers to sweep (names as --sampler): "
                                                      "evaluate every (sampler, steps, N) cell once per --seeds seed; "
                                                      "writes sweep.json and sweep.csv.")] = None,
    sweep_steps: Annotated[str | None, typer.Option(help="Comma-separated sampling steps to sweep: evaluate every "
                                                    "(steps, N) pair once per --seeds seed; writes sweep.json and sweep.csv.")] = None,
    sweep_ensemble: Annotated[str | None, typer.Option(help="Comma-separated ensemble sizes N to sweep.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated sampling seeds of a sweep (default: --seed).")] = None,
) -> None:
    from diffiml_cli.distributed import init_distributed
    from diffiml_cli.evaluation.datasets import load_datasets
    from diffiml_cli.evaluation.robustness import PERTURBATION_LEVELS, parse_kinds
    from diffiml_cli.evaluation.scoring import EvaluateOptions, evaluate_datasets
    from diffiml_cli.evaluation.sweep import SweepGrid, run_sweep

    kinds = parse_kinds(robustness)
    grid = None
    if sweep_sampler or sweep_steps or sweep_ensemble or seeds:
        grid = SweepGrid(steps=parse_int_list(sweep_steps, "--sweep-steps") if sweep_steps else [run.steps],
                         ensembles=parse_int_list(sweep_ensemble, "--sweep-ensemble") if sweep_ensemble else [run.ensemble],
                         seeds=parse_int_list(seeds, "--seeds", minimum=0, maximum=2**64 - 1) if seeds else [run.seed], tta=run.tta,
                         samplers=parse_sampler_list(sweep_sampler) if sweep_sampler else [run.sampler])
    datasets = load_datasets(data, limit)
    pipeline = open_run(run)
    context = init_distributed(pipeline.predictor.device)
    options = EvaluateOptions(robustness=kinds, seed=run.seed,
                              save_predictions_dir=out / "predictions" if save_predictions else None)
    run_info = {**pipeline.run_info(), "batch_size": run.batch_size, "limit": limit, "robustness": list(kinds),
                "data": {name: spec for name, (spec, _) in datasets.items()}}
    pairs = {name: pairs for name, (_, pairs) in datasets.items()}
    passes = (len(grid.samplers) * len(grid.steps) * len(grid.ensembles) * len(grid.seeds) if grid else
              1 + sum(len(PERTURBATION_LEVELS[kind]) for kind in kinds))
    try:
        with progress_bar("evaluate", "img", stderr, fields="{task.fields[stage]}", show=context.is_main) as progress:
            task = progress.add_task("evaluate", total=passes * sum(len(p) for p in pairs.values()) // context.world_size,
                                     stage="")

            def on_progress(stage: str, pair, error: str | None) -> None:
                if error is not None:  # a skipped pair is also left out of every robustness pass
                    progress.console.print(f"[red]skipped[/red] {markup_safe(error)}", soft_wrap=True)
                progress.update(task, advance=1, stage=stage)

            if grid is not None:
                document = run_sweep(pairs, pipeline, grid, options, context=context, on_progress=on_progress)
            else:
                report = evaluate_datasets(pairs, pipeline, None, options, on_progress=on_progress, context=context)
    finally:
        context.close()
    if not context.is_main:
        return
    if grid is not None:
        _finish_sweep(document, out, json_output, grid)
    else:
        _finish(report, out, json_output, run.threshold, run_info)


evaluate.__doc__ = evaluate_help()


def _finish(report, out: Path, json_output: bool, threshold: float, run_info: dict) -> None:
    from diffiml_cli.evaluation.report import report_document, write_report

    written = write_report(report, out, threshold=threshold, run_info=run_info)
    if json_output:
        typer.echo(json.dumps(report_document(report, threshold=threshold, run_info=run_info), indent=2, allow_nan=False))
    else:
        print_metrics(report, threshold)
    _print_mask_forms(report)
    stderr.print(f"wrote {markup_safe(', '.join(str(p) for p in written.values()))}", soft_wrap=True)
    _exit_on_bad_pairs({name: [entry.reason for entry in bad] for name, bad in report.bad_pairs.items()})


def _finish_sweep(document: dict, out: Path, json_output: bool, grid: SweepGrid) -> None:
    from diffiml_cli.evaluation.report import jsonable
    from diffiml_cli.evaluation.sweep import write_sweep

    written = write_sweep(document, out)
    if json_output:
        typer.echo(json.dumps(jsonable(document), indent=2, allow_nan=False))
    else:
        print_sweep(document, [name for name in document["cells"][0]["datasets"]], grid.seeds)
    stderr.print(f"wrote {markup_safe(', '.join(str(p) for p in written.values()))}", soft_wrap=True)
    _exit_on_bad_pairs(document["bad_pairs"])


def _print_mask_forms(report) -> None:
    """One line per dataset: how many masks were read in which form; a tampered entry whose mask is empty is
    scored as authentic, so it is named."""
    for name, dataset in report.datasets.items():
        forms = dataset.mask_forms
        if forms:
            counts = ", ".join(f"{count} {form}" for form, count in sorted(forms.items()))
            stderr.print(f"masks of {markup_safe(name)}: {counts} (rule: `diffiml evaluate --help`)", soft_wrap=True)
        if forms.get("empty"):
            stderr.print(f"[yellow]warning:[/yellow] {forms['empty']} mask(s) of {markup_safe(name)} mark nothing: "
                         "those images are scored as authentic", soft_wrap=True)


def _exit_on_bad_pairs(bad_pairs: dict[str, list[str]]) -> None:
    if any(bad_pairs.values()):
        stderr.print("[red]skipped pairs:[/red]")
        for name, reasons in bad_pairs.items():
            for reason in reasons:
                stderr.print(f"  {markup_safe(name)}: {markup_safe(reason)}", soft_wrap=True)
        raise typer.Exit(code=1)
