"""`diffiml report`: the self-contained HTML case report of a `localize` output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffiml_cli.cli.common import stderr
from diffiml_cli.cli.display import markup_safe


def report(
    out_dir: Annotated[Path, typer.Argument(help="The folder `diffiml localize --out` wrote (it holds results.json).",
                                            metavar="OUT_DIR")],
    title: Annotated[str | None, typer.Option(help="The page's title. Default: 'Case report: <folder>'.")] = None,
) -> None:
    """Write OUT_DIR/report.html: each image's thumbnails, scores, verdict and file metadata, sortable, filterable."""
    from diffiml_cli.report import build_report

    path = build_report(out_dir, title=title)
    stderr.print(f"report -> {markup_safe(path)}", soft_wrap=True)
