"""The dense cache (explorer/core/dense_cache.py) and the live perplexity figure, on tiny models.

A variant evaluated from stored dense states must give the full pass's figure; the dense figure is
reused until the text, the protocol, the dtype or the weights change; states stay within their
budget; concurrent sessions share the cache safely.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from explorer import Variant, load_model, perplexity
from explorer.core.dense_cache import CACHE, checkpoints, first_change
from explorer.evaluate.windows import evaluation_windows, spread_order
from explorer.evaluate.perplexity import run_windows

KW = dict(seqlen=64, max_tokens=1024)     # 16 windows of 64 tokens


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test starts from an empty cache, with its on-disk figures in a temporary folder."""
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    CACHE.clear()
    CACHE.set_budget(None)
    yield
    CACHE.clear()
    CACHE.set_budget(None)


def _variants(lm):
    v = Variant.identity(lm)
    return {"layer 0": (v.drop([0]), 0), "middle": (v.drop([3]), 3), "last": (v.drop([5]), 5),
            "merge": (v.merge([2, 3], [0.5, 0.5]), 2), "sub-block": (v.drop_part(4, "mlp"), 4)}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_cached_states_give_the_full_pass_figure(tiny_factory, sample_text, family):
    lm = load_model(str(tiny_factory(family, num_layers=6)))
    dense = perplexity(lm, sample_text, **KW)          # records the dense states
    assert dense.start == 0 and not dense.cached
    for name, (v, first) in _variants(lm).items():
        cached = perplexity(lm, sample_text, variant=v, **KW)
        full = perplexity(lm, sample_text, variant=v, cache=False, **KW)
        assert cached.start == first and full.start == 0, name
        assert cached.ppl == pytest.approx(full.ppl, rel=1e-6), name
        assert cached.ppl != pytest.approx(dense.ppl, rel=1e-4), name   # the edit mattered

    # and the full pass itself against transformers' own loss on the variant applied
    v, _ = _variants(lm)["middle"]
    w = evaluation_windows(lm, sample_text, **KW)
    with v.applied() as model, torch.no_grad():
        loss = model(input_ids=w, labels=w).loss.item()
    assert perplexity(lm, sample_text, variant=v, **KW).ppl == pytest.approx(math.exp(loss),
                                                                             rel=1e-5)


def test_dense_figure_reused_until_text_protocol_dtype_or_weights_change(tiny_factory,
                                                                         sample_text):
    folder = tiny_factory("llama", num_layers=4)
    lm = load_model(str(folder))
    first = perplexity(lm, sample_text, **KW)
    again = perplexity(lm, sample_text, **KW)
    assert again.cached and again.ppl == first.ppl and again.window_nll == first.window_nll
    changed = {
        "text": perplexity(lm, sample_text[::-1], **KW),
        "seqlen": perplexity(lm, sample_text, seqlen=32, max_tokens=1024),
        "max_tokens": perplexity(lm, sample_text, seqlen=64, max_tokens=512),
        "bos": perplexity(lm, sample_text, bos="always", **KW),
        "compute dtype": perplexity(lm, sample_text, compute_dtype="bfloat16", **KW),
        "model dtype": perplexity(load_model(str(folder), dtype="bfloat16"), sample_text, **KW),
        "weights": perplexity(load_model(str(tiny_factory("llama", num_layers=4, seed=1))),
                              sample_text, **KW),
    }
    for what, r in changed.items():
        assert not r.cached, what
    # the same weights loaded again (another session, or a second CLI call) reuse the figure
    # and the states, from memory or, after the process forgot them, from disk
    again = load_model(str(folder))
    assert perplexity(again, sample_text, **KW).cached
    assert perplexity(again, sample_text, variant=Variant.identity(again).drop([2]),
                      **KW).start == 2
    # the cache holds tensors only: a model nobody uses any more is freed
    import gc
    import weakref

    gone = weakref.ref(again)
    del again
    gc.collect()
    assert gone() is None
    CACHE.clear()
    from_disk = perplexity(lm, sample_text, **KW)
    assert from_disk.cached and from_disk.ppl == first.ppl


def test_weights_edited_in_place_miss_the_cache(tiny_factory, sample_text):
    lm = load_model(str(tiny_factory("qwen2", num_layers=4)))
    perplexity(lm, sample_text, **KW)
    w = lm.original_layers[1].mlp.up_proj.weight
    with torch.no_grad():
        w.mul_(1.5)
    r = perplexity(lm, sample_text, **KW)
    assert not r.cached
    assert r.ppl == pytest.approx(perplexity(lm, sample_text, cache=False, **KW).ppl, rel=1e-9)


def test_states_stay_within_a_small_budget(tiny_factory, sample_text, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_DENSE_DISK", "0")     # memory only
    lm = load_model(str(tiny_factory("llama", num_layers=6)))
    w = evaluation_windows(lm, sample_text, **KW)
    boundary = w.numel() * lm.config.hidden_size * 4          # bytes of one boundary, fp32
    assert checkpoints(6, boundary, 10 * boundary) == [1, 2, 3, 4, 5]
    assert checkpoints(6, boundary, 2 * boundary) == [2, 4]
    assert checkpoints(6, boundary, boundary - 1) == []

    CACHE.set_budget(2 * boundary + 100)
    perplexity(lm, sample_text, **KW)
    assert 0 < CACHE.nbytes <= 2 * boundary + 100
    v = Variant.identity(lm).drop([3])                       # first change 3: start from 2
    r = perplexity(lm, sample_text, variant=v, **KW)
    assert r.start == 2
    assert r.ppl == pytest.approx(perplexity(lm, sample_text, variant=v, cache=False,
                                             **KW).ppl, rel=1e-6)
    other = perplexity(lm, sample_text[::-1], **KW)          # a second text evicts the first
    assert not other.cached and CACHE.nbytes <= 2 * boundary + 100

    CACHE.clear()
    CACHE.set_budget(boundary - 1)                            # not even one boundary fits
    perplexity(lm, sample_text, **KW)
    assert CACHE.nbytes == 0
    assert perplexity(lm, sample_text, variant=v, **KW).start == 0


def test_a_new_process_reads_states_from_disk_or_fills_them(tiny_lm, sample_text, monkeypatch):
    perplexity(tiny_lm, sample_text, **KW)                # figure and states, memory and disk
    CACHE.clear()                                          # as in a new process
    late = Variant.identity(tiny_lm).drop([4])
    r = perplexity(tiny_lm, sample_text, variant=late, **KW)
    assert r.start == 4                                    # boundary 4 read from disk
    assert r.ppl == pytest.approx(perplexity(tiny_lm, sample_text, variant=late, cache=False,
                                             **KW).ppl, rel=1e-6)
    early = Variant.identity(tiny_lm).drop_part(2, "attn")
    assert perplexity(tiny_lm, sample_text, variant=early, **KW).start == 2

    # without the disk: the figure is recomputed, and a variant's pass fills the states it
    # went through unchanged, for the next variant
    monkeypatch.setenv("LAYER_EXPLORER_DENSE_DISK", "0")
    CACHE.clear()
    assert not perplexity(tiny_lm, sample_text, **KW).cached
    CACHE.clear()
    assert perplexity(tiny_lm, sample_text, variant=late, **KW).start == 0     # fills 1..4
    assert perplexity(tiny_lm, sample_text, variant=early, **KW).start == 2

    # the states on disk stay within their own budget (least recently used out)
    monkeypatch.setenv("LAYER_EXPLORER_DENSE_DISK", "1")
    monkeypatch.setenv("LAYER_EXPLORER_STATE_DISK_MB", "1.5")  # two texts' 5 boundaries
    for text in (sample_text, sample_text[::-1], sample_text[1000:] + sample_text[:1000]):
        perplexity(tiny_lm, text, **KW)
    from explorer.load.embedded import cache_root

    entries = list((cache_root() / "dense-states").iterdir())
    size = sum(f.stat().st_size for f in (cache_root() / "dense-states").glob("*/*.pt"))
    assert len(entries) == 2 and size <= 1.5 * 2**20


def test_concurrent_sessions_share_one_dense_pass(tiny_factory, sample_text):
    lm = load_model(str(tiny_factory("llama", num_layers=6)))
    variants = [None, None, None, Variant.identity(lm).drop([2]), Variant.identity(lm).drop([4])]
    results: list = [None] * len(variants)
    barrier = threading.Barrier(len(variants))

    def session(k: int) -> None:
        barrier.wait()
        results[k] = perplexity(lm, sample_text, variant=variants[k], **KW)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(len(variants))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dense = results[:3]
    assert sum(not r.cached for r in dense) == 1             # one pass, two waited and reused
    assert len({r.ppl for r in dense}) == 1
    for k in (3, 4):
        assert results[k].ppl == pytest.approx(
            perplexity(lm, sample_text, variant=variants[k], cache=False, **KW).ppl, rel=1e-6)
    assert CACHE._building == {}                 # the builders' locks are not kept afterwards


def test_building_is_one_at_a_time_and_forgets_its_lock():
    order, key = [], object()
    inside = threading.Event()

    def builder(name: str) -> None:
        with CACHE.building(key):
            order.append(f"{name} in")
            inside.set()
            threading.Event().wait(0.05)
            order.append(f"{name} out")

    first = threading.Thread(target=builder, args=("a",))
    first.start()
    inside.wait()
    second = threading.Thread(target=builder, args=("b",))
    second.start()
    first.join(), second.join()
    assert order == ["a in", "a out", "b in", "b out"]      # never two builders at once
    assert key not in CACHE._building


def test_first_change_compares_slots():
    class Fake:       # first_change needs only .lm and .slots
        def __init__(self, lm, slots):
            self.lm, self.slots = lm, tuple(slots)

    lm = object()
    assert first_change(Fake(lm, range(6)), Fake(lm, [0, 1, 2, 4, 5])) == 3
    assert first_change(Fake(lm, range(6)), Fake(lm, range(6))) == 6
    assert first_change(Fake(lm, range(6)), Fake(object(), range(6))) == 0


# -- the live figure ------------------------------------------------------------------------------

def test_spread_order_covers_the_text_early():
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 7, 10, 33, 100):
        order = spread_order(n)
        assert sorted(order) == list(range(n))
        for m in range(1, n + 1):    # after m windows, no stretch of text longer than ~2n/m
            edges = sorted(order[:m]) + [n]
            assert max(b - a for a, b in zip(edges, edges[1:])) <= math.ceil(2 * n / m), (n, m)


def test_running_figure_has_a_band_that_closes_on_the_result(tiny_lm, sample_text):
    seen: list = []
    r = perplexity(tiny_lm, sample_text, seqlen=32, max_tokens=320, batch_size=3, cache=False,
                   progress=seen.append)
    assert [e.fraction for e in seen] == pytest.approx([0.3, 0.6, 0.9, 1.0])
    assert seen[-1].figure == pytest.approx(r.ppl) and seen[-1].band is None   # closed at the end
    # the first report is the mean over the first three windows of the spread order
    nll = torch.tensor(r.window_nll)
    first = math.exp(nll[spread_order(10)[:3]].mean().item())
    assert seen[0].figure == pytest.approx(first) and seen[0].unit == "windows"
    lo, hi = seen[0].band
    assert lo < first < hi
    assert seen[0].describe() == (f"perplexity: 3/10 windows, {first:.4g} so far "
                                  f"(95% band {lo:.4g}-{hi:.4g})")
    # the result: per-window NLL in text order, their mean is the figure, and a band around it
    assert len(r.window_nll) == 10 and math.exp(nll.mean().item()) == pytest.approx(r.ppl)
    lo, hi = r.interval()
    assert lo < r.ppl < hi
    d = r.to_dict()
    assert d["ppl_low"] == lo and d["window_nll"] == list(r.window_nll)

    # a variant, once the dense figure is known: dense figure + mean change so far
    dense = perplexity(tiny_lm, sample_text, seqlen=32, max_tokens=320, batch_size=3)
    seen.clear()
    v = perplexity(tiny_lm, sample_text, variant=Variant.identity(tiny_lm).drop([2]), seqlen=32,
                   max_tokens=320, batch_size=3, progress=seen.append)
    first3 = spread_order(10)[:3]
    change = torch.tensor(v.window_nll)[first3] - torch.tensor(dense.window_nll)[first3]
    estimate = math.exp(sum(dense.window_nll) / 10 + change.mean().item())
    assert seen[0].figure == pytest.approx(estimate) and seen[0].band is not None
    assert seen[-1].figure == pytest.approx(v.ppl)


def test_abandoned_pass_is_a_lower_bound(tiny_lm, sample_text):
    w = evaluation_windows(tiny_lm, sample_text, **KW)
    full = run_windows(tiny_lm, w)
    part = run_windows(tiny_lm, w, abandon_above=full.total / 4)
    assert part.abandoned and 0 < part.done < w.shape[0]
    assert full.total / 4 < part.total < full.total


def test_a_second_compress_reuses_the_dense_figure(tiny_lm, sample_text, tmp_path, capsys):
    import json

    from explorer.cli import main

    text = tmp_path / "text.txt"
    text.write_text(sample_text * 2, encoding="utf-8")
    argv = ["compress", "--model", tiny_lm.source, "--method", "shortgpt", "--remove", "2",
            "--text", str(text), "--seqlen", "64", "--max-tokens", "1024",
            "--calib-seqlen", "32", "--calib-samples", "4", "--json"]
    runs = []
    for _ in range(2):
        CACHE.clear()                    # memory forgotten, as in a new process; disk kept
        assert main(argv) == 0
        runs.append(json.loads(capsys.readouterr().out))
    first, second = runs
    assert not first["ppl_before_cached"] and second["ppl_before_cached"]
    assert second["ppl_before"] == first["ppl_before"]
    assert second["ppl_after"] == pytest.approx(first["ppl_after"], rel=1e-6)
    assert second["ppl_after_start"] == first["ppl_after_start"] == min(first["removed"])


def test_healing_answers_are_the_one_service_keyed_by_fingerprint(tiny_factory, sample_text):
    """heal/data's dense targets live in dense_cache under a fingerprint: the same weights in
    another LoadedModel reuse them; another text, split or model does not; the states equal an
    independent pass of transformers' model."""
    from explorer.heal.data import HealData

    folder = tiny_factory("llama", num_layers=4)
    lm = load_model(str(folder))
    kw = dict(seqlen=32, windows=6, held_out=2, owner="test")
    data = HealData.build(lm, sample_text, **kw)
    x2 = data.dense_states([2])[2]
    with torch.no_grad():
        hs = lm.model(input_ids=data.ids, output_hidden_states=True).hidden_states
    assert (x2 - hs[2].float()).abs().max() <= 1e-5
    again = HealData.build(load_model(str(folder)), sample_text, **kw)   # another object
    assert again.store is data.store and again.dense_states([2])[2] is x2
    assert data.store.key.weights == CACHE._answers.get(data.store.key).key.weights
    others = {
        "text": HealData.build(lm, sample_text[::-1], **kw),
        "split": HealData.build(lm, sample_text, **{**kw, "windows": 5, "held_out": 3}),
        "weights": HealData.build(load_model(str(tiny_factory("llama", num_layers=4, seed=1))),
                                  sample_text, **kw),
    }
    for what, d in others.items():
        assert d.store is not data.store and d.store.key != data.store.key, what
        assert not d.store.states, what
    # the split's windows are the same tokens: only the protocol tells the two keys apart
    split = others["split"].store.key
    assert split.windows == data.store.key.windows and split.protocol != data.store.key.protocol
    assert split.digest() != data.store.key.digest()
