"""Noiseprint++ and LightNP (models/noiseprint.py): loading, maps at the image's size, tiling, checkpoints, and the
two-camera property on generated images.

Every test makes its own images and, where it needs a Noiseprint file, writes one with random weights. Only the
two-camera tests read the real teacher (../shared/weights, skipped where it is absent) or the shipped student:
random weights say nothing about camera traces.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffiml_cli.checkpoint import default_checkpoint_dir, load_checkpoint, save_checkpoint
from diffiml_cli.data.augment import bayer_mosaic
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_ops import jpeg_compress
from diffiml_cli.models.noiseprint import (
    NoiseprintConfig,
    build_noiseprint,
    convert_teacher,
    extract_map,
    flops_per_pixel,
    load_noiseprint,
    stretch_to_gray,
    student_config,
)
from tests.textures import texture

REAL_TEACHER = Path(__file__).resolve().parents[2] / "shared/weights/noiseprint++/noiseprint++.th"


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """noiseprint++.th's layout ({"network": state_dict, "global_step": int}) with random weights."""
    torch.manual_seed(0)
    network = build_noiseprint(NoiseprintConfig())
    for module in network.modules():  # non-trivial BatchNorm statistics, so a wrong load would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("np") / "noiseprint++.th"
    torch.save({"network": network.state_dict(), "global_step": 7}, path)
    return path


def test_teacher_keys_are_trufors():
    keys = list(build_noiseprint(NoiseprintConfig()).state_dict())
    assert keys[:3] == ["0.weight", "0.bias", "2.weight"] and keys[-1] == "47.bias"
    assert {"3.weight", "3.running_var", "45.num_batches_tracked"} <= set(keys)


def test_loads_strictly_and_frozen(teacher_file):
    network, config = load_noiseprint(teacher_file, allow_pickle=True)
    saved = torch.load(teacher_file, weights_only=True)["network"]
    assert config == NoiseprintConfig()
    assert all(torch.equal(network.state_dict()[k], v) for k, v in saved.items())
    assert not network.training and not any(p.requires_grad for p in network.parameters())


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no-network", "wrong-width", "safetensors-truncated"])
def test_rejects_wrong_or_truncated_file_in_one_line(tmp_path, teacher_file, damage):
    data = teacher_file.read_bytes()
    path = tmp_path / ("np.safetensors" if damage.startswith("safetensors") else "np.th")
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "no-network":
        torch.save({"weights": torch.zeros(3)}, path)
    elif damage == "wrong-width":
        torch.save({"network": build_noiseprint(NoiseprintConfig(width=32)).state_dict()}, path)
    else:
        save_file(torch.load(teacher_file, weights_only=True)["network"], tmp_path / "full.safetensors")
        path.write_bytes((tmp_path / "full.safetensors").read_bytes()[:5000])
    with pytest.raises(DiffimlError) as error:
        load_noiseprint(path, allow_pickle=True)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    if damage == "wrong-width":
        assert "does not match" in message


def test_torch_file_needs_allow_pickle(teacher_file):
    with pytest.raises(DiffimlError, match="convert it first"):
        load_noiseprint(teacher_file)


def test_converted_checkpoint_round_trips_bit_for_bit(tmp_path, teacher_file):
    (teacher_file.parent / "LICENSE.txt").write_text("GRIP-UNINA notice\n")
    out = convert_teacher(teacher_file, tmp_path / "teacher")
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE.txt", "config.json", "model.safetensors"]  # no pickle
    assert (out / "LICENSE.txt").read_text() == "GRIP-UNINA notice\n"  # the licence travels with the weights
    network, config = load_noiseprint(out)
    original, _ = load_noiseprint(teacher_file, allow_pickle=True)
    assert config == NoiseprintConfig()
    for name, tensor in original.state_dict().items():
        assert torch.equal(network.state_dict()[name], tensor), name
    image = texture(3, (40, 56))
    np.testing.assert_array_equal(extract_map(network, config, image), extract_map(original, config, image))
    again = save_checkpoint(tmp_path / "again", network, config)  # saved and loaded again: the same bytes
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    model_type, loaded_config, _ = load_checkpoint(again)
    assert (model_type, loaded_config) == ("noiseprint", config)


def test_bare_safetensors_copy_of_the_teacher_loads(tmp_path, teacher_file):
    state = torch.load(teacher_file, weights_only=True)["network"]
    save_file(state, tmp_path / "np.safetensors")
    network, _ = load_noiseprint(tmp_path / "np.safetensors")
    assert torch.equal(network.state_dict()["47.bias"], state["47.bias"])


@pytest.mark.parametrize("config", [NoiseprintConfig(layers=5, width=8), student_config(layers=4, width=8)],
                         ids=["teacher-shaped", "student-shaped"])
@pytest.mark.parametrize("size", [(37, 53), (64, 64)])
def test_map_has_the_image_size_and_tiles_match_the_whole(config, size):
    torch.manual_seed(1)
    network = build_noiseprint(config).eval()
    image = texture(5, size)
    whole = extract_map(network, config, image, tile=4096)
    tiled = extract_map(network, config, image, tile=16)
    assert whole.shape == size and whole.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    if size[0] % config.unshuffle == 0 and size[1] % config.unshuffle == 0:
        with torch.no_grad():
            direct = network(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
        np.testing.assert_allclose(whole, direct, atol=1e-5)


def test_student_is_at_most_a_sixth_of_the_teacher():
    teacher, student = flops_per_pixel(NoiseprintConfig()), flops_per_pixel(student_config())
    assert 1.10e6 < teacher < 1.12e6  # the issue's ~1.1 MFLOP/pixel
    assert student <= teacher / 6
    from diffiml_cli.flops import count_flops

    network = build_noiseprint(student_config()).eval()
    counted = count_flops(lambda: network(torch.rand(1, 3, 64, 64))).flops
    assert counted == pytest.approx(student * 64 * 64, rel=1e-6)


def test_stretch_is_robust_to_outliers():
    noise_map = np.random.default_rng(0).normal(size=(50, 60)).astype(np.float32)
    noise_map[0, 0] = 1e6
    gray = stretch_to_gray(noise_map)
    assert gray.dtype == np.uint8 and gray.shape == noise_map.shape
    assert 100 < np.median(gray) < 156 and gray.std() > 40  # one extreme pixel does not flatten the rest
    assert (stretch_to_gray(np.zeros((4, 4))) == 128).all()


# --- two cameras ------------------------------------------------------------------------------------------
# A generated scene is rendered by two simulated camera pipelines (bilinear demosaicing then JPEG 95, against
# VNG demosaicing, sharpening, sensor noise and JPEG 70); the left half of one and the right half of the other
# make a two-camera image. The statistic is the larger of the halves' standardized mean difference and their
# log std ratio, away from the seam. What this shows: the real Noiseprint++ (and the shipped LightNP, if any)
# separates these two pipelines and not the halves of one. What it does not show: anything about real cameras,
# or about other pipelines; with random weights no such property exists, so these skip without the weights.


def _scene(seed: int) -> np.ndarray:
    return np.clip(texture(seed, (192, 256)).astype(np.float32) * 0.6 + 60, 0, 255).astype(np.uint8)


def _camera_a(image: np.ndarray) -> np.ndarray:
    return jpeg_compress(cv2.cvtColor(bayer_mosaic(image), cv2.COLOR_BayerBG2RGB), 95)


def _camera_b(image: np.ndarray, seed: int) -> np.ndarray:
    rendered = cv2.cvtColor(bayer_mosaic(image), cv2.COLOR_BayerBG2RGB_VNG).astype(np.float32)
    rendered += rendered - cv2.GaussianBlur(rendered, (0, 0), 1.0)
    rendered += np.random.default_rng(seed).normal(0, 2, rendered.shape[:2])[..., None]
    return jpeg_compress(np.clip(np.round(rendered), 0, 255).astype(np.uint8), 70)


def _halves_differ(noise_map: np.ndarray, margin: int = 24) -> float:
    middle = noise_map.shape[1] // 2
    left, right = noise_map[margin:-margin, margin:middle - margin], noise_map[margin:-margin, middle + margin:-margin]
    return max(abs(left.mean() - right.mean()) / noise_map.std(), abs(np.log(left.std() / right.std())))


def _real_extractors():
    extractors = []
    if REAL_TEACHER.is_file():
        extractors.append(pytest.param(lambda: load_noiseprint(REAL_TEACHER, allow_pickle=True), id="noiseprint++"))
    try:
        shipped = default_checkpoint_dir("lightnp")
        extractors.append(pytest.param(lambda: load_noiseprint(shipped), id="lightnp"))
    except DiffimlError:
        pass
    return extractors or [pytest.param(None, marks=pytest.mark.skip("no Noiseprint weights here"))]


@pytest.mark.parametrize("load", _real_extractors())
def test_two_camera_halves_differ_one_camera_halves_do_not(load, one_thread):
    network, config = load()
    for seed in range(2):
        scene = _scene(seed)
        one_a, one_b = _camera_a(scene), _camera_b(scene, seed)
        two = np.concatenate([one_a[:, :128], one_b[:, 128:]], axis=1)
        two_score = _halves_differ(extract_map(network, config, two))
        one_scores = [_halves_differ(extract_map(network, config, image)) for image in (one_a, one_b)]
        assert two_score > 0.08 and two_score > 3 * max(one_scores), (seed, two_score, one_scores)


def test_convert_command_writes_a_noiseprint_checkpoint(tmp_path, teacher_file):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    result = CliRunner().invoke(app, ["convert", str(teacher_file), "--noiseprint", "--out", str(tmp_path / "np")])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "np")[0] == "noiseprint"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "np" / "config.json"), "--noiseprint", "--out",
                                      str(tmp_path / "bad")])
    assert result.exit_code == 1 and "noiseprint weights" in result.output and not (tmp_path / "bad").exists()


def test_help_states_the_licence():
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    text = " ".join(CliRunner().invoke(app, ["--help"], terminal_width=200).output.split())
    assert "GRIP-UNINA" in text and "non-profit" in text and "cite the authors" in text
