"""Writing an evaluation: metrics.json (every number beside its definition), metrics.csv, per_image.csv and the
robustness plots, and the spreadsheet-safe CSV they share.

CSV cells are neutralised as OWASP recommends against CSV (formula) injection: a text cell whose first
character is `=`, `+`, `-`, `@`, a tab or a carriage return (a spreadsheet would run it as a formula; the file
names come from the people under investigation) gets a leading apostrophe, which spreadsheets show as text.
Numbers are written as numbers. metrics.json keeps every name exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from diffiml_cli.evaluation.definitions import METRIC_DEFINITIONS
from diffiml_cli.evaluation.definitions import AVERAGE_DEFINITION, LEVEL_NAMES, METRIC_KEYS, PERTURBATION_DEFINITIONS
from diffiml_cli.evaluation.scoring import EvaluationReport, RobustnessLevel
from diffiml_cli.files import atomic_write_bytes
from diffiml_cli.jsonsafe import finite_json

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
PER_IMAGE_CSV = "per_image.csv"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_SURROGATE = re.compile("[\udc80-\udcff]")


def spreadsheet_safe(value):
    """A CSV cell that no spreadsheet runs as a formula: text starting with = + - @ tab or CR gets a leading
    apostrophe (OWASP); numbers stay numbers; nan and None become empty cells."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, int, float)):
        return value
    # Bytes of a name that were not UTF-8 (kept by Python as lone surrogates) are written as \xNN, as the
    # terminal shows them: CSV has no escape for them, and "?" would hide which name it was.
    text = _SURROGATE.sub(lambda match: f"\\x{ord(match[0]) - 0xDC00:02x}", str(value))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def metric_definitions(threshold: float) -> dict[str, str]:
    """METRIC_DEFINITIONS with the threshold of this run written in (their text assumes 0.5)."""
    # Every "0.5" in METRIC_DEFINITIONS is the pixel or image-score threshold.
    return {key: text.replace("0.5", f"{threshold:g}") for key, text in METRIC_DEFINITIONS.items()}


jsonable = finite_json  # nan and infinities -> None (JSON has no NaN), through nested containers


def report_document(report: EvaluationReport, *, threshold: float, run_info: Mapping | None = None) -> dict:
    """The metrics.json document: run info, definitions of every key, per dataset, average, robustness."""
    document = {
        "run": dict(run_info or {}),
        "threshold": threshold,
        "definitions": {**metric_definitions(threshold), "average": AVERAGE_DEFINITION},
        "datasets": {
            name: {
                "metrics": r.metrics,
                "mask_forms": r.mask_forms,  # how many masks were read in each form (image_io.load_mask_with_form)
                "n_bad_pairs": len(r.bad_pairs),
                "bad_pairs": [asdict(b) for b in r.bad_pairs],
            }
            for name, r in report.datasets.items()
        },
        "average": {"datasets": list(report.datasets), "metrics": report.average},
        "robustness": {
            kind: {
                "definition": PERTURBATION_DEFINITIONS[kind],
                "level_name": LEVEL_NAMES[kind],
                "levels": [
                    {"level": level.perturbation.level, "datasets": level.datasets, "average": level.average}
                    for level in levels
                ],
            }
            for kind, levels in report.robustness.items()
        },
    }
    return jsonable(document)


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence]) -> bytes:
    """UTF-8 CSV (RFC 4180: CRLF rows, so a CR or LF inside a name is quoted, not a row break) of `rows` under
    `header`, every cell through `spreadsheet_safe`; metrics.json keeps every name exactly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([spreadsheet_safe(v) for v in header])
    writer.writerows([spreadsheet_safe(v) for v in row] for row in rows)
    return buffer.getvalue().encode("utf-8")


def _metrics_rows(report: EvaluationReport) -> list[list]:
    def row(name: str, kind: str, level, metrics: Mapping[str, float]) -> list:
        return [name, kind, level, *(metrics.get(key, math.nan) for key in METRIC_KEYS)]

    rows = [row(name, "none", "", r.metrics) for name, r in report.datasets.items()]
    rows.append(row("average", "none", "", report.average))
    for kind, levels in report.robustness.items():
        for level in levels:
            rows.extend(row(name, kind, level.perturbation.level, m) for name, m in level.datasets.items())
            rows.append(row("average", kind, level.perturbation.level, level.average))
    return rows


def plot_robustness(kind: str, levels: Sequence[RobustnessLevel], clean_average: float, *, threshold: float) -> bytes:
    """PNG bytes of pixel F1 against the level of one perturbation, one line per dataset plus the average."""
    from matplotlib.figure import Figure  # lazily: matplotlib is slow to import; Figure renders with Agg

    figure = Figure(figsize=(5.5, 3.8), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    x = [level.perturbation.level for level in levels]
    for name in levels[0].datasets:
        axes.plot(x, [level.datasets[name]["pixel_f1"] for level in levels], marker="o", linewidth=1, label=name)
    several = len(levels[0].datasets) > 1
    if several:  # with one dataset the average is that dataset's line
        axes.plot(x, [level.average["pixel_f1"] for level in levels], marker="s", linewidth=2.5, color="black",
                  label="average")
    if math.isfinite(clean_average):
        axes.axhline(clean_average, color="gray", linestyle=":", label="average, unperturbed" if several else "unperturbed")
    if kind == "jpeg":
        axes.invert_xaxis()  # lower quality is the stronger perturbation: keep severity growing rightwards
    axes.set_xticks(x)
    plotted = [v for line in axes.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    axes.set_ylim(0, min(1.0, 1.15 * max(plotted)) if plotted and max(plotted) > 0 else 1.0)
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.set_xlabel(f"{kind} {LEVEL_NAMES[kind]}")
    axes.set_ylabel(f"pixel F1 @ {threshold:g}")
    axes.set_title(f"Robustness to {kind}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(report: EvaluationReport, out_dir: Path, *, threshold: float,
                 run_info: Mapping | None = None) -> dict[str, Path]:
    """Write metrics.json, metrics.csv, per_image.csv (clean pass) and robustness_<kind>.png under `out_dir`.

    Returns the written paths by name. Every file is written to a temporary name and renamed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / METRICS_JSON, "csv": out_dir / METRICS_CSV, "per_image": out_dir / PER_IMAGE_CSV}
    document = report_document(report, threshold=threshold, run_info=run_info)
    atomic_write_bytes(written["json"], (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())
    atomic_write_bytes(written["csv"], csv_bytes(["dataset", "perturbation", "level", *METRIC_KEYS],
                                                  _metrics_rows(report)))
    per_image = [(name, record) for name, r in report.datasets.items() for record in r.per_image]
    columns = list(per_image[0][1]) if per_image else []
    atomic_write_bytes(written["per_image"], csv_bytes(["dataset", *columns],
                                                        [[name, *record.values()] for name, record in per_image]))
    for kind, levels in report.robustness.items():
        path = out_dir / f"robustness_{kind}.png"
        atomic_write_bytes(path, plot_robustness(kind, levels, report.average["pixel_f1"], threshold=threshold))
        written[f"plot_{kind}"] = path
    return written
