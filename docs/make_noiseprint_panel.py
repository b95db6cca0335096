"""Screenshot of the case report's detail panel with the noiseprint view, in headless Chromium (issue #32).

Run from the repo root after `diffiml convert noiseprint++.th --noiseprint --out runs/noiseprint-teacher`:
    mkdir -p runs/np-shot/in && cp docs/example.png runs/np-shot/in/
    diffiml localize runs/np-shot/in --out runs/np-shot/out --noiseprint --noiseprint-weights runs/noiseprint-teacher --report
    python docs/make_noiseprint_panel.py runs/np-shot/out/report.html docs/noiseprint-panel.png
Needs Debian's `chromium`; it drives it with the test suite's DevTools client (tests/test_report_browser.py).
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_report_browser import DevTools  # noqa: E402

PANEL = "figure[data-panel=\"noiseprint\"] img"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    browser = DevTools(Path(tempfile.mkdtemp()) / "profile")
    try:
        browser.open(args.report.resolve().as_uri())
        browser.send("Emulation.setDeviceMetricsOverride", width=1700, height=1100, deviceScaleFactor=1, mobile=False)
        browser.click("#rows tr")
        browser.wait_for("document.getElementById('detail').open")
        browser.wait_for(f"(() => {{ const i = document.querySelector('{PANEL}'); "
                         "return i && i.complete && i.naturalWidth > 0; })()")
        shot = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
    image = Image.open(io.BytesIO(shot)).convert("RGB").crop((40, 270, 1660, 830))  # the detail dialog
    image.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(args.png, optimize=True)
    print(f"-> {args.png}")


if __name__ == "__main__":
    main()
