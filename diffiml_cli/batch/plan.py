"""Before a `localize` run writes anything: per input, write it, skip it, refuse it, or leave it out.

The rules, in order (README *Exit codes and bad input* states them for users):
- a PNG inside the output folder that carries diffiml's output mark (`provenance.py`) is one of diffiml's own
  outputs, never evidence, and a `._name` file holding a macOS resource fork is no image: both are left out,
  and listed in results.json's `not_analysed` (the summary counts them);
- an input is refused when its outputs would have names longer than a file name may be, would replace an input
  or another input's outputs of this run, or would lie outside the output folder through a symbolic link;
- without `overwrite`, an input whose outputs exist is skipped only when a record of this input (same real path)
  with the same SHA-256 lists them: it keeps that record. Outputs marked with this input's hash but without
  such a record (a run stopped between writing and recording) are computed again, for a full record. Outputs
  of another image (by record or mark), outputs of an input whose bytes changed, and unmarked outputs that no
  record vouches for are refused: they are never credited to this input, and never replaced without
  `overwrite`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffiml_cli.batch.outputs import input_root, output_paths
from diffiml_cli.batch.provenance import read_mark, sha256_file
from diffiml_cli.batch.records import ImageResult, latest_by_image, mask_output, read_records
from diffiml_cli.files import NAME_MAX, escapes

KEPT = "kept"  # marks a skip whose earlier record stands


@dataclass
class Plan:
    """decided: skips and refusals (ImageResults); todo: (input, its output paths) to localize;
    not_analysed: {"image", "reason"} of the inputs that are diffiml's own outputs."""

    decided: list[ImageResult] = field(default_factory=list)
    todo: list[tuple[Path, dict[str, Path]]] = field(default_factory=list)
    not_analysed: list[dict] = field(default_factory=list)


def plan(images: Sequence[Path], out_dir: Path, *, overwrite: bool) -> Plan:
    """Decide per input (see the module docstring)."""
    result = Plan()
    evidence = []
    for path in images:
        reason = _not_evidence(path, out_dir)
        if reason is not None:
            result.not_analysed.append({"image": str(path), "reason": reason})
        else:
            evidence.append(path)
    root = input_root(evidence)
    inputs = {os.path.realpath(p) for p in evidence}
    earlier = latest_by_image(read_records(out_dir))
    owners = {mask_output(entry): key for key, entry in earlier.items()
              if mask_output(entry) and entry.get("status") in ("ok", "skipped")}
    claimed: dict[Path, Path] = {}  # output -> the first input of this run that writes it
    for path in evidence:
        paths = output_paths(path, root, out_dir)
        failure = _refusal(path, paths, out_dir, inputs, claimed)
        for output in paths.values():
            claimed.setdefault(output, path)
        if failure is None and not overwrite and any(_exists(p) for p in paths.values()):
            decision = _existing(path, paths, earlier, owners)
            if isinstance(decision, ImageResult):
                result.decided.append(decision)
                continue
            failure = decision
        if failure is None:
            result.todo.append((path, paths))
        else:
            result.decided.append(ImageResult(str(path), "failed", error=f"{path}: {failure}",
                                              path=os.path.realpath(path)))
    return result


APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07"  # the first bytes of a macOS "._name" resource fork


def _not_evidence(path: Path, out_dir: Path) -> str | None:
    """Why `path` is not analysed (one of diffiml's own outputs, or a macOS resource fork), or None."""
    real, real_out = os.path.realpath(path), os.path.realpath(out_dir)
    if os.path.commonpath([real, real_out]) == real_out and path.suffix.lower() == ".png" \
            and read_mark(path) is not None:
        return "an output of diffiml inside the output folder (it carries diffiml's output mark), not evidence"
    if path.name.startswith("._") and path.is_file():  # a FIFO is not opened: it would block
        try:
            with open(path, "rb") as handle:
                if handle.read(4) == APPLE_DOUBLE_MAGIC:
                    return "a macOS resource fork (AppleDouble file), not an image"
        except OSError:
            return None  # unreadable: analysed, so that its failure is reported
    return None


def _refusal(path: Path, paths: dict[str, Path], out_dir: Path, inputs: set[str],
             claimed: dict[Path, Path]) -> str | None:
    """Why `path` cannot be localized into `paths` whatever is on disk, or None."""
    if any(len(os.fsencode(p.name)) > NAME_MAX for p in paths.values()):
        return (f"its output names ({paths['uncertainty'].name}) would be longer than the {NAME_MAX} bytes a file "
                "name may have; rename the input")
    clobbers = [str(p) for p in paths.values() if os.path.realpath(p) in inputs]
    if clobbers:
        return f"refusing to overwrite input {clobbers[0]}"
    owner = next((claimed[p] for p in paths.values() if p in claimed), None)
    if owner is not None:
        return (f"its outputs ({paths['mask'].name}, ...) would overwrite those of {owner}; rename one of them or "
                "localize it with another `out_dir`")
    if any(escapes(out_dir, p) for p in paths.values()):
        return (f"its outputs' folder {paths['mask'].parent} leads outside the output folder (a symbolic link); "
                "refusing to write there")
    return None


def _existing(path: Path, paths: dict[str, Path], earlier: dict[str, dict],
              owners: dict[str, str]) -> ImageResult | str | None:
    """Some outputs of `path` exist: its skip (an ImageResult), a refusal (str), or None to localize it again."""
    names = f"({paths['mask'].name}, ...)"
    key = os.path.realpath(path)
    owner = owners.get(os.path.realpath(paths["mask"]))
    if owner is not None and owner != key and not owner.startswith("legacy:"):  # a legacy one vouches for none
        return (f"{paths['mask'].parent} already holds the outputs {names} of another image, {owner}; use another "
                "`out_dir`, or `overwrite` to replace them")
    if not os.path.isfile(path):
        return None  # a FIFO or a device is never hashed (it could block): reading it fails with its reason
    try:
        digest = sha256_file(path)
    except OSError as error:
        return f"cannot read the file to check its earlier outputs ({error.strerror or error})"
    marks = [read_mark(p) for p in paths.values() if _exists(p)]
    foreign = next((m["source_sha256"] for m in marks if m is not None and m["source_sha256"] != digest), None)
    if foreign is not None:
        return (f"{paths['mask'].parent} already holds outputs {names} computed from other bytes (SHA-256 "
                f"{foreign[:12]}…, this file is {digest[:12]}…): another image, or this file before it changed; use "
                "another `out_dir`, or `overwrite` to replace them")
    record = earlier.get(key)
    if record is not None and record.get("sha256") == digest and record.get("status") in ("ok", "skipped") \
            and all(_exists(p) for p in paths.values()):
        return _skipped(path, paths, record)
    if marks and all(m is not None for m in marks):
        return None  # ours, from these bytes, but not recorded (stopped before the record): computed again
    return (f"{paths['mask'].parent} already holds outputs {names} that no record of this image vouches for (an "
            "older diffiml, or files put there by hand); use another `out_dir`, or `overwrite` to replace them")


def _exists(path: Path) -> bool:
    """Path.exists(), False for any name the filesystem refuses (too long, a permission error on the way)."""
    try:
        return path.exists()
    except OSError:
        return False


def _skipped(path: Path, paths: dict[str, Path], earlier: dict) -> ImageResult:
    """A skipped image's record: its earlier record's numbers."""
    keep = {k: earlier.get(k) for k in ("image_score", "detection_score", "verdict", "gated", "manipulated_fraction",
                                         "width", "height", "tiles", "path", "sha256")}
    keep["gated"] = bool(keep["gated"])
    return ImageResult(str(path), "skipped", outputs={kind: str(p) for kind, p in paths.items()}, note=KEPT, **keep)
