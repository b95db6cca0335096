"""`diffiml evaluate`: metrics on labelled datasets, clean and under JPEG, blur and noise (paper Fig. 4)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

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
    parse_int_list,
    stderr,
)
from diffiml_cli.config import ModelConfig
from diffiml_cli.data.readers import load_spec
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation import (
    AVERAGE_DEFINITION,
    METRIC_KEYS,
    EvaluateOptions,
    EvaluationReport,
    evaluate_datasets,
    parse_dataset_arg,
    report_document,
    jsonable,
    write_report,
)
from diffiml_cli.inference import SamplingOptions
from diffiml_cli.sweep import SWEEP_METRICS, sampling_sweep, write_sweep
from diffiml_cli.metrics import METRIC_DEFINITIONS
from diffiml_cli.robustness import LEVEL_NAMES, PERTURBATION_DEFINITIONS, PERTURBATION_LEVELS, parse_kinds


def evaluate(
    data: Annotated[
        list[str],
        typer.Option("--data", "-d", help="A dataset as NAME=SPEC (repeatable); SPEC is an IMDL-BenCo JSON list "
                     "of (image, mask or \"Negative\") pairs, or a folder with Tp/ + Gt/ (+ Au/). Without NAME= the "
                     "file or folder stem names it."),
    ],
    checkpoint: CheckpointOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for metrics.json, metrics.csv, "
                                      "per_image.csv and robustness_<kind>.png.")] = Path("diffiml-eval"),
    steps: StepsOption = 8,
    ensemble: EnsembleOption = 5,
    tta: TtaOption = False,
    threshold: ThresholdOption = 0.5,
    device: DeviceOption = "auto",
    fp16: Fp16Option = False,
    batch_size: BatchSizeOption = 1,
    seed: SeedOption = 0,
    save_predictions: Annotated[bool, typer.Option(help="Also write <out>/predictions/<dataset>/.../<stem>_prob.png "
                                                   "(probability x 255 at the original size, clean pass).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of the tables.")] = False,
    robustness: Annotated[str | None, typer.Option(help="Comma-separated subset of jpeg,blur,noise: re-evaluate at "
                                                   "each of the paper's levels.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N pairs of each dataset, in the spec's order "
                                              "(a folder lists Tp/ before Au/); for a quick look.", min=1)] = None,
    sweep_steps: Annotated[str | None, typer.Option(help="Comma-separated DDIM steps to sweep: evaluate every "
                                                    "(steps, N) pair once per --seeds seed; writes sweep.json and sweep.csv.")] = None,
    sweep_ensemble: Annotated[str | None, typer.Option(help="Comma-separated ensemble sizes N to sweep.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated sampling seeds of a sweep (default: --seed).")] = None,
    resolution: ResolutionOption = None,
    allow_pickle: AllowPickleOption = False,
) -> None:
    kinds = parse_kinds(robustness)
    sweep = None
    if sweep_steps or sweep_ensemble or seeds:
        if kinds:
            raise DiffimlError("--robustness cannot be combined with a sampling sweep; run them separately")
        sweep = SweepGrid(
            steps=parse_int_list(sweep_steps, "--sweep-steps") if sweep_steps else [steps],
            ensembles=parse_int_list(sweep_ensemble, "--sweep-ensemble") if sweep_ensemble else [ensemble],
            seeds=parse_int_list(seeds, "--seeds", minimum=0) if seeds else [seed],
        )
    datasets = _load_datasets(data, limit)
    sampling = SamplingOptions(steps=steps, ensemble=ensemble, tta=tta, seed=seed)
    predictor, config, run_info = load_predictor(checkpoint, device=device, fp16=fp16, allow_pickle=allow_pickle,
                                                 sampling=sampling, resolution=resolution)
    options = EvaluateOptions(threshold=threshold, batch_size=batch_size, robustness=kinds, seed=seed,
                              save_predictions_dir=out / "predictions" if save_predictions else None)
    run_info |= {
        "batch_size": batch_size,
        "limit": limit,
        "robustness": list(kinds),
        "data": {name: spec for name, (spec, _) in datasets.items()},
    }

    if sweep is not None:
        _run_sweep(sweep, {name: pairs for name, (_, pairs) in datasets.items()}, predictor, options, tta=tta,
                   model_config=config, out=out, json_output=json_output)
        return
    passes = 1 + sum(len(PERTURBATION_LEVELS[kind]) for kind in kinds)
    with Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[stage]}"), console=stderr) as progress:
        task = progress.add_task("evaluate", total=passes * sum(len(p) for _, p in datasets.values()), stage="")

        def on_progress(stage: str, pair, error: str | None) -> None:
            if error is not None:  # a skipped pair is also left out of every robustness pass
                progress.console.print(f"[red]skipped[/red] {escape(error)}", soft_wrap=True)
            progress.update(task, advance=1 if error is None else passes, stage=stage)

        report = evaluate_datasets({name: pairs for name, (_, pairs) in datasets.items()}, predictor, sampling,
                                   options, model_config=config, on_progress=on_progress)
    written = write_report(report, out, threshold=threshold, run_info=run_info)

    if json_output:
        typer.echo(json.dumps(report_document(report, threshold=threshold, run_info=run_info), indent=2))
    else:
        _print_tables(report, threshold)
    stderr.print(f"wrote {escape(', '.join(str(p) for p in written.values()))}", soft_wrap=True)
    if report.bad_pairs:
        stderr.print("[red]skipped pairs:[/red]")
        for name, bad in report.bad_pairs.items():
            for entry in bad:
                stderr.print(f"  {escape(name)}: {escape(entry.reason)}", soft_wrap=True)
        raise typer.Exit(code=1)


@dataclass(frozen=True)
class SweepGrid:
    steps: list[int]
    ensembles: list[int]
    seeds: list[int]


def _run_sweep(grid: SweepGrid, datasets: dict, predictor, options: EvaluateOptions, *, tta: bool,
               model_config: ModelConfig, out: Path, json_output: bool) -> None:
    """Evaluate every cell of `grid`, write sweep.json/csv, print one table per metric; exit 1 on skipped pairs."""
    cells = len(grid.steps) * len(grid.ensembles) * len(grid.seeds)
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[stage]}"), console=stderr) as progress:
        task = progress.add_task("sweep", total=cells * sum(len(pairs) for pairs in datasets.values()), stage="")
        document = sampling_sweep(
            datasets, predictor, steps_values=grid.steps, ensemble_values=grid.ensembles, seeds=grid.seeds, tta=tta,
            options=options, model_config=model_config,
            on_cell=lambda s, n, seed: progress.update(task, stage=f"steps {s}, N {n}, seed {seed}"),
            on_progress=lambda stage, pair, error: progress.update(task, advance=1),
        )
    written = write_sweep(document, out)
    if json_output:
        typer.echo(json.dumps(jsonable(document), indent=2))
    else:
        console = Console(width=max(Console().width, 120))
        for key in SWEEP_METRICS:
            console.print(f"{key}: mean ± std over seeds {', '.join(map(str, grid.seeds))}", soft_wrap=True)
            table = Table()
            for column in ("steps", "N", *datasets):
                table.add_column(column, justify="right")
            for cell in document["cells"]:
                values = [cell["datasets"][name][key] for name in datasets]
                table.add_row(str(cell["steps"]), str(cell["ensemble"]),
                              *(f"{_number(v['mean'])} ± {_number(v['std'])}" for v in values))
            console.print(table)
    stderr.print(f"wrote {escape(', '.join(str(p) for p in written.values()))}", soft_wrap=True)
    if document["bad_pairs"]:
        stderr.print("[red]skipped pairs:[/red]")
        for name, reasons in document["bad_pairs"].items():
            for reason in reasons:
                stderr.print(f"  {escape(name)}: {escape(reason)}", soft_wrap=True)
        raise typer.Exit(code=1)


def _help_text() -> str:
    definitions = "\n\n".join(f"{key}: {METRIC_DEFINITIONS[key]}" for key in (*METRIC_KEYS, "image_score"))
    protocol = "\n\n".join(f"{kind} ({LEVEL_NAMES[kind]} {', '.join(map(str, PERTURBATION_LEVELS[kind]))}): "
                           f"{PERTURBATION_DEFINITIONS[kind]}" for kind in PERTURBATION_LEVELS)
    return (
        "Score a checkpoint on labelled datasets (pixel and image metrics, optionally under JPEG, blur, noise).\n\n"
        "Pixel F1/IoU/AUC at the masks' original resolution, image-level detection, an ORACLE best-threshold F1 "
        "and the trivial all-manipulated F1 for reference, and (with --robustness) F1 at each of the paper's "
        "perturbation levels. Exit code 1 when any pair had to be skipped.\n\n"
        f"Metrics (with --threshold T, read T for 0.5):\n\n{definitions}\n\naverage: {AVERAGE_DEFINITION}\n\n"
        f"Robustness protocol (applied at the original resolution, before resizing):\n\n{protocol}"
    )


evaluate.__doc__ = _help_text()


def _load_datasets(data: list[str], limit: int | None) -> dict[str, tuple[str, list]]:
    datasets: dict[str, tuple[str, list]] = {}
    for text in data:
        name, spec = parse_dataset_arg(text)
        if name in datasets:
            raise DiffimlError(f"--data: two datasets are named {name!r}; name them with NAME=SPEC")
        if name == "average":
            raise DiffimlError("--data: 'average' is reserved for the mean row; pick another NAME=")
        pairs = load_spec(spec)
        datasets[name] = (spec, pairs[:limit] if limit else pairs)
    return datasets


def _number(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _print_tables(report: EvaluationReport, threshold: float) -> None:
    console = Console()
    if not console.is_terminal:  # a pipe or file gets 80 columns by default, too narrow for 12 columns
        console = Console(width=max(console.width, 150))
    table = Table(title=f"diffiml evaluate (threshold {threshold:g})")
    headers = ("dataset", "Tp / Au", f"F1@{threshold:g}", "IoU", "pixel AUC", "ORACLE F1 (thr)",
               "trivial F1", "Au pixel FPR", "Au any-rate", "image AUC", "image acc", "s/img")
    for header in headers:
        table.add_column(header, justify="left" if header == "dataset" else "right")
    rows = [(name, r.metrics) for name, r in report.datasets.items()]
    for index, (name, m) in enumerate([*rows, ("average", report.average)]):
        oracle = _number(m["oracle_f1"]) + (f" ({m['oracle_threshold']:.2f})" if "oracle_threshold" in m and
                                            not math.isnan(m["oracle_threshold"]) else "")
        table.add_row(
            f"[bold]{name}[/bold]" if name == "average" else name, f"{m['n_tampered']} / {m['n_authentic']}",
            _number(m["pixel_f1"]), _number(m["pixel_iou"]), _number(m["pixel_auc"]), oracle,
            _number(m["trivial_f1"]), _number(m["authentic_pixel_fpr"]), _number(m["authentic_any_rate"]),
            _number(m["image_auc"]), _number(m["image_accuracy"]), _number(m["seconds_per_image"], 3),
            end_section=index == len(rows) - 1,
        )
    console.print(table)
    for kind, levels in report.robustness.items():
        curve = Table(title=f"robustness: {kind} — pixel F1@{threshold:g} by {LEVEL_NAMES[kind]}")
        curve.add_column("dataset")
        curve.add_column("clean", justify="right")
        for level in levels:
            curve.add_column(str(level.perturbation.level), justify="right")
        for name in report.datasets:
            curve.add_row(name, _number(report.datasets[name].metrics["pixel_f1"]),
                          *(_number(level.datasets[name]["pixel_f1"]) for level in levels))
        curve.add_row("[bold]average[/bold]", _number(report.average["pixel_f1"]),
                      *(_number(level.average["pixel_f1"]) for level in levels))
        console.print(curve)
    console.print("Tp / Au: tampered / authentic images. ORACLE uses the labels to pick the threshold: an upper "
                  "bound, not a deployable score. Definitions: diffiml evaluate --help.", style="dim")
