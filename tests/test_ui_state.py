"""The UI's bookkeeping without a browser: picks in original numbering become the right recipe ops,
clicks toggle blocks, session state stays small and its caches bounded."""

from __future__ import annotations

import pytest

from explorer.core.errors import LayerError
from explorer.apply.recipe import replay
from explorer.ui.state import SessionPlan, manual_plan, plan_fields, plan_from_text, toggle_block


def test_manual_plan_keeps_original_numbering(tiny_lm):
    # merge original 1-2, drop original 4: after the merge, original 4 sits in slot 3
    plan = manual_plan(6, [4], [[1, 2]], "average")
    v = replay(tiny_lm, plan.ops)
    assert v.num_layers == 4
    assert [v.origin(i) for i in range(4)] == [0, 1, 3, 5]
    assert plan.ops[-1] == {"op": "drop", "layers": [3]}
    assert plan.ops[0]["weights"] == [0.5, 0.5]
    assert plan.layers_removed(6) == 2
    # the manual fields show the plan, and reading them back gives the same plan
    assert plan_fields(plan) == ("4", "1-2")
    assert plan_from_text(6, *plan_fields(plan)) == plan


def test_a_method_plan_fills_the_manual_fields():
    """After a method planned, the fields hold its layers (a merge block shows as a block)."""
    plan = SessionPlan(method="laco", ops=[{"op": "merge", "layers": [2, 3, 4]}], removed=[7, 9],
                merged=[[2, 3, 4]], layers_after=8)
    assert plan_fields(plan) == ("7,9", "2-4")
    assert plan.layers_removed(12) == 4


@pytest.mark.parametrize("drops, merges, message", [
    ([9], [], "out of range"), ([1], [[1, 2]], "named twice"), ([], [[3]], "at least two"),
    ([0, 1, 2, 3, 4, 5], [], "no layer")])
def test_manual_plan_refuses_bad_picks(drops, merges, message):
    with pytest.raises(LayerError, match=message):
        manual_plan(6, drops, merges)


def test_click_toggles_blocks():
    assert toggle_block("", "", 3, 5, "drop") == ("3-4", "")
    assert toggle_block("3-4", "", 3, 5, "drop") == ("", "")
    assert toggle_block("", "", 10, 13, "merge") == ("", "10-12")
    assert toggle_block("", "10-12", 10, 13, "merge") == ("", "")
    with pytest.raises(LayerError, match="at least two"):
        toggle_block("", "", 4, 5, "merge")


def test_push_needs_the_operators_opt_in_besides_a_token(monkeypatch):
    """On a public Space an HF_TOKEN alone must not let every visitor push with it."""
    from explorer.ui.export_tab import hub_token, push

    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    monkeypatch.delenv("LAYER_EXPLORER_ALLOW_PUSH", raising=False)
    assert hub_token() is None
    assert "not enabled" in push({"model": "m"}, "me/repo", False)
    monkeypatch.setenv("LAYER_EXPLORER_ALLOW_PUSH", "1")
    assert hub_token() == "hf_" + "x" * 30


def test_session_history_is_capped_and_state_is_small():
    import pickle

    from explorer.ui.state import HISTORY_LIMIT, Session, Tried

    state = Session(model="smollm2-135m", num_layers=30)
    for k in range(HISTORY_LIMIT + 5):
        state = state.tried(Tried("manual", f"drop {k}", 29, 1, 10**8, 20.0, 20.0 + k,
                                  [{"op": "drop", "layers": [k % 30]}], {}, "wiki: ..."))
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[0].ppl_after == 25.0 and state.history[-1].ppl_after == HISTORY_LIMIT + 24
    assert len(pickle.dumps(state)) < 64_000          # a full history stays a few tens of kB
    # loading another model drops what belonged to the old one; the same model keeps it
    assert state.with_model("smollm2-135m", 30) is state
    other = state.with_model("gemma3-270m", 18)
    assert other.history == () and other.plan == SessionPlan() and other.num_layers == 18


def test_caches_are_bounded_computed_once_and_dropped_with_the_model():
    import threading

    from explorer.core import session
    from explorer.ui.caches import AppCaches

    reg = AppCaches()
    calls, gate = [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(10)
        return len(calls)

    threads = [threading.Thread(target=reg.probes.get_or_compute, args=("k", slow))
               for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == [1] and reg.probes.get("k") == 1         # four askers, one computation
    for k in range(reg.probes.size + 3):
        reg.probes.get_or_compute(("model", k), lambda k=k: k)
    assert len(reg.probes) == reg.probes.size                  # bounded
    session.release_model()                                    # the model goes: so do its caches
    assert len(reg.probes) == 0


def test_stop_flags_are_per_session_and_cleared_by_the_next_job():
    from types import SimpleNamespace

    from explorer.core.progress import Cancelled, Event
    from explorer.ui import stop

    a, b = SimpleNamespace(session_hash="sess-a"), SimpleNamespace(session_hash="sess-b")
    seen: list = []
    bar = lambda f, desc="": seen.append((f, desc))      # noqa: E731 (a gr.Progress stand-in)
    report_a = stop.watch(bar, a)
    report_b = stop.watch(None, b)
    report_a(Event("probe", 0.5, step=4, total=8, unit="windows"))
    stop.stop(b)                                  # b's Stop leaves a's job running
    report_a(Event("perplexity", 0.75, figure=23.456))
    with pytest.raises(stop.Stopped):
        report_b(Event("probe", 0.1))
    stop.stop(a)
    with pytest.raises(stop.Stopped, match="you pressed Stop") as err:
        report_a(Event("probe", 0.9))
    assert isinstance(err.value, Cancelled)       # the app tells a stop from an error by its type
    # the bar shows the event's own sentence, made at the edge
    assert seen == [(0.5, "probe: 4/8 windows"), (0.75, "perplexity: 23.46 so far")]
    stop.watch(None, a)(Event("probe", 0.1))      # a new job of a: the old Stop is cleared
    assert stop.watch(None, None) is None         # no session and no bar: nothing to report to
    stop.forget(a), stop.forget(b)


# -- issue 32: one versioned state, one step at a time ------------------------------------------
def _healed(base_ops: list[dict], **record):
    from explorer.heal.registry import HealResult
    from explorer.ui.state import Healed

    windows = {k: record.pop(k) for k in ("held_out", "seqlen", "windows") if k in record}
    figures = dict(mode="closed-form", params=windows, cuts=[], healed_slots=[1],
                   healed_head=False, steps=0, seconds=1.0, held_out_before=2.0,
                   held_out_after=1.5, history=[], details={}, notes="") | record
    return Healed(record=HealResult.from_dict(figures), base_ops=base_ops,
                  ops=base_ops + [{"op": "heal"}])


def test_one_healing_record_from_the_result_the_ui_and_the_report_read(tiny_lm):
    """Issue 33: a healing has one record, `HealResult`. The heal job's dict (`to_dict`, JSON)
    comes back through `from_dict` as the same record without its variant, which the app's
    session keeps and the report reads."""
    import json

    from explorer import Variant
    from explorer.heal import heal
    from explorer.heal.registry import HealResult

    r = heal(Variant.identity(tiny_lm).drop([2]), "closed-form", windows=20, seqlen=16,
             held_out=2)
    d = json.loads(json.dumps(r.to_dict()))               # what the app's job hands over
    back = HealResult.from_dict(d)
    assert back.variant is None and r.variant is not None
    for name in ("mode", "held_out_before", "held_out_after", "steps", "cuts", "healed_slots",
                 "curve", "held_out", "seqlen", "fitted", "made_worse"):
        assert getattr(back, name) == getattr(r, name), name
    assert (back.held_out, back.seqlen, back.fitted) == (2, 16, 20)
    h = _healed([], **{k: d[k] for k in ("mode", "held_out_before", "held_out_after", "steps",
                                         "seconds")})
    assert h.mode == "closed-form" and h.steps == 0 and h.made_worse == r.made_worse


def test_the_version_follows_the_plan_and_its_healing():
    from explorer.ui.common import variant_words
    from explorer.ui.state import new_state

    s = new_state().with_model("m", 6)
    plan = plan_from_text(6, "2", "")
    s1 = s.with_plan(plan)
    assert s1.version == s.version + 1 and variant_words(s1) == "the unhealed variant"
    s2 = s1.with_healing(_healed(plan.ops))
    assert s2.version == s1.version + 1 and s2.ops() == plan.ops + [{"op": "heal"}]
    assert variant_words(s2).startswith("the healed variant (Closed-form")
    same = s2.with_plan(plan_from_text(6, "2", ""))          # the same plan typed again
    assert same.version == s2.version and same.heal is not None
    other = s2.with_plan(plan_from_text(6, "3", ""))
    assert other.version == s2.version + 1 and other.heal is None and other.healed is None
    assert other.ops() == plan_from_text(6, "3", "").ops
    with pytest.raises(LayerError, match="another plan"):
        other.with_healing(_healed(plan.ops))


def test_a_step_pressed_while_another_runs_is_refused_in_one_line():
    import threading

    from explorer.ui import busy

    class Request:
        def __init__(self, session: str) -> None:
            self.session_hash = session
    Request.__name__ = "Request"

    inside, release = threading.Event(), threading.Event()

    @busy.claims("a plan is being computed", "ask a method")
    def plan(request):
        inside.set()
        release.wait(10)
        return "planned"

    @busy.claims("the plan is being measured", "Apply")
    def apply(request):
        return "applied"

    me, other = Request("me"), Request("other")
    results = []
    worker = threading.Thread(target=lambda: results.append(plan(me)))
    worker.start()
    assert inside.wait(10)
    with pytest.raises(busy.Busy) as refused:
        apply(me)
    assert str(refused.value) == "a plan is being computed; Apply when it is ready"
    assert apply(other) == "applied"                 # another visitor's session is not held
    assert busy.running(me) == "a plan is being computed"
    release.set()
    worker.join(10)
    assert results == ["planned"] and busy.running(me) is None
    assert apply(me) == "applied"                    # free again once the step ended

    @busy.claims("failing", "fail")
    def fails(request):
        raise ValueError("boom")
    with pytest.raises(ValueError):
        fails(me)
    assert busy.running(me) is None                  # an error frees the session too


def test_the_time_left_follows_the_recent_rate_not_the_fast_start():
    """Issue 32 [7]: a fast first half (prefill calls) then a slow one (decode calls): the
    estimate follows the slow rate, and never says less than the time really left."""
    from explorer.core.progress import Event
    from explorer.ui.stop import time_left

    seen: dict = {}
    # 0..10 s: to 50%; then 1% per 2 s (the remaining 50% take 100 s)
    times = [(t, t / 20) for t in range(0, 11)] + [(10 + 2 * k, 0.5 + k / 100) for k in
                                                   range(1, 41)]
    said = [time_left(Event("speed", f), seen, now=float(t)) for t, f in times]
    # the last: 90 s, 90%, 20 s left at the slow rate
    assert said[-1] == " — about 20 s left", said[-1]
    # at 50 s (70%), 60 s are left; a rate since the start would say about 21 s
    assert said[times.index((50, 0.5 + 20 / 100))] == " — about 60 s left"


def test_a_reversed_range_is_said_to_be_reversed():
    """Issue 32 [12]: '20-19' is not 'cannot read': the range is reversed."""
    with pytest.raises(LayerError, match=r"layer range '20-19' is reversed: write the lower "
                                         r"layer first \(19-20\)"):
        plan_from_text(30, "", "20-19")


def test_the_heal_line_lists_ranges_and_says_why(monkeypatch):
    """Issue 32 [10], [4]: "Healed layers 9-11, 13, 16-18 and the merged layer 14-15 ..."; why
    the layers beside a cut are healed; why another mode's 'before' differs."""
    from dataclasses import replace as copy

    from explorer.ui import heal_panel, jobs
    from explorer.ui.state import new_state

    state = new_state().with_model("m", 30).with_plan(plan_from_text(30, "12", "14-15"))
    slots = [9, 10, 11, None, 13, 15, 16, 17]          # slot -> original layer (None: merged)
    monkeypatch.setattr(jobs, "variant_facts_job", lambda spec, ops: {
        "slots": list(range(9)) + slots, "origins": list(range(9)) + [9, 10, 11, 14, 13, 15, 16,
                                                                      17]})
    words = heal_panel.healed_layers(state, list(range(9, 17)))
    assert words == "layers 9-11, 13, 15-17 and the merged layer 14-15"
    h = copy(_healed(state.plan.ops, held_out=8, seqlen=128, windows=512), layers=words)
    line = heal_panel.line(h)
    assert line.startswith("**Healed** layers 9-11, 13, 15-17 and the merged layer 14-15 with "
                           "Closed-form")
    assert "the layers beside each cut are fitted" in line
    assert "follow the 512 windows fitted on" in line and "another 'before'" in line
