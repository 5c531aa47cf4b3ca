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
