"""Concurrency at the API level: many threads editing and evaluating one shared model.

The web app serves every session from one resident model; each request builds its own `Variant`
(drops, merges) and evaluates it. These tests run such requests from 8 threads at once and check
that every result equals the one computed alone, that no request fails, that the shared weights
are bit-identical afterwards, and that an exception inside `Variant.applied()` leaves the model
exactly as it was (layer list, layer_idx, config.num_hidden_layers, config.layer_types).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from explorer import Variant, load_model, perplexity
from explorer.apply.recipe import merge_pairs
from tiny import state_checksum as checksum

SEQLEN, MAX_TOKENS = 32, 192




def snapshot(lm) -> dict:
    """What a variant changes while applied: it must all be back afterwards."""
    layers = lm.arch.layer_list(lm.model)
    return {
        "list": layers,
        "ids": [id(m) for m in layers],
        "layer_idx": [m.layer_idx for layer in layers for m in layer.modules()
                      if isinstance(getattr(m, "layer_idx", None), int)],
        "n": lm.config.num_hidden_layers,
        "types": list(getattr(lm.config, "layer_types", None) or []),
    }


def requests(lm) -> list:
    """Eight different edits, each a function building its variant (inside the worker thread)."""
    n = lm.num_layers
    return [
        lambda: Variant.identity(lm),
        lambda: Variant.identity(lm).drop([1]),
        lambda: Variant.identity(lm).drop([0, n - 1]),
        lambda: Variant.identity(lm).drop([2, 3, 4]),
        lambda: Variant.identity(lm).merge([2, 3], [0.5, 0.5]),
        lambda: merge_pairs(Variant.identity(lm), [(0, 1), (3, 4)]),
        lambda: Variant.identity(lm).merge([1, 2], [0.7, 0.3]).drop([n - 2]),
        lambda: Variant.identity(lm).drop([5]).merge([0, 1], [0.2, 0.8]),
    ]


@pytest.fixture(scope="module")
def shared_lm(tiny_factory):
    """A tiny Qwen2 (it has config.layer_types) with 6 layers, shared by every thread."""
    return load_model(str(tiny_factory("qwen2", num_layers=6)))


def test_eight_threads_match_serial_results_and_leave_weights_identical(shared_lm, sample_text):
    lm = shared_lm
    before_sum, before = checksum(lm.model), snapshot(lm)
    jobs = requests(lm)

    def run(k: int) -> tuple[int, float]:
        v = jobs[k]()
        r = perplexity(lm, sample_text, variant=v, seqlen=SEQLEN, max_tokens=MAX_TOKENS)
        return v.num_layers, r.ppl

    serial = [run(k) for k in range(len(jobs))]
    assert len({round(p, 6) for _, p in serial}) == len(jobs)   # the edits really differ
    barrier = threading.Barrier(len(jobs))

    def run_together(k: int) -> tuple[int, float]:
        barrier.wait()
        return run(k)

    for _round in range(2):  # two rounds: more interleavings
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            parallel = list(pool.map(run_together, range(len(jobs))))  # re-raises any failure
        assert parallel == serial
    assert checksum(lm.model) == before_sum
    after = snapshot(lm)
    assert after["list"] is before["list"] and after["ids"] == before["ids"]
    assert after["layer_idx"] == before["layer_idx"] and after["n"] == before["n"]
    assert after["types"] == before["types"]


def test_variants_built_while_another_is_applied_use_original_layers(shared_lm, sample_text):
    """Building a variant (identity, merge) while another thread holds a variant in place must
    still see the original model: 6 layers, original weights."""
    lm = shared_lm
    expected = perplexity(lm, sample_text, variant=Variant.identity(lm).merge([2, 3], [0.5, 0.5]),
                          seqlen=SEQLEN, max_tokens=MAX_TOKENS).ppl
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with Variant.identity(lm).drop([0, 1, 2]).applied():
            entered.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(30)
        v = Variant.identity(lm)
        assert v.num_layers == 6
        merged = v.merge([2, 3], [0.5, 0.5])
    finally:
        leave.set()
        holder.join()
    got = perplexity(lm, sample_text, variant=merged, seqlen=SEQLEN, max_tokens=MAX_TOKENS).ppl
    assert got == expected


class Boom(RuntimeError):
    pass


def test_exception_inside_applied_restores_everything(shared_lm, sample_text):
    lm = shared_lm
    before_sum, before = checksum(lm.model), snapshot(lm)
    v = merge_pairs(Variant.identity(lm).drop([0]), [(1, 2)])
    with pytest.raises(Boom):
        with v.applied() as model:
            assert lm.config.num_hidden_layers == 4
            assert len(lm.arch.layer_list(model)) == 4
            raise Boom("interrupted mid-run")
    after = snapshot(lm)
    assert after["list"] is before["list"] and after["ids"] == before["ids"]
    assert after["layer_idx"] == before["layer_idx"] == list(range(6))
    assert after["n"] == 6 and after["types"] == before["types"]
    assert checksum(lm.model) == before_sum
    # and the model still works, with the lock released
    assert perplexity(lm, sample_text, seqlen=SEQLEN, max_tokens=MAX_TOKENS).ppl > 1


def test_thread_failing_mid_forward_leaves_others_unaffected(shared_lm, sample_text):
    """A worker whose forward pass raises (injected) while others run: the others' results are
    exact, the failure is its own, and the model is clean afterwards."""
    lm = shared_lm
    before_sum, before = checksum(lm.model), snapshot(lm)
    good = [perplexity(lm, sample_text, variant=Variant.identity(lm).drop([k]), seqlen=SEQLEN,
                       max_tokens=MAX_TOKENS).ppl for k in range(4)]
    bad_layer = Variant.identity(lm).merge([3, 4], [0.5, 0.5])
    boom = bad_layer.new_layers()[0].module

    def explode(module, args, kwargs):
        raise Boom("injected failure in a forward pass")

    boom.register_forward_pre_hook(explode, with_kwargs=True)

    def run(k: int) -> float:
        if k == 4:
            return perplexity(lm, sample_text, variant=bad_layer, seqlen=SEQLEN,
                              max_tokens=MAX_TOKENS).ppl
        return perplexity(lm, sample_text, variant=Variant.identity(lm).drop([k]), seqlen=SEQLEN,
                          max_tokens=MAX_TOKENS).ppl

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(run, k) for k in range(5)]
    with pytest.raises(Boom):
        futures[4].result()
    assert [f.result() for f in futures[:4]] == good
    after = snapshot(lm)
    assert after["ids"] == before["ids"] and after["layer_idx"] == before["layer_idx"]
    assert after["n"] == before["n"] and after["types"] == before["types"]
    assert checksum(lm.model) == before_sum


class WatchedLock:
    """Stands in for `lm.lock`: the same RLock, plus an event set when the thread `watched`
    asks for it, so that a test knows that thread has reached the lock (no sleeps)."""

    def __init__(self, inner, watched: int):
        self.inner, self.watched, self.asked = inner, watched, threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.get_ident() == self.watched:
            self.asked.set()
        return self.inner.acquire(blocking, timeout)

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def test_probe_while_another_thread_has_a_variant_applied(shared_lm, sample_text, monkeypatch):
    """A probe must record the original model even when another request is evaluating a
    variant at that moment: it waits for the model instead of probing someone else's edit.
    The variant stays in place until the probe has asked for the model's lock."""
    from explorer import probe

    lm = shared_lm
    alone = probe(lm, sample_text, seqlen=SEQLEN, num_samples=2)
    watch = WatchedLock(lm.lock, watched=threading.get_ident())
    monkeypatch.setattr(lm, "lock", watch)
    entered, probe_waited = threading.Event(), []

    def hold() -> None:
        with Variant.identity(lm).drop([0, 1, 2]).applied():
            entered.set()
            probe_waited.append(watch.asked.wait(30))   # the probe below reached the lock

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(30)
        during = probe(lm, sample_text, seqlen=SEQLEN, num_samples=2)
    finally:
        watch.asked.set()          # never leave the holder waiting
        holder.join()
    assert probe_waited == [True]
    assert during.num_layers == 6
    assert torch.equal(during.states, alone.states)


def test_measuring_takes_no_lock_and_swaps_nothing(shared_lm, sample_text):
    """Issue 21, item 3: while another thread holds the model's lock (a generation, an lm-eval run
    or an export keeps a variant applied), measuring a variant and probing still finish, with the
    figures they give alone, and read the original layers, not the applied ones."""
    from explorer import probe

    lm = shared_lm
    v = Variant.identity(lm).merge([2, 3], [0.5, 0.5])
    alone = perplexity(lm, sample_text, variant=v, seqlen=SEQLEN, max_tokens=MAX_TOKENS).ppl
    probed_alone = probe(lm, sample_text, seqlen=SEQLEN, num_samples=4).states
    got: dict = {}

    def measure() -> None:
        got["ppl"] = perplexity(lm, sample_text, variant=v, seqlen=SEQLEN,
                                max_tokens=MAX_TOKENS).ppl
        got["probe"] = probe(lm, sample_text, seqlen=SEQLEN, num_samples=4).states

    with Variant.identity(lm).drop([0, 1, 2]).applied():    # this thread holds the lock
        worker = threading.Thread(target=measure)
        worker.start()
        worker.join(120)
        finished = not worker.is_alive()
    assert finished, "measuring waited for the model's lock"
    assert got["ppl"] == alone
    assert got["probe"].shape[0] == lm.num_layers + 1
    assert torch.equal(got["probe"], probed_alone)


def test_hooks_act_only_in_the_thread_that_installed_them(shared_lm):
    """A fit's hook on a shared layer (closed form, CoMe, speed) must not see another thread's
    pass through that layer."""
    from explorer.core.backbone import hooks, run_backbone

    lm = shared_lm
    ids = torch.randint(0, lm.config.vocab_size, (2, 16))
    seen: list[str] = []
    layer = lm.original_layers[2]
    ready, done = threading.Event(), threading.Event()

    def other() -> None:
        ready.wait(30)
        list(run_backbone(lm, ids))
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with hooks((layer, lambda m, a, o: seen.append(threading.current_thread().name))):
        ready.set()
        assert done.wait(60)
        assert seen == []                  # the other thread's pass ran layer 2: not seen
        list(run_backbone(lm, ids))
    t.join()
    assert seen == [threading.current_thread().name]
