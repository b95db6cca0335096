"""`diffiml calibrate`: choose the detector's decision threshold for a target false-alarm rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from diffiml_cli.cli.common import (SAMPLING, AllowPickleOption, BatchSizeOption, CheckpointOption, DeviceOption,
                                    EnsembleOption, SamplerOption, SeedOption, StepsOption, open_pipeline, stderr)
from diffiml_cli.cli.display import markup_safe
from diffiml_cli.cli.progress import progress_bar
from diffiml_cli.defaults import DEFAULT_PRECISION, SamplingOptions


def calibrate(
    data: Annotated[list[str], typer.Option("--data", "-d", help="A calibration set: a Tp/Gt/Au folder or an "
                    "IMDL-BenCo JSON with authentic images (docs/make_detection_sets.py makes one from held-out photos), as "
                    "[NAME=]SPEC. Repeatable: the false-alarm rate then holds in each set, not only pooled.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the calibrated copy of the checkpoint.")],
    checkpoint: CheckpointOption = None,
    target_far: Annotated[float, typer.Option(help="The share of authentic images the verdict may call manipulated.",
                                              min=0.0, max=0.99)] = 0.05,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Whether localize empties the masks of images the "
                                       "verdict calls authentic, unless told otherwise.")] = False,
    sampler: SamplerOption = SAMPLING.sampler,
    steps: StepsOption = SAMPLING.steps,
    ensemble: EnsembleOption = SAMPLING.ensemble,
    seed: SeedOption = SAMPLING.seed,
    batch_size: BatchSizeOption = 1,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="Comma-separated precisions to score the set in (auto, fp32, bf16, "
                         "fp16); the threshold keeps the false-alarm rate at most --target-far in each.")
                         ] = DEFAULT_PRECISION,
    allow_pickle: AllowPickleOption = False,
) -> None:
    """Score the calibration sets, pick the lowest detection threshold whose authentic false-alarm rate is at most
    --target-far in every listed precision and every set, and write the checkpoint with that threshold (and
    --gate) in its config; weights unchanged."""
    from diffiml_cli.checkpoint import default_checkpoint
    from diffiml_cli.evaluation.calibration import (calibrate as choose, check_copy_target, rates_by_set,
                                                    write_calibrated)
    from diffiml_cli.evaluation.datasets import load_datasets

    check_copy_target(checkpoint or default_checkpoint(), out)  # before scoring the set, which takes a while
    datasets = load_datasets(data)
    pairs = [pair for _, set_pairs in datasets.values() for pair in set_pairs]
    sets = [name for name, (_, set_pairs) in datasets.items() for _ in set_pairs]
    sampling = SamplingOptions(steps=steps, ensemble=ensemble, seed=seed, sampler=sampler)
    precisions = list(dict.fromkeys(each.strip() for each in precision.split(",")))
    pipelines = (open_pipeline(checkpoint, device=device, precision=each, allow_pickle=allow_pickle,
                               sampling=sampling, batch_size=batch_size, gate=False, calibrating=True)
                 for each in precisions)  # one model loaded at a time
    with progress_bar("calibrate", "img", stderr) as progress:
        task = progress.add_task("calibrate", total=len(pairs) * len(precisions))
        calibration, reports = choose(pipelines, pairs, target_far=target_far, gate=gate, sets=sets,
                                      data="; ".join(f"{name}: {spec}" for name, (spec, _) in datasets.items()),
                                      on_progress=lambda pair, error: progress.update(task, advance=1))
    write_calibrated(checkpoint or default_checkpoint(), calibration, out)
    for precision_name, far, tpr in calibration.rates:
        detected = "no tampered images" if tpr is None else f"detected {tpr:.3f} of {calibration.n_tampered} tampered"
        auc = reports[precision_name].metrics.get("image_auc")
        auc_text = f"{auc:.3f}" if isinstance(auc, float) and math.isfinite(auc) else "n/a (one class only)"
        stderr.print(f"{precision_name}: false alarms {far:.3f} of {calibration.n_authentic} authentic images "
                     f"(target {target_far:g}), {detected}; image AUC {auc_text}", soft_wrap=True)
    if len(datasets) > 1:
        for precision_name, name, far, count in rates_by_set(reports, pairs, sets, calibration.threshold):
            stderr.print(f"{precision_name}, {markup_safe(name)}: false alarms {far:.3f} of {count} authentic images",
                         soft_wrap=True)
    stderr.print(f"threshold {calibration.threshold:.4f} -> {markup_safe(out)}", soft_wrap=True)
