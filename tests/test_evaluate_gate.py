"""The quality gate (explorer/evaluate/gate.py): the largest removal within R x dense, each size it tried
equal to an independent plan and perplexity, one line for a bad gate, exit 2 when even one layer
breaks it."""

from __future__ import annotations

import json

import pytest

from explorer import cli, perplexity
from explorer.evaluate.gate import GateError, check_gate, quality_gate
from explorer.plan import compress

KW = dict(seqlen=64, max_tokens=512, calib_seqlen=32, calib_samples=8)


def _independent(lm, text, k):
    """Plan and perplexity at k removed, from scratch (no dense cache, no shared probe)."""
    plan = compress(lm, "shortgpt", remove=k, calibration=text, seqlen=32, num_samples=8)
    return perplexity(lm, text, variant=plan.variant, seqlen=64, max_tokens=512,
                      cache=False).ppl


def _expected_search(passes, top: int) -> tuple[int, list[int]]:
    """The gate's rule written out: 1, then doubling while the gate holds, then bisection."""
    tried = [1]
    lo, hi = 1, None
    while hi is None and lo < top:
        k = min(2 * lo, top)
        tried.append(k)
        lo, hi = (k, None) if passes(k) else (lo, k)
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        tried.append(mid)
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    return lo, tried


def test_gate_finds_the_largest_size_within_the_gate(tiny_lm, sample_text):
    dense = perplexity(tiny_lm, sample_text, seqlen=64, max_tokens=512, cache=False).ppl
    figures = {k: _independent(tiny_lm, sample_text, k) for k in range(1, 6)}
    # a gate just above the figure at 3 removed: the search doubles past it, then bisects back
    R = max(figures[3], figures[1]) / dense * (1 + 1e-6)
    assert R > 1
    expected, order = _expected_search(lambda k: figures[k] <= R * dense, 5)
    r = quality_gate(tiny_lm, "shortgpt", R, evaluation=sample_text, calibration=sample_text,
                     **KW)
    assert [t.remove for t in r.tries] == order and r.remove == expected
    for t in r.tries:                         # each size tried, equal to the independent figure
        assert t.ppl == pytest.approx(figures[t.remove], rel=1e-4)
        assert t.passed == (figures[t.remove] <= R * dense)
    assert r.ppl == pytest.approx(figures[expected], rel=1e-4) and r.ppl <= R * dense
    assert r.variant.num_layers == 6 - r.remove and r.dense_ppl == pytest.approx(dense, rel=1e-6)
    d = r.to_dict()
    assert [t["remove"] for t in d["tries"]] == sorted(order) and d["remove"] == r.remove


def test_bad_gates_get_one_line():
    for bad in ("abc", "1", "0.5", "-2", "nan", "inf", ""):
        with pytest.raises(GateError, match="must be a number greater than 1"):
            check_gate(bad)
    assert check_gate("1.5") == 1.5


def test_cli_gate(tiny_factory, sample_text, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    model = str(tiny_factory("llama", num_layers=4))
    base = ["compress", "--model", model, "--text", str(text), "--seqlen", "64", "--max-tokens",
            "256", "--calib-samples", "4", "--calib-seqlen", "32", "--method", "shortgpt"]
    assert cli.main(base + ["--max-ppl-ratio", "abc"]) == 2
    assert "must be a number greater than 1" in capsys.readouterr().err
    assert cli.main(base + ["--max-ppl-ratio", "1.5", "--remove", "2"]) == 2
    assert "without --remove" in capsys.readouterr().err
    # a gate so tight that one layer breaks it: exit 2 with the figure
    assert cli.main(base + ["--max-ppl-ratio", "1.0000001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "even 1 layer removed" in err[0] and "x dense" in err[0]
    # a loose gate: every size passes up to L - 1
    assert cli.main(base + ["--max-ppl-ratio", "1e9", "--json", "--out",
                            str(tmp_path / "out")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gate"]["remove"] == 3 and out["num_layers"] == 1
    assert [t["remove"] for t in out["gate"]["tries"]] == [1, 2, 3]
    assert all(t["passed"] for t in out["gate"]["tries"])


def test_healed_gate_gates_the_healed_figure(tiny_lm, sample_text):
    from explorer import heal

    r = quality_gate(tiny_lm, "shortgpt", 1e9, evaluation=sample_text, calibration=sample_text,
                     heal="layerwise", heal_steps=2,
                     heal_params={"seqlen": 16, "windows": 4, "held_out": 1, "init": "none"},
                     max_remove=2, **KW)
    assert [t.remove for t in r.tries] == [1, 2] and r.remove == 2 and r.heal == "layerwise"
    plan = compress(tiny_lm, "shortgpt", remove=2, calibration=sample_text, seqlen=32,
                    num_samples=8)
    healed = heal(plan.variant, "layerwise", calibration=sample_text, steps=2, seqlen=16,
                  windows=4, held_out=1, init="none").variant
    expect = perplexity(tiny_lm, sample_text, variant=healed, seqlen=64, max_tokens=512,
                        cache=False).ppl
    unhealed = perplexity(tiny_lm, sample_text, variant=plan.variant, seqlen=64, max_tokens=512,
                          cache=False).ppl
    assert r.ppl == pytest.approx(expect, rel=1e-4) and r.ppl_unhealed == pytest.approx(
        unhealed, rel=1e-4)
    assert r.variant.steps[-1]["op"] == "heal"
