"""The session's analysis: a cached probe of the calibration text and the matrices built from it.

The session keeps only the key of its probe (model, text, sizes) and the chosen measure; the probe
and its matrices live in the process registry, so they are shared by sessions that asked for the
same thing, and are recomputed transparently when another model replaced them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExplorerError
from . import features, jobs, plots
from .common import need_analysis, need_model
from .registry import REGISTRY


def probe_key(state: dict, seqlen: int, samples: int, max_tokens: int) -> list:
    return [state["model"], state["text"], int(seqlen), int(samples), int(max_tokens)]


def entry(state: dict, progress: Any = None) -> dict:
    """The registry entry of the session's probe, probing again if it is not cached."""
    need_model(state)
    key = need_analysis(state)["key"]
    found = REGISTRY.probes.get_fresh(tuple(key))
    if found is None or found["probe"] is None:
        _, _, seqlen, samples, max_tokens = key
        found = jobs.analyse_job(key[0], key[1], seqlen, samples, max_tokens, progress)
        found = dict(found, sims={})
        REGISTRY.probes.put(tuple(key), found)
    return found


def run(state: dict, seqlen: int, samples: int, max_tokens: int, progress: Any = None) -> dict:
    """Probe (or reuse the cached probe) and record it in a copy of the session state."""
    need_model(state)
    if int(seqlen) < 4 or int(samples) < 1:
        raise ExplorerError("the probe needs windows of at least 4 tokens and at least 1 window")
    REGISTRY.model_for(state, jobs.callback(progress))
    state = dict(state)
    measure = (state.get("analysis") or {}).get("measure") or default_measure()
    state["analysis"] = {"key": probe_key(state, seqlen, samples, max_tokens), "measure": measure}
    entry(state, progress)
    return state


def default_measure() -> str:
    names = list(features.measures())
    return "cosine" if "cosine" in names else (names[0] if names else "")


def info(name: str):
    found = features.measures().get(name)
    if found is None:
        raise ExplorerError(f"unknown measure '{name}'")
    return found


def matrix(state: dict, name: str, progress: Any = None) -> np.ndarray:
    e = entry(state, progress)
    if name not in e["sims"]:
        e["sims"][name] = jobs.similarity_job(e["probe"], name, progress)
    return e["sims"][name]


def heatmap_json(state: dict, progress: Any = None) -> str:
    """The session's heatmap (its chosen measure) with its current plan drawn on it, as JSON."""
    a = need_analysis(state)
    name = a["measure"]
    m = matrix(state, name, progress)
    mi = info(name)
    plan = state.get("plan") or {}
    sel = a.get("selected")
    fig = plots.heatmap(m, f"{mi.title}: layer boundaries x0..x{m.shape[0] - 1}",
                        higher_is_similar=mi.higher_is_similar, removed=plan.get("removed", []),
                        merged=plan.get("merged", []), selected=tuple(sel) if sel else None)
    return fig.to_json()


def profiles_figure(state: dict, progress: Any = None):
    e = entry(state, progress)
    ms = features.measures()
    return plots.profiles(e["adjacent"], {k: v.title for k, v in ms.items()},
                          {k: v.higher_is_similar for k, v in ms.items()})


def layer_map_figure(state: dict, method: str, progress: Any = None):
    name = need_analysis(state)["measure"]
    m = matrix(state, name, progress)
    mi = info(name)
    coords = features.module("manifold").layer_map(m, mi.higher_is_similar, method=method, seed=0)
    return plots.layer_map(coords, f"Map of the layer boundaries ({method.upper()} on {mi.title})")


def token_figure(state: dict, layers: list[int], method: str, max_points: int,
                 progress: Any = None):
    if not layers:
        raise ExplorerError("choose at least one layer boundary for the token clouds")
    e = entry(state, progress)
    manifold = features.module("manifold")
    panels = []
    for k, layer in enumerate(sorted(set(int(x) for x in layers))[:4]):
        if progress is not None:
            progress(k / max(1, len(layers)), desc=f"embedding the tokens of x{layer} ({method})")
        coords, sample_index = manifold.token_embedding(e["probe"], layer, method=method,
                                                        max_points=max_points, seed=0)
        panels.append((layer, jobs.to_numpy(coords), jobs.to_numpy(sample_index)))
    return plots.token_clouds(panels, method, e["probe"].num_layers)
