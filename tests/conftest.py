"""Shared fixtures: offline Hub, a fake Hub cache, and a tiny random checkpoint.

HF_HUB_OFFLINE and HF_HUB_CACHE must be set before anything imports huggingface_hub, which reads them
once at import time; conftest is imported before any test module, so they are set here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="diffiml-fake-hub-")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from diffiml_cli.checkpoint import save_checkpoint  # noqa: E402
from diffiml_cli.models.build import build_localizer  # noqa: E402
from diffiml_cli.presets import get_preset  # noqa: E402

FAKE_HUB_CACHE = Path(os.environ["HF_HUB_CACHE"])
FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"


def pytest_sessionfinish(session, exitstatus) -> None:
    """Remove the fake Hub cache (tens of MB of checkpoints) so that test runs do not pile up in /tmp."""
    shutil.rmtree(FAKE_HUB_CACHE, ignore_errors=True)


def add_to_fake_hub(repo_id: str, files: dict[str, Path], revision: str = FAKE_REVISION, ref: str = "main") -> Path:
    """Lay `files` out as huggingface_hub's cache does: models--org--name/{refs/<ref>, snapshots/<sha>/...}."""
    repo_dir = FAKE_HUB_CACHE / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(revision)
    return snapshot


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init localizer of the `test` preset (64 px), saved in the diffiml format."""
    torch.manual_seed(0)
    config = get_preset("test")
    return save_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), build_localizer(config), config)


@pytest.fixture(scope="session")
def hub_checkpoint_id(tiny_checkpoint) -> str:
    """The tiny checkpoint published in the fake offline Hub cache as `diffiml-test/tiny`."""
    add_to_fake_hub("diffiml-test/tiny", {name: tiny_checkpoint / name for name in ("model.safetensors", "config.json")})
    return "diffiml-test/tiny"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three small random RGB images of different sizes, as PNG and JPEG."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (48, 64), "b.jpg": (70, 50), "c.png": (64, 64)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """A few textured 'photos' for the synthetic manipulation generator."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        image = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (7, 7), 0)
        for _ in range(4):
            centre = (int(rng.integers(0, 128)), int(rng.integers(0, 96)))
            cv2.circle(image, centre, int(rng.integers(6, 24)), [int(v) for v in rng.integers(0, 256, 3)], -1)
        cv2.imwrite(str(folder / f"photo{index}.png"), image)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny convolutions run many times faster so on a busy CPU,
    and forked children (which run single-threaded) then compute the same numbers as their parent."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
