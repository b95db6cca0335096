"""The progress bar of every long loop: done / total, the rate, the time left, and a few live fields.

It draws on stderr only when stderr is a terminal: rich would otherwise print the bar's last state once into a
log or pipe (it does so for a console that is not a terminal), and the lines above it are what a log wants.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, or seconds per item when that reads better (slow loops: training steps, big images)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"– {self.unit}/s", style="progress.data.speed")
        shown = f"{speed:.2f} {self.unit}/s" if speed >= 1 else f"{1 / speed:.2f} s/{self.unit}"
        return Text(shown, style="progress.data.speed")


def progress_bar(label: str, unit: str, console: Console, *, fields: str = "", show: bool = True) -> Progress:
    """A bar `label ━━━ 3/10 1.52 img/s 0:00:12 <fields>` (the last: time left); `fields` is a format string of
    the task's fields (e.g. "{task.fields[last]}"), shown as plain text (no markup: it may hold file names)."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit), TimeRemainingColumn()]
    if fields:
        columns.append(TextColumn(fields, markup=False))
    return Progress(*columns, console=console, disable=not (show and console.is_terminal))
