"""Durable per-image records of `localize` runs, and the `results.json` rebuilt from them.

Every image a run finishes (its outputs written, or its failure known) becomes one JSON line appended to
`<out>/results.jsonl`, a batch at a time, with one write and an fsync, under a lock that other runs into the
same folder (and other torchrun ranks) take too. So a run killed at any point keeps the records of every batch
it finished, and two runs never lose each other's records. `results.json` is rebuilt from all the lines: per
image its latest record, minus images whose outputs a later record of another image replaced (--overwrite).
A line cut short by a kill is skipped. A `results.json` of an older diffiml (no `results.jsonl`) is read too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diffiml_cli.files import append_lines, atomic_write_bytes, locked  # records are ASCII JSON: \u escapes keep any name exact
from diffiml_cli.jsonsafe import finite_json

RESULTS_JSON = "results.json"
RESULTS_JSONL = "results.jsonl"
LOCK_NAME = ".results.lock"
STATUSES = ("ok", "skipped", "failed")


@dataclass
class ImageResult:
    """What happened to one input file; `status` is "ok", "skipped" (outputs exist) or "failed".

    `image` is the path as the user gave it (for display); `path` and `sha256` identify the input. The scores
    are `LocalizationResult`'s (see `pipeline.py`).
    """

    image: str
    status: str
    error: str | None = None
    path: str | None = None  # the input's real path: with sha256, what identifies it whatever the working folder
    sha256: str | None = None  # of the input file's bytes, as decoded
    image_score: float | None = None
    detection_score: float | None = None
    verdict: str | None = None
    gated: bool = False
    manipulated_fraction: float | None = None
    width: int | None = None
    height: int | None = None
    tiles: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    run_id: str | None = None

    def record(self) -> dict:
        """The JSON object stored for this result."""
        return asdict(self)


def _parse(lines: Iterable[str]) -> list[dict]:
    records = []
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue  # the tail of an append a kill cut short, or a line no run of ours wrote
        if isinstance(entry, dict) and isinstance(entry.get("image"), str) and entry.get("status") in STATUSES:
            records.append(entry)
    return records


def read_records(out_dir: Path) -> list[dict]:
    """Every record under `out_dir`, oldest first: the lines of results.jsonl, or, when there is none, the
    entries of an older diffiml's results.json. Unreadable files count as empty."""
    jsonl = out_dir / RESULTS_JSONL
    try:
        return _parse(jsonl.read_text(encoding="utf-8", errors="replace").splitlines())
    except FileNotFoundError:
        pass
    except OSError:
        return []
    try:
        document = json.loads((out_dir / RESULTS_JSON).read_text(encoding="utf-8"))
        return _parse(json.dumps(finite_json(entry), allow_nan=False) for entry in document.get("images", []))
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        return []  # absent, or an unreadable old file: replaced, not trusted


def mask_output(entry: dict) -> str | None:
    """The real path of the mask a record lists, or None."""
    outputs = entry.get("outputs")
    mask = outputs.get("mask") if isinstance(outputs, dict) else None
    return os.path.realpath(mask) if isinstance(mask, str) and mask else None


def identity(entry: dict) -> str:
    """The key that names a record's input: its real path; an older diffiml's record (no `path`) keeps the path
    it was given, which is not compared with anything else."""
    path = entry.get("path")
    return path if isinstance(path, str) and path else f"legacy:{entry['image']}"


def latest_by_image(records: Sequence[dict]) -> dict[str, dict]:
    """Per input (`identity`), its latest record; an input whose mask output a later record of another input
    wrote (--overwrite, or a rename) is dropped, since its outputs are gone."""
    latest: dict[str, dict] = {}
    owner: dict[str, str] = {}  # mask output -> identity
    for entry in records:
        image = identity(entry)
        latest.pop(image, None)
        latest[image] = entry  # re-inserted: dicts keep the order of the latest records
        mask = mask_output(entry) if entry["status"] in ("ok", "skipped") else None
        if mask is None:
            continue
        previous = owner.get(mask)
        if previous is not None and previous != image:
            latest.pop(previous, None)
        owner[mask] = image
    return latest


def append_records(out_dir: Path, results: Sequence[ImageResult]) -> None:
    """Append `results` to results.jsonl durably (one write, fsync) under the folder's lock."""
    if results:
        with locked(out_dir / LOCK_NAME):
            append_lines(out_dir / RESULTS_JSONL,
                         [json.dumps(finite_json(r.record()), allow_nan=False) for r in results])


def rebuild_results_json(out_dir: Path, run_info: dict, not_analysed: Sequence[dict] = ()) -> dict:
    """Rewrite results.json from every record (see the module docstring), atomically and under the lock; the
    records of a legacy results.json are first copied into results.jsonl. `not_analysed`: the files of this run
    that were deliberately not analysed ({"image", "reason"}). Returns the document."""
    with locked(out_dir / LOCK_NAME):
        records = read_records(out_dir)
        if records and not (out_dir / RESULTS_JSONL).exists():
            append_lines(out_dir / RESULTS_JSONL,
                         [json.dumps(finite_json(entry), allow_nan=False) for entry in records])
        images = list(latest_by_image(records).values())
        document = {
            "run": run_info,
            "images": images,
            "failures": [{"image": e["image"], "error": e.get("error")} for e in images if e["status"] == "failed"],
            "not_analysed": list(not_analysed),
        }
        data = (json.dumps(finite_json(document), indent=2, allow_nan=False) + "\n").encode()
        atomic_write_bytes(out_dir / RESULTS_JSON, data)
    return document
