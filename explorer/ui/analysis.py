"""The session's analysis: a cached probe of the calibration text and the matrices built from it.

The session keeps only the key of its probe (`ProbeKey`: model, text, sizes) and the chosen
measure; the probe and its matrices live in the registry, so they are shared by sessions that
asked for the same thing, and are recomputed transparently when another model replaced them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from explorer.measure import manifold
from explorer.core.errors import ExplorerError
from explorer.measure.measures import MEASURES, Measure
from explorer.core.progress import Event
from explorer.ui import controls, jobs, plots
from explorer.ui.common import need_analysis, need_model
from explorer.ui.caches import APP_CACHES, ProbeEntry
from explorer.ui.state import Analysis, ProbeKey, Session


def entry(state: Session, progress: Any = None) -> ProbeEntry:
    """The registry entry of the session's probe, probing again if it is not cached."""
    need_model(state)
    key = need_analysis(state).key
    return APP_CACHES.probe(key, lambda: jobs.analyse_job(*key, progress=progress))


# The token clouds' embeddings, in words
TOKEN_METHODS = {"pca": "PCA", "umap": "UMAP", "diffusion": "Diffusion map"}

# The Analyse tab's size fields: (label, smallest, largest).
SEQLEN_FIELD = ("Tokens per calibration window", 4, 4096)
SAMPLES_FIELD = ("Calibration windows", 1, 1024)


def run(state: Session, seqlen: Any, samples: Any, max_tokens: int,
        progress: Any = None) -> tuple[Session, bool]:
    """Probe (or reuse the cached probe) and record it in the session state.

    Returns (state, fresh): fresh is False when the probe came from the cache."""
    need_model(state)
    seqlen = controls.whole_number(seqlen, *SEQLEN_FIELD)
    samples = controls.whole_number(samples, *SAMPLES_FIELD)
    jobs.load_job(state.model, progress)     # reloaded if another session replaced it
    measure = state.analysis.measure if state.analysis else default_measure()
    key = ProbeKey(state.model, state.text, seqlen, samples, int(max_tokens))
    state = replace(state, analysis=Analysis(key=key, measure=measure))
    computed = []

    def compute() -> ProbeEntry:
        computed.append(True)
        return jobs.analyse_job(*key, progress=progress)
    APP_CACHES.probe(key, compute)
    return state, bool(computed)


def default_measure() -> str:
    return "cosine" if "cosine" in MEASURES else next(iter(MEASURES), "")


def info(name: str) -> Measure:
    found = MEASURES.get(name)
    if found is None:
        raise ExplorerError(f"unknown measure '{name}'; known: {', '.join(MEASURES)}")
    return found


def matrix(state: Session, name: str, progress: Any = None) -> np.ndarray:
    return APP_CACHES.similarity(entry(state, progress), name,
                               lambda pr: jobs.similarity_job(pr, name, progress))


def heatmap_json(state: Session, progress: Any = None) -> str:
    """The session's heatmap (its chosen measure) with its current plan drawn on it, as JSON."""
    a = need_analysis(state)
    m = matrix(state, a.measure, progress)
    mi = info(a.measure)
    fig = plots.heatmap(m, f"{mi.title}: layer boundaries x0..x{m.shape[0] - 1}",
                        higher_is_similar=mi.higher_is_similar, removed=state.plan.removed,
                        merged=state.plan.merged, selected=a.selected)
    return fig.to_json()


def profiles_figure(state: Session, progress: Any = None):
    e = entry(state, progress)
    return plots.profiles(e.adjacent, {k: v.title for k, v in MEASURES.items()},
                          {k: v.higher_is_similar for k, v in MEASURES.items()})


def layer_map_figure(state: Session, method: str, progress: Any = None):
    name = need_analysis(state).measure
    m = matrix(state, name, progress)
    mi = info(name)
    coords = manifold.layer_map(m, mi.higher_is_similar, method=method, seed=0)
    return plots.layer_map(coords, f"Map of the layer boundaries ({method.upper()} on {mi.title})")


def token_figure(state: Session, layers: list[int], method: str, max_points: int,
                 progress: Any = None):
    if not layers:
        raise ExplorerError("choose at least one layer boundary for the token clouds")
    e = entry(state, progress)
    chosen = sorted(set(int(x) for x in layers))[:4]
    panels = []
    for k, layer in enumerate(chosen):
        if progress is not None:
            progress(Event("token clouds", k / len(chosen), note=f"embedding the tokens of "
                           f"x{layer} ({TOKEN_METHODS.get(method, method)})"))
        coords, sample_index = manifold.token_embedding(e.probe, layer, method=method,
                                                        max_points=max_points, seed=0)
        panels.append((layer, jobs.to_numpy(coords), jobs.to_numpy(sample_index)))
    return plots.token_clouds(panels, TOKEN_METHODS.get(method, method))
