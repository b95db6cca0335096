"""JSON that strict parsers read: no NaN or Infinity.

Python's `json` writes non-finite floats as the bare words `NaN`, `Infinity` and `-Infinity`, which are not JSON
(RFC 8259): JavaScript's `JSON.parse`, jq and most other readers refuse the whole document. Everything diffiml
writes as JSON goes through `finite_json` first, which turns them into null ("no value"), and is then dumped with
`allow_nan=False`, so a value that slipped past is an error here rather than a file no one can read.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-Infinity, numpy's too) replaced by None, recursively through
    dicts, lists and tuples (tuples become lists); numpy scalars become Python numbers; anything else is kept."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps(finite_json(value), allow_nan=False, **options)`: text that every JSON parser reads."""
    return json.dumps(finite_json(value), allow_nan=False, **options)
