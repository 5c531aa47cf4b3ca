"""The Analyse tab's damage panel through gradio_client on the real default model: the map of
single layers on the analysis' windows, the trust table equal to the library's figures."""

from __future__ import annotations

import pytest

gradio_client = pytest.importorskip("gradio_client")
pytestmark = [pytest.mark.usefixtures("clean_registry"), pytest.mark.slow]


def test_damage_panel_shows_the_library_figures(live_app):
    from explorer import load_texts
    from explorer.core import session
    from explorer.measure.damage import damage_map
    from explorer.measure.measures import similarity
    from explorer.probe.probe import calibration_windows, probe
    from explorer.measure.trust import trust_rows

    c = gradio_client.Client(live_app.url, verbose=False)
    c.predict("smollm2-135m", "", api_name="/load_model")
    c.predict("wiki", "", None, api_name="/set_text")
    c.predict(32, 2, "mds", api_name="/analyse")
    status, _, table, _ = c.predict(1, "nll", "cosine", 1, api_name="/damage_map")
    assert "Measured 30 removals of up to 1 layers on 2 windows" in status
    assert "Partial" not in status and "/" + "tmp" not in status
    rows = table["data"] if isinstance(table, dict) else table
    assert len(rows) == 5                      # one row per similarity, singles only

    lm = session.get_model("smollm2-135m")
    ids = calibration_windows(lm, load_texts("wiki").calibration, 32, 2)
    dm = damage_map(lm, ids, max_block=1)
    assert f"dense perplexity {dm.dense_ppl:.2f}" in status
    pr = probe(lm, input_ids=ids, max_tokens=live_app.settings.probe_max_tokens)
    ref = trust_rows(dm, "cosine", similarity(pr, "cosine"))[0]
    cos = next(r for r in rows if r[0] == "Mean token cosine")
    assert float(cos[2]) == pytest.approx(ref.spearman, abs=1e-3)
    assert cos[5] == f"{ref.pick_rank} of 30"
