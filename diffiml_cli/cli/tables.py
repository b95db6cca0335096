"""The tables `evaluate` prints: the metrics per dataset (every score beside its trivial baseline and the
false alarms on authentic images), the robustness curves, and a sweep's cells."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from diffiml_cli.cli.display import markup_safe
from diffiml_cli.evaluation.definitions import (AVERAGE_DEFINITION, LEVEL_NAMES, METRIC_DEFINITIONS, METRIC_KEYS,
                                                PERTURBATION_DEFINITIONS, PERTURBATION_LEVELS, SWEEP_METRICS)

if TYPE_CHECKING:
    from diffiml_cli.evaluation.scoring import EvaluationReport


def number(value: float | None, digits: int = 3) -> str:
    """A metric for a table: `digits` decimals, or a dash where it is undefined."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # a pipe or file gets 80 columns by default; the tables read whole at 100
        console = Console(width=max(console.width, 100))
    return console


def _table(title: str, headers: tuple[str, ...]) -> Table:
    """A table without vertical rules (so 7-8 columns fit 80 characters); the first column left-aligned; a cell
    too long for its column (a long dataset name) folds onto the next line instead of being cut."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", overflow="fold")  # long names fold
    return table


def print_metrics(report: EvaluationReport, threshold: float, console: Console | None = None) -> None:
    """The headline numbers per dataset and their average, each beside its trivial baseline; then the details
    (oracle, false-alarm pixels, speed) and the robustness curves, each a table that fits 80 columns."""
    console = console or _console()
    t = f"{threshold:g}"
    rows = [(markup_safe(name), r.metrics) for name, r in report.datasets.items()]
    rows.append(("[bold]average[/bold]", report.average))
    headline = _table(f"diffiml evaluate (threshold {t})",
                      ("dataset", "Tp / Au", f"F1@{t}", "trivial\nF1", "pixel\nAUC", "image\nAUC", "bal.\nacc",
                       "Au\nflagged"))
    details = _table("details", ("dataset", "F1 all", "IoU", "ORACLE F1\n(threshold)", "Au pixel\nFPR",
                                 "max-score\nAUC", "s / img"))
    for index, (name, m) in enumerate(rows):
        last = index == len(rows) - 2
        oracle = number(m["oracle_f1"]) + (f" ({m['oracle_threshold']:.2f})" if "oracle_threshold" in m and
                                           not math.isnan(m["oracle_threshold"]) else "")
        headline.add_row(name, f"{m['n_tampered']} / {m['n_authentic']}", number(m["pixel_f1"]),
                         number(m["trivial_f1"]), number(m["pixel_auc"]), number(m["image_auc"]),
                         number(m["image_balanced_accuracy"]), number(m["authentic_any_rate"]), end_section=last)
        details.add_row(name, number(m["pixel_f1_all"]), number(m["pixel_iou"]), oracle,
                        number(m["authentic_pixel_fpr"]), number(m["max_score_auc"]), number(m["seconds_per_image"]),
                        end_section=last)
    console.print(headline)
    console.print(details)
    for kind, levels in report.robustness.items():
        curve = _table(f"robustness: {kind}, pixel F1@{t} by {LEVEL_NAMES[kind]}",
                       ("dataset", "clean", *(str(level.perturbation.level) for level in levels)))
        for name in report.datasets:
            curve.add_row(markup_safe(name), number(report.datasets[name].metrics["pixel_f1"]),
                          *(number(level.datasets[name]["pixel_f1"]) for level in levels))
        curve.add_row("[bold]average[/bold]", number(report.average["pixel_f1"]),
                      *(number(level.average["pixel_f1"]) for level in levels))
        console.print(curve)
    console.print("Tp / Au: tampered / authentic images. trivial F1: marking every pixel. Au flagged: authentic images "
                  "with any pixel marked. Image AUC and balanced accuracy (chance 0.5) are of the detection score; "
                  "max-score AUC of the map's maximum. F1 all: authentic images count 1 when nothing is marked. "
                  "ORACLE uses the labels to pick the threshold: an upper bound, not a deployable score. "
                  "Definitions: diffiml evaluate --help.", style="dim")


def print_sweep(document: dict, datasets: list[str], seeds: list[int], console: Console | None = None) -> None:
    """One table per swept metric: mean ± std over seeds, one row per (sampler, steps, N)."""
    console = console or _console()
    for key in SWEEP_METRICS:
        table = _table(f"{key}: mean ± std over seeds {', '.join(map(str, seeds))}",
                       ("sampler", "steps", "N", *(markup_safe(name) for name in datasets)))
        for cell in document["cells"]:
            values = [cell["datasets"][name][key] for name in datasets]
            table.add_row(str(cell.get("sampler")), str(cell["steps"]), str(cell["ensemble"]),
                          *(f"{number(v['mean'])} ± {number(v['std'])}" for v in values))
        console.print(table)


def evaluate_help() -> str:
    """`diffiml evaluate --help`: what it does, every metric's definition and the robustness protocol."""
    keys = (*METRIC_KEYS, "image_score", "detection_score")
    definitions = "\n\n".join(f"{key}: {METRIC_DEFINITIONS[key]}" for key in keys)
    protocol = "\n\n".join(f"{kind} ({LEVEL_NAMES[kind]} {', '.join(map(str, PERTURBATION_LEVELS[kind]))}): "
                           f"{PERTURBATION_DEFINITIONS[kind]}" for kind in PERTURBATION_LEVELS)
    return (
        "Score a checkpoint on labelled datasets (pixel and image metrics, optionally under JPEG, blur, noise).\n\n"
        "Pixel F1/IoU/AUC at the masks' original resolution, image-level detection (AUC and balanced accuracy of "
        "the detection score), false alarms on authentic images, an ORACLE best-threshold F1 and the trivial "
        "all-manipulated F1 for reference, and (with --robustness) F1 at each of the paper's perturbation levels. "
        "Exit code 1 when any pair had to be skipped.\n\n"
        "Masks, whatever their form: a pixel's value is its brightest channel (red or any colour on black counts); a "
        "mask whose brightest value is 128 or more marks pixels above 127 (0/255, colour), one whose brightest value "
        "lies in 1..127 is a label map marking every non-zero pixel (0/1), and an all-zero mask marks nothing (its "
        "image is scored as authentic, with a warning). The output says how many masks were read in each form.\n\n"
        f"Metrics (with --threshold T, read T for 0.5):\n\n{definitions}\n\naverage: {AVERAGE_DEFINITION}\n\n"
        f"Robustness protocol (applied at the original resolution, before the model):\n\n{protocol}"
    )
