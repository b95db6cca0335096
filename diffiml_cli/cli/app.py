"""The `diffiml` command: one sub-command per file; this file wires them and maps errors to exit codes.

Exit codes: 0 everything succeeded; 1 some inputs failed, or the run could not start (a one-line reason
on stderr); 2 a usage error (a bad option). Set DIFFIML_DEBUG=1 to get tracebacks instead.
"""

from __future__ import annotations

import os
import sys

import typer

from diffiml_cli.errors import DiffimlError

app = typer.Typer(
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
    from diffiml_cli.cli import localize

    app.command(name="localize")(localize.localize)


_register()


def main() -> None:
    """Console entry point: run the app, turning library errors into one line and exit code 1."""
    try:
        app()
    except DiffimlError as error:
        if os.environ.get("DIFFIML_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
