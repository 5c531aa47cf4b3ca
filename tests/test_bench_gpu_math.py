"""The GPU benchmark's arithmetic, checked on the CPU: FLOPs per token and the MFU rows.

`flops_per_token` (2N + 2 L T d, attention halved for the causal mask) is compared with
torch's own FlopCounterMode, which counts every matrix product of a real forward pass: counting
at two window lengths separates the per-token term (the weights, 2N) from the quadratic one
(attention scores and weighted sum, 4 L T^2 d for the full square, as eager attention computes it).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import bench_gpu, common

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


@pytest.fixture(scope="module")
def tiny_llama():
    return bench_gpu.random_llama("cpu", **TINY)


def _counted_flops(model: torch.nn.Module, T: int) -> int:
    ids = torch.randint(3, 259, (1, T))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    return counter.get_total_flops()


def test_flops_per_token_matches_torch_flop_counter():
    # Eager attention: its two matmuls are counted (the CPU flash-attention kernel is not).
    model = bench_gpu.random_llama("cpu", **TINY, attn_implementation="eager").model
    t1, t2 = 32, 64
    c1, c2 = _counted_flops(model, t1), _counted_flops(model, t2)
    # c(T) = a T + b T^2: solve for the weight term a and the attention term b.
    b = (c2 / t2 - c1 / t1) / (t2 - t1)
    a = c1 / t1 - b * t1
    L, d = TINY["num_hidden_layers"], TINY["hidden_size"]
    assert b == pytest.approx(4 * L * d)            # QK^T and AV over the full T x T square
    for T in (t1, t2, 100):
        # ours: the weights in full, the attention square halved by the causal mask
        assert bench_gpu.flops_per_token(model, T) == pytest.approx(a + b * T / 2)


def test_peak_lookup_prefers_the_longest_name():
    assert bench_gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench_gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench_gpu.peak_flops("NVIDIA H200") == 989e12
    assert bench_gpu.peak_flops("Some Unknown Card") is None


def test_mfu_rows_on_cpu_with_a_made_up_peak(tiny_llama, sample_text):
    peak = 1e12
    rows = bench_gpu.mfu_rows(tiny_llama, sample_text, "tiny", seqlen=32, max_tokens=256,
                              reps=1, batch_size=4, device_name="cpu", peak=peak)
    for r in rows:
        common.check_row(r)
    speed, mfu = rows
    fpt = bench_gpu.flops_per_token(tiny_llama.model, 32)
    assert mfu["ours"] == pytest.approx(100 * fpt * speed["ours"] / peak)
    assert mfu["baseline"] == pytest.approx(100 * fpt * speed["baseline"] / peak)
    assert mfu["ratio"] == pytest.approx(speed["ratio"])
    unknown = bench_gpu.mfu_rows(tiny_llama, sample_text, "tiny", seqlen=32, max_tokens=128,
                                 reps=1, batch_size=4, device_name="cpu", peak=None)
    assert unknown[1]["ours"] is None and "PEAK_BF16" in unknown[1]["note"]
