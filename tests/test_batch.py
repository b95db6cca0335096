"""Folders at scale: bounded memory, records that survive SIGKILL and Ctrl-C, a full disk, two runs into one
folder, and torchrun sharding."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from corpus import SCENARIOS
from diffiml_cli.batch import LocalizeOptions, localize_files, runner as batch_runner
from diffiml_cli.cli.app import app
from diffiml_cli.pipeline import load_localizer

FAST = ["--steps", "1", "--ensemble", "1", "--device", "cpu"]
KINDS = ("mask", "prob", "overlay", "uncertainty")


def _folder(path: Path, count: int, size: tuple[int, int] = (40, 48), prefix: str = "img") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        rng = np.random.default_rng([index, len(prefix)])
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path / f"{prefix}{index:03d}.png")
    return path


def _images(out: Path) -> dict[str, dict]:
    return {Path(e["image"]).name: e for e in json.loads((out / "results.json").read_text())["images"]}


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "diffiml_cli", "localize", *map(str, args)]


def test_decoded_images_alive_at_once_do_not_grow_with_the_folder(tiny_checkpoint, tmp_path, monkeypatch):
    """Decoding runs ahead of the model by at most 2 * batch + 1 images, and one batch is written behind it;
    before streaming, every image of the folder was decoded at once while the model worked through them."""
    folder = _folder(tmp_path / "in", 40)
    alive, peak, lock = [0], [0], threading.Lock()
    load, write = batch_runner._load, batch_runner._write

    def counted_load(*args):
        item = load(*args)
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return item

    def counted_write(item, result):
        write(item, result)
        with lock:
            alive[0] -= 1

    monkeypatch.setattr(batch_runner, "_load", counted_load)
    monkeypatch.setattr(batch_runner, "_write", counted_write)
    pipeline = load_localizer(tiny_checkpoint, device="cpu")
    summary = localize_files(sorted(folder.iterdir()), pipeline, LocalizeOptions(out_dir=tmp_path / "out"))
    assert summary.count("ok") == 40 and alive[0] == 0
    assert peak[0] <= 4 * 1 + 1  # queue 2B + 1, B in the model, B being written; measured 3-5


def _run_until(argv: list[str], out: Path, records: int, sig: int, env: dict) -> subprocess.CompletedProcess:
    """Start `argv`, send `sig` once results.jsonl holds `records` lines, and wait for it."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    jsonl = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= records:
            process.send_signal(sig)
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_run_keeps_every_finished_score_and_a_rerun_finishes(tiny_checkpoint, tmp_path, sig):
    assert "sigterm-sighup" in SCENARIOS
    folder, out = _folder(tmp_path / "in", 60, size=(96, 128)), tmp_path / "out"
    argv = _command(folder, "-c", tiny_checkpoint, "-o", out, "--steps", "4", "--ensemble", "4", "--device", "cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stopped = _run_until(argv, out, 5, sig, env)
    lines = (out / "results.jsonl").read_text().splitlines()
    finished = {Path(json.loads(line)["image"]).name: json.loads(line) for line in lines if line.strip()}
    assert 5 <= len(finished) < 60, "the run was not stopped mid-folder"
    if sig != signal.SIGKILL:  # Ctrl-C, and what job schedulers and containers send: stop after the batch
        assert stopped.returncode == 128 + sig, stopped.stderr
        last = stopped.stderr.strip().splitlines()[-1]
        assert last == f"interrupted: {len(finished)} done, {60 - len(finished)} left; run the same command again to finish"
        assert set(_images(out)) == set(finished)  # results.json was rebuilt before exiting
    else:
        assert stopped.returncode == -signal.SIGKILL
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    entries = _images(out)
    assert len(entries) == 60
    for name, record in finished.items():  # the scores of the stopped run survive, and are its own
        assert entries[name]["image_score"] == record["image_score"] and entries[name]["run_id"] == record["run_id"]
    assert all(e["status"] in ("ok", "skipped") and e["image_score"] is not None for e in entries.values())
    # An image whose PNGs were written before a kill took its record is computed again, with a full record.
    assert all(e["sha256"] and e["path"] and e["width"] for e in entries.values())


def test_a_full_disk_ends_in_one_line_with_valid_records_and_no_partial_sets(tiny_checkpoint, tmp_path, monkeypatch):
    folder, out = _folder(tmp_path / "in", 6), tmp_path / "out"
    from diffiml_cli import files

    writes, original = [0], files.atomic_write_bytes

    def filling(path, data):
        if str(path).endswith(".png"):
            writes[0] += 1
            if writes[0] > 9:  # two whole images, then the disk is full in the middle of the third
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, data)

    monkeypatch.setattr("diffiml_cli.image_io.atomic_write_bytes", filling)
    result = CliRunner().invoke(app, ["localize", str(folder), "-c", str(tiny_checkpoint), "-o", str(out), *FAST])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "no space left on device" in error_lines[0] and "left" in error_lines[0]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records][:2] == ["ok", "ok"] and records[2]["status"] == "failed"
    for index in range(6):  # every image has all four outputs or none
        present = [(out / f"img{index:03d}_{kind}.png").exists() for kind in KINDS]
        assert all(present) or not any(present), index
    assert sum((out / f"img{i:03d}_mask.png").exists() for i in range(6)) == 2

    monkeypatch.undo()  # room on the disk again: the same command finishes the folder
    rerun = CliRunner().invoke(app, ["localize", str(folder), "-c", str(tiny_checkpoint), "-o", str(out), *FAST])
    assert rerun.exit_code == 0, rerun.output
    document = json.loads((out / "results.json").read_text())
    assert document["failures"] == []
    entries = _images(out)
    assert set(entries) == {f"img{index:03d}.png" for index in range(6)}
    finished = {Path(r["image"]).name: r for r in records if r["status"] == "ok"}
    for index in range(6):
        name = f"img{index:03d}.png"
        entry = entries[name]
        assert entry["status"] == "ok" and entry["error"] is None, entry
        assert entry["image_score"] is not None and entry["manipulated_fraction"] is not None, entry
        assert (entry["width"], entry["height"]) == (48, 40)
        assert {kind: Path(path).name for kind, path in entry["outputs"].items()} == {
            kind: f"img{index:03d}_{kind}.png" for kind in KINDS}
        assert all(Path(path).is_file() for path in entry["outputs"].values())
        if name in finished:  # written before the disk filled: kept as the run that wrote it recorded it
            assert entry == finished[name]
        else:
            assert entry["run_id"] != records[0]["run_id"]


@pytest.mark.slow
def test_two_runs_into_one_folder_keep_each_other_s_records(tiny_checkpoint, tmp_path):
    first, second = _folder(tmp_path / "a", 25, prefix="a"), _folder(tmp_path / "b", 25, prefix="b")
    out, env = tmp_path / "out", {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(_command(folder, "-c", tiny_checkpoint, "-o", out, *FAST), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env) for folder in (first, second)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    entries = _images(out)
    assert set(entries) == {f"{p}{i:03d}.png" for p in "ab" for i in range(25)}
    assert len((out / "results.jsonl").read_text().splitlines()) == 50


@pytest.mark.slow
def test_torchrun_shards_localize_and_evaluate_and_matches_one_process(tiny_checkpoint, tmp_path):
    folder = _folder(tmp_path / "in", 7)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one", tmp_path / "two"
    args = [str(folder), "-c", str(tiny_checkpoint), *FAST]
    assert subprocess.run([sys.executable, "-m", "diffiml_cli", "localize", *args, "-o", str(single)], env=env,
                          capture_output=True, timeout=300).returncode == 0
    run = subprocess.run([*torchrun, "-m", "diffiml_cli", "localize", *args, "-o", str(double)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(_images(double)) == 7 and {e["run_id"] for e in _images(double).values()} == {
        json.loads((double / "results.jsonl").read_text().splitlines()[0])["run_id"]}
    for index in range(7):
        for kind in ("mask", "prob"):
            name = f"img{index:03d}_{kind}.png"
            assert (single / name).read_bytes() == (double / name).read_bytes(), name

    (folder / "Tp").mkdir()
    (folder / "Gt").mkdir()
    for index in range(4):
        (folder / f"img{index:03d}.png").rename(folder / "Tp" / f"img{index:03d}.png")
        mask = np.zeros((40, 48), np.uint8)
        mask[5 + index:25, 10:30] = 255
        Image.fromarray(mask).save(folder / "Gt" / f"img{index:03d}.png")
    (folder / "Au").mkdir()
    for index in range(4, 7):
        (folder / f"img{index:03d}.png").rename(folder / "Au" / f"img{index:03d}.png")
    evaluate = ["evaluate", "-d", f"set={folder}", "-c", str(tiny_checkpoint), *FAST, "--json"]
    one = subprocess.run([sys.executable, "-m", "diffiml_cli", *evaluate, "-o", str(tmp_path / "e1")], env=env,
                         capture_output=True, text=True, timeout=300)
    two = subprocess.run([*torchrun, "-m", "diffiml_cli", *evaluate, "-o", str(tmp_path / "e2")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text())["datasets"]["set"]["metrics"]
               for name in ("e1", "e2")]
    metrics[0].pop("seconds_per_image"), metrics[1].pop("seconds_per_image")
    assert metrics[0] == metrics[1]
