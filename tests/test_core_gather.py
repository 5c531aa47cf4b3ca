"""Per-layer accumulators (explorer/core/gather.py): what a stage gathers at a slot, fed batch-major or
layer-major in any batch order, equals the fit on the whole calibration set at once; healing
takes no lock on the model."""

from __future__ import annotations

import importlib
import threading

import pytest
import torch

from explorer import Variant, load_model
from explorer.evaluate.perplexity import perplexity
from tiny import SAMPLE_TEXT

PPL = dict(seqlen=64, max_tokens=1536, batch_size=4)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("mode", ["closed-form", "linearpatch", "prunecomp"])
def test_multi_batch_streamed_fits_equal_in_memory(tiny_factory, monkeypatch, mode):
    """12 windows in batches of 3: the layer-major executor runs every batch through a layer
    before it yields the first, so a fit that pairs captures batch by batch pairs the wrong ones.
    The streamed fit must equal the in-memory one, figure by figure."""
    from explorer.heal import heal

    monkeypatch.setitem(importlib.import_module("explorer.core.tokens").BATCH_TOKENS, "cpu", 96)
    folder = tiny_factory("llama", num_layers=6)
    kw = dict(calibration=SAMPLE_TEXT, seqlen=32, held_out=2, windows=12)
    out = []
    for lm in (load_model(str(folder)), load_model(str(folder), offload="disk")):
        r = heal(Variant.identity(lm).drop([2, 3]), mode, **kw)
        ppl = perplexity(lm, SAMPLE_TEXT, variant=r.variant, cache=False, **PPL).ppl
        out.append((ppl, r.details))
    (pa, da), (pb, db) = out
    assert _rel(pb, pa) <= 1e-5, (pa, pb)
    for fa, fb in zip(da.get("fits", da.get("alphas")), db.get("fits", db.get("alphas"))):
        for key in ("mse_before", "mse_after", "mse_patch", "alpha"):
            if key in fa:
                assert fb[key] == pytest.approx(fa[key], rel=1e-5), key


class _WatchedLock:
    """lm.lock stand-in that records which threads take it."""

    def __init__(self, real) -> None:
        self.real, self.takers = real, []

    def __enter__(self):
        self.takers.append(threading.get_ident())
        return self.real.__enter__()

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)

    def acquire(self, *a, **k):
        self.takers.append(threading.get_ident())
        return self.real.acquire(*a, **k)

    def release(self):
        return self.real.release()


def test_healing_takes_no_lock_while_another_thread_generates(tiny_factory):
    """The fits (closed form, LinearPatch, Prune&Comp, the closed-form start of layerwise, CoMe's
    sensitivities) run in one thread while another generates in a loop, holding the model's lock
    for each generation: the fitting thread never takes the lock, and the fits equal those made
    alone."""
    from explorer import generate
    from explorer.heal import heal
    from explorer.plan import compress

    lm = load_model(str(tiny_factory("llama", num_layers=6)))
    kw = dict(calibration=SAMPLE_TEXT, seqlen=32, held_out=2, windows=12)
    runs = [("closed-form", {}), ("linearpatch", {}), ("prunecomp", {}),
            ("layerwise", {"steps": 2})]

    def fits():
        out = [heal(Variant.identity(lm).drop([2, 3]), m, seed=0, **kw, **p).details
               for m, p in runs]
        plan = compress(lm, "come", remove=1, calibration=SAMPLE_TEXT, seqlen=32, num_samples=6)
        return out, plan.variant.layer_labels()

    alone = fits()
    lm.lock = watched = _WatchedLock(lm.lock)
    stop = threading.Event()
    generated = []

    def generating():
        while not stop.is_set():
            generated.append(generate(lm, ["Hello"], max_new_tokens=2))

    t = threading.Thread(target=generating, daemon=True)
    t.start()
    try:
        beside = fits()
    finally:
        stop.set()
        t.join(timeout=60)
    me = threading.get_ident()
    assert generated and t.ident in watched.takers      # the generating thread did take it
    assert me not in watched.takers
    assert repr(beside) == repr(alone)


@pytest.mark.parametrize("layer_major", [False, True])
@pytest.mark.parametrize("batch_size", [2, 5])
def test_gather_sums_equal_the_whole_set_at_once(tiny_lm, layer_major, batch_size):
    """A gather at slot 2 (its input, output and MLP down projection's output, first position left
    out) gives the sums computed independently from the recorded boundaries and a forward hook,
    whatever the batch size and the order of the work; kept pieces come back in window order."""
    from explorer.core.backbone import run_backbone
    from explorer.core.gather import Gather
    from explorer.probe.probe import calibration_windows

    lm = tiny_lm
    ids = calibration_windows(lm, SAMPLE_TEXT, 16, 7)
    path = lm.arch.mlp_down

    def add(view, acc):
        acc.add("xy", (view.x.double() * view.y.double()).sum())
        acc.add("mm", view.parts["m"].double().pow(2).sum(dim=(0, 1)))
        acc.keep("y", view.rows, view.y)

    g = Gather(2, add, parts={"m": path}, first=1)
    for _ in run_backbone(lm, ids, stop=3, gather=[g], batch_size=batch_size,
                          layer_major=layer_major):
        pass
    seen = []
    h = lm.arch.part(lm.original_layers[2], path).register_forward_hook(
        lambda mod, a, out: seen.append(out))
    try:
        st = next(run_backbone(lm, ids, record=[2, 3], stop=3, batch_size=7)).states
    finally:
        h.remove()
    x, y, m = st[2][:, 1:].double(), st[3][:, 1:].double(), seen[0][:, 1:].double()
    assert float(g.sums["xy"]) == pytest.approx(float((x * y).sum()), rel=1e-9)
    assert torch.allclose(g.sums["mm"], m.pow(2).sum(dim=(0, 1)), rtol=1e-9)
    assert torch.equal(g.sums.kept("y").double(), y)


def test_a_wrapped_layer_is_tapped_through_its_wrapper(tiny_lm):
    """LinearPatch's exact patch wraps a layer and hands attribute lookups to it: the MLP part is
    still found and read, and the wrapper's output is unchanged by the tap."""
    from explorer.core.gather import tapped
    from explorer.heal.linear_patch import PatchedLayer

    lm = tiny_lm
    layer = lm.original_layers[1]
    H = lm.config.hidden_size
    wrapped = PatchedLayer(layer, torch.eye(H))
    sink: dict = {}
    seen = []
    down = lm.arch.part(layer, lm.arch.mlp_down)
    h = down.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        x = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(0))
        from explorer.core.passes import skeleton_pass

        _, calls = skeleton_pass(lm, Variant.identity(lm), torch.zeros(2, 5, dtype=torch.long))
        y = calls[1].run(tapped(wrapped, {"m": lm.arch.mlp_down}, (), sink), x)
        y0 = calls[1].run(wrapped, x)
    finally:
        h.remove()
    assert torch.equal(y, y0) and torch.equal(sink["m"], seen[0])
