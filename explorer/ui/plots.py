"""Plotly figures for the app. Display only: every number comes from the explorer API.

Heatmaps are over layer boundaries x_0..x_L (x_0 = embeddings, x_k = output of layer k-1 = input of
layer k, x_L = output of the last layer, before the final norm). Cell (a, b) compares x_a with x_b,
i.e. says how much the block of layers a..b-1 changes the residual stream; the y axis runs downwards
like a matrix's rows, and a click on (row a, column b) selects that block.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_MARGIN = dict(l=60, r=20, t=50, b=50)


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
        title=dict(text=title, font=dict(size=15)), shapes=shapes, height=560, margin=_MARGIN,
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
                      margin=_MARGIN, xaxis_title="layer k (compares x_k with x_k+1)",
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
    fig.update_layout(title=title, height=460, margin=_MARGIN, xaxis_title="map axis 1",
                      yaxis_title="map axis 2")
    return fig


def token_clouds(panels: list[tuple[int, np.ndarray, np.ndarray]], method: str,
                 num_layers: int) -> go.Figure:
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
    from ..methods import list_methods     # the live registry: a new method gets a colour too

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
    top = max([e.removed for e in entries] + [1])
    fig.update_layout(title="Perplexity against layers removed (this session)", height=380,
                      margin=_MARGIN, xaxis=dict(title="layers removed", tickmode="linear",
                                                 tick0=0, dtick=max(1, round(top / 10)),
                                                 range=[-0.5, top + 0.5]),
                      yaxis_title="perplexity (log scale)", yaxis_type="log")
    return fig


def heal_curve(points: list[tuple[int, float, float | None]], live: bool = False) -> go.Figure:
    """Training loss and held-out perplexity against optimiser steps (one point per step)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if points:
        steps = [p[0] for p in points]
        fig.add_trace(go.Scatter(x=steps, y=[p[1] for p in points], mode="lines", name="loss",
                                 hovertemplate="step %{x}: loss %{y:.4g}<extra></extra>"),
                      secondary_y=False)
        held = [(p[0], p[2]) for p in points if p[2] is not None]
        if held:
            fig.add_trace(go.Scatter(x=[h[0] for h in held], y=[h[1] for h in held],
                                     mode="lines+markers", name="held-out perplexity",
                                     hovertemplate="step %{x}: ppl %{y:.4g}<extra></extra>"),
                          secondary_y=True)
    title = "Healing (running)" if live else "Healing"
    fig.update_layout(title=title, height=320, margin=_MARGIN, xaxis_title="optimiser step",
                      legend=dict(orientation="h", y=-0.3))
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="held-out perplexity", secondary_y=True)
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
    """Several models' adjacent-layer profiles on relative depth 0..1 (`explorer.profiles`)."""
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
