"""LightNP's distillation (distillation/noiseprint_*.py): the fixed split, the loss, the baselines' fit, and a
tiny run that resumes exactly, on generated photos with a small random-weight teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffiml_cli.checkpoint import save_checkpoint
from diffiml_cli.distillation.noiseprint_data import photo_variant, split_photos
from diffiml_cli.distillation.noiseprint_distill import NoiseprintDistillSettings, distill_noiseprint, pearson
from diffiml_cli.distillation.noiseprint_eval import (
    LAPLACIAN,
    LINEAR_SIDE,
    evaluate_student,
    fit_linear_filter,
    high_pass,
    linear_map,
    pearson_r,
)
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.noiseprint import NoiseprintConfig, build_noiseprint
from tests.textures import texture


def _photos(folder: Path, names: list[str], size: tuple[int, int] = (96, 112)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.fromarray(texture(index, size)).save(folder / name)


def test_split_holds_out_make_splits_photos_and_half_of_kodak(tmp_path):
    _photos(tmp_path / "bsds500", [f"{n}.png" for n in range(1000, 1500)], (8, 8))
    _photos(tmp_path / "kodak24", [f"kodim{n:02d}.png" for n in range(1, 25)], (8, 8))
    split = split_photos(tmp_path)
    stems = sorted(str(n) for n in range(1000, 1500))
    order = np.random.default_rng(20261201).permutation(500)  # docs/make_splits.py's draw, items 0-99
    held_bsds = {p.stem for p in split.held_out if p.parent.name == "bsds500"}
    assert held_bsds == {stems[i] for i in order[:100]}
    assert sum(p.parent.name == "kodak24" for p in split.held_out) == 12
    assert not set(split.train) & set(split.held_out) and len(split.train) + len(split.held_out) == 524
    assert split == split_photos(tmp_path)
    with pytest.raises(DiffimlError, match="--photos"):
        split_photos(tmp_path / "nothing")


def test_variants_are_deterministic_and_zero_is_the_photo(tmp_path):
    _photos(tmp_path, ["a.png"])
    photo = tmp_path / "a.png"
    np.testing.assert_array_equal(photo_variant(photo, 0, 0, 0)[0], np.asarray(Image.open(photo)))
    first, second = photo_variant(photo, 0, 0, 3), photo_variant(photo, 0, 0, 3)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]


def test_pearson_matches_numpy():
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    expected = [np.corrcoef(a[i].flatten(), b[i].flatten())[0, 1] for i in range(3)]
    np.testing.assert_allclose(pearson(a, b).numpy(), expected, atol=1e-5)
    assert pearson(a, -2 * a + 1).numpy() == pytest.approx([-1.0] * 3, abs=1e-5)
    assert pearson_r(a[0].numpy(), 3 * a[0].numpy()) == pytest.approx(1.0)


def test_linear_baseline_recovers_a_linear_teacher_exactly():
    """If the 'teacher' were a linear 9x9 filter, the fitted baseline must find it: r = 1 on a new image."""
    weight = torch.zeros(1, 3, LINEAR_SIDE, LINEAR_SIDE)
    weight[0, 1, 3:6, 3:6] = torch.from_numpy(LAPLACIAN)
    images = [texture(seed, (40, 48)) for seed in range(3)]

    def teacher(image):
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        return (torch.nn.functional.conv2d(x, weight, padding=LINEAR_SIDE // 2)[0, 0] + 0.25).numpy()

    packed = fit_linear_filter(images, [teacher(image) for image in images], samples=800)
    fresh = texture(9, (40, 48))
    assert pearson_r(linear_map(fresh, packed), teacher(fresh)) > 0.9999
    assert packed[-1].item() == pytest.approx(0.25, abs=1e-4)
    assert high_pass(fresh, LAPLACIAN).shape == fresh.shape[:2]


@pytest.fixture
def tiny_run(tmp_path):
    _photos(tmp_path / "photos" / "kodak24", [f"kodim{n:02d}.png" for n in range(1, 5)])
    torch.manual_seed(0)
    config = NoiseprintConfig(layers=3, width=8)
    teacher = save_checkpoint(tmp_path / "teacher", build_noiseprint(config), config)
    return NoiseprintDistillSettings(photos=str(tmp_path / "photos"), teacher=str(teacher), steps=5, batch_size=2,
                                     window=32, chunk=1, build_every=2, start_chunks=1, save_every=2, layers=3, width=8)


def test_tiny_run_resumes_exactly_and_is_scored(tiny_run, tmp_path, one_thread):
    straight = distill_noiseprint(tiny_run, tmp_path / "straight")
    interrupted = NoiseprintDistillSettings(**{**tiny_run.__dict__, "steps": 3})
    distill_noiseprint(interrupted, tmp_path / "resumed")
    resumed = distill_noiseprint(tiny_run, tmp_path / "resumed", resume=True)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed / "step.txt").read_text() == "5\n"
    assert len(list((tmp_path / "straight" / "bank").glob("chunk-*.safetensors"))) == 4  # 1 + steps 0, 2, 4
    with pytest.raises(DiffimlError, match="--resume"):
        distill_noiseprint(tiny_run, tmp_path / "straight")
    with pytest.raises(DiffimlError, match="other settings"):
        distill_noiseprint(NoiseprintDistillSettings(**{**tiny_run.__dict__, "lr": 0.5}), tmp_path / "straight",
                           resume=True)

    result = evaluate_student(tiny_run, straight, tmp_path / "straight")
    assert [row["name"] for row in result["rows"]] == ["lightnp", "linear-9x9", "laplacian", "srm-kv"]
    assert result["photos"] == 2 and len(result["per_image"]) == 4
    assert all(-1 <= entry["lightnp"] <= 1 for entry in result["per_image"])
    assert json.loads((tmp_path / "straight" / "evaluation.json").read_text())["rows"][0]["name"] == "lightnp"
    held = json.loads((tmp_path / "straight" / "settings.json").read_text())["held_out"]
    assert all(entry["photo"] in {Path(p).name for p in held} for entry in result["per_image"])


@pytest.mark.parametrize("size", [(96, 112), (95, 113)])
def test_windows_at_edges_see_what_the_whole_image_run_sees(tmp_path, size):
    """Every training window's target region, run through a student, equals the student's whole-image map there:
    interior windows by their context, edge windows by the same zero padding (and replicated odd row/column)."""
    from diffiml_cli.distillation.noiseprint_distill import Bank
    from diffiml_cli.models.noiseprint import extract_map, student_config

    torch.manual_seed(0)
    config = student_config(layers=4, width=8)
    student = build_noiseprint(config).eval()
    image = texture(4, size)
    settings = NoiseprintDistillSettings(photos=str(tmp_path), window=16, context=12, border=0.8, layers=4, width=8)
    bank = Bank.__new__(Bank)
    bank.settings, bank.images = settings, [image]
    bank.maps = [extract_map(student, config, image)]
    inputs, targets, offsets = bank.batch(np.random.default_rng(0), 24)
    assert {0, 2 * 12 - size[0] % 2} <= {int(dy) for dy, _ in offsets}  # both edges drawn
    with torch.no_grad():
        outputs = student(inputs)
    for i, (dy, dx) in enumerate(offsets):
        np.testing.assert_allclose(outputs[i, 0, dy:dy + 16, dx:dx + 16].numpy(), targets[i, 0].numpy(), atol=1e-5)
