"""Option types and helpers shared by several sub-commands. Defaults come from `diffiml_cli.defaults`, which
imports nothing heavy: torch and the models are imported inside the functions that load a model."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.console import Console

from diffiml_cli.defaults import DEFAULT_PRECISION, DEFAULT_TILE_OVERLAP, PRECISIONS, SamplingOptions
from diffiml_cli.diffusion.samplers import example as sampler_examples, sampler_name
from diffiml_cli.errors import DiffimlError

if TYPE_CHECKING:
    from diffiml_cli.pipeline import LocalizationPipeline

stderr = Console(stderr=True)
SAMPLING = SamplingOptions()  # the defaults every sampling option shows

CheckpointOption = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="A local checkpoint directory or .safetensors file, or a Hub id org/name[@revision]. "
        "Default: the checkpoint shipped in weights/.",
    ),
]
StepsOption = Annotated[int, typer.Option(help="Sampling steps: denoiser calls per noise sample, on the sampler's "
                                           "timestep grid.", min=1, max=1000)]
SamplerOption = Annotated[
    str | None,
    typer.Option(help=f"The sampler, ALGORITHM[-SPACING] ({sampler_examples()}; ddim alone is ddim-leading, "
                 "dpmsolver++ alone dpmsolver++-trailing): how the steps walk from noise to the mask, and on which "
                 "timestep grid. Default: the checkpoint's (ddim-leading for the shipped one).",
                 callback=lambda value: sampler_option(value)),
]
EnsembleOption = Annotated[int, typer.Option(help="Noise samples N, run as one batch; their latents are averaged.", min=1)]
TtaOption = Annotated[bool, typer.Option("--tta/--no-tta", help="Also predict the mirrored image and merge by max.")]
ThresholdOption = Annotated[float, typer.Option(help="Probability at or above which a pixel counts as manipulated.", min=0.0, max=1.0)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda (under torchrun, auto is each rank's GPU).")]
PrecisionOption = Annotated[
    str, typer.Option(help=f"{', '.join(PRECISIONS)}: auto is fp16 on CUDA, bf16 on a CPU with native bf16, else fp32.")
]
Fp16Option = Annotated[bool, typer.Option("--fp16/--no-fp16", help="The same as --precision fp16 (CUDA only).")]
SeedOption = Annotated[int, typer.Option(help="Seed of the sampling noise: the same seed gives the same mask.", min=0,
                                         max=2**64 - 1)]  # what torch's generator takes
BatchSizeOption = Annotated[int, typer.Option(help="Images (or tiles of one image) per forward pass.", min=1)]
ResolutionOption = Annotated[
    str | None,
    typer.Option(help="How images reach the model: resize (squeezed to the model's training size) or native (each "
                 "image at its own resolution). Default: the checkpoint's."),
]
TileOption = Annotated[
    int | None,
    typer.Option(help="Native models: run an image whose long side exceeds the model's native_max_side as tiles of "
                 "this side, at full resolution (default: native_max_side); 0 shrinks such images instead.", min=0),
]
TileOverlapOption = Annotated[int, typer.Option(help="Pixels shared by neighbouring tiles, blended smoothly.", min=0)]
GateOption = Annotated[
    bool | None,
    typer.Option("--gate/--no-gate", help="Empty the mask of an image the detector calls authentic. Default: the "
                 "checkpoint's calibrated choice (see weights/README.md)."),
]
AllowPickleOption = Annotated[
    bool,
    typer.Option(help="Accept a pickle (.pth/.pt/.bin) checkpoint, loaded with torch.load(weights_only=True)."),
]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The options `localize` and `evaluate` share, declared once: the checkpoint, how to sample, the verdict's
    mask threshold and gate, and where and how the model runs. Each field is one option (RUN_OPTION_TYPES)."""

    checkpoint: str | None = None
    sampler: str | None = SAMPLING.sampler
    steps: int = SAMPLING.steps
    ensemble: int = SAMPLING.ensemble
    tta: bool = SAMPLING.tta
    threshold: float = 0.5
    gate: bool | None = None
    device: str = "auto"
    precision: str = DEFAULT_PRECISION
    fp16: bool = False
    seed: int = SAMPLING.seed
    batch_size: int = 1
    tile: int | None = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    resolution: str | None = None
    allow_pickle: bool = False

    @property
    def sampling(self) -> SamplingOptions:
        return SamplingOptions(steps=self.steps, ensemble=self.ensemble, tta=self.tta, seed=self.seed,
                               sampler=self.sampler)


RUN_OPTION_TYPES = {
    "checkpoint": CheckpointOption, "sampler": SamplerOption, "steps": StepsOption, "ensemble": EnsembleOption, "tta": TtaOption,
    "threshold": ThresholdOption, "gate": GateOption, "device": DeviceOption, "precision": PrecisionOption,
    "fp16": Fp16Option, "seed": SeedOption, "batch_size": BatchSizeOption, "tile": TileOption,
    "tile_overlap": TileOverlapOption, "resolution": ResolutionOption, "allow_pickle": AllowPickleOption,
}


def with_run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` every RunOptions field as its own option, in place of its `run: RunOptions` parameter;
    the command receives them gathered as `run`. Typer reads the signature this sets."""
    keyword = inspect.Parameter.KEYWORD_ONLY  # Typer passes every option by name, so any order of defaults is valid
    signature = inspect.signature(command, eval_str=True)
    fields = [inspect.Parameter(f.name, keyword, default=f.default, annotation=RUN_OPTION_TYPES[f.name])
              for f in dataclasses.fields(RunOptions)]
    parameters = []
    for parameter in signature.parameters.values():
        parameters.extend(fields if parameter.name == "run" else [parameter.replace(kind=keyword)])

    @functools.wraps(command)
    def run_command(*args: Any, **kwargs: Any) -> Any:
        run = RunOptions(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(RunOptions) if f.name in kwargs})
        return command(*args, run=run, **kwargs)

    run_command.__signature__ = signature.replace(parameters=parameters)
    run_command.__annotations__ = {p.name: p.annotation for p in parameters}
    return run_command


def parse_int_list(text: str, option: str, *, minimum: int = 1, maximum: int | None = None) -> list[int]:
    """'1,5' -> [1, 5]; every item an integer in [minimum, maximum], else a usage error (exit 2) naming the option."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or any(value < minimum or (maximum is not None and value > maximum) for value in values):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise typer.BadParameter(f"expected comma-separated integers {bounds}, got {text!r}", param_hint=option)
    return values


def with_help_panels(panels: dict[str, tuple[str, ...]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Group a command's options in `--help` under named panels (panel -> its parameter names). The options'
    Annotated metadata is copied, so option types shared with other commands keep no panel."""
    panel_of = {name: panel for panel, names in panels.items() for name in names}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        parameters = []
        for parameter in signature.parameters.values():
            base, *metadata = get_args(parameter.annotation)
            metadata = [copy.copy(info) for info in metadata]
            for info in metadata:
                if isinstance(info, typer.models.ParameterInfo) and parameter.name in panel_of:
                    info.rich_help_panel = panel_of[parameter.name]
            parameters.append(parameter.replace(annotation=Annotated[(base, *metadata)]))
        command.__signature__ = signature.replace(parameters=parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def parse_sampler(text: str, option: str) -> str:
    """A sampler name or alias -> its canonical name ("ddim" -> "ddim-leading"), else a usage error (exit 2)."""
    try:
        return sampler_name(text)
    except DiffimlError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def parse_sampler_list(text: str, option: str = "--sweep-sampler") -> list[str]:
    """'ddim,ddim-trailing' -> ["ddim-leading", "ddim-trailing"], else a usage error (exit 2) naming the option."""
    names = [parse_sampler(item, option) for item in text.split(",") if item.strip()]
    if not names:
        raise typer.BadParameter(f"expected comma-separated sampler names, got {text!r}", param_hint=option)
    return names


def sampler_option(value: str | None) -> str | None:
    """--sampler's check: None stays None (the checkpoint's sampler), a name becomes its canonical form."""
    return None if value is None else parse_sampler(value, "--sampler")


def precision_of(precision: str, fp16: bool) -> str:
    """--fp16 is kept as an alias of --precision fp16."""
    return "fp16" if fp16 else precision


def open_pipeline(checkpoint: str | None, *, device: str, allow_pickle: bool, precision: str = DEFAULT_PRECISION,
                  fp16: bool = False, sampling: SamplingOptions = SAMPLING, calibrating: bool = False,
                  resolution: str | None = None, compile: bool = False, threshold: float = 0.5,
                  gate: bool | None = None, tile: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                  batch_size: int = 1) -> LocalizationPipeline:
    """`load_localizer` with the CLI's device and precision conventions (each torchrun rank on its own GPU), and
    its warnings: bf16 emulated, and (unless `calibrating`) a verdict calibrated in another precision or sampling.
    `allow_pickle` has no default: every command passes what its user chose."""
    from diffiml_cli.distributed import rank_device
    from diffiml_cli.pipeline import load_localizer

    pipeline = load_localizer(checkpoint, device=rank_device(device), precision=precision_of(precision, fp16),
                              allow_pickle=allow_pickle, resolution=resolution, compile=compile, sampling=sampling,
                              threshold=threshold, gate=gate, tile=tile, tile_overlap=tile_overlap,
                              batch_size=batch_size)
    warn_if_emulated(pipeline.predictor.precision, pipeline.predictor.device)
    if not calibrating:
        warn_if_uncalibrated_precision(pipeline)
        warn_if_uncalibrated_sampling(pipeline)
    return pipeline


def open_run(run: RunOptions, *, compile: bool = False) -> LocalizationPipeline:
    """`open_pipeline` with the options `localize` and `evaluate` share (RunOptions); `compile` is localize's."""
    return open_pipeline(run.checkpoint, device=run.device, precision=run.precision, fp16=run.fp16,
                         allow_pickle=run.allow_pickle, sampling=run.sampling, resolution=run.resolution,
                         compile=compile, threshold=run.threshold, gate=run.gate, tile=run.tile,
                         tile_overlap=run.tile_overlap, batch_size=run.batch_size)


def warn_if_uncalibrated_sampling(pipeline: LocalizationPipeline) -> None:
    """One line on stderr when the run samples with another sampler, steps, N or TTA than the threshold was
    calibrated at: the detection scores' distribution moves with them (the seed does not count), so its false-alarm
    rate was not measured there. A calibration older than the sampler setting sampled with the checkpoint's own."""
    calibration = pipeline.config.calibration
    if calibration is None or not calibration.sampling:
        return
    calibrated = calibration.sampled_with(pipeline.config.diffusion)
    run = dataclasses.asdict(pipeline.sampling)
    differ = [name for name in ("sampler", "steps", "ensemble", "tta")
              if name in calibrated and calibrated[name] != run[name]]
    if differ:
        at = ", ".join(f"{name} {calibrated[name]}" for name in differ)
        now = ", ".join(f"{name} {run[name]}" for name in differ)
        stderr.print(f"[yellow]warning:[/] the verdict's threshold was calibrated at {at}, not {now}; its "
                     "false-alarm rate is not measured for this sampling (diffiml calibrate --sampler --steps "
                     "--ensemble)")


def warn_if_uncalibrated_precision(pipeline: LocalizationPipeline) -> None:
    """One line on stderr when the verdict's threshold was calibrated in other precisions than this run's (fp16 on
    a GPU, say): its false-alarm rate was then not measured for these scores."""
    calibration = pipeline.config.calibration
    if calibration is None or not calibration.precision:
        return  # no verdict, or a calibration from before precisions were recorded
    if pipeline.predictor.precision not in calibration.precision.split(","):
        stderr.print(f"[yellow]warning:[/] the verdict's threshold was calibrated in {calibration.precision}, not "
                     f"{pipeline.predictor.precision}; its false-alarm rate is not measured for this precision "
                     "(diffiml calibrate --precision)")


def warn_if_emulated(precision: str, device: Any) -> None:
    """One line on stderr when bf16 was asked for on a CPU that does not compute it natively."""
    from diffiml_cli.inference import bf16_is_emulated

    if bf16_is_emulated(precision, device):
        stderr.print("[yellow]warning:[/] this CPU has no native bf16 (AVX512-BF16, AMX or Arm BF16), so --precision "
                     "bf16 is emulated and slower than fp32 here; --precision auto picks fp32 on it")


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C; job schedulers and containers; a closed terminal


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[list[int]]:
    """Within the block, a first stop signal (SIGINT, SIGTERM or SIGHUP) only records its number in the list it
    yields ([0] until then), so the run can stop after the batch in flight and keep everything finished; a
    second one interrupts at once (KeyboardInterrupt)."""
    flag = [0]
    signals = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    previous = {number: signal.getsignal(number) for number in signals}

    def handler(signum, frame) -> None:
        if flag[0]:
            for number, action in previous.items():
                signal.signal(number, action)
            raise KeyboardInterrupt
        flag[0] = signum

    try:
        for number in signals:
            signal.signal(number, handler)
    except ValueError:  # not the main thread (a test runner): the signals keep their default behaviour
        yield flag
        return
    try:
        yield flag
    finally:
        for number, action in previous.items():
            signal.signal(number, action)

