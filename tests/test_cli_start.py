"""The command line starts at once: `--help`, every `COMMAND --help` and `--version` import no torch, diffusers,
timm or OpenCV (each is checked in a fresh interpreter, as a user's shell runs it); progress bars stay out of logs."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from diffiml_cli.cli.app import COMMANDS
from diffiml_cli.cli.progress import RateColumn, progress_bar
from diffiml_cli.version import __version__

HEAVY = ("torch", "diffusers", "timm", "cv2")

# Runs the CLI in-process with the given arguments, then prints the heavy top-level modules it imported.
_PROBE = """
import sys
from diffiml_cli.cli.app import app
try:
    app(sys.argv[1:], prog_name="diffiml")
except SystemExit:
    pass
print("HEAVY:" + ",".join(sorted({name.split(".")[0] for name in sys.modules} & set(%r))))
"""


def _heavy_modules_after(*args: str) -> tuple[list[str], str]:
    result = subprocess.run([sys.executable, "-c", _PROBE % (HEAVY,), *args], capture_output=True, text=True,
                            timeout=120)
    line = next(line for line in result.stdout.splitlines() if line.startswith("HEAVY:"))
    return [name for name in line.removeprefix("HEAVY:").split(",") if name], result.stdout


def test_importing_the_cli_app_imports_no_heavy_module():
    probe = "import sys, diffiml_cli.cli.app; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert not [name for name in HEAVY if f"'{name}'" in loaded], loaded


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command_imports_no_heavy_module(command):
    heavy, output = _heavy_modules_after(*([command] if command else []), "--help")
    assert heavy == [], f"`diffiml {command or ''} --help` imported {heavy}"
    assert "Usage:" in output and (command is None or f"diffiml {command}" in output)


def test_version_prints_the_package_version():
    result = subprocess.run([sys.executable, "-m", "diffiml_cli", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"diffiml {__version__}"


def test_progress_bar_writes_nothing_when_not_a_terminal():
    stream = io.StringIO()
    with progress_bar("localize", "img", Console(file=stream), fields="{task.fields[last]}") as progress:
        task = progress.add_task("localize", total=3, last="")
        for name in ("a.png", "b.png", "c.png"):
            progress.update(task, advance=1, last=name)
    assert stream.getvalue() == ""


def test_progress_bar_on_a_terminal_shows_rate_and_time_left():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    with progress_bar("train", "step", console) as progress:
        task = progress.add_task("train", total=10)
        progress.update(task, advance=4)
    shown = stream.getvalue()
    assert "4/10" in shown and ("step/s" in shown or "s/step" in shown), shown


@pytest.mark.parametrize(("speed", "shown"), [(None, "– img/s"), (2.5, "2.50 img/s"), (0.25, "4.00 s/img")])
def test_rate_column_reads_as_rate_or_seconds_per_item(speed, shown):
    class Task:
        finished_speed = None

    task = Task()
    task.speed = speed
    assert RateColumn("img").render(task).plain == shown


def test_the_changelog_has_a_section_for_the_version_the_command_prints():
    from pathlib import Path

    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{__version__}] - " in changelog
    assert "keepachangelog.com" in changelog


def test_a_command_s_help_loads_only_its_own_module():
    probe = ("import sys\nfrom diffiml_cli.cli.app import app\ntry:\n    app(['report', '--help'], prog_name='diffiml')\n"
             "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith('diffiml_cli.cli.')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "'diffiml_cli.cli.report'" in loaded and "'diffiml_cli.cli.train'" not in loaded, loaded
