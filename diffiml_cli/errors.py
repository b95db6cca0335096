"""The one error type the library raises.

Every failure a user can cause (a bad file, a missing checkpoint, an unreachable Hub, a bad option)
is reported as a `DiffimlError` whose message is one line naming the thing and the reason. The CLI
prints that line and exits non-zero; set `DIFFIML_DEBUG=1` to see the traceback instead.
"""


class DiffimlError(Exception):
    """A user-facing failure with a one-line, actionable message."""
