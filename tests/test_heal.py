"""Healing (explorer.heal) on tiny models: the closed form against an independent least-squares
solution, the fold against the map applied separately, cut detection, training lowers the held-out
KL, the loaded model stays bit-identical, exports reload with plain transformers, recipes replay,
and bad input gets one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explorer import Variant, load_model
from explorer.core.backbone import hooks
from explorer.core.errors import ExplorerError, LayerError
from explorer.heal import MODES, heal
from explorer.heal.closed_form import fold_map
from explorer.heal.cuts import find_cuts, with_slot
from tiny import SAMPLE_TEXT, kl_to_dense, same_weights, state_checksum

SMALL = dict(calibration=SAMPLE_TEXT, seqlen=32, windows=24, held_out=4)


def _windows(lm, n=24, T=32, offset=0):
    ids = lm.tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids[offset * T:(offset + n) * T]).view(n, T)
    return ids


def _plain_states(lm, v, ids, grab=None):
    """The residual stream of the plain transformers forward (entry i = input of slot i, from
    hooks on the slots: output_hidden_states is recorded by hooks transformers installs once, on
    the layers of the first forward, so it misses layers swapped in later), plus what a hook on
    module `grab` saw: an independent computation, not run_backbone."""
    outs, seen = [], []

    def keep(m, a, o):
        outs.append(o[0] if isinstance(o, tuple) else o)

    watch = [(v.layer(i), keep) for i in range(v.num_layers)]
    watch += [] if grab is None else [(grab, lambda m, a, o: seen.append(o))]
    with v.applied() as model, torch.no_grad(), hooks(*watch):
        emb = model.get_input_embeddings()(ids)
        lm.arch.base_model(model)(input_ids=ids, use_cache=False)
    return [emb] + outs, (seen[0] if seen else None)


def test_cuts_map_slots_to_original_layers(tiny_lm):
    v = Variant.identity(tiny_lm).drop([2, 3])
    (cut,) = find_cuts(v)
    assert (cut.slot, cut.dense_in, cut.dense_out, cut.removed) == (1, 1, 4, (2, 3))
    lead = find_cuts(Variant.identity(tiny_lm).drop([0, 1]))
    assert [(c.slot, c.dense_out) for c in lead] == [(-1, 2)]
    tail = find_cuts(Variant.identity(tiny_lm).drop([5]))
    assert [(c.slot, c.dense_out) for c in tail] == [(4, 6)]
    merged = find_cuts(Variant.identity(tiny_lm).merge([3, 4], [0.5, 0.5]))
    assert [(c.slot, c.dense_out, c.removed, c.new) for c in merged] == [(3, 5, (4,), True)]
    two = find_cuts(Variant.identity(tiny_lm).drop([1, 4]))
    assert [c.slot for c in two] == [0, 2]
    with pytest.raises(LayerError, match="nothing to heal"):
        find_cuts(Variant.identity(tiny_lm))


def test_closed_form_equals_independent_least_squares(tiny_lm):
    lm = tiny_lm
    v = Variant.identity(lm).drop([2, 3])
    r = heal(v, "closed-form", ridge=0.0, **SMALL)
    ids = _windows(lm)
    down = lm.original_layers[1].mlp.down_proj
    hs, M = _plain_states(lm, Variant.identity(lm), ids, grab=down)
    H = M.shape[-1]
    M, O, D = (t[:, 1:].reshape(-1, H).double() for t in (M, hs[2], hs[4]))
    T_ref = torch.linalg.lstsq(M, D - O + M).solution                # (H, H)
    # the healed slot 1 computes O - M + M T: check its output against the independent solution
    hs_healed, _ = _plain_states(lm, r.variant, ids)
    expect = (O - M + M @ T_ref).float()
    got = hs_healed[2][:, 1:].reshape(-1, H)
    assert torch.allclose(got, expect, rtol=1e-3, atol=1e-4 * expect.abs().max().item())
    fit = r.details["fits"][0]
    assert fit["mse_after"] < fit["mse_before"]
    assert r.variant.num_layers == 4 and r.healed_slots == [1]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_fold_equals_map_applied_separately(tiny_factory, family):
    lm = load_model(str(tiny_factory(family, num_layers=3)))
    layer = lm.original_layers[1]
    down = lm.arch.part(layer, lm.arch.mlp_down)
    H = lm.config.hidden_size
    T = torch.eye(H) + 0.3 * torch.randn(H, H, generator=torch.Generator().manual_seed(1))
    folded, exact = fold_map(lm, layer, T)
    assert exact
    ids = _windows(lm, n=3, T=16)
    v = Variant.identity(lm)
    with v.applied() as model, torch.no_grad(), hooks((down, lambda m, a, o: o @ T)):
        ref = _plain_states(lm, v, ids)[0][2]
    fv = with_slot(Variant.identity(lm), 1, folded, "fold")
    got, _ = _plain_states(lm, fv, ids)
    assert torch.allclose(got[2], ref, rtol=1e-4, atol=1e-4)


def test_gemma_fold_is_approximate_but_helps(tiny_factory):
    lm = load_model(str(tiny_factory("gemma3_text", num_layers=5)))
    r = heal(Variant.identity(lm).drop([2]), "closed-form", **SMALL)
    fit = r.details["fits"][0]
    assert fit["exact_fold"] is False and "approximate" in r.notes
    assert fit["mse_after"] < fit["mse_before"]


def test_gemma_fold_leaves_zero_gain_channels_out(tiny_factory):
    from explorer.heal.closed_form import GAIN_FLOOR, safe_inverse

    g = torch.tensor([0.0, 1e-9, 2.0, -4.0], dtype=torch.float64)
    assert safe_inverse(g).tolist() == [0.0, 0.0, 0.5, -0.25]
    assert GAIN_FLOOR * float(g.pow(2).mean().sqrt()) > 1e-9     # the tiny gain is below it
    lm = load_model(str(tiny_factory("gemma3_text", num_layers=5)))
    norm = lm.model.model.layers[1].post_feedforward_layernorm
    with torch.no_grad():
        norm.weight[:3] = -1.0          # Gemma's norm scales by (1 + w): three gains of exactly 0
    r = heal(Variant.identity(lm).drop([2]), "closed-form", **SMALL)     # the cut is at slot 1
    fit = r.details["fits"][0]
    assert fit["slot"] == 1 and fit["mse_after"] < fit["mse_before"]
    ids = _windows(lm, n=4)
    with r.variant.applied() as model, torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_healing_that_hurts_keeps_the_start_and_says_so(structured):
    from explorer.heal.cuts import trainable_copy
    from explorer.heal.registry import MODES, HealMode, HealOutcome, register_mode
    from explorer.apply.recipe import Recipe, replay

    @register_mode
    class Hurt(HealMode):          # a mode that scales the MLP output before each cut by 30
        name = "extest-hurt"

        def run(self, ctx, params):
            v = ctx.variant
            for cut in find_cuts(v):
                down = ctx.lm.arch.mlp_down + "."
                new = trainable_copy(v.layer(cut.slot), lambda n: n.startswith(down))
                with torch.no_grad():
                    ctx.lm.arch.part(new, ctx.lm.arch.mlp_down).weight.mul_(30.0)
                v = with_slot(v, cut.slot, new, "hurt")
            return HealOutcome(v, steps=0, seconds=0.0, history=[], notes="scaled")

    try:
        v = Variant.identity(structured).drop([2, 3])
        bad = heal(v, "extest-hurt", **SMALL)
        assert bad.held_out_after > bad.held_out_before and bad.made_worse and bad.kept_start
        assert bad.notes == (f"Healing made the held-out perplexity worse "
                             f"({bad.held_out_before:.4g} -> {bad.held_out_after:.4g}): the "
                             "unhealed variant is kept (it is better on text the healing was not "
                             "fitted on); try another mode or setting. scaled")
        # the start is what comes back: the same layer objects, one recorded step
        assert bad.variant.slots == v.slots and bad.healed_slots == []
        assert all(a is b for a, b in zip(bad.variant.slots, v.slots))
        op = bad.variant.steps[-1]
        assert op["op"] == "heal" and op["kept"] == "start"
        again = replay(structured, Recipe.of(bad.variant).ops)
        assert again.slots == v.slots
        good = heal(v, "closed-form", **SMALL)
        assert good.held_out_after < good.held_out_before and "worse" not in good.notes
        assert not good.kept_start and good.healed_slots == [1]
    finally:
        MODES.remove("extest-hurt")


def _slot_tensors(v, slots):
    return [t.detach().clone() for k in slots for t in v.layer(k).parameters()]


def _scripted_checks(monkeypatch, reported):
    """Make training's held-out checks report reported(k, true figure) for the k-th check
    (k = 0: the start): whether a learning rate helps or hurts on a tiny random model depends on
    the CPU's float kernels (an lr=0.5 run got better on an AVX-512 machine and worse on AVX2), so
    the keep-best tests choose which check wins instead of resting on it. The training steps are
    real, so a keep-best that kept the wrong tensors still shows. Returns the true figures seen."""
    from explorer.heal import train as train_module

    true_figure, seen = train_module.held_out_ppl, []

    def check(*args, **kwargs):
        seen.append(true_figure(*args, **kwargs))
        return reported(len(seen) - 1, seen[-1])

    monkeypatch.setattr(train_module, "held_out_ppl", check)
    return seen


def test_keep_best_keeps_the_best_check_and_replays_to_the_same_weights(structured, monkeypatch):
    from explorer.apply.recipe import Recipe, replay

    lm = structured
    v = Variant.identity(lm).drop([2, 3])
    # checks every 3 steps; the 4th check (step 12) is made the best, the start and every
    # other check 10x worse than they are
    seen = _scripted_checks(monkeypatch, lambda k, ppl: ppl if k == 4 else 10 * ppl)
    r = heal(v, "layerwise", steps=24, init="none", lr=3e-3, schedule_steps=1000, check_every=3,
             **SMALL)
    monkeypatch.undo()
    checks = {h["step"]: h["held_out_ppl"] for h in r.history if "held_out_ppl" in h}
    assert sorted(checks) == list(range(3, 25, 3)) and len(r.history) == 24 and len(seen) == 9
    assert min(checks, key=checks.get) == 12
    assert r.steps == 12 and r.history[11].get("kept")
    assert [h["step"] for h in r.history if h.get("kept")] == [12]
    # the returned variant is the kept state: its true held-out perplexity is step 12's
    assert r.held_out_after == pytest.approx(seen[4], rel=1e-6)
    op = r.variant.steps[-1]
    assert op["steps"] == 12 and op["params"]["schedule_steps"] == 1000
    again = replay(lm, Recipe.of(r.variant).ops)
    for a, b in zip(_slot_tensors(again, r.healed_slots), _slot_tensors(r.variant, r.healed_slots)):
        assert torch.equal(a, b)


def test_keep_best_starts_from_the_start(structured, monkeypatch):
    """A training whose every check is worse than its start keeps the start (here the closed
    form): 0 steps kept, the trained tensors put back, and the replay of those 0 steps lands on
    the closed form again. The steps are real (lr=0.5 moves the tensors), so a keep-best that
    failed to restore them would leave tensors that differ from the closed form's."""
    from explorer.apply.recipe import Recipe, replay

    lm = structured
    v = Variant.identity(lm).drop([2, 3])
    cf = heal(v, "closed-form", **SMALL)
    seen = _scripted_checks(monkeypatch, lambda k, ppl: ppl + 1e3 * k)
    r = heal(v, "layerwise", steps=6, lr=0.5, check_every=1, **SMALL)
    monkeypatch.undo()
    assert len(seen) == 7                               # the start and one check per step
    assert seen[0] == pytest.approx(cf.held_out_after, rel=1e-6)
    assert all(h["held_out_ppl"] > cf.held_out_after for h in r.history)
    assert r.steps == 0 and r.held_out_after == pytest.approx(cf.held_out_after, rel=1e-6)
    assert not any(h.get("kept") for h in r.history)
    for a, b in zip(_slot_tensors(r.variant, [1]), _slot_tensors(cf.variant, [1])):
        assert torch.equal(a, b)                       # the 6 real steps were undone
    again = replay(lm, Recipe.of(r.variant).ops)
    for a, b in zip(_slot_tensors(again, [1]), _slot_tensors(cf.variant, [1])):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def structured(tiny_factory):
    """A tiny llama whose layers matter (larger random weights): dropping two changes its
    predictions clearly, so healing has something to repair."""
    return load_model(str(tiny_factory("llama", num_layers=6, initializer_range=0.15)))


@pytest.mark.parametrize("mode,kw", [("layerwise", {"init": "none"}),
                                     ("distill", {"init": "none", "train": "layers"}),
                                     ("distill", {"init": "none", "train": "lora", "rank": 4,
                                                  "span": "all"}),
                                     ("distill", {"init": "none", "train": "norms"}),
                                     ("tail-finetune", {"k": 4})])
def test_training_lowers_held_out_kl_and_leaves_the_model_alone(structured, mode, kw):
    lm = structured
    before = state_checksum(lm.model)
    v = Variant.identity(lm).drop([2, 3])
    kw = {**kw, "lr": 3e-3 if kw.get("train") != "norms" else 1e-2}
    if mode == "tail-finetune":
        kw["lr"] = 1e-3
    r = heal(v, mode, steps=40, **SMALL, **kw)
    ids = _windows(lm, n=8, T=32, offset=40)        # past the fitted and watched windows
    assert kl_to_dense(lm, r.variant, ids) < 0.9 * kl_to_dense(lm, v, ids)
    assert state_checksum(lm.model) == before
    assert len(r.history) == 40 and math.isfinite(r.held_out_after)
    assert r.steps == max(h["step"] for h in r.history if h.get("kept"))


def test_layerwise_loss_equals_an_independent_computation(tiny_lm):
    from explorer.heal.data import HealData
    from explorer.heal.layerwise import Group
    from explorer.heal.registry import HealContext

    lm = tiny_lm
    v = Variant.identity(lm).drop([2, 3])                  # group: slots 1..2 -> dense x_5
    data = HealData.build(lm, SAMPLE_TEXT, seqlen=32, windows=24, held_out=4, owner="test")
    ctx = HealContext(lm, v, data, {"skip_first": True})
    g = Group(ctx, v, 1, 2, batch=4)
    idx = torch.tensor([3, 0, 7, 5])
    with torch.no_grad():
        got = float(g.loss(idx, 1, lm.device))
    ids = data.ids
    hs_v, _ = _plain_states(lm, v, ids)                    # the variant's output of slot 2
    hs_d, _ = _plain_states(lm, Variant.identity(lm), ids)
    f, d = hs_v[3][idx, 1:].double(), hs_d[5][idx, 1:].double()
    dd = hs_d[5][:, 1:].double()                           # the variance over every window
    expect = (f - d).pow(2).sum(-1).mean() / (dd - dd.mean(dim=(0, 1))).pow(2).sum(-1).mean()
    assert got == pytest.approx(float(expect), rel=1e-4)
    # the per-channel and cosine losses (issue 23, item 5), written out with numpy
    fn, dn, var = f.numpy(), d.numpy(), dd.reshape(-1, dd.shape[-1]).numpy().var(axis=0)
    with torch.no_grad():
        channel = float(g.loss(idx, 1, lm.device, "channel"))
        cosine = float(g.loss(idx, 1, lm.device, "cosine"))
    assert channel == pytest.approx(float(((fn - dn) ** 2 / var).mean()), rel=1e-4)
    cos = (fn * dn).sum(-1) / (np.linalg.norm(fn, axis=-1) * np.linalg.norm(dn, axis=-1))
    assert cosine == pytest.approx(float((1 - cos).mean()), rel=1e-4)


def test_channel_loss_is_not_ruled_by_a_massive_channel():
    """Gemma 3's problem (docs/healing.md): one channel 1000x the others. The plain loss of an
    output that is exact on that channel and wrong everywhere else is near zero; the per-channel
    loss sees the error."""
    from explorer.heal.layerwise import stream_loss

    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 16, 32, generator=g)
    d[..., 0] *= 1000.0
    y = d.clone()
    y[..., 1:] += torch.randn(4, 16, 31, generator=g)            # every other channel off by ~1
    var = (d - d.mean(dim=(0, 1))).pow(2).mean(dim=(0, 1))
    plain = float(stream_loss(y, d, "mse", float(var.sum()), 1 / (var * 32)))
    channel = float(stream_loss(y, d, "channel", float(var.sum()), 1 / (var * 32)))
    assert plain < 1e-3 and channel > 0.5


def test_export_reloads_with_plain_transformers_and_recipe_replays(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    from explorer import export, perplexity
    from explorer.apply.recipe import Recipe, replay

    lm = tiny_lm
    r = heal(Variant.identity(lm).drop([2, 3]), "layerwise", steps=5, **SMALL)
    recipe = Recipe.of(r.variant)
    out = export(r.variant, tmp_path / "healed", recipe=recipe)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = _windows(lm, n=4, T=32, offset=30)
    with r.variant.applied() as m, torch.no_grad():
        ours = m(input_ids=ids).logits
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    ops = Recipe.from_json((out / "layer_explorer_recipe.json").read_text()).ops
    heal_op = ops[-1]
    assert heal_op["op"] == "heal" and heal_op["mode"] == "layerwise" and heal_op["steps"] == r.steps
    assert heal_op["calibration"]["sha256"] and heal_op["seed"] == 0
    again = replay(lm, ops)
    a = perplexity(lm, SAMPLE_TEXT, variant=again, seqlen=32, max_tokens=512).ppl
    b = perplexity(lm, SAMPLE_TEXT, variant=r.variant, seqlen=32, max_tokens=512).ppl
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda v: heal(v, "nonsense", **SMALL), "unknown heal mode 'nonsense'; known heal modes"),
    (lambda v: heal(v, "prunecomp", then="both", **SMALL), "heal mode 'prunecomp': then must"),
    (lambda v: heal(v, "layerwise", steps=0, **SMALL), "steps must be a positive integer"),
    (lambda v: heal(v, "distill", steps=-3, **SMALL), "steps must be a positive integer"),
    (lambda v: heal(v, "distill", seconds=0, **SMALL), "seconds must be a positive number"),
    (lambda v: heal(v, "closed-form", steps=10, **SMALL), "trains nothing"),
    (lambda v: heal(Variant.identity(v.lm), "closed-form", **SMALL), "nothing to heal"),
    (lambda v: heal(v, "closed-form", calibration="too short a text", seqlen=32, windows=24,
                    held_out=4), r"needs 896 calibration tokens .* the text gives"),
    (lambda v: heal(v, "closed-form", colour="red", **SMALL), "has no parameter colour"),
    (lambda v: heal(v, "tail-finetune", k=5, steps=2, **SMALL),
     r"heal mode 'tail-finetune': k=5 layers to train, but the variant has only 4: use k <= 4"),
    (lambda v: heal(v, "closed-form", calibration=" \n ", seqlen=32, windows=24, held_out=4),
     "the healing text is empty"),
    (lambda v: heal(v, "closed-form", text="", **{k: x for k, x in SMALL.items()
                                                    if k != "calibration"}),
     "no text source given"),
    (lambda v: heal(v, "closed-form", text="news", **SMALL), "not both"),
    (lambda v: heal(v, "closed-form", **{**SMALL, "windows": 1}),
     r"needs at least 256 fitted tokens \(8 x the hidden size\), but 1 windows of 32 give 31: "
     r"use windows >= 9 at seqlen 32"),
])
def test_bad_input_gets_one_line(tiny_lm, call, match):
    with pytest.raises(ExplorerError, match=match) as e:
        call(Variant.identity(tiny_lm).drop([2, 3]))
    assert "\n" not in str(e.value)


# every registered healing mode with each parameter set it declares (`HealMode.examples`): a mode
# added to the registry is covered here without editing this file
HEAL_CASES = {f"{name}-{k}": (name, params) for name, m in MODES.items()
              for k, params in enumerate(m.examples)}


def test_every_registered_heal_mode_has_a_case():
    assert {name for name, _ in HEAL_CASES.values()} == set(MODES)


@pytest.mark.parametrize("case", sorted(HEAL_CASES))
def test_every_heal_mode_heals_and_its_recipe_replays_the_same_bits(tiny_lm, tmp_path, case):
    from explorer.apply import fitted
    from explorer.apply.recipe import Recipe

    name, params = HEAL_CASES[case]
    lm = tiny_lm
    before = state_checksum(lm.model)
    v = Variant.identity(lm).drop([2, 3])
    kw = dict(params)
    if MODES[name].trains and "steps" not in kw and "seconds" not in kw:
        kw["steps"] = 2
    r = heal(v, name, **SMALL, **kw)
    assert (r.healed_slots or r.kept_start) and state_checksum(lm.model) == before
    assert math.isfinite(r.held_out_before) and math.isfinite(r.held_out_after)
    step = r.variant.steps[-1]
    assert step["op"] == "heal" and step["mode"] == name and r.variant.steps[:-1] == v.steps
    # saved with its fitted tensors, the recipe rebuilds the same bits with no training
    Recipe.of(r.variant).save(tmp_path / "recipe.json", lm)
    fitted.RESULTS.clear()
    said: list[str] = []
    again = Recipe.load(tmp_path / "recipe.json").build(lm, report=said.append)
    assert said == [] and same_weights(again, r.variant)


def test_tail_finetune_trains_only_the_last_k_layers_after_a_tail_plan(structured):
    lm = structured
    v = Variant.identity(lm).drop([4, 5])                  # the tail plan: the cut is the last slot
    r = heal(v, "tail-finetune", k=2, objective="ce", steps=12, keep_best=False, lr=3e-3,
             **SMALL)
    # cross-entropy on the healing text lowers the held-out perplexity on that text
    assert r.healed_slots == [2, 3] and r.steps == 12
    assert r.held_out_after < 0.9 * r.held_out_before
    assert all(r.variant.slots[j] is v.slots[j] for j in (0, 1))


def test_healing_text_by_name(structured, tmp_path):
    from explorer.heal.registry import healing_text
    from explorer.probe.text import load_texts

    text, source = healing_text("news")
    assert source == "news" and text == load_texts("news").calibration
    mix, source = healing_text("mix")
    wiki, news = load_texts("wiki").calibration, load_texts("news").calibration
    assert source == "mix" and mix[:20000].count("\n\n") > 4
    head = mix[:40000]          # both kinds in every stretch of a few windows
    assert any(p[:200] in head for p in news.split("\n\n")[:40])
    assert any(p[:200] in head for p in wiki.split("\n\n")[:40])
    f = tmp_path / "mine.txt"
    f.write_text(SAMPLE_TEXT)
    assert healing_text(str(f)) == (SAMPLE_TEXT.strip(), None)
    v = Variant.identity(structured).drop([2, 3])
    r = heal(v, "closed-form", text=str(f), seqlen=32, windows=24, held_out=4)
    assert r.calibration == "user" and r.variant.steps[-1]["calibration"]["source"] is None
    r = heal(v, "closed-form", text="news", seqlen=32, windows=24, held_out=4)
    assert r.calibration == "news" and r.variant.steps[-1]["calibration"]["source"] == "news"


def test_keep_best_checks_are_spaced_out_when_they_cost_more_than_the_steps(structured,
                                                                           monkeypatch):
    """A held-out check far dearer than a step (a big vocabulary head, few slow steps) must not
    eat a time budget: by default the checks are spaced out to about 1/MONITOR_RATIO of the
    time; an explicit check_every, or a step budget (a rerun lands on the same step), keeps the
    schedule length / 20."""
    import importlib
    import types

    train_mod = importlib.import_module("explorer.heal.train")

    # A virtual clock instead of the machine's, so that the schedule does not depend on how busy
    # the CPU is: each reading costs 10 ms of virtual time (a step reads it two or three times),
    # and a held-out check costs 200 ms more.
    clock = types.SimpleNamespace(t=0.0)

    def perf_counter() -> float:
        clock.t += 0.01
        return clock.t

    real = train_mod.held_out_ppl

    def slow(*args, **kwargs):
        clock.t += 0.2
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(train_mod, "held_out_ppl", slow)
    v = Variant.identity(structured).drop([2, 3])
    auto = heal(v, "layerwise", seconds=8, schedule_steps=60, init="none", **SMALL)
    fixed = heal(v, "layerwise", steps=60, init="none", check_every=3, **SMALL)
    steps = heal(v, "layerwise", steps=60, init="none", **SMALL)     # a step budget: as before
    n_auto = sum("held_out_ppl" in h for h in auto.history)
    n_fixed = sum("held_out_ppl" in h for h in fixed.history)
    assert n_fixed == 20 and sum("held_out_ppl" in h for h in steps.history) == 20
    assert 1 <= n_auto < n_fixed / 2
