"""The UI's bookkeeping without a browser: picks in original numbering become the right recipe ops,
and clicks toggle blocks."""

from __future__ import annotations

import pytest

from explorer.errors import LayerError
from explorer.recipe import replay
from explorer.ui.state import format_layers, manual_plan, parse_groups, toggle_block


def test_format_and_parse_round_trip():
    assert format_layers([12, 3, 10, 11, 7]) == "3,7,10-12"
    assert parse_groups("10-12; 20,21") == [[10, 11, 12], [20, 21]]


def test_manual_plan_keeps_original_numbering(tiny_lm):
    # merge original 1-2, drop original 4: after the merge, original 4 sits in slot 3
    plan = manual_plan(6, [4], [[1, 2]], "average")
    v = replay(tiny_lm, plan["ops"])
    assert v.num_layers == 4
    assert [v.origin(i) for i in range(4)] == [0, 1, 3, 5]
    assert plan["ops"][-1] == {"op": "drop", "layers": [3]}
    assert plan["ops"][0]["weights"] == [0.5, 0.5]


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


def test_session_history_is_capped():
    from explorer.ui.compare_tab import HISTORY_LIMIT, add_to_history

    keys = ("method", "change", "layers_after", "removed", "params_after", "ppl_before",
            "ppl_after", "ops", "params", "protocol")
    history: list[dict] = []
    for k in range(HISTORY_LIMIT + 5):
        history = add_to_history(history, {key: k for key in keys})
    assert len(history) == HISTORY_LIMIT
    assert history[0]["ppl"] == 5 and history[-1]["ppl"] == HISTORY_LIMIT + 4


def test_stop_flags_are_per_session_and_cleared_by_the_next_job():
    from types import SimpleNamespace

    from explorer.ui import stop

    a, b = SimpleNamespace(session_hash="sess-a"), SimpleNamespace(session_hash="sess-b")
    seen: list = []
    report_a = stop.watch(lambda f, desc="": seen.append((f, desc)), a)
    report_b = stop.watch(None, b)
    report_a(0.5, desc="half")
    stop.stop(b)                                  # b's Stop leaves a's job running
    report_a(0.75, desc="more")
    with pytest.raises(stop.Stopped):
        report_b(0.1)
    stop.stop(a)
    with pytest.raises(stop.Stopped, match="you pressed Stop"):
        report_a(0.9, desc="late")
    assert seen == [(0.5, "half"), (0.75, "more")]
    stop.watch(None, a)(0.1)                      # a new job of a: the old Stop is cleared
    assert stop.watch("progress", None) == "progress"     # no session: nothing to watch
    stop.forget(a), stop.forget(b)
