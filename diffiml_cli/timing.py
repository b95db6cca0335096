"""Timing helpers shared by the benchmarks: one call's wall time (CUDA events on a GPU) and robust summaries."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of a list of measurements."""
    array = np.asarray(values, dtype=np.float64)
    q25, median, q75 = np.percentile(array, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "min": float(array.min()), "max": float(array.max())}


def time_call_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one `fn()` in ms: CUDA events around it on a GPU, `perf_counter` on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1000.0
