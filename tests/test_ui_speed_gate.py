"""The app's speed-up and gate steps without a browser, on a tiny model: the measured speed-up
reaches the history and the summary table, the trade-off plot marks exactly the points no other
beats, and the Plan tab's gate makes the gate's plan the session's plan."""

from __future__ import annotations

import random
import re

import pytest

from explorer.ui import compare_tab, gate_panel, jobs, plots, speed_panel
from explorer.ui.caches import APP_CACHES
from explorer.ui.settings import UISettings
from explorer.ui.state import Session, Tried, plan_from_text
from tiny import SAMPLE_TEXT

pytestmark = pytest.mark.usefixtures("clean_registry")     # the tiny model goes at the end


def test_pareto_front_against_brute_force():
    rng = random.Random(0)
    for _ in range(30):
        pts = [(round(rng.uniform(1, 2), 1), round(rng.uniform(10, 20), 0)) for _ in range(8)]
        expected = [i for i, (s, p) in enumerate(pts)
                    if not any(s2 >= s and p2 <= p and (s2, p2) != (s, p) for s2, p2 in pts)]
        assert sorted(plots.pareto_front(pts)) == sorted(expected)
    assert plots.pareto_front([(1.0, 20.0), (1.2, 25.0), (1.1, 30.0), (1.3, 40.0)]) == [0, 1, 3]


def _tried(change, removed, ppl, speed, ops):
    return Tried(method="manual", change=change, layers_after=6 - removed, removed=removed,
                 params_after=100, ppl_before=20.0, ppl_after=ppl, ops=ops, params={},
                 protocol="p", speedup_prefill=speed and speed * 0.9, speedup_decode=speed)


def test_tradeoff_plot_marks_the_front():
    hist = [_tried("a", 1, 22.0, 1.1, [1]), _tried("b", 2, 30.0, 1.05, [2]),
            _tried("c", 3, 40.0, 1.5, [3]), _tried("d", 2, 25.0, None, [4])]
    fig = plots.speed_tradeoff(hist)
    every, front = fig.data
    assert list(every.x) == [1.0, 1.1, 1.05, 1.5]            # the original at 1, d not measured
    assert list(front.x) == [1.0, 1.1, 1.5] and list(front.y) == [20.0, 22.0, 40.0]


def test_speed_job_reaches_history_and_summary(tiny_factory):
    spec = str(tiny_factory("llama", num_layers=6))
    lm = APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample")
    state = Session(model=spec, num_layers=6, text=text).with_plan(plan_from_text(6, "2,3", ""))
    settings = UISettings()
    settings.ppl_seqlen, settings.ppl_max_tokens = 64, 256
    state, _ = compare_tab.apply_plan(settings, state)
    sizes = dict(speed_panel.SIZES, prefill_tokens=32, decode_prompt=8, new_tokens=4, repeats=2)
    report = jobs.speed_job(spec, state.plan.ops, sizes)
    state = speed_panel.record(state, report, [state.plan.ops])
    entry = state.history[-1]
    decode = next(c for c in report["cases"] if c["kind"] == "decode")
    assert entry.speedup_decode == decode["speedup"] and entry.speedup_prefill is not None
    md = compare_tab.summary_markdown(state, lm.num_layers, lm.num_parameters)
    assert f"×{entry.speedup_prefill:.2f} / ×{entry.speedup_decode:.2f}" in md
    assert "Amdahl" in speed_panel.speed_markdown(report)


def test_gate_job_makes_the_session_plan(tiny_factory):
    from explorer.ui.plan_tab import method_views

    spec = str(tiny_factory("llama", num_layers=6))
    APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample")
    state = Session(model=spec, num_layers=6, text=text)
    out = jobs.gate_job(spec, text, "shortgpt", 1e9, 32, 8, 64, 256, {})
    assert out["gate"]["remove"] == 5 and out["layers_after"] == 1
    new = method_views(UISettings(), state, out, {"remove": 5})[0]
    assert new.plan.ops == out["ops"] and new.plan.method == "shortgpt"
    line = gate_panel.tries_markdown(out["gate"])
    assert line.startswith("**5 layers removed**") and "1: " in line and "5: " in line


def test_speed_progress_counts_every_call_and_weighs_them_by_tokens(tiny_factory):
    """Issue 32 [2], [7]: the speed measurement's bar says 'k/n calls' for every call, the
    memory runs at the end included (they used to run after the bar said 100%), and its
    fraction counts the tokens each call runs, so a decode call of batch 4 moves the bar 4 times
    as far as one of batch 1 and the time left is not read off the short calls first."""
    spec = str(tiny_factory("llama", num_layers=6))
    APP_CACHES.ensure_model(spec)
    ops = plan_from_text(6, "2,3", "").ops
    events = []
    sizes = dict(batches=[1, 4], prefill_tokens=16, decode_prompt=4, new_tokens=4, repeats=2)
    jobs.speed_job(spec, ops, sizes, events.append)
    speed = [e for e in events if e.stage == "speed"]
    calls = 2 * 2 * 2 * (1 + 2 + 1) + 2            # cases x models x calls, then the memory runs
    assert [e.step for e in speed] == list(range(1, calls + 1))
    assert {e.total for e in speed} == {calls} and speed[-1].fraction == pytest.approx(1.0)
    assert speed[-1].describe().startswith(f"speed: memory of decode batch 4, variant, "
                                           f"{calls}/{calls} calls")
    # the fraction: tokens run so far over all the tokens, read back from each call's note
    def tokens(note: str) -> int:
        kind, batch = re.search(r"(prefill|decode) batch (\d+)", note).groups()
        return int(batch) * (16 if kind == "prefill" else 4 + 4)
    run = [tokens(e.note) for e in speed]
    total = sum(run)
    assert [e.fraction for e in speed] == pytest.approx(
        [sum(run[:k + 1]) / total for k in range(len(run))])
    assert set(run) == {16, 64, 8, 32}        # prefill 1, 4; decode 1, 4 (prompt + new tokens)
