"""`diffiml report`: the self-contained HTML case report of a `localize` output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffiml_cli.cli.common import stderr
from diffiml_cli.cli.display import markup_safe
from diffiml_cli.cli.progress import progress_bar


def report(
    out_dir: Annotated[Path, typer.Argument(help="The folder `diffiml localize --out` wrote (it holds results.json).",
                                            metavar="OUT_DIR")],
    title: Annotated[str | None, typer.Option(help="The page's title. Default: 'Case report: <folder>'.")] = None,
) -> None:
    """Write OUT_DIR/report.html: each image's thumbnails, scores, verdict and file metadata, sortable, filterable."""
    stderr.print(f"report -> {markup_safe(write_report(out_dir, title=title))}", soft_wrap=True)


def write_report(out_dir: Path, *, title: str | None = None) -> Path:
    """`build_report` with a progress bar over the images (thumbnails and metadata are the slow part)."""
    from diffiml_cli.report import build_report
    from diffiml_cli.report.build import read_results

    with progress_bar("report", "img", stderr) as progress:
        task = progress.add_task("report", total=len(read_results(out_dir).get("images") or []))
        return build_report(out_dir, title=title, on_row=lambda: progress.update(task, advance=1))
