"""Inference precision: what `auto` resolves to, and how far bf16 masks may stray from fp32 ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffiml_cli import inference
from diffiml_cli.benchmarking import run_benchmark
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import SamplingOptions, cpu_has_native_bf16, member_spread, resolve_precision
from diffiml_cli.models.build import build_localizer
from diffiml_cli.pipeline import load_localizer
from diffiml_cli.presets import get_preset


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for explicitly: emulated if need be
    with pytest.raises(DiffimlError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(DiffimlError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu vme avx512f avx512bw avx512_bf16 amx_tile", True),  # Sapphire Rapids, Zen 4
    ("fpu vme avx2 avx512f avx512bw avx512_vnni", False),  # Skylake-SP: AVX-512 without BF16
    ("fpu vme sse4_2 avx2", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    real_path = inference.Path
    monkeypatch.setattr(inference.platform, "system", lambda: "Linux")
    monkeypatch.setattr(inference, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo" else real_path(name))
    assert cpu_has_native_bf16() is expected


def test_bf16_masks_agree_with_fp32_on_nearly_every_pixel(tiny_checkpoint, one_thread):
    """bf16 keeps 8 bits of mantissa, so a probability moves by up to a few 1/256 and a pixel whose fp32 value
    lies that close to the threshold can flip. We accept 1 % of the pixels (measured: none to 0.1 % with this
    random-weight test model; the shipped model's numbers are in its model card); the maps themselves stay
    within 0.1. The DDIM update, the decode of the ensemble mean and the detector run in fp32 in both."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(128, 40, (96, 128, 3)), 0, 255).astype(np.uint8)
    results = {precision: load_localizer(tiny_checkpoint, device="cpu", precision=precision,
                                         sampling=SamplingOptions(steps=4, ensemble=3)).predict(image)
               for precision in ("fp32", "bf16")}
    fp32, bf16 = results["fp32"], results["bf16"]
    assert (fp32.mask == bf16.mask).mean() >= 0.99
    assert np.abs(fp32.probability - bf16.probability).max() < 0.1
    assert not np.array_equal(fp32.probability, bf16.probability)  # bf16 really ran


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_only_the_members_are_decoded_in_reduced_precision(tiny_checkpoint, one_thread, precision):
    """The mean latent's decode is the probability map the threshold reads: always fp32. The N members' decodes
    only feed the uncertainty, so they run in the chosen precision (the cheaper half of a CPU decode)."""
    pipeline = load_localizer(tiny_checkpoint, device="cpu", precision=precision,
                              sampling=SamplingOptions(steps=2, ensemble=3))
    localizer = pipeline.predictor.localizer
    decode, calls = localizer.decode_mask, []

    def recording_decode(latents):
        reduced = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        calls.append((latents.shape[0], reduced))
        return decode(latents)

    localizer.decode_mask = recording_decode
    result = pipeline.predict(np.full((64, 64, 3), 100, np.uint8))
    assert calls == [(1, False), (3, precision == "bf16")]
    assert result.uncertainty.dtype == np.float32 and 0 <= result.uncertainty.min() <= result.uncertainty.max() <= 0.5


def test_member_spread_is_the_population_standard_deviation():
    members = torch.rand(2, 5, 1, 16, 24).contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(member_spread(members), members.std(dim=1, unbiased=False))
    assert member_spread(members[:, :1]).abs().max() == 0  # one member: no spread
    assert member_spread(members).shape == (2, 1, 16, 24)


def test_benchmark_times_each_precision_side_by_side():
    config = get_preset("test")
    torch.manual_seed(0)
    result = run_benchmark(build_localizer(config), config, source="test", random_init=True, device=torch.device("cpu"),
                           precisions=("fp32", "bf16"), steps=1, ensembles=(2,), batch_sizes=(1,), warmup=0, iters=2)
    rows = {row["precision"]: row for row in result["settings"]}
    assert set(rows) == {"fp32", "bf16"} and result["device"]["precisions"] == ["fp32", "bf16"]
    assert rows["fp32"]["speedup_vs_fp32"] == 1.0
    bf16_ms = rows["bf16"]["timing"]["ms_per_image"]["median"]
    assert rows["bf16"]["speedup_vs_fp32"] == pytest.approx(rows["fp32"]["timing"]["ms_per_image"]["median"] / bf16_ms)


@pytest.mark.parametrize("native", [True, False])
def test_localize_warns_only_when_bf16_is_emulated(monkeypatch, tiny_checkpoint, image_folder, tmp_path, native):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    args = ["localize", str(image_folder / "a.png"), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "out"),
            "--steps", "1", "--ensemble", "1", "--device", "cpu"]
    asked = CliRunner().invoke(app, [*args, "--precision", "bf16"])
    automatic = CliRunner().invoke(app, [*args, "--precision", "auto", "--overwrite"])
    assert asked.exit_code == 0 and automatic.exit_code == 0, asked.output + automatic.output
    assert ("bf16 is emulated" in asked.output) is not native
    assert "emulated" not in automatic.output  # auto never picks an emulated precision
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["run"]["precision"] == ("bf16" if native else "fp32")


@pytest.mark.parametrize("native", [True, False])
def test_benchmark_warns_only_when_its_bf16_rows_are_emulated(monkeypatch, native):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    result = CliRunner().invoke(app, ["benchmark", "--preset", "test", "--precision", "fp32,bf16", "--steps", "1",
                                      "--ensemble", "1", "--batch-size", "1", "--warmup", "0", "--iters", "1",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert ("bf16 is emulated" in result.output) is not native
