"""Issue 31, the app's part: the Export tab's report holds the damage map the Analyse tab
measured on the session's analysis (the same map: its dense figure and its cells), and no damage
section when none was measured."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tiny import SAMPLE_TEXT

pytestmark = pytest.mark.usefixtures("clean_registry")


def test_the_report_carries_the_sessions_damage_map(tiny_factory):
    from explorer.measure.damage import damage_map
    from explorer.ui import analysis, damage_panel, export_tab, jobs
    from explorer.ui.caches import APP_CACHES
    from explorer.ui.settings import UISettings
    from explorer.ui.state import Session, plan_from_text

    spec = str(tiny_factory("llama", num_layers=6))
    lm = APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample.txt")
    settings = UISettings(probe_seqlen=32, probe_samples=4, probe_max_tokens=256, ppl_seqlen=32,
                          ppl_max_tokens=256, gen_tokens=0, prompts=())
    state = Session(model=spec, num_layers=6, text=text).with_plan(plan_from_text(6, "2", ""))
    state, _ = analysis.run(state, 32, 4, 256)

    plain = open(export_tab.report_file(settings, state), encoding="utf-8").read()
    assert "Measured damage" not in plain             # nothing measured: no section
    figures = plain.count('class="plotly-graph-div"')

    ids = analysis.entry(state).probe.input_ids       # what the damage panel measures on
    small = jobs.damage_job(spec, ids, 1)
    dm = jobs.damage_job(spec, ids, 2)
    damage_panel.MAPS.put((state.analysis.key, 1), small)
    damage_panel.MAPS.put((state.analysis.key, 2), dm)
    assert export_tab.session_damage(state) is dm     # the larger of the session's maps
    page = open(export_tab.report_file(settings, state), encoding="utf-8").read()
    assert "Measured damage" in page and "each block of up to 2 layers" in page
    assert page.count('class="plotly-graph-div"') == figures + 1     # the damage heatmap
    again = damage_map(lm, ids, max_block=2)           # measured again, outside the app
    assert f"perplexity {again.dense_ppl:.3f}" in page
    # a session with another analysis (or none) gets none of these maps
    state2, _ = analysis.run(state, 16, 4, 256)
    assert export_tab.session_damage(state2) is None
    assert export_tab.session_damage(replace(state, analysis=None)) is None
