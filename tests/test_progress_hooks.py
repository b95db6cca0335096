"""The long loops without a bar of their own report each item to the caller: the case report's rows and the
calibration's scored pairs, which `diffiml report` and `diffiml calibrate` show as progress bars."""

from __future__ import annotations

import json

from report_fixtures import fake_batch

from diffiml_cli.report import build_report


def test_build_report_reports_each_image_once(tmp_path):
    out = fake_batch(tmp_path, {"a.png": 0.7, "b.png": 0.2, "c.png": None}, failed={"d.jpg": "d.jpg: not an image"})
    calls = []
    build_report(out, on_row=lambda: calls.append(1))
    assert len(calls) == len(json.loads((out / "results.json").read_text())["images"]) == 4
