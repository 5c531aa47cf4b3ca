"""The Heal step's stream, without a browser, on a tiny model: the live curve reads the fields of
the training mode's progress events, and the final state holds the healed ops and a curve with one
point per optimiser step (from the healing's history)."""

from __future__ import annotations

import re

import pytest

from explorer.ui import heal_panel
from explorer.ui.caches import APP_CACHES
from explorer.ui.settings import UISettings
from explorer.ui.state import Session, plan_from_text
from tiny import SAMPLE_TEXT

pytestmark = pytest.mark.usefixtures("clean_registry")     # the tiny model goes at the end


def test_heal_stream_reports_a_curve_and_the_healed_ops(tiny_factory):
    spec = str(tiny_factory("llama", num_layers=6))
    lm = APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample")
    state = Session(model=spec, num_layers=6, text=text).with_plan(plan_from_text(6, "2", ""))
    reports: list = []
    mode = heal_panel.get_mode("layerwise")
    raw = {p.name: p.default for p in mode.params} | {"seqlen": 16, "windows": 4, "held_out": 1,
                                                       "init": "none"}
    updates = list(heal_panel.heal_stream(
        UISettings(), state, "layerwise", 5, None, [raw[p.name] for p in mode.params],
        reports.append, lambda st: st))
    final, curve, line = updates[-1]
    assert isinstance(final, Session) and final.heal is not None
    assert final.heal.ops[:-1] == state.plan.ops and final.heal.ops[-1]["op"] == "heal"
    assert [p[0] for p in final.heal.curve] == [1, 2, 3, 4, 5]    # one point per step
    assert final.heal.curve[-1][2] is not None                     # held-out ppl at the end
    # the live curve takes the training events' own fields, the same figures as the history
    live = [p for p in map(heal_panel.live_point, reports) if p is not None]
    assert [p[0] for p in live] == [1, 2, 3, 4, 5]
    # issue 32 [2]: the held-out checks are said on the bar, at their step of the total
    checks = [e.describe() for e in reports if e.note == "checking the held-out windows"]
    assert checks and all(re.search(r"^layerwise: checking the held-out windows, step "
                                    r"[1-5]/5", c) for c in checks), checks
    history = final.heal.curve
    assert [p[1] for p in live] == [p[1] for p in history]
    assert "Healed" in line
    # the warning follows the held-out figures (the healing's own judgement, made_worse)
    worse = not final.heal.held_out_after <= final.heal.held_out_before
    assert ("Healing made it worse" in line) == worse
    # the healed variant is kept: rebuilding it from its ops trains nothing again
    assert APP_CACHES.variant(lm, final.heal.ops).num_layers == 5


def test_download_recipe_never_trains(tiny_factory, monkeypatch):
    """The Export tab's recipe comes from the jobs layer: with the healed variant in memory it is a
    zip with the healed layers' tensors; once that variant is gone it is the JSON alone, and
    writing it trains nothing (a replay will, and will say so)."""
    import json
    import zipfile

    from explorer import Recipe, Variant
    from explorer.apply import fitted as F
    from explorer.heal import heal, registry as heal_registry
    from explorer.ui import jobs

    spec = str(tiny_factory("llama", num_layers=6))
    lm = APP_CACHES.ensure_model(spec)
    r = heal(Variant.identity(lm).drop([2]), "closed-form", calibration=SAMPLE_TEXT, seqlen=32,
             windows=24, held_out=4)
    ops = [dict(op) for op in r.variant.steps]

    def no_training(*a, **k):
        raise AssertionError("the download trained")
    monkeypatch.setattr(heal_registry, "heal", no_training)
    path = jobs.recipe_job(spec, ops, "manual", {}, {})
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["recipe.fitted.safetensors", "recipe.json"]
        assert json.loads(z.read("recipe.json"))["ops"] == ops
    APP_CACHES.clear_model_caches()
    F.RESULTS.clear()                       # the healed variant is no longer known
    path = jobs.recipe_job(spec, ops, "manual", {}, {})
    assert path.endswith("recipe.json") and Recipe.load(path).ops == ops


def test_download_after_a_heal_in_the_app_carries_the_healed_tensors(tiny_factory):
    """The app heals the plan's own ops (a manual drop op has no "summary"; the variant's step has
    one): the download still finds the healed layers, and their replay is bit for bit."""
    import zipfile

    from explorer import Recipe
    from explorer.ui import jobs
    from explorer.ui.state import manual_plan
    from tiny import same_weights

    spec = str(tiny_factory("llama", num_layers=6))
    lm = APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample")
    plan = manual_plan(6, drops=[4], merges=[[1, 2]])
    assert "summary" not in plan.ops[-1]                       # the case this test is about
    out = jobs.heal_job(spec, text, plan.ops, "closed-form", None, None,
                        {"seqlen": 32, "windows": 24, "held_out": 4})
    path = jobs.recipe_job(spec, out["ops"], "manual", {}, {})
    assert path.endswith(".zip")
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp := path[:-4])
    said: list[str] = []
    again = Recipe.load(f"{tmp}/recipe.json").build(lm, report=said.append)
    assert said == [] and same_weights(again, APP_CACHES.variant(lm, out["ops"]))   # nothing refitted
    # issue 32: browsing more plans than the variants cache holds (other tabs, other sessions)
    # does not drop the healing: the download still carries its tensors
    import gc

    from explorer.ui.caches import SIZES

    del again                               # only the app's own variant holds the healing now
    gc.collect()
    for k in range(SIZES["variants"] + 2):
        APP_CACHES.variant(lm, manual_plan(6, drops=[k % 6], merges=[] if k < 6 else [[4, 5]]).ops)
    gc.collect()
    assert jobs.recipe_job(spec, out["ops"], "manual", {}, {}).endswith(".zip")


def test_closed_form_progress_counts_maps_and_windows(tiny_factory):
    """Issue 32 [2], [3]: the closed form's bar says which map of how many, the windows gathered
    for it (k/n) and its solve, on one fraction that only grows (so the time left comes from
    this run's rate), then the held-out check after healing."""
    spec = str(tiny_factory("llama", num_layers=6))
    APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample")
    state = Session(model=spec, num_layers=6, text=text).with_plan(plan_from_text(6, "1,3", ""))
    events: list = []
    mode = heal_panel.get_mode("closed-form")
    raw = {p.name: p.default for p in mode.params} | {"seqlen": 16, "windows": 24, "held_out": 2}
    *_, (final, _, line) = heal_panel.heal_stream(
        UISettings(), state, "closed-form", None, None, [raw[p.name] for p in mode.params],
        events.append, lambda st: st)
    assert final.heal is not None and "Healed" in line
    heal = [e for e in events if e.stage == "heal closed-form"]
    said = [e.describe() for e in heal]
    assert said[0] == "heal closed-form: held-out perplexity before healing"
    assert [s for s in said if "24/24 windows" in s] == [
        "heal closed-form: map 1/2, slot 0, 24/24 windows",
        "heal closed-form: map 2/2, slot 1, 24/24 windows"]
    assert any(s.startswith("heal closed-form: map 2/2, solving the map at slot 1") for s in said)
    assert said[-2] == "heal closed-form: held-out perplexity after healing"
    fractions = [e.fraction for e in heal]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    first_map = [e.fraction for e in heal if "map 1/2" in (e.note or "")]
    assert max(first_map) == pytest.approx(0.5)          # the first map is half of the work
