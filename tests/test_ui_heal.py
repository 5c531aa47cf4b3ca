"""The Heal step's stream, without a browser, on a tiny model: the live curve reads the fields of
the training mode's progress events, and the final state holds the healed ops and a curve with one
point per optimiser step (from the healing's history)."""

from __future__ import annotations

import pytest

from explorer.ui import heal_panel
from explorer.ui.registry import REGISTRY
from explorer.ui.settings import UISettings
from explorer.ui.state import Session, plan_from_text
from tiny import SAMPLE_TEXT

pytestmark = pytest.mark.usefixtures("clean_registry")     # the tiny model goes at the end


def test_heal_stream_reports_a_curve_and_the_healed_ops(tiny_factory):
    spec = str(tiny_factory("llama", num_layers=6))
    lm = REGISTRY.ensure_model(spec)
    text = REGISTRY.add_user_text(SAMPLE_TEXT, name="sample")
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
    history = final.heal.curve
    assert [p[1] for p in live] == [p[1] for p in history]
    assert "Healed" in line
    # the warning follows the held-out figures (the healing's own judgement, made_worse)
    worse = not final.heal.held_out_after <= final.heal.held_out_before
    assert ("Healing made it worse" in line) == worse
    # the healed variant is kept: rebuilding it from its ops trains nothing again
    assert REGISTRY.variant(lm, final.heal.ops).num_layers == 5
