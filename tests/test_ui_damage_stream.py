"""The Analyse tab's damage map as it fills in, without a browser, on a tiny model: the handler's
successive yields show the map so far (one more measured cell each, equal to the library's map
measured directly), a Stop ends it at the next candidate with the cells done shown and marked
"partial: k of n candidates", and bad input is refused in one line."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from explorer.core.errors import ExplorerError
from explorer.core.progress import CancelToken, watched
from explorer.measure.damage import candidate_cells, damage_map
from explorer.ui import analysis, damage_panel
from explorer.ui.caches import APP_CACHES
from explorer.ui.settings import UISettings
from explorer.ui.state import Session
from tiny import SAMPLE_TEXT

pytestmark = pytest.mark.usefixtures("clean_registry")     # the tiny model goes at the end

L = 6


@pytest.fixture(scope="module")
def analysed(tiny_factory):
    """A session of the tiny 6-layer llama with its analysis (4 windows of 16 tokens) done."""
    spec = str(tiny_factory("llama", num_layers=L))
    APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample")
    state = Session(model=spec, num_layers=L, text=text)
    state, _ = analysis.run(state, 16, 4, UISettings().probe_max_tokens)
    return state


def measured(fig) -> set[tuple[int, int]]:
    """The cells (a, b), a < b, that the heatmap figure shows a value in."""
    z = np.asarray(fig.data[0].z, dtype=float)
    return {(a, b) for a in range(L + 1) for b in range(a + 1, L + 1) if not math.isnan(z[a, b])}


def test_the_map_fills_in_candidate_by_candidate(analysed):
    damage_panel.MAPS.clear()
    updates = list(damage_panel.measure_stream(analysed, 2, "nll", "cosine", 1, every=0))
    cells = candidate_cells(L, 2)                       # 6 singles, then 5 pairs: 11 candidates
    live, final = updates[:-1], updates[-1]
    assert len(live) == len(cells)
    for k, (status, fig, rows, _) in enumerate(live, start=1):
        assert f"Measuring: {k} of {len(cells)} candidates done" in status
        assert f"({k} of {len(cells)} candidates so far)" in fig.layout.title.text
        assert measured(fig) == set(cells[:k])          # exactly the candidates finished so far
    status, fig, rows, scatter = final
    assert status.startswith(f"Measured {len(cells)} removals of up to 2 layers on 4 windows")
    assert "partial" not in status.lower() and "partial" not in fig.layout.title.text
    # the figures are the library's, measured directly on the analysis' windows
    ids = analysis.entry(analysed).probe.input_ids
    ref = damage_map(APP_CACHES.ensure_model(analysed.model), ids, max_block=2)
    z = np.asarray(fig.data[0].z, dtype=float)
    for a, b in cells:
        assert z[a, b] == pytest.approx(float(ref.nll[a, b]), rel=1e-6, abs=1e-9)
    # an early yield kept its own cells: later candidates did not write into it
    assert measured(live[0][1]) == {cells[0]}
    assert len(rows) == 2 * 5                           # sizes 1 and 2 for each of 5 similarities
    # the finished map is kept: asking again yields it at once, without measuring
    again = list(damage_panel.measure_stream(analysed, 2, "kl", "cosine", 1, every=0))
    assert len(again) == 1 and again[0][0] == status


def test_stop_keeps_the_cells_done_marked_partial(analysed):
    damage_panel.MAPS.clear()
    token = CancelToken()

    def bar(e) -> None:                  # Stop pressed as the third candidate reports
        if e.stage == "damage map" and e.step == 3:
            token.cancel()
    updates = list(damage_panel.measure_stream(analysed, 2, "nll", "cosine", 1,
                                               watched(bar, token), every=0))
    status, fig, rows, _ = updates[-1]
    # seen at the fourth candidate's report: four cells done, the other seven blank
    assert "Stopped, partial: 4 of 11 candidates" in status
    assert "(partial: 4 of 11 candidates)" in fig.layout.title.text
    assert measured(fig) == set(candidate_cells(L, 2)[:4])
    assert [u[1] for u in updates[:-1]] and measured(updates[-2][1]) == measured(fig)
    assert damage_panel.MAPS.get((analysed.analysis.key, 2)) is None     # a partial map is not kept


def test_bad_input_is_one_line(analysed):
    for block, words in [(7, "larger than the model (6 layers)"), (6, "every layer"),
                         (0, "Largest block measured")]:
        with pytest.raises(ExplorerError, match=re.escape(words)) as e:
            list(damage_panel.measure_stream(analysed, block, "nll", "cosine", 1, every=0))
        assert "\n" not in str(e.value)
    bare = Session(model=analysed.model, num_layers=L, text=analysed.text)
    with pytest.raises(ExplorerError, match="no analysis yet"):
        list(damage_panel.measure_stream(bare, 2, "nll", "cosine", 1))
