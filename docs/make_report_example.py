"""Generate docs/report.png: a screenshot of `diffiml report` over a small generated batch.

The batch is drawn like docs/example.png (make_example.py: no photograph is copied): the example scene with
its splice, the same scene flipped, the scene before the splice, a second unedited scene carrying camera
EXIF, and one damaged JPEG. It is localized with the shipped default checkpoint (`weights/`), reported, and
photographed by headless Chromium. Run from the repo root (about a minute on a CPU):
    OMP_NUM_THREADS=1 python docs/make_report_example.py [WORK_DIR]
WORK_DIR keeps the batch and its outputs; a second run into it only re-reports and re-photographs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))
from make_example import _jpeg, _scene  # noqa: E402
from make_example import main as make_example  # noqa: E402


def _save_jpeg(rgb: np.ndarray, path: Path, quality: int, exif: Image.Exif | None = None) -> None:
    Image.fromarray(rgb).save(path, quality=quality, exif=exif.tobytes() if exif is not None else b"")


def make_batch(folder: Path) -> None:
    """The five inputs of the example case, written to `folder`."""
    drawn = folder / "drawn"
    drawn.mkdir()
    make_example(drawn)  # example.png (the splice) and its truth mask
    spliced = cv2.cvtColor(cv2.imread(str(drawn / "example.png")), cv2.COLOR_BGR2RGB)
    cases = folder / "case-0427"
    cases.mkdir()
    cv2.imwrite(str(cases / "harbour_spliced.png"), cv2.cvtColor(spliced, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(cases / "harbour_spliced_mirrored.png"), cv2.cvtColor(spliced[:, ::-1], cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(2026)  # make_example's seed: its first scene is the splice's host
    _save_jpeg(_jpeg(_scene(rng, 384, 512), 92), cases / "harbour_original.jpg", 92)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131], exif[0x0132] = "ExampleCam", "EC-200", "Firmware 1.0.3", \
        "2026:04:27 10:41:05"
    _save_jpeg(_scene(np.random.default_rng(7), 384, 512), cases / "field_notes.jpg", 85, exif)
    whole = (cases / "field_notes.jpg").read_bytes()
    (cases / "field_notes_damaged.jpg").write_bytes(whole[: len(whole) // 3])  # a download cut short
    shutil.rmtree(drawn)


def screenshot(page: Path, target: Path, width: int = 1400, height: int = 1080) -> None:
    """Photograph `page` with headless Chromium at `width` x `height` CSS pixels into `target` (PNG)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs headless Chromium (Debian package `chromium`) for the screenshot")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={target}", page.as_uri()],
                       check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(folder: Path, target: Path) -> None:
    """Make the batch in `folder` (unless there), localize it (localize skips images already done), report it
    and photograph the report to `target`."""
    if not (folder / "case-0427").is_dir():
        make_batch(folder)
    out = folder / "out"
    diffiml = [sys.executable, "-m", "diffiml_cli"]
    # Exit code 1: the damaged JPEG fails, as it should; the report lists it.
    localized = subprocess.run([*diffiml, "localize", str(folder / "case-0427"), "--out", str(out)])
    if localized.returncode not in (0, 1):
        raise SystemExit(f"localize failed (exit code {localized.returncode})")
    subprocess.run([*diffiml, "report", str(out), "--title", "Case 0427: five images"], check=True)
    screenshot(out / "report.html", target)
    print(f"wrote {target}")


def main(work: str | None = None, target: Path = DOCS / "report.png") -> None:
    """The batch goes to a temporary folder, or to `work` (kept, so that a re-run only re-reports)."""
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
        run(Path(work), target)
        return
    with tempfile.TemporaryDirectory(prefix="diffiml-report-example-") as temporary:
        run(Path(temporary), target)


if __name__ == "__main__":
    main(*sys.argv[1:2])
