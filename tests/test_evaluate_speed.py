"""Speed and memory of a variant (explorer/evaluate/speed.py): the model is bit-identical afterwards, the
memory figures equal independent counts, the timing report is consistent with itself, and a batch
that does not fit gets one line naming the largest that does. Speed itself is measured in
bench/bench_speed.py, never asserted here."""

from __future__ import annotations

import json

import pytest

from explorer import Variant, cli, measure_speed
from explorer.evaluate.footprint import largest_batch, run_bytes
from explorer.evaluate.speed import SpeedError
from tiny import state_checksum

SMALL = dict(batches=(1, 2), prefill_tokens=32, decode_prompt=8, new_tokens=6, repeats=3)


def test_measure_speed_leaves_the_model_bit_identical(tiny_lm):
    before = state_checksum(tiny_lm.model)
    layers = list(tiny_lm.arch.layer_list(tiny_lm.model))
    # the hooks already there (the model is shared by the session's tests): none is added or left
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in layers]
    v = Variant.identity(tiny_lm).drop([1, 2])
    r = measure_speed(tiny_lm, v, **SMALL)
    assert state_checksum(tiny_lm.model) == before
    assert list(tiny_lm.arch.layer_list(tiny_lm.model)) == layers          # same modules back
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in layers] == hooks
    assert tiny_lm.config.num_hidden_layers == 6

    # memory figures against independent counts
    elt = 4                                                                 # float32
    assert r.memory_dense.weights_bytes == tiny_lm.num_parameters * elt
    assert r.memory_variant.weights_bytes == v.num_parameters() * elt
    cfg = tiny_lm.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    tokens = SMALL["decode_prompt"] + SMALL["new_tokens"]
    for layers_, mem in ((6, r.memory_dense), (4, r.memory_variant)):
        # keys and values of every layer: (batch 2, kv heads, prompt + new tokens, head_dim)
        expect = 2 * layers_ * 2 * cfg.num_key_value_heads * tokens * hd * elt
        assert mem.kv_cache_bytes == expect

    # the report is consistent with itself
    assert [(c.kind, c.batch) for c in r.cases] == [("prefill", 1), ("prefill", 2),
                                                     ("decode", 1), ("decode", 2)]
    for c in r.cases:
        assert len(c.dense.seconds) == len(c.variant.seconds) == 3 == len(c.ratios)
        for d, x, q in zip(c.dense.seconds, c.variant.seconds, c.ratios):
            assert q == pytest.approx(d / x)
        assert 0 <= c.outside_dense <= 1 and 0 <= c.outside_variant <= 1
        assert r.amdahl_bound(c) <= r.layer_ratio == 1.5
    d = r.to_dict()
    assert d["layers_variant"] == 4 and "Amdahl" in d["limits"] and len(d["cases"]) == 4
    json.dumps(d)


def test_dense_alone(tiny_lm):
    r = measure_speed(tiny_lm, None, **SMALL)
    assert r.memory_variant is None and all(c.variant is None for c in r.cases)
    assert r.to_dict()["limits"] == ""


def test_a_batch_that_does_not_fit_names_the_largest_that_does(tiny_lm, monkeypatch):
    budget = 3 * run_bytes(tiny_lm, 8, 32, 14) // 2            # batch 8 fits, 16 does not
    monkeypatch.setenv("LAYER_EXPLORER_MAX_MEMORY_MB", str(budget / 2**20))
    best = largest_batch(tiny_lm, 32, 14)
    assert run_bytes(tiny_lm, best, 32, 14) <= budget < run_bytes(tiny_lm, best + 1, 32, 14)
    assert 8 <= best < 16
    with pytest.raises(SpeedError, match=f"batch 64 does not fit .* the largest batch that fits "
                                         f"is {best}$"):
        measure_speed(tiny_lm, None, batches=(1, 64), prefill_tokens=32, decode_prompt=8,
                      new_tokens=6)
    for bad in (dict(repeats=0), dict(batches=(0,)), dict(new_tokens=0)):
        with pytest.raises(SpeedError):
            measure_speed(tiny_lm, None, **{**SMALL, **bad})


def test_cli_speed(tiny_factory, sample_text, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    base = ["eval", "--model", str(tiny_factory("llama", num_layers=4)), "--text", str(text),
            "--seqlen", "64", "--max-tokens", "256", "--drop", "1", "--speed"]
    assert cli.main(base + ["--speed-batches", "1", "--speed-repeats", "2",
                            "--speed-new-tokens", "4", "--json"]) == 0
    speed = json.loads(capsys.readouterr().out)["speed"]
    assert speed["layers_dense"] == 4 and speed["layers_variant"] == 3
    assert {c["kind"] for c in speed["cases"]} == {"prefill", "decode"}
    assert cli.main(base + ["--speed-batches", "1,x"]) == 2
    assert "--speed-batches takes positive integers" in capsys.readouterr().err
    assert cli.main(base + ["--speed-batches", "1,100000"]) == 2      # ~730 GiB
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch 100000 does not fit" in err[0] and "largest batch" in err[0]
