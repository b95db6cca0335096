"""Load a script from docs/ as a module, so tests can call its main() in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_docs_script(name: str) -> ModuleType:
    """docs/<name>.py, executed once per call (its `if __name__ == "__main__"` block does not run)."""
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
