"""Issue 32 [8]: "Models side by side" right after Run analysis draws the session's model from
its analysis (no second probe of it); another model is probed with the analysis' sizes, and
the session's model is resident again afterwards."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("clean_registry")


def test_the_analysed_model_is_not_probed_again(tiny_factory, monkeypatch):
    import importlib

    probing = importlib.import_module("explorer.probe.probe")
    from explorer.core import session
    from explorer.measure.measures import adjacent
    from explorer.ui import analyse_tab, analysis, jobs
    from explorer.ui.caches import APP_CACHES
    from explorer.ui.settings import UISettings
    from explorer.ui.state import Session

    mine = str(tiny_factory("llama", num_layers=6))
    other = str(tiny_factory("llama", num_layers=4))
    APP_CACHES.ensure_model(mine)
    state = Session(model=mine, num_layers=6, text="wiki")
    state, _ = analysis.run(state, 32, 4, 256)

    probes = []
    real_probe = probing.probe
    def counted(lm, *a, **k):
        probes.append((lm.spec, k))
        return real_probe(lm, *a, **k)
    monkeypatch.setattr(probing, "probe", counted)
    monkeypatch.setattr(jobs, "probe", counted)          # the analysis' own probe too
    settings = UISettings(probe_seqlen=64, probe_samples=8)
    fig = analyse_tab.models_figure(settings, state, mine, "cosine")
    assert probes == []                                  # nothing probed, nothing loaded
    (curve,) = fig.data
    want = adjacent(analysis.entry(state).probe, "cosine").tolist()
    assert list(curve.y) == pytest.approx(want) and len(curve.x) == 6

    fig = analyse_tab.models_figure(settings, state, f"{other}, {mine}", "cosine")
    assert [spec for spec, _ in probes] == [other]       # only the other model
    assert (probes[0][1]["seqlen"], probes[0][1]["num_samples"]) == (32, 4)   # the analysis'
    assert [len(t.x) for t in fig.data] == [4, 6]
    assert list(fig.data[1].y) == pytest.approx(want)
    assert session.current_model().spec == mine          # the session's model is back


def test_a_failing_model_is_named_and_the_session_model_stays(tiny_factory):
    """Issue 32 [12]: "other, nonexistent-model-xyz" in Models side by side, offline as a user
    with a mistyped id would be: the toast's line names the model that failed, says the other
    was fine and the session's model drawn from its analysis; the session's model is resident
    again."""
    from explorer.core import session
    from explorer.core.errors import ModelLoadError
    from explorer.ui import analyse_tab, analysis
    from explorer.ui.caches import APP_CACHES
    from explorer.ui.settings import UISettings
    from explorer.ui.state import Session

    mine = str(tiny_factory("llama", num_layers=6))
    other = str(tiny_factory("llama", num_layers=4))
    APP_CACHES.ensure_model(mine)
    state, _ = analysis.run(Session(model=mine, num_layers=6, text="wiki"), 32, 4, 256)
    with pytest.raises(ModelLoadError) as caught:
        analyse_tab.models_figure(UISettings(), state, f"{mine}, nonexistent-model-xyz, {other}",
                                  "cosine")
    said = str(caught.value)
    assert said.startswith("'nonexistent-model-xyz' failed: could not load "
                           "'nonexistent-model-xyz'"), said
    assert said.endswith(f"; {other} was fine (its profile is kept); {mine} is drawn from its "
                         f"analysis"), said
    assert session.current_model().spec == mine
