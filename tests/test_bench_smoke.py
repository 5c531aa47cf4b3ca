"""Benchmarks: well-formed rows on a tiny model, and the optimised perplexity equals the guide loop.

No timing is asserted anywhere (speed is measured by bench/, never tested): these tests only check
that the benchmark code runs and that ours computes the same number as the naive way.
"""

from __future__ import annotations

import math

import pytest

from bench import bench_damage, bench_gpu, bench_perplexity, bench_probe, bench_speed, bench_variant, common


def _check_rows(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        common.check_row(r)


@pytest.mark.slow
def test_perplexity_bench_rows_on_tiny(tiny_lm, sample_text):
    _check_rows(bench_perplexity.run(True, lm=tiny_lm, text=sample_text, seqlens=(16, 32)))


def test_probe_bench_rows_on_tiny(tiny_lm, sample_text):
    rows = bench_probe.run(True, lm=tiny_lm, text=sample_text)
    _check_rows(rows)
    assert "states match: True" in rows[0]["note"]


def test_damage_bench_rows_on_tiny(tiny_lm, sample_text):
    rows = bench_damage.run(True, lm=tiny_lm, text=sample_text, plans=True)
    _check_rows(rows)
    names = [r["name"] for r in rows]
    assert "map on a streamed model (layers from disk)" in names
    assert any(n.startswith("damage plan, 3 removed") for n in names)
    streamed = rows[names.index("map on a streamed model (layers from disk)")]
    assert float(streamed["note"].rsplit(" ", 1)[1]) < 1e-5     # the same figures


def test_variant_bench_rows_on_tiny(tiny_lm):
    rows = bench_variant.run(True, lm=tiny_lm)
    _check_rows(rows)
    memory = [r for r in rows if r["name"].startswith("memory")]
    assert memory and all("met" in r["note"] and "NOT met" not in r["note"] for r in memory)


def test_speed_bench_rows_on_tiny(tiny_lm):
    rows = bench_speed.run(True, lm=tiny_lm)
    _check_rows(rows)
    assert [r["unit"] for r in rows] == ["s", "s", "tok/s", "tok/s", "bytes", "bytes"]
    assert all(r["ratio"] for r in rows) and "outside the decoder layers" in rows[0]["note"]


def test_gpu_bench_skips_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU benchmark would run for real")
    rows = bench_gpu.run(True)
    _check_rows(rows)
    assert len(rows) == 1 and rows[0]["ours"] is None and "no CUDA" in rows[0]["note"]


def test_bench_cli_prints_a_table(capsys, tiny_factory):
    from explorer.cli import main

    folder = tiny_factory("llama", num_layers=4)
    assert main(["bench", "--model", str(folder), "--only", "variant,gpu"]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "apply merge" in out


def test_common_ratio_means_better():
    assert common.row("b", "n", 4.0, 2.0, "tok/s", higher_is_better=True)["ratio"] == 2.0
    assert common.row("b", "n", 1.0, 3.0, "s", higher_is_better=False)["ratio"] == 3.0
    assert common.row("b", "n", None, 3.0, "s", higher_is_better=False)["ratio"] is None
    with pytest.raises(ValueError):
        common.check_row({"bench": "b"})


def _guide_ppl(lm, text: str, seqlen: int, max_tokens: int) -> float:
    from explorer.evaluate.windows import evaluation_windows

    nll, _ = bench_perplexity.guide_loop(lm.model, evaluation_windows(lm, text, seqlen, max_tokens))
    return math.exp(nll)


def test_perplexity_equals_guide_loop_on_tiny(tiny_lm, sample_text):
    from explorer import perplexity

    ours = perplexity(tiny_lm, sample_text, seqlen=32, max_tokens=512, batch_size=3).ppl
    guide = _guide_ppl(tiny_lm, sample_text, 32, 512)
    assert ours == pytest.approx(guide, rel=1e-3)
    assert ours == pytest.approx(guide, rel=1e-5)     # fp32 both ways: in fact far closer


@pytest.mark.slow
def test_perplexity_equals_guide_loop_on_default_model(smol, wiki):
    """The default (exact) path on SmolLM2, ~1.5k tokens: same value as the HF guide's loop."""
    from explorer import perplexity

    r = perplexity(smol, wiki.evaluation, seqlen=256, max_tokens=1536)
    guide = _guide_ppl(smol, wiki.evaluation, 256, 1536)
    assert r.tokens == 6 * 255
    assert r.ppl == pytest.approx(guide, rel=1e-3)
