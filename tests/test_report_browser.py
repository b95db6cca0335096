"""The case report in a real browser: headless Chromium, driven over the DevTools protocol.

The client is the standard library only: with `--remote-debugging-pipe` Chromium reads NUL-terminated JSON
commands on fd 3 and writes its answers and events on fd 4. Clicks and typing go through `Input.*`, as a
person's would, so the page's own event handlers do the sorting and the filtering.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from diffiml_cli.report import build_report
from report_fixtures import fake_batch, hostile_records, write_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '"><img src=x onerror=window.pwned=1>.png'

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package `chromium`)")]


class DevTools:
    """A headless Chromium and one page of it, commanded over `--remote-debugging-pipe`."""

    def __init__(self, user_data_dir: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()

        def child_fds() -> None:  # fds 3 and 4 in Chromium, whatever numbers the pipes got here
            high_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--hide-scrollbars", f"--user-data-dir={user_data_dir}", "--window-size=1280,900",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = True, **params) -> dict:
        """Run one command and return its result (events in between are dropped)."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session and self.session:
            command["sessionId"] = self.session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", session=False, url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", session=False, targetId=target, flatten=True)["sessionId"]
        self.wait_for("document.readyState === 'complete' && document.documentElement.classList.contains('ready')")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(f"!!({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {condition}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A left click at the centre of the first element matching `selector`, as mouse events."""
        # Centred: the filter bar is sticky at the top of the window and would take a click meant for the header.
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a browser that will not close is killed
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._read)
            os.close(self._write)


ROWS = "Array.from(document.querySelectorAll('#rows tr')).map(tr => tr.querySelector('.score')?.textContent ?? null)"
NAMES = "Array.from(document.querySelectorAll('#rows tr .file')).map(e => e.textContent)"


@pytest.fixture
def browser(tmp_path):
    devtools = DevTools(tmp_path / "chromium-profile")
    yield devtools
    devtools.close()


def test_sorting_filtering_and_detail_view_in_chromium(tmp_path, browser):
    scores = {f"img_{index:02d}.png": round((index * 37 % 23) / 23, 3) for index in range(24)}
    scores[HOSTILE] = 0.999
    out = fake_batch(tmp_path, scores, failed={"broken.jpg": "broken.jpg: not a recognised image file"})
    report = build_report(out)
    browser.open(report.as_uri())

    initial = browser.evaluate(ROWS)
    assert len(initial) == 26
    numbers = [float(score) for score in initial if score is not None]
    assert numbers == sorted(numbers, reverse=True) and initial[-1] is None  # highest first, the failure last

    browser.click("th[data-sort=score] button")  # the second click on the sorted column: lowest first
    browser.wait_for(f"JSON.stringify({ROWS}) !== {json.dumps(json.dumps(initial, separators=(',', ':')))}")
    ascending = browser.evaluate(ROWS)
    assert [float(s) for s in ascending if s is not None] == sorted(numbers) and ascending[-1] is None
    assert "dir=asc" in browser.evaluate("location.hash")

    browser.click("th[data-sort=name] button")
    names = browser.evaluate(NAMES)
    assert names == sorted(names) and len(names) == 26

    browser.evaluate("document.getElementById('filter').focus()")
    browser.send("Input.insertText", text="img_1")
    browser.wait_for("document.querySelectorAll('#rows tr').length < 26")
    filtered = browser.evaluate(NAMES)
    assert filtered == sorted(name for name in scores if name.startswith("img_1"))
    assert "filtered from 26" in browser.evaluate("document.getElementById('count').textContent")

    browser.evaluate("document.getElementById('filter').value = 'onerror'; "
                     "document.getElementById('filter').dispatchEvent(new Event('input'))")
    browser.wait_for("document.querySelectorAll('#rows tr').length === 1")
    browser.click("#rows tr .file")
    browser.wait_for("document.getElementById('detail').open")
    assert browser.evaluate("document.getElementById('detail-name').textContent").endswith(HOSTILE)
    first = "document.querySelector('figure[data-panel=first] img').getAttribute('src')"
    original = browser.evaluate(first)
    browser.click("#toggle")
    assert browser.evaluate(first) != original and browser.evaluate(first).endswith("_overlay.png")
    assert browser.evaluate("window.pwned === undefined && "
                            "document.querySelectorAll('img:not(.thumb):not(.full)').length === 0")

    shot = browser.send("Page.captureScreenshot", format="png")["data"]
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_a_page_of_nan_and_junk_records_still_renders_sorts_and_shows_a_hostile_failure_as_text(tmp_path, browser):
    """One NaN in the embedded data made JSON.parse throw, and the page's script stopped: no rows, no sorting."""
    out = fake_batch(tmp_path, {f"img_{index}.png": round(0.1 + 0.1 * index, 2) for index in range(8)})
    name = str(tmp_path / "inputs" / HOSTILE)
    reason = "cannot decode <img src=x onerror=window.pwned=2> </script>"
    write_results(out, hostile_records(out) + [{"image": name, "status": "failed", "error": f"{name}: {reason}"}])
    browser.open(build_report(out).as_uri())

    initial = browser.evaluate(ROWS)
    assert len(initial) == 9 and initial[:2] == ["0.800", "0.700"]  # the two finite scores first
    assert initial[2:] == [None] * 7  # every missing score after them
    assert browser.evaluate("Array.from(document.querySelectorAll('#rows tr td.num:nth-of-type(5)'))"
                            ".map(td => td.textContent)")[2:] == ["—"] * 7
    browser.click("th[data-sort=score] button")
    browser.wait_for(f"JSON.stringify({ROWS}) !== {json.dumps(json.dumps(initial, separators=(',', ':')))}")
    assert browser.evaluate(ROWS)[:2] == ["0.700", "0.800"]

    browser.click("th[data-sort=name] button")
    assert len(browser.evaluate(NAMES)) == 9
    assert browser.evaluate("document.querySelector('#failures .err').textContent") == reason
    browser.click("#rows tr[data-i] .err")  # the failed row: its detail view
    browser.wait_for("document.getElementById('detail').open")
    assert browser.evaluate("document.getElementById('detail-name').textContent") == name
    assert browser.evaluate("document.getElementById('detail-error').textContent") == reason
    assert browser.evaluate("window.pwned === undefined && "
                            "document.querySelectorAll('img:not(.thumb):not(.full)').length === 0")
