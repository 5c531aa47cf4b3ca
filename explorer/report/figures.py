"""Plotly figures of the pipeline's results, shared by the web app (`explorer.ui`) and the HTML
report (`explorer.report.build`). Display only: every number comes from the explorer API.

Heatmaps are over layer boundaries x_0..x_L (x_0 = embeddings, x_k = output of layer k-1 = input of
layer k, x_L = output of the last layer, before the final norm). Cell (a, b) compares x_a with x_b,
i.e. says how much the block of layers a..b-1 changes the residual stream; the y axis runs downwards
like a matrix's rows, and a click on (row a, column b) selects that block.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MARGIN = dict(l=60, r=20, t=50, b=50)


def boundary_label(k: int, num_layers: int) -> str:
    if k == 0:
        return "x0 = embeddings (input of layer 0)"
    if k == num_layers:
        return f"x{k} = output of the last layer {k - 1} (before the final norm)"
    return f"x{k} = after layer {k - 1} = input of layer {k}"


def block_label(a: int, b: int) -> str:
    a, b = min(a, b), max(a, b)
    if a == b:
        return "same boundary"
    return f"layer {a}" if b == a + 1 else f"layers {a}..{b - 1} ({b - a} layers)"


def _cell(a: int, b: int, color: str, dash: str = "solid", width: int = 3,
          pad: float = 0.5) -> list[dict]:
    """Rectangles around cell (a, b) and its mirror (b, a)."""
    out = []
    for x, y in {(b, a), (a, b)}:
        out.append(dict(type="rect", x0=x - pad, x1=x + pad, y0=y - pad, y1=y + pad,
                        line=dict(color=color, width=width, dash=dash)))
    return out


def heatmap(matrix: np.ndarray, title: str, higher_is_similar: bool = True,
            removed: Iterable[int] = (), merged: Iterable[Iterable[int]] = (),
            selected: tuple[int, int] | None = None) -> go.Figure:
    """A clickable similarity heatmap with the plan drawn on it.

    One colour convention for every measure: bright (yellow) = alike. A distance's scale is
    reversed so that its low values, the alike ones, are bright too.

    removed: original layers to drop (cell (k, k+1), red); merged: groups of original layers merged
    into one (cell (first, last+1), orange); selected: the last clicked cell (dashed).
    """
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    L = n - 1
    idx = list(range(n))
    kind = "similarity" if higher_is_similar else "distance"
    hover = [[f"{block_label(a, b)}<br>x{a} vs x{b}: {kind} {m[a, b]:.4f}" for b in idx]
             for a in idx]
    fig = go.Figure(go.Heatmap(
        z=m, x=idx, y=idx, text=hover, hoverinfo="text", colorscale="Viridis",
        reversescale=not higher_is_similar,
        colorbar=dict(title=f"{kind}<br>(bright = alike)")))
    shapes = []
    for k in removed:
        shapes += _cell(k, k + 1, "#e4572e")
    for g in merged:
        g = list(g)
        if g:
            shapes += _cell(min(g), max(g) + 1, "#f3a712")
    if selected is not None and selected[0] != selected[1]:
        shapes += _cell(*selected, color="white", dash="dot", width=2, pad=0.9)
    ticks = [k for k in idx if k % 5 == 0 or k == L]
    fig.update_layout(
        title=dict(text=title, font=dict(size=15)), shapes=shapes, height=560, margin=MARGIN,
        xaxis=dict(title="boundary b (0 = embeddings, k = after layer k-1)", tickvals=ticks,
                   constrain="domain"),
        yaxis=dict(title="boundary a", tickvals=ticks, autorange="reversed", scaleanchor="x"))
    return fig


def profiles(adjacent: dict[str, np.ndarray], titles: dict[str, str],
             higher: dict[str, bool]) -> go.Figure:
    """Adjacent-layer profiles: for each layer k, how much x_k -> x_{k+1} changes, per measure."""
    fig = go.Figure()
    for name, values in adjacent.items():
        v = np.asarray(values, dtype=float)
        kind = "similarity" if higher.get(name, True) else "distance"
        fig.add_trace(go.Scatter(
            x=list(range(len(v))), y=v, mode="lines+markers", name=f"{titles.get(name, name)} "
            f"({kind})", hovertemplate="layer %{x}: %{y:.4f}<extra>" + name + "</extra>"))
    fig.update_layout(title="Adjacent layers: input vs output of each layer", height=380,
                      margin=MARGIN, xaxis_title="layer k (compares x_k with x_k+1)",
                      yaxis_title="value", legend=dict(orientation="h", y=-0.25))
    return fig


def layer_map(coords: np.ndarray, title: str) -> go.Figure:
    """2-D map of the layer boundaries, joined in depth order."""
    c = np.asarray(coords, dtype=float)
    n = c.shape[0]
    # boundaries that barely change sit on top of each other: label every fifth and the ends,
    # the rest say who they are on hover
    labels = [str(k) if k % 5 == 0 or k == n - 1 else "" for k in range(n)]
    fig = go.Figure(go.Scatter(
        x=c[:, 0], y=c[:, 1], mode="lines+markers+text", text=labels,
        textposition="top center", line=dict(color="rgba(120,120,120,0.4)"),
        marker=dict(size=10, color=list(range(n)), colorscale="Viridis", showscale=True,
                    colorbar=dict(title="boundary")),
        hovertext=[boundary_label(k, n - 1) for k in range(n)], hoverinfo="text"))
    fig.update_layout(title=title, height=460, margin=MARGIN, xaxis_title="map axis 1",
                      yaxis_title="map axis 2")
    return fig


def heal_curve(points: list[tuple[int, float, float | None]], live: bool = False) -> go.Figure:
    """Training loss and held-out perplexity against optimiser steps (one point per step). A loss
    of inf or nan (a diverging step) is a gap in the line and a red cross at the top."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if points:
        steps = [p[0] for p in points]
        finite = [p[1] if math.isfinite(p[1]) else None for p in points]
        fig.add_trace(go.Scatter(x=steps, y=finite, mode="lines", name="loss",
                                 hovertemplate="step %{x}: loss %{y:.4g}<extra></extra>"),
                      secondary_y=False)
        bad = [p for p in points if not math.isfinite(p[1])]
        if bad:
            top = max((v for v in finite if v is not None), default=1.0)
            fig.add_trace(go.Scatter(x=[p[0] for p in bad], y=[top] * len(bad), mode="markers",
                                     marker=dict(symbol="x", color="red", size=9),
                                     name="loss not finite", text=[str(p[1]) for p in bad],
                                     hovertemplate="step %{x}: loss %{text}<extra></extra>"),
                          secondary_y=False)
        held = [(p[0], p[2]) for p in points if p[2] is not None]
        if held:
            fig.add_trace(go.Scatter(x=[h[0] for h in held], y=[h[1] for h in held],
                                     mode="lines+markers", name="held-out perplexity",
                                     hovertemplate="step %{x}: ppl %{y:.4g}<extra></extra>"),
                          secondary_y=True)
    title = "Healing (running)" if live else "Healing"
    fig.update_layout(title=title, height=320, margin=MARGIN, xaxis_title="optimiser step",
                      legend=dict(orientation="h", y=-0.3))
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="held-out perplexity", secondary_y=True)
    return fig


def damage_scatter(points: list[dict], measure_title: str, higher_is_similar: bool,
                   damage_title: str) -> go.Figure:
    """Score against measured damage, one point per candidate block (`trust.scatter_points`:
    score, damage, label, cell), labelled by the layers removed. A similarity that predicted the
    damage would lay its points on a falling curve (a distance: a rising one)."""
    x = [p["score"] for p in points]
    y = [p["damage"] for p in points]
    labels = [p["label"] for p in points]
    kind = "similarity" if higher_is_similar else "distance"
    fig = go.Figure(go.Scatter(
        x=x, y=y, mode="markers+text", text=labels, textposition="top center",
        customdata=[list(p["cell"]) for p in points],
        hovertemplate="layers %{text}<br>" + kind + " %{x:.4f}<br>damage %{y:.4f}<extra></extra>",
        marker=dict(size=8, color="#3b6ea8")))
    fig.update_layout(title=dict(text=f"{measure_title} against measured damage",
                                 font=dict(size=15)),
                      xaxis_title=f"{measure_title} ({kind}, as on the heatmap)",
                      yaxis_title=damage_title, height=460, margin=MARGIN)
    return fig
