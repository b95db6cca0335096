"""The `diffiml` command: one sub-command per file; this file wires them and maps errors to exit codes.

Exit codes: 0 everything succeeded; 1 some inputs failed, or the run could not start (a one-line reason
on stderr); 2 a usage error (a bad option). Set DIFFIML_DEBUG=1 to get tracebacks instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings

import typer

from diffiml_cli.cli.display import set_command_options, visible
from diffiml_cli.errors import DiffimlError


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
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Find the manipulated pixels in an image, by latent diffusion (DiffIML)."""


def _register() -> None:
    from diffiml_cli.cli import benchmark, calibrate, convert, distill_noiseprint, distill_vae, evaluate, localize, report, train

    app.command(name="localize")(localize.localize)
    app.command(name="benchmark")(benchmark.benchmark)
    app.command(name="distill-vae")(distill_vae.distill_vae)
    app.command(name="evaluate")(evaluate.evaluate)
    app.command(name="train")(train.train)
    app.command(name="calibrate")(calibrate.calibrate)
    app.command(name="report")(report.report)
    app.command(name="convert")(convert.convert)
    app.command(name="distill-noiseprint")(distill_noiseprint.distill_noiseprint)


_register()


def main() -> None:
    """Console entry point. Freed memory is kept for reuse first (diffiml_cli/allocator.py: about half
    the time per image at the defaults on the machines of README *Speed*)."""
    from diffiml_cli.allocator import keep_freed_memory

    keep_freed_memory()
    app()
