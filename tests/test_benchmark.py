"""`diffiml benchmark`: the JSON schema, the per-image FLOP formula against a count of a real predict,
ensemble/TTA scaling, the VAE comparison, and the clear error without diffusers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from diffiml_cli import vae_comparison
from diffiml_cli.benchmarking import FLOP_PARTS, count_parameters, count_pipeline_flops, run_benchmark
from diffiml_cli.vae_comparison import compare_vae
from diffiml_cli.cli.app import app
from diffiml_cli.flops import count_flops
from diffiml_cli.inference import Predictor, SamplingOptions, resolve_precision
from diffiml_cli.models.build import build_localizer
from diffiml_cli.presets import get_preset

STATS_KEYS = {"median", "q25", "q75", "min", "max"}


@pytest.fixture(scope="module")
def test_localizer():
    torch.manual_seed(0)
    return build_localizer(get_preset("test")).eval()


def _assert_stats(stats: dict) -> None:
    assert set(stats) == STATS_KEYS
    assert all(isinstance(v, float) and v > 0 for v in stats.values())
    assert stats["min"] <= stats["q25"] <= stats["median"] <= stats["q75"] <= stats["max"]


def test_cli_json_schema():
    args = ["benchmark", "--preset", "test", "--image-size", "64", "--steps", "2", "--ensemble", "1,2",
            "--batch-size", "1", "--iters", "1", "--warmup", "0", "--device", "cpu", "--precision", "fp32", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout holds the JSON and nothing else

    assert set(data) == {"schema_version", "model", "device", "sampling", "parameters", "settings", "vae_comparison"}
    assert data["schema_version"] == 4
    assert data["model"]["source"] == "preset:test" and data["model"]["random_init"] is True
    assert data["model"]["image_size"] == 64 and data["model"]["config"]["image_size"] == 64
    assert data["device"]["type"] == "cpu" and data["device"]["precisions"] == ["fp32"] and data["device"]["compile"] is False
    assert isinstance(data["device"]["cpu_threads"], int) and data["device"]["cpu_threads"] >= 1
    assert isinstance(data["device"]["name"], str) and isinstance(data["device"]["torch"], str)
    assert data["sampling"] == {"settings": [{"sampler": "ddim-leading", "steps": 2}], "tta": False, "seed": 0}
    params = data["parameters"]
    assert set(params) == {"total", "encoder", "head", "denoiser", "vae", "detector"}
    assert params["head"] == params["detector"] == 0
    assert all(isinstance(v, int) and v > 0 for k, v in params.items() if k not in ("head", "detector"))
    assert params["total"] == params["encoder"] + params["denoiser"] + params["vae"]
    assert data["vae_comparison"] is None

    assert [(s["precision"], s["sampler"], s["steps"], s["ensemble"], s["batch_size"]) for s in data["settings"]] == [
        ("fp32", "ddim-leading", 2, 1, 1), ("fp32", "ddim-leading", 2, 2, 1)]
    assert all(s["speedup_vs_fp32"] == 1.0 for s in data["settings"])
    for setting in data["settings"]:
        flops = setting["flops"]
        assert flops["ensemble"] == setting["ensemble"] and flops["steps"] == 2 and flops["views"] == 1
        assert set(flops["flops"]) == set(flops["gflops"]) == set(flops["gmacs"]) == set(FLOP_PARTS)
        assert flops["flops"]["head"] == 0 and flops["calls_per_image"]["head"] == 0 and flops["flops"]["detector"] == 0
        assert all(isinstance(v, int) and v > 0 for part, v in flops["flops"].items() if part not in ("head", "detector"))
        assert flops["gflops"]["total"] == pytest.approx(flops["flops"]["total"] / 1e9)
        assert flops["gmacs"]["total"] == pytest.approx(flops["gflops"]["total"] / 2)
        timing = setting["timing"]
        assert timing["iters"] == 1 and timing["warmup"] == 0 and timing["timer"] == "perf_counter"
        assert len(timing["batch_ms"]) == 1 and isinstance(timing["batch_ms"][0], float)
        _assert_stats(timing["ms_per_image"])
        _assert_stats(timing["images_per_second"])


@pytest.mark.parametrize(("batch", "tta"), [(1, False), (2, True)])
def test_formula_equals_a_count_of_a_whole_predict(test_localizer, batch, tta):
    predictor = Predictor(test_localizer, get_preset("test").diffusion, device=torch.device("cpu"))
    options = SamplingOptions(steps=2, ensemble=2, tta=tta)
    images = torch.rand(batch, 3, 64, 64)
    direct = count_flops(lambda: predictor.predict(images, options))
    formula = count_pipeline_flops(test_localizer, 64, steps=2, ensemble=2, tta=tta)
    assert direct.flops == batch * formula["flops"]["total"]


def test_ensemble_and_tta_scale_the_parts_as_predict_calls_them(test_localizer):
    one = count_pipeline_flops(test_localizer, 64, steps=3, ensemble=1, tta=False)["flops"]
    five = count_pipeline_flops(test_localizer, 64, steps=3, ensemble=5, tta=False)["flops"]
    five_tta = count_pipeline_flops(test_localizer, 64, steps=3, ensemble=5, tta=True)["flops"]

    assert five["encoder"] == one["encoder"]  # the encoder runs once per view, whatever N
    assert five["denoiser_per_step"] == one["denoiser_per_step"]
    assert five["condition_term"] == one["condition_term"] > 0  # once per view, not per member or step
    assert one["denoiser"] == 3 * one["denoiser_per_step"] + one["condition_term"]
    assert five["denoiser"] == 15 * one["denoiser_per_step"] + one["condition_term"]
    assert five["vae_decode"] == 3 * one["vae_decode"]  # (1 + 5) decodes against (1 + 1)
    assert all(five_tta[part] == 2 * five[part] for part in ("total", "encoder", "denoiser", "vae_decode"))
    assert five_tta["condition_term"] == five["condition_term"]  # the per-view cost; `denoiser` doubles with it
    for counts in (one, five, five_tta):
        assert counts["total"] == counts["encoder"] + counts["denoiser"] + counts["vae_decode"]


@pytest.mark.parametrize("tta", [False, True])
def test_discriminative_flops_are_one_pass_and_equal_a_count_of_predict(tta):
    config = dataclasses.replace(get_preset("test"), kind="discriminative")
    localizer = build_localizer(config).eval()
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64)
    direct = count_flops(lambda: predictor.predict(images, SamplingOptions(steps=8, ensemble=5, tta=tta)))
    formula = count_pipeline_flops(localizer, 64, steps=8, ensemble=5, tta=tta)
    counts = formula["flops"]
    assert direct.flops == 2 * counts["total"]
    assert counts["denoiser"] == counts["vae_decode"] == 0 and counts["head"] > 0
    assert counts["total"] == counts["encoder"] + counts["head"]
    params = count_parameters(localizer)
    assert params["denoiser"] == params["vae"] == 0 and params["total"] == params["encoder"] + params["head"]


def test_parameters_add_up(test_localizer):
    params = count_parameters(test_localizer)
    assert params["total"] == sum(p.numel() for p in test_localizer.parameters())
    assert params["total"] == params["encoder"] + params["denoiser"] + params["vae"]


def test_run_benchmark_times_the_real_predict(test_localizer, monkeypatch):
    calls = []
    real_predict = Predictor.predict_maps

    def spy(self, images, options):
        calls.append((tuple(images.shape), options.ensemble, options.steps))
        return real_predict(self, images, options)

    monkeypatch.setattr(Predictor, "predict_maps", spy)
    config = get_preset("test")
    result = run_benchmark(test_localizer, config, source="test", random_init=True, device=torch.device("cpu"),
                           steps=1, ensembles=(3,), batch_sizes=(2,), warmup=1, iters=2)
    assert calls == [((2, 3, 64, 64), 3, 1)] * 3  # 1 warmup + 2 timed, each a real predict
    assert len(result["settings"][0]["timing"]["batch_ms"]) == 2


def test_cli_passes_options_to_the_library(monkeypatch):
    received = {}

    def fake_run_benchmark(localizer, config, **kwargs):
        received.update(kwargs, image_size=config.image_size)
        return {"fake": True}

    monkeypatch.setattr("diffiml_cli.benchmarking.run_benchmark", fake_run_benchmark)
    args = ["benchmark", "--preset", "test", "--image-size", "96", "--ensemble", "1,3", "--batch-size", "2",
            "--tta", "--warmup", "0", "--iters", "4", "--device", "cpu", "--compare-vae", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"fake": True}
    assert received["image_size"] == 96 and received["random_init"] is True
    assert received["ensembles"] == [1, 3] and received["batch_sizes"] == [2]
    assert received["tta"] is True and received["with_vae_comparison"] is True
    assert received["compile"] is False
    assert received["precisions"] == [resolve_precision("auto", torch.device("cpu"))]  # what localize runs
    assert (received["warmup"], received["iters"], received["steps"]) == (0, 4, SamplingOptions().steps)
    assert received["samplings"] is None  # the checkpoint's sampler
    result = CliRunner().invoke(app, [*args, "--steps", "3", "--sampler", "ddim:8, ddim-trailing:2,dpmsolver++"])
    assert result.exit_code == 0, result.output
    assert received["samplings"] == [("ddim-leading", 8), ("ddim-trailing", 2), ("dpmsolver++-trailing", 3)]


def test_benchmark_shows_rows_for_each_sampler_and_steps_beside_eight_ddim_steps(test_localizer, monkeypatch):
    calls = []
    real_predict = Predictor.predict_maps

    def spy(self, images, options):
        calls.append((options.sampler, options.steps, options.ensemble))
        return real_predict(self, images, options)

    monkeypatch.setattr(Predictor, "predict_maps", spy)
    result = run_benchmark(test_localizer, get_preset("test"), source="test", random_init=True,
                           device=torch.device("cpu"), precisions=("fp32", "bf16"),
                           samplings=[("ddim", 8), ("ddim-trailing", 2)], ensembles=(5, 6), batch_sizes=(1,),
                           warmup=0, iters=1)
    rows = [(r["precision"], r["sampler"], r["steps"], r["ensemble"]) for r in result["settings"]]
    assert rows == [(precision, sampler, steps, N) for precision in ("fp32", "bf16")
                    for sampler, steps in (("ddim-leading", 8), ("ddim-trailing", 2)) for N in (5, 6)]
    assert calls == [(sampler, steps, N) for _ in range(2) for sampler, steps, N in
                     (("ddim-leading", 8, 5), ("ddim-leading", 8, 6), ("ddim-trailing", 2, 5), ("ddim-trailing", 2, 6))]
    for row in result["settings"]:  # each row's FLOPs are of its own steps, its speed-up of its own fp32 row
        assert row["flops"]["steps"] == row["steps"]
        assert row["flops"]["calls_per_image"]["denoiser"] == row["steps"] * row["ensemble"]
        fp32 = next(r for r in result["settings"] if r["precision"] == "fp32" and r["sampler"] == row["sampler"]
                    and r["steps"] == row["steps"] and r["ensemble"] == row["ensemble"])
        median = row["timing"]["ms_per_image"]["median"]
        assert row["speedup_vs_fp32"] == pytest.approx(fp32["timing"]["ms_per_image"]["median"] / median)
    assert result["sampling"]["settings"] == [{"sampler": "ddim-leading", "steps": 8},
                                              {"sampler": "ddim-trailing", "steps": 2}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ensemble", "1,x"], "comma-separated integers >= 1"),
        (["--batch-size", "0"], "comma-separated integers >= 1"),
        (["--sampler", "ddim:0"], "comma-separated integers >= 1"),
        (["--sampler", "euler:2"], "unknown sampler"),
    ],
)
def test_cli_rejects_bad_lists(args, message):
    result = CliRunner().invoke(app, ["benchmark", "--preset", "test", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_refuses_checkpoint_and_preset_together(tiny_checkpoint):
    result = CliRunner().invoke(app, ["benchmark", "--preset", "test", "--checkpoint", str(tiny_checkpoint)])
    assert result.exit_code == 1
    assert "error: pass --checkpoint or --preset, not both" in result.stderr


def test_compare_vae_result(monkeypatch):
    # A 32^2 mask keeps the 84M-parameter SD VAE cheap; the FLOP ratio does not depend on the size much.
    result = compare_vae(32, torch.device("cpu"), 1, warmup=0)
    for part in ("mask_vae", "sd_vae"):
        assert result[part]["parameters"] > 0 and result[part]["gflops"] > 0
        _assert_stats(result[part]["ms"])
    assert result["sd_vae"]["parameters"] > 80e6 and result["mask_vae"]["parameters"] < 1e6
    assert result["flops_ratio"] > 1000
    assert result["speedup"] == pytest.approx(result["sd_vae"]["ms"]["median"] / result["mask_vae"]["ms"]["median"])
    assert result["speedup_min"] == pytest.approx(result["sd_vae"]["ms"]["min"] / result["mask_vae"]["ms"]["min"])
    assert vae_comparison.SD_VAE_CONFIG["block_out_channels"] == (128, 256, 512, 512)
