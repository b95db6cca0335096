"""Fault injection: run the real CLI in a forked process that SIGKILLs itself at a chosen write.

A kill switch wraps one function (`torch.save`, `os.replace`, `os.fdopen`, safetensors' `save_file`,
`shutil.copyfile`) and kills the process on its k-th matching call: before the call, after it, or halfway
through the bytes it writes. The child is forked from the test process, so it does not pay the import
time again; like a DataLoader worker it runs single-threaded. The parent sees a real SIGKILL.

Then `check_files` asserts what a user would find after the crash: every file under a final name is whole
(state files load with `torch.load(weights_only=True)`, safetensors, JSON and PNG files parse), and only
hidden `.<name>.<random>.tmp` files may be partial.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

TEMPORARY = re.compile(r"^\..+\.tmp$")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class KillSwitch:
    """SIGKILL on the `call`-th call of `owner.name` whose written path matches the regex `target`.

    when: "before" the call, "after" it, or "half": let it write only the first half of its bytes.
    The path is the call's destination: the 2nd argument of os.replace, shutil.copyfile and save_file;
    the file behind the descriptor of os.fdopen; for torch.save, every call matches.
    """

    owner: str  # "torch", "os", "shutil" or "diffiml_cli.checkpoint"
    name: str
    call: int
    when: str = "before"
    target: str = ""

    def arm(self) -> None:
        """Install the switch (in the child process)."""
        module = importlib.import_module(self.owner)
        original = getattr(module, self.name)
        seen = 0

        def destination(args) -> str:
            if self.name == "fdopen":
                return os.readlink(f"/proc/self/fd/{args[0]}")
            return str(args[1]) if self.name != "save" else ""

        def switched(*args, **kwargs):
            nonlocal seen
            if not re.search(self.target, destination(args)):
                return original(*args, **kwargs)
            seen += 1
            if seen != self.call:
                return original(*args, **kwargs)
            if self.when == "before":
                _die()
            if self.when == "half":
                return self._half(original, args, kwargs)
            result = original(*args, **kwargs)
            _die()
            return result

        setattr(module, self.name, switched)

    def _half(self, original, args, kwargs):
        if self.name == "fdopen":  # the caller writes through the handle: keep half of it
            return _HalfWriter(original(*args, **kwargs))
        original(*args, **kwargs)  # save_file / copyfile: write all, keep half, as a crash mid-write would
        target = Path(args[1])
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        _die()


class _HalfWriter:
    """A file handle whose first write stores half its bytes, reaches the disk, then the process dies."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data) -> int:
        self.handle.write(bytes(data)[: len(data) // 2])
        self.handle.flush()
        os.fsync(self.handle.fileno())
        _die()
        return len(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def run_until_killed(argv: list[str], switch: KillSwitch, log: Path) -> None:
    """Run `diffiml *argv` in a forked child with `switch` armed; assert that it died of SIGKILL."""
    from diffiml_cli.cli.app import app

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            stream = open(log, "w")  # noqa: SIM115 - the process ends with os._exit
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            sys.stdout = sys.stderr = stream
            torch.set_num_threads(1)
            switch.arm()
            try:
                app(args=[str(arg) for arg in argv], prog_name="diffiml")
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported through the log
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed, f"the run was not killed at {switch} (status {status}):\n{log.read_text()[-3000:]}"


def check_files(folder: Path, *, temporaries_allowed: bool = True) -> dict[str, object]:
    """Assert every file under `folder` is whole; returns {relative path: what it holds} for the state files.

    Partial files may only be hidden `.<name>.<random>.tmp` temporaries (and none when not allowed), and the
    last line of a `.jsonl` record file (an append cut short). `.results.lock` is the empty lock of `localize`.
    """
    from PIL import Image
    from safetensors import safe_open

    states = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if path.name == ".results.lock":
            assert path.stat().st_size == 0, relative
        elif path.name.startswith("."):
            assert temporaries_allowed and TEMPORARY.match(path.name), f"unexpected hidden file {relative}"
        elif path.suffix == ".pt":
            states[relative] = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as handle:
                assert "diffiml" in (handle.metadata() or {}), relative
                for key in handle.keys():
                    handle.get_tensor(key)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines):
                try:
                    json.loads(line)
                except ValueError:
                    assert number == len(lines) - 1 and not path.read_text().endswith("\n"), f"{relative}: line {number}"
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".txt":
            for line in path.read_text().splitlines():
                [int(value) for value in line.split()]
        else:
            raise AssertionError(f"unexpected file {relative}")
    return states


def mtimes(folder: Path, pattern: str = "*.png") -> dict[str, int]:
    """{relative path: st_mtime_ns} of the files matching `pattern`."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


def temporaries(folder: Path) -> list[Path]:
    """The hidden temporaries under `folder`: what a kill mid-write leaves behind."""
    return [p for p in folder.rglob("*") if p.is_file() and TEMPORARY.match(p.name)]
