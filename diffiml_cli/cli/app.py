"""The `diffiml` command: one sub-command per file; this file wires them and maps errors to exit codes.

Exit codes: 0 everything succeeded; 1 some inputs failed, or the run could not start (a one-line reason
on stderr); 2 a usage error (a bad option). Set DIFFIML_DEBUG=1 to get tracebacks instead.

Starting is instant: the command modules import only typer, rich and light modules at the top, and torch and
the models inside the command that runs; `diffiml COMMAND` imports and builds that command alone (`_Commands`).
tests/test_cli_start.py keeps it so.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import warnings
from typing import TYPE_CHECKING, Annotated

import typer

from diffiml_cli.cli.display import set_command_options, visible
from diffiml_cli.errors import DiffimlError
from diffiml_cli.version import __version__

if TYPE_CHECKING:
    import click


def _reporting_errors(command):
    """Wrap a command so a DiffimlError becomes one line on stderr and exit code 1.

    Pillow's warnings about damaged metadata ("Corrupt EXIF data", ...) are silenced: the readers already
    ignore such metadata, and stderr is kept for one line per problem.
    """

    options = set(inspect.signature(command).parameters)

    @functools.wraps(command)
    def run(*args, **kwargs):
        set_command_options(options)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
                return command(*args, **kwargs)
        except DiffimlError as error:
            if os.environ.get("DIFFIML_DEBUG") == "1":
                raise
            typer.echo(f"error: {visible(error)}", err=True)  # one inert line, whatever names it holds
            raise typer.Exit(code=1) from None

    return run


class _App(typer.Typer):
    """A Typer whose every registered command reports library errors as one line (see module doc)."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda command: register(_reporting_errors(command))


app = _App(
    name="diffiml",
    help="Find the manipulated pixels in an image, by latent diffusion (DiffIML).",
    epilog="Licences: Noiseprint++ (localize --noiseprint, benchmark --noiseprint, convert --noiseprint, "
    "distill-noiseprint) and LightNP, distilled from it, are GRIP-UNINA's (TruFor, CVPR 2023), under their licence: "
    "informational and non-profit use only; keep the notices; cite the authors when results are made public "
    "(weights/lightnp/LICENSE.txt).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"diffiml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    """Find the manipulated pixels in an image, by latent diffusion (DiffIML)."""


# Command name -> "module:function" under diffiml_cli.cli, in the order `diffiml --help` lists them. A command
# module imports only light modules at its top (torch and the models inside the function).
COMMANDS = {
    "localize": "localize:localize",
    "report": "report:report",
    "evaluate": "evaluate:evaluate",
    "calibrate": "calibrate:calibrate",
    "benchmark": "benchmark:benchmark",
    "train": "train:train",
    "distill-vae": "distill_vae:distill_vae",
    "distill-noiseprint": "distill_noiseprint:distill_noiseprint",
    "convert": "convert:convert",
}


class _Commands(typer.core.TyperGroup):
    """The commands of COMMANDS, each imported and built the first time it is asked for: `diffiml COMMAND` and
    `diffiml COMMAND --help` load one command module, `diffiml --help` all of them (for their one-line help)."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module, function = COMMANDS[name].split(":")
            single = _App(add_completion=False)  # completion is the root's
            single.command(name=name)(getattr(importlib.import_module(f"diffiml_cli.cli.{module}"), function))
            self.commands[name] = typer.main.get_command(single)
        return self.commands.get(name)


app.info.cls = _Commands


def main() -> None:
    """Console entry point. Freed memory is kept for reuse first (diffiml_cli/allocator.py: about half
    the time per image at the defaults on the machines of README *Speed*)."""
    from diffiml_cli.allocator import keep_freed_memory

    keep_freed_memory()
    app()
