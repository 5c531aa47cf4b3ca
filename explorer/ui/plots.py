"""Plotly figures that only the app draws (token clouds, the session's history, models side by
side). Display only: every number comes from the explorer API. The figures the HTML report shares
with the app (heatmaps, profiles, layer map, healing curve) live in `explorer.report.figures`; they are
imported here so that the tabs find every figure under `plots`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.report.figures import MARGIN as _MARGIN
from explorer.report.figures import heal_curve, heatmap, layer_map, profiles

__all__ = ["heal_curve", "heatmap", "history", "layer_map", "profiles", "profiles_overlay",
           "token_clouds"]

def token_clouds(panels: list[tuple[int, np.ndarray, np.ndarray]], method: str) -> go.Figure:
    """One scatter per chosen boundary: tokens embedded in 2-D, coloured by calibration window."""
    cols = max(1, len(panels))
    fig = make_subplots(rows=1, cols=cols, subplot_titles=[
        f"x{k}" + (" (embeddings)" if k == 0 else f" (after layer {k - 1})") for k, _, _ in panels])
    for j, (k, coords, sample) in enumerate(panels, start=1):
        c = np.asarray(coords, dtype=float)
        fig.add_trace(go.Scattergl(
            x=c[:, 0], y=c[:, 1], mode="markers", showlegend=False,
            marker=dict(size=4, color=np.asarray(sample), colorscale="Turbo", opacity=0.7),
            hovertemplate="window %{marker.color}<extra>x" + str(k) + "</extra>"), row=1, col=j)
    fig.update_layout(title=f"Token clouds ({method}), colour = calibration window", height=420,
                      margin=_MARGIN)
    return fig


# Fixed colours, so that a kind of point keeps its colour from one render to the next.
COLORS = {"original": "#222222", "manual": "#1f77b4", "healed": "#2ca02c", "variant": "#e4572e"}
# Methods take these in the registry's order (the same method, the same colour, every time).
METHOD_PALETTE = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728",
                  "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5")


def method_color(method: str) -> str:
    from explorer.plan import list_methods     # the live registry: a new method gets a colour too

    names = [m.name for m in list_methods()]
    k = names.index(method) if method in names else len(names) + sum(map(ord, method))
    return METHOD_PALETTE[k % len(METHOD_PALETTE)]


def history(entries: Iterable, titles: dict[str, str] | None = None) -> go.Figure:
    """Perplexity against the number of layers removed, for the variants of this session.

    A method's plans at several sizes form one line (its latest figure at each size, joined in
    size order; a method tried at one size is a point); manual plans are unrelated picks, so each
    is its own point, labelled with what it changed; a healed variant is a star joined by a
    dotted line to the variant it healed; the original model is the black point at 0. Every kind
    has a fixed colour. `entries` are `state.Tried` records; `titles`: method name -> its words.
    """
    titles = titles or {}
    fig = go.Figure()
    entries = list(entries)
    plain = [e for e in entries if not e.healed]
    by_method: dict[str, dict[int, object]] = {}
    for e in plain:
        if e.method != "manual":
            by_method.setdefault(e.method, {})[e.removed] = e     # the latest at each size
    for method, sizes in by_method.items():
        es = [sizes[k] for k in sorted(sizes)]
        name = titles.get(method, method)
        fig.add_trace(go.Scatter(x=[e.removed for e in es], y=[e.ppl_after for e in es],
                                 mode="lines+markers" if len(es) > 1 else "markers", name=name,
                                 line=dict(color=method_color(method)),
                                 marker=dict(size=9, color=method_color(method)),
                                 text=[e.change for e in es],
                                 hovertemplate="%{text}<br>%{x} layers removed: ppl %{y:.2f}"
                                               "<extra></extra>"))
    manual = [e for e in plain if e.method == "manual"]
    if manual:
        fig.add_trace(go.Scatter(
            x=[e.removed for e in manual], y=[e.ppl_after for e in manual], mode="markers",
            name="manual plans", marker=dict(size=10, symbol="diamond", color=COLORS["manual"]),
            text=[e.change for e in manual],
            hovertemplate="%{text}<br>%{x} layers removed: ppl %{y:.2f}<extra>manual</extra>"))
    healed = [e for e in entries if e.healed]
    if healed:
        xs, ys = [], []
        for e in healed:               # from the unhealed variant (when measured) to the healed
            base = next((b for b in reversed(plain) if b.ops == e.ops[:-1]), None)
            if base is not None:
                xs += [e.removed, e.removed, None]
                ys += [base.ppl_after, e.ppl_after, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(dash="dot", color="gray"),
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[e.removed for e in healed], y=[e.ppl_after for e in healed], mode="markers",
            name="healed", marker=dict(size=13, symbol="star", color=COLORS["healed"]),
            text=[e.change for e in healed],
            hovertemplate="%{text}<br>%{x} layers removed: ppl %{y:.2f}<extra>healed</extra>"))
    if entries:
        fig.add_trace(go.Scatter(x=[0], y=[entries[-1].ppl_before], mode="markers",
                                 name="original", marker=dict(size=10, color=COLORS["original"]),
                                 hovertemplate="original model: ppl %{y:.2f}<extra></extra>"))
    else:                              # an empty frame would say nothing: say what fills it
        say(fig, EMPTY_HISTORY)
    top = max([e.removed for e in entries] + [1])
    fig.update_layout(title="Perplexity against layers removed (this session)", height=380,
                      margin=_MARGIN, xaxis=dict(title="layers removed", tickmode="linear",
                                                 tick0=0, dtick=max(1, round(top / 10)),
                                                 range=[-0.5, top + 0.5]),
                      yaxis_title="perplexity (log scale)", yaxis_type="log")
    return fig


EMPTY_HISTORY = ("No variant measured yet in this session.<br>Each plan you Apply adds its "
                 "perplexity here, against the layers it removes.")
EMPTY_TOKENS = ("No token cloud yet.<br>Pick up to 4 boundaries on the right and press Embed "
                "tokens: each cloud is one boundary's recorded tokens in 2-D.")


def say(fig: go.Figure | None, text: str) -> go.Figure:
    """`fig` (None: a blank one) with `text` in grey across its middle: what an empty plot is
    waiting for."""
    if fig is None:
        fig = go.Figure()
        fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=380, margin=_MARGIN)
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14, color="gray"))
    return fig


def heal_before_after(before: float, after: float, mode: str) -> go.Figure:
    """A fit without training steps: the held-out perplexity before and after it, as two bars."""
    fig = go.Figure(go.Bar(x=["before healing", f"after healing ({mode})"], y=[before, after],
                           marker_color=[COLORS["variant"], COLORS["healed"]],
                           text=[f"{before:.2f}", f"{after:.2f}"], textposition="outside",
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(title="Held-out calibration perplexity, before and after the fit",
                      height=320,
                      margin=_MARGIN, yaxis_title="perplexity",
                      yaxis_range=[0, max(before, after) * 1.2])
    return fig


def profiles_overlay(profiles: list[dict], measure: str, higher_is_similar: bool) -> go.Figure:
    """Several models' adjacent-layer profiles on relative depth 0..1 (`explorer.measure.profiles`)."""
    fig = go.Figure()
    for p in profiles:
        fig.add_trace(go.Scatter(
            x=p["x"], y=p["y"], mode="lines+markers", name=f"{p['model']} ({p['num_layers']})",
            hovertemplate="depth %{x:.2f}: %{y:.4f}<extra>" + p["model"] + "</extra>"))
    kind = "similarity" if higher_is_similar else "distance"
    fig.update_layout(title=f"Models side by side: {measure} between each layer's input and "
                            f"output", height=400, margin=_MARGIN,
                      xaxis=dict(title="relative depth (layer i of L at i / (L - 1))",
                                 range=[-0.02, 1.02]),
                      yaxis_title=f"{measure} ({kind})", legend=dict(orientation="h", y=-0.25))
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (speed-up, perplexity) that no other point beats on both: none is
    at least as fast and at most as perplexed, and better on one. Sorted by speed-up."""
    front = []
    for i, (s, p) in enumerate(points):
        beaten = any((s2 >= s and p2 <= p) and (s2 > s or p2 < p)
                     for j, (s2, p2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def speed_tradeoff(entries: Iterable) -> go.Figure:
    """Perplexity against the measured speed-up (decode, batch 1) of this session's variants, the
    best trade-offs (the Pareto front) joined and ringed. `entries` are `state.Tried` records;
    those without a measured speed-up are left out. The original model sits at speed-up 1."""
    fig = go.Figure()
    measured = [e for e in entries if getattr(e, "speedup_decode", None)]
    pts = [(1.0, measured[-1].ppl_before)] if measured else []
    labels = ["original model"] if measured else []
    for e in measured:
        pts.append((e.speedup_decode, e.ppl_after))
        labels.append(e.change + (f" + heal {e.healed}" if e.healed else ""))
    if pts:
        front = pareto_front(pts)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name="variants",
            text=labels, marker=dict(size=9, color="#4c72b0"),
            hovertemplate="%{text}<br>speed-up x%{x:.3f}: ppl %{y:.2f}<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=[pts[i][0] for i in front], y=[pts[i][1] for i in front], mode="lines+markers",
            name="best trade-offs (Pareto front)", text=[labels[i] for i in front],
            line=dict(color="#e4572e", dash="dot"),
            marker=dict(size=15, symbol="circle-open", color="#e4572e", line=dict(width=2)),
            hovertemplate="%{text}<br>speed-up x%{x:.3f}: ppl %{y:.2f}<extra>front</extra>"))
    fig.update_layout(title="Perplexity against measured speed-up (decode, batch 1)",
                      height=380, margin=_MARGIN, xaxis_title="speed-up (dense time / variant "
                      "time, measured)", yaxis_title="perplexity (log scale)", yaxis_type="log",
                      legend=dict(orientation="h", y=-0.25))
    return fig
