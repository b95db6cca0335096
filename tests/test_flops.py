"""FLOP counts against hand counts (a multiply-add is 2 FLOPs, as in torch's counter)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffiml_cli.flops import CPU_ATTENTION_FLOP_FORMULAS, FlopCount, count_flops

CPU_SDPA = "aten._scaled_dot_product_flash_attention_for_cpu"


def test_conv2d_matches_hand_count_and_ignores_bias():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)  # bias=True, yet torch's formula does not count it
    x = torch.randn(1, 3, 16, 16)
    count = count_flops(lambda: conv(x))
    # 2 * Cout * H_out * W_out * Cin * k * k; the 8 * 16 * 16 bias additions are not counted.
    expected = 2 * 8 * 16 * 16 * 3 * 9
    assert count.flops == expected == 110_592
    assert count.macs == expected / 2
    assert count.by_operator == {"aten.convolution": expected}


def test_flop_count_is_frozen_and_reports_macs():
    count = FlopCount(flops=10, by_operator={"aten.mm": 10})
    assert dataclasses.asdict(count) == {"flops": 10, "by_operator": {"aten.mm": 10}, "macs": 5.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        count.flops = 3  # type: ignore[misc]


def test_cpu_sdpa_matches_hand_count():
    B, H, L, D = 2, 3, 10, 8
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    count = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    # Q @ K^T and scores @ V, each 2 * B * H * L * L * D.
    expected = 4 * B * H * L * L * D
    assert count.flops == expected
    assert count.by_operator == {CPU_SDPA: expected}


def test_plain_flop_counter_misses_cpu_sdpa():
    """The reason the mapping exists: torch's own registry lacks the CPU fused attention kernel."""
    q = torch.randn(1, 2, 16, 8)
    with torch.inference_mode(), FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, q, q)
    if plain.get_total_flops() != 0:
        pytest.skip("this torch version counts CPU SDPA itself; our mapping only overrides it")
    assert plain.get_total_flops() == 0
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)).flops == 4 * 2 * 16 * 16 * 8


def test_cpu_sdpa_cross_attention_uses_both_lengths():
    B, H, Lq, Lk, D, Dv = 1, 2, 5, 7, 4, 6
    q = torch.randn(B, H, Lq, D)
    k = torch.randn(B, H, Lk, D)
    v = torch.randn(B, H, Lk, Dv)
    count = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert count.flops == 2 * B * H * Lq * Lk * D + 2 * B * H * Lq * Lk * Dv


def test_cpu_sdpa_backward_is_mapped():
    B, H, L, D = 1, 2, 8, 4
    q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
    count = count_flops(
        lambda: F.scaled_dot_product_attention(q, k, v).sum().backward(), inference_mode=False
    )
    # Forward: 2 matmuls; backward: recomputed scores + dV, dP, dQ, dK = 5 matmuls; 2*B*H*L*L*D each.
    matmul = 2 * B * H * L * L * D
    assert count.by_operator[CPU_SDPA] == 2 * matmul
    assert count.by_operator[CPU_SDPA + "_backward"] == 5 * matmul
    assert len(CPU_ATTENTION_FLOP_FORMULAS) == 2


def test_diffusers_attention_counts_its_sdpa():
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")
    torch.manual_seed(0)
    attn = attention_processor.Attention(query_dim=32, heads=1, dim_head=32).eval()
    hidden = torch.randn(1, 64, 32)
    count = count_flops(lambda: attn(hidden))
    N, C = 64, 32
    projections = 4 * 2 * N * C * C  # to_q, to_k, to_v, to_out[0]; to_out's bias is not counted
    sdpa = 4 * 1 * 1 * N * N * C
    assert count.by_operator[CPU_SDPA] == sdpa
    assert count.flops == projections + sdpa
