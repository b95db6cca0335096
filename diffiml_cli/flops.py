"""Honest FLOP counting over torch's `FlopCounterMode`.

`torch.utils.flop_counter.FlopCounterMode` counts an operator only if it appears in its formula
registry. The fused CPU attention kernel that `F.scaled_dot_product_attention` dispatches to,
`aten._scaled_dot_product_flash_attention_for_cpu` (and its backward), is missing from that
registry (checked on torch 2.14), so on CPU every attention layer silently counts as 0 FLOPs and a
transformer looks far cheaper than it is. `CPU_ATTENTION_FLOP_FORMULAS` maps those operators to the
same formulas torch already uses for the CUDA flash/efficient kernels.

Conventions follow torch's counter: one multiply-add is 2 FLOPs, only matmul-like operators
(mm, bmm, addmm, convolution, attention) are counted, and elementwise work such as bias, softmax,
normalisation and activations is ignored. Causal masking is not discounted.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["CPU_ATTENTION_FLOP_FORMULAS", "FlopCount", "count_flops"]

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu`.

    Schema: `(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None)
    -> (output, logsumexp)`, with query (B, Hq, Lq, D), key (B, Hkv, Lk, D), value (B, Hkv, Lk, Dv).
    FlopCounterMode's shape wrapper has already replaced tensors with their shapes.

    Returns:
        2*B*Hq*Lq*Lk*D (Q @ K^T) + 2*B*Hq*Lq*Lk*Dv (scores @ V).
    """
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu_backward`.

    Schema: `(grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *, attn_mask=None,
    scale=None) -> (grad_query, grad_key, grad_value)`.

    Returns:
        torch's backward count: the recomputed scores matmul plus four gradient matmuls (5 in all).
    """
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_attention_formulas() -> dict[Any, Callable[..., int]]:
    # getattr: the CPU flash kernel appeared in torch 2.2; older builds simply have nothing to map.
    formulas: dict[Any, Callable[..., int]] = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None:
        formulas[forward] = _cpu_sdpa_flop
    if backward is not None:
        formulas[backward] = _cpu_sdpa_backward_flop
    return formulas


CPU_ATTENTION_FLOP_FORMULAS: dict[Any, Callable[..., int]] = _cpu_attention_formulas()
"""`custom_mapping` for FlopCounterMode: CPU fused attention operator packet -> FLOP formula."""


@dataclass(frozen=True)
class FlopCount:
    """The FLOPs of one call.

    Attributes:
        flops: total floating-point operations (a multiply-add counts 2).
        by_operator: FLOPs per aten operator, keyed by its name, e.g. "aten.convolution".
        macs: multiply-accumulates, `flops / 2`: the unit many papers report as "FLOPs". A field
            rather than a property so that `dataclasses.asdict` reports it.
    """

    flops: int
    by_operator: dict[str, int] = field(default_factory=dict)
    macs: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "macs", self.flops / 2)


def count_flops(fn: Callable[[], Any], *, inference_mode: bool = True) -> FlopCount:
    """Count the FLOPs of calling `fn()` once.

    Args:
        fn: a zero-argument callable, e.g. `lambda: model(x)`; its result is discarded.
        inference_mode: run `fn` under `torch.inference_mode()` (the default, for forward-pass
            cost). Pass False to count a call that runs a backward pass, which inference mode forbids.

    Returns:
        The total and per-operator FLOPs, with CPU fused attention counted (see the module docstring).
    """
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOP_FORMULAS)
    with torch.inference_mode(inference_mode), counter:
        fn()
    # 'Global' holds every counted operator once; the per-module entries would double count.
    global_counts = counter.get_flop_counts().get("Global", {})
    by_operator = {str(op): int(n) for op, n in global_counts.items()}
    return FlopCount(flops=int(counter.get_total_flops()), by_operator=by_operator)
