"""`build_report`: the self-contained HTML case report of a `localize` output folder.

`OUT_DIR/report.html` is one file with inline CSS and JavaScript only, so it opens from file:// with no
network. Its pictures are relative links to the outputs beside it and to small thumbnails under
`OUT_DIR/thumbs/`, not embedded base64: 10,000 images would otherwise make a page of hundreds of MB, while
links keep it at about 1 KB per image and let the browser load only the thumbnails on screen
(`loading="lazy"`, 100 rows a page). Move the folder as a whole (the links are relative) and the report
still works.

The page is rendered by Jinja2 with autoescaping on, from `template.html.j2`; the table's sort keys and the
detail views travel as JSON in a `<script type="application/json">` element (`tojson` escapes `<`, `>`,
`&` and `'`, so no name can close it), read by the inline script, which only ever sets text, never markup.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import jinja2
from PIL import Image

from diffiml_cli.version import __version__
from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import atomic_write, locked, require_inside
from diffiml_cli.jsonsafe import finite_json
from diffiml_cli.report.cache import StatCache
from diffiml_cli.report.rows import RowSources, build_row, finite_number, input_root, printable
from diffiml_cli.report.thumbnails import ThumbnailStore

REPORT_HTML = "report.html"
# batch.records' names, repeated: importing the batch package loads torch (1 GB, seconds) for two constants.
RESULTS_JSON = "results.json"
STATUSES = ("ok", "skipped", "failed")
TEMPLATE = "template.html.j2"
METADATA_CACHE = "metadata.json"  # beside the thumbnail index, in thumbs/
LOCK_NAME = ".report.lock"  # two reports into one folder take turns (their caches would race)
PAGE_SIZE = 100  # rows per page: the page stays fast with 10,000 images
WORKERS = 4  # threads hashing and decoding at once; the decoders and hashlib release the GIL


def read_results(out_dir: Path) -> dict:
    """The document `localize` wrote to `out_dir/results.json`: {"run": dict, "images": [dict], ...}.

    Raises DiffimlError when the folder or the file is missing, or the file is not such a document.
    """
    if not out_dir.is_dir():
        raise DiffimlError(f"{out_dir}: no such folder (`out_dir` must be a folder that `localize` wrote)")
    path = out_dir / RESULTS_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DiffimlError(f"{path}: no such file; run `localize` with this `out_dir` first") from None
    except OSError as error:
        raise DiffimlError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise DiffimlError(f"{path}: corrupt results file (not UTF-8 text)") from None
    except ValueError as error:
        raise DiffimlError(f"{path}: corrupt results file (not JSON: {error})") from None
    except RecursionError:
        raise DiffimlError(f"{path}: corrupt results file (JSON nested too deeply)") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DiffimlError(f"{path}: not a `localize` results file (no \"images\" list)")
    return document


def _valid(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("image"), str) and entry.get("status") in STATUSES


def _percent(value: object) -> str:
    number = finite_number(value)
    return "?" if number is None else f"{100 * number:.1f} %"


def run_settings(run: dict) -> list[tuple[str, str]]:
    """(label, value) lines of the run's settings (results.json's "run"), as printable text."""
    sampling = run.get("sampling") if isinstance(run.get("sampling"), dict) else {}
    calibration = run.get("calibration") if isinstance(run.get("calibration"), dict) else None
    lines = [
        ("Checkpoint", run.get("checkpoint")),
        ("Model card", run.get("model_card") or "none beside the checkpoint"),
        # results.json older than the sampler setting sampled with DDIM on the checkpoint's grid, which it did not name
        ("Sampler", sampling.get("sampler") or ("DDIM" if "steps" in sampling else None)),
        ("Sampling steps", sampling.get("steps")),
        ("Ensemble N", sampling.get("ensemble")),
        ("Mirror TTA", {True: "on", False: "off"}.get(sampling.get("tta"))),
        ("Seed", sampling.get("seed")),
        ("Pixel threshold", run.get("threshold")),
        ("Gate", {True: "on: the mask of an image called authentic is emptied", False: "off"}.get(run.get("gate"))),
        ("Detector", {True: "yes", False: "none"}.get(run.get("detector"))),
    ]
    if calibration is not None:
        lines.append(("Calibration", f"threshold {calibration.get('threshold')} for a false-alarm rate of "
                                     f"{_percent(calibration.get('target_far'))} (measured "
                                     f"{_percent(calibration.get('far'))}, detection rate "
                                     f"{_percent(calibration.get('tpr'))}) on {calibration.get('data')}"
                                     + (f", scored in {calibration['precision']}" if calibration.get("precision") else "")))
    lines += [
        ("Resolution", run.get("resolution")),
        ("Device", run.get("device")),
        ("Precision", run.get("precision")),
        ("diffiml version", run.get("diffiml_version")),
    ]
    return [(label, printable(value)) for label, value in lines if value is not None]


def _summary(rows: list[dict]) -> list[tuple[str, str, int]]:
    """(css class, label, count) of each verdict, in the table's order, for the page header."""
    labels = (("manipulated", "manipulated"), ("authentic", "authentic"), ("none", "no verdict"),
              ("failed", "failed"))
    return [(badge, label, sum(row["badge"] == badge for row in rows)) for badge, label in labels]


def _order(row: dict) -> tuple:
    """The table's initial order: highest score first, unscored and failed last, then by name."""
    score = row["key"][0]
    return (score is None, -(score or 0.0), row["name"])


def csp_hash(script: str) -> str:
    """The Content-Security-Policy source that allows exactly this inline script: 'sha256-<base64>'."""
    digest = hashlib.sha256(str(script).encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _environment() -> jinja2.Environment:
    # autoescape=True rather than select_autoescape: the template's name ends in .j2, and every string that
    # reaches it must be escaped, in text and in attributes alike.
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["csp_hash"] = csp_hash
    # `tojson` must write JSON that JSON.parse reads: a NaN that got past `_page_data` is an error here, not a page
    # whose script stops at its first line.
    environment.policies["json.dumps_kwargs"] = {"sort_keys": True, "allow_nan": False}
    return environment


def _page_data(rows: list[dict]) -> dict:
    """What the inline script reads: per row its sort key, search text and detail view."""
    detail_fields = ("name", "badge", "badge_text", "full", "details", "notes", "error")
    return finite_json({"page_size": PAGE_SIZE, "rows": [{"k": row["key"], "q": row["search"],
                                                          "d": {f: row[f] for f in detail_fields}} for row in rows]})


def render(context: dict, path: Path) -> None:
    """Render the template with `context` to `path`, atomically, streaming (the page is never whole in memory)."""
    source = resources.files("diffiml_cli.report").joinpath(TEMPLATE).read_text(encoding="utf-8")
    template = _environment().from_string(source)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            template.stream(**context).dump(handle, encoding="utf-8", errors="backslashreplace")

    try:
        atomic_write(path, write)
    except OSError as error:
        raise DiffimlError(f"{path}: cannot write the report ({error.strerror or error})") from None


def _rows(entries: list[dict], sources: RowSources, workers: int, on_row: Callable[[], None]) -> list[dict]:
    def row(entry: dict) -> dict:
        built = build_row(entry, sources)
        on_row()  # the caller's progress, once per image
        return built

    # Warnings are filtered here, once, around the threads: warnings.catch_warnings is process-global state.
    # Pillow's "Corrupt EXIF data" and decompression-bomb warnings would only repeat what the notes say.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(row, entries))
    return sorted(rows, key=_order)


def build_report(out_dir: str | Path, *, title: str | None = None, workers: int = WORKERS,
                 on_row: Callable[[], None] = lambda: None) -> Path:
    """Write `out_dir/report.html` for the `localize` results in `out_dir` and return its path.

    Thumbnails (`out_dir/thumbs/`) and input metadata are made once and reused while their files are
    unchanged (same size, mtime and inode), so a re-run after more images were localized only reads the new
    ones; delete `thumbs/` to have every input hashed again. Inputs and localize outputs are never written. A missing or unreadable file becomes a note in its image's row. Raises
    DiffimlError when results.json is missing or corrupt, or report.html or thumbs/ cannot be written.
    `on_row()` is called once per image as its row is made (from worker threads).
    """
    out_dir = Path(out_dir)
    document = read_results(out_dir)
    entries = [entry for entry in document["images"] if _valid(entry)]
    run = document.get("run") if isinstance(document.get("run"), dict) else {}
    require_inside(out_dir, out_dir / LOCK_NAME)
    with locked(out_dir / LOCK_NAME):
        thumbs = ThumbnailStore(out_dir)
        metadata = StatCache(thumbs.folder / METADATA_CACHE)
        root = input_root([entry["image"] for entry in entries])
        rows = _rows(entries, RowSources(out_dir, thumbs, metadata, root), workers, on_row)
        thumbs.save()
        try:
            metadata.save()
        except OSError as error:
            raise DiffimlError(f"{metadata.path}: cannot write ({error.strerror or error})") from None
        now = datetime.datetime.now().astimezone()
        context = {
            "title": printable(title) if title else f"Case report: {printable(os.path.abspath(out_dir))}",
            "generated": now.strftime("%Y-%m-%d %H:%M %Z").strip(),
            "version": __version__,
            "settings": run_settings(run),
            "input_root": printable(root),
            "summary": _summary(rows),
            "rows": rows,
            "failures": [row for row in rows if row["badge"] == "failed"],
            "ignored": len(document["images"]) - len(entries),
            "data": _page_data(rows),
        }
        path = out_dir / REPORT_HTML
        require_inside(out_dir, path)
        render(context, path)
    return path
