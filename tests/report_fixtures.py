"""A `localize` output folder made without a model, for the report tests: inputs, the four PNGs per image and
a results.json as `diffiml localize` writes them, with scores chosen by the test."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np

OUTPUT_KINDS = ("mask", "prob", "overlay", "uncertainty")


def _picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour picture: (H, W, 3) uint8 BGR."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def fake_batch(root: Path, scores: dict[str, float | None], *, failed: dict[str, str] | None = None,
               size: tuple[int, int] = (48, 64)) -> Path:
    """Inputs `root/inputs/<name>` and `root/out/` holding their outputs and results.json.

    scores: input file name -> detection score (None: no detector, the image score is then 0.5); the verdict
    is "manipulated" at 0.5 and above. failed: file name -> error, for inputs written as garbage bytes.
    Returns the output folder.
    """
    inputs, out = root / "inputs", root / "out"
    inputs.mkdir(parents=True, exist_ok=True)
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(len(scores))
    height, width = size
    records = []
    for name, score in scores.items():
        picture = _picture(rng, height, width)
        cv2.imwrite(str(inputs / name), picture)
        stem = Path(name).stem
        outputs = {kind: str(out / f"{stem}_{kind}.png") for kind in OUTPUT_KINDS}
        gray = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
        for kind in OUTPUT_KINDS:
            cv2.imwrite(outputs[kind], picture if kind == "overlay" else gray)
        verdict = None if score is None else ("manipulated" if score >= 0.5 else "authentic")
        records.append({"image": str(inputs / name), "status": "ok", "error": None, "image_score": 0.5,
                        "detection_score": score, "verdict": verdict, "gated": False,
                        "manipulated_fraction": float(rng.uniform(0, 0.3)), "width": width, "height": height,
                        "tiles": 1, "outputs": outputs, "timings": {}, "note": None, "run_id": "test"})
    for name, error in (failed or {}).items():
        (inputs / name).write_bytes(b"not an image at all")
        records.append({"image": str(inputs / name), "status": "failed", "error": error, "outputs": {}})
    write_results(out, records)
    return out


def write_results(out: Path, records: list[dict]) -> None:
    """results.json as `localize` writes it (ASCII JSON), with a plausible "run" section."""
    run = {"diffiml_version": "test", "checkpoint": "weights/model.safetensors", "model_card": "A test model.",
           "device": "cpu", "precision": "fp32", "cpu_threads": 1,
           "sampling": {"steps": 1, "ensemble": 1, "tta": False, "seed": 0}, "threshold": 0.5, "gate": False,
           "detector": True, "calibration": None, "image_size": 64, "resolution": "resize", "tile": 0,
           "tile_overlap": 0}
    failures = [{"image": r["image"], "error": r.get("error")} for r in records
                if isinstance(r, dict) and r.get("status") == "failed"]
    document = {"run": run, "images": records, "failures": failures}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")


class PageParser(HTMLParser):
    """Every element of a page as (tag, attributes dict), its text, and the content of each script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_startendtag(self, tag, attrs) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def parse_page(path: Path) -> PageParser:
    """`path` (an HTML file) parsed with the standard library's HTMLParser."""
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def page_data(page: PageParser) -> dict:
    """The JSON the report embeds for its script (the first script holding it)."""
    return json.loads(next(script for script in page.scripts if script.lstrip().startswith("{")))


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JavaScript's JSON.parse does."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def hostile_records(out: Path) -> list[dict]:
    """fake_batch's records with what a hostile hand (or an older bug) could put in them: NaN, infinities, numbers
    too large for a float, strings where numbers belong, missing keys and nested junk."""
    records = json.loads((out / "results.json").read_text())["images"]
    junk = [{"detection_score": float("nan"), "image_score": float("nan"), "manipulated_fraction": float("nan")},
            {"detection_score": float("inf"), "image_score": float("-inf")},
            {"detection_score": "0.9", "image_score": "high", "tiles": "3", "gated": "yes", "timings": "slow"},
            {"detection_score": 10 ** 400, "manipulated_fraction": 1e400, "image_score": True},
            {"detection_score": {"nested": [float("nan"), {"x": None}]}, "image_score": [0.5], "verdict": ["manipulated"],
             "outputs": {"overlay": [1, 2], "mask": {"a": 1}}, "run_id": 7, "note": 3}]
    for record, changes in zip(records, junk):
        record.update(changes)
    for key in ("detection_score", "image_score", "manipulated_fraction", "outputs", "verdict", "width", "tiles"):
        records[5].pop(key, None)  # only "image" and "status" left, and a few others
    return records
