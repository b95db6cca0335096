"""`diffiml benchmark`: parameters, FLOPs per image and measured speed of the real inference path."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from diffiml_cli.cli.common import (
    SAMPLING,
    AllowPickleOption,
    CheckpointOption,
    DeviceOption,
    Fp16Option,
    StepsOption,
    TtaOption,
    parse_int_list,
    parse_sampler,
    stderr,
    warn_if_emulated,
)
from diffiml_cli.defaults import DEFAULT_PRECISION, PRECISIONS
from diffiml_cli.presets import PRESETS


def benchmark(
    checkpoint: CheckpointOption = None,
    preset: Annotated[
        str | None,
        typer.Option(help=f"Benchmark a random-init model of a preset ({', '.join(PRESETS)}) instead of a checkpoint."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Square input size in pixels. Default: the model's own; 512 for a native-resolution "
                                 "model, which runs at each image's size.", min=32)
    ] = None,
    steps: StepsOption = SAMPLING.steps,
    sampler: Annotated[
        str | None,
        typer.Option(help="Comma-separated samplers to time side by side, each NAME[:STEPS] (as localize's --sampler; "
                     "STEPS defaults to --steps), e.g. ddim:8,ddim-trailing:2 for the paper's 8 DDIM steps beside 2 "
                     "trailing ones. Default: the checkpoint's sampler."),
    ] = None,
    ensemble: Annotated[str, typer.Option(help="Comma-separated ensemble sizes N to time.")] = "1,5",
    tta: TtaOption = False,
    batch_size: Annotated[str, typer.Option(help="Comma-separated batch sizes (images per call) to time.")] = "1,8",
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help=f"Comma-separated precisions to time side by side ({', '.join(PRECISIONS)}); "
                                           "auto is what localize runs; fp32 among them gives each row its speed-up.")
                         ] = DEFAULT_PRECISION,
    fp16: Fp16Option = False,
    compile: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile the denoiser, as `localize --compile` does; "
                           "compiling happens in the warmup, so keep --warmup >= 1.")
    ] = False,
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing each setting.", min=0)] = 2,
    iters: Annotated[int, typer.Option(help="Timed calls per setting.", min=1)] = 5,
    compare_vae: Annotated[
        bool, typer.Option("--compare-vae", help="Also time LightVAE against the Stable Diffusion VAE architecture.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result to stdout.")] = False,
    allow_pickle: AllowPickleOption = False,
    noiseprint: Annotated[list[str] | None, typer.Option(
        "--noiseprint", help="Also time a Noiseprint front end at the same size (a `convert --noiseprint` folder, "
        "a LightNP student, or noiseprint++.th); repeatable, side by side.")] = None,
) -> None:
    """Measure parameters, GFLOPs per image and images/s of the inference path for each (precision, sampler and
    steps, N, batch)."""
    from diffiml_cli.benchmarking import benchmark_model, run_benchmark
    from diffiml_cli.inference import resolve_device, resolve_precision

    samplings = parse_samplings(sampler, steps) if sampler else None
    ensembles = parse_int_list(ensemble, "--ensemble")
    batch_sizes = parse_int_list(batch_size, "--batch-size")
    localizer, config, source = benchmark_model(checkpoint, preset, image_size=image_size, allow_pickle=allow_pickle)
    torch_device = resolve_device(device)
    precisions = ["fp16"] if fp16 else [resolve_precision(name.strip(), torch_device) for name in precision.split(",")]
    for name in dict.fromkeys(precisions):
        warn_if_emulated(name, torch_device)  # the same line localize and evaluate print
    result = run_benchmark(
        localizer,
        config,
        source=source,
        random_init=preset is not None,
        device=torch_device,
        precisions=list(dict.fromkeys(precisions)),
        compile=compile,
        steps=steps,
        samplings=samplings,
        ensembles=ensembles,
        batch_sizes=batch_sizes,
        tta=tta,
        warmup=warmup,
        iters=iters,
        with_vae_comparison=compare_vae,
        on_progress=None if json_output else lambda message: stderr.print(f"[dim]{message}[/dim]"),
    )
    if noiseprint:  # the front ends' rows, at the same image size on the same device
        from diffiml_cli.cli.noiseprint_options import noiseprint_rows, render_noiseprint

        result["noiseprint"] = noiseprint_rows(noiseprint, result, torch_device, warmup=warmup, iters=iters,
                                              quiet=json_output, allow_pickle=allow_pickle)
    if json_output:
        from diffiml_cli.jsonsafe import finite_json

        print(json.dumps(finite_json(result), indent=2, allow_nan=False))
    else:
        _render(result, Console())
        if noiseprint:
            render_noiseprint(result["noiseprint"], Console())


def parse_samplings(text: str, steps: int) -> list[tuple[str, int]]:
    """'ddim:8,ddim-trailing:2' -> [("ddim-leading", 8), ("ddim-trailing", 2)]; an item without :STEPS takes
    `steps`. A bad name or step count is a usage error (exit 2) naming --sampler."""
    samplings = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, count = item.partition(":")
        samplings.append((parse_sampler(name, "--sampler"), parse_int_list(count, "--sampler")[0] if count else steps))
    if not samplings:
        raise typer.BadParameter(f"expected comma-separated NAME[:STEPS] items, got {text!r}", param_hint="--sampler")
    return samplings


def _g(value: float) -> str:
    """Three significant digits, without switching to exponent notation for the sizes seen here."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _stats(stats: dict[str, float]) -> str:
    return f"{_g(stats['median'])} [{_g(stats['q25'])}–{_g(stats['q75'])}]"


_PARAM_PARTS = {"encoder": "enc", "head": "head", "denoiser": "den", "vae": "vae", "detector": "det"}


def _render(result: dict[str, Any], console: Console) -> None:
    """A few lines of context, the speed of each (precision, sampler and steps, N, batch) setting, then the work per
    image of each (sampler and steps, N): two tables that read whole at 100 columns and fold at 80."""
    model, dev, sampling, params = result["model"], result["device"], result["sampling"], result["parameters"]
    console.print(
        f"[bold]{model['source']}[/bold] at {model['image_size']}px, TTA {'on' if sampling['tta'] else 'off'}; "
        f"{dev['type']} ({dev['name']}), "
        f"{dev['cpu_threads']} CPU threads, {', '.join(dev['precisions'])}"
        f"{', compiled denoiser' if dev['compile'] else ''}, torch {dev['torch']}"
    )
    if model["config"].get("encoder", {}).get("copy_move_cue"):
        console.print("The copy-move cue runs OpenCV SIFT on the CPU, once per image: its time is in ms / img, "
                      "but it is not a tensor operator, so the GFLOPs leave it out.")
    if model["random_init"]:
        console.print("Random-init weights: FLOPs and timings do not depend on the weights (the masks would be noise).")

    millions = {part: n / 1e6 for part, n in params.items()}
    parts = " + ".join(f"{_g(millions[part])} {short}" for part, short in _PARAM_PARTS.items() if params.get(part))
    console.print(f"parameters: {_g(millions['total'])} M = {parts}")
    console.print(_speed_table(result["settings"]))
    gflops = result["settings"][0]["flops"]["gflops"]
    console.print(f"encoder: {_g(gflops['encoder'])} GFLOPs per image" +
                  (f" (+ {_g(gflops['head'])} head)" if gflops["head"] else "") + "; a MAC is 2 FLOPs")
    console.print(_work_table(result["settings"]))
    vae = result["vae_comparison"]
    if vae:
        mask_vae, sd_vae = vae["mask_vae"], vae["sd_vae"]
        console.print(
            f"VAE encode+decode of one {vae['image_size']}² mask: LightVAE {_stats(mask_vae['ms'])} ms "
            f"({_g(mask_vae['parameters'] / 1e6)}M params, {_g(mask_vae['gflops'])} GFLOPs), SD VAE "
            f"{_stats(sd_vae['ms'])} ms ({_g(sd_vae['parameters'] / 1e6)}M, {_g(sd_vae['gflops'])} GFLOPs): "
            f"LightVAE is [bold]{vae['speedup']:.0f}× faster[/bold] (fastest calls: {vae['speedup_min']:.0f}×) "
            f"with {vae['flops_ratio']:.0f}× fewer FLOPs"
        )


def _table(title: str, caption: str, headers: tuple[str, ...]) -> Table:
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header in headers:  # a sampler name stays whole; numbers wrap at their spaces, nothing is cut
        table.add_column(header, justify="left" if header in ("precision", "sampler") else "right", overflow="fold",
                         no_wrap=header == "sampler")
    return table


def _speed_table(settings: list[dict[str, Any]]) -> Table:
    """One row per timed setting: the headline numbers."""
    table = _table("speed", "times: median [25th–75th percentile] per image",
                   ("precision", "sampler", "steps", "N", "batch", "ms / img", "img/s", "vs\nfp32"))
    for setting in settings:
        timing, speedup = setting["timing"], setting["speedup_vs_fp32"]
        table.add_row(setting["precision"], setting["sampler"], str(setting["steps"]), str(setting["ensemble"]),
                      str(setting["batch_size"]), _stats(timing["ms_per_image"]),
                      _g(timing["images_per_second"]["median"]), "—" if speedup is None else f"{speedup:.2f}×")
    return table


def _work_table(settings: list[dict[str, Any]]) -> Table:
    """GFLOPs per image by part, once per (sampler, steps, N): precision and batch do not change them, and the
    encoder's (the same in every row) is in the line above the table."""
    table = _table("GFLOPs per image", "denoiser = per step × calls + its condition term once per view",
                   ("sampler", "steps", "N", "total", "denoiser", "per step × calls", "VAE decode"))
    seen = set()
    for setting in settings:
        key = (setting["sampler"], setting["steps"], setting["ensemble"])
        if key in seen:
            continue
        seen.add(key)
        flops = setting["flops"]
        gflops = flops["gflops"]
        table.add_row(
            setting["sampler"], str(setting["steps"]), str(setting["ensemble"]),
            _g(gflops["total"]),
            _g(gflops["denoiser"]), f"{_g(gflops['denoiser_per_step'])} × {flops['calls_per_image']['denoiser']}",
            _g(gflops["vae_decode"]))
    return table
