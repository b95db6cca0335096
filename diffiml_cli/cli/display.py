"""Showing text that came from the evidence (file names, manifest entries, EXIF fields) to a person.

The files a forensic tool reads come from the people it investigates, so their names are hostile text: an
ESC byte can recolour or rewrite the terminal, a newline splits a one-line failure in two, a bidirectional
override reorders what is shown, and `[bold]` or `[link=...]` is rich markup. Every terminal message that
holds such text passes it through `visible` (or `markup_safe` inside rich markup): control and format
characters become Python-style escapes (`\\x1b`, `\\n`, `\\u202e`, and a backslash is doubled, as repr does),
and bytes that were not UTF-8 (which Python keeps as lone surrogates) become `\\xNN`. JSON records keep the
exact name; only what is shown changes.
"""

from __future__ import annotations

import re
import unicodedata

from rich.markup import escape

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _shown(character: str) -> str:
    code = ord(character)
    if character in _NAMED:  # a backslash too, as repr does, so that a name holding the text "\\n" stays apart
        return _NAMED[character]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    category = unicodedata.category(character)
    if category in ("Cc", "Cf", "Zl", "Zp"):  # C0/C1 controls, DEL, bidi and zero-width format characters
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return character


def visible(text: object) -> str:
    """`text` (str() of anything) with every control, format or undecodable character shown as an escape, so
    it prints as one inert line whatever it holds; library argument names become the command's flags."""
    return cli_wording("".join(_shown(character) for character in str(text)))


def markup_safe(text: object) -> str:
    """`visible(text)` with rich markup escaped, for embedding in a rich markup string."""
    return escape(visible(text))


# Library messages name arguments in backticks (`max_pixels`, `allow_pickle=True`); the CLI shows its flags
# instead, for the options the running command has.
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)(=[^`]*)?`")
_FLAG_NAMES = {"out_dir": "out", "source": "checkpoint"}
_options: set[str] = set()


def set_command_options(names: set[str]) -> None:
    """The parameter names of the command being run, for `cli_wording`."""
    _options.clear()
    _options.update(names)


def cli_wording(message: str) -> str:
    """A library message with the running command's arguments shown as its flags: `max_pixels` -> --max-pixels,
    `allow_pickle=True` -> --allow-pickle, `edge=False` -> --no-edge, `teacher="none"` -> --teacher none."""
    def flag(match: re.Match) -> str:
        name = _FLAG_NAMES.get(match[1], match[1])
        if name not in _options:
            return match[0]
        value = (match[2] or "")[1:].strip("\"'")
        shown = name.replace("_", "-")
        if value == "False":
            return f"--no-{shown}"
        return f"--{shown}" if value in ("", "True") else f"--{shown} {value}"
    return _ARGUMENT.sub(flag, message)
