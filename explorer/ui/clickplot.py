"""A Plotly figure whose clicks reach Python: `ClickPlot(...).select(fn)` gets `gr.SelectData`.

Gradio 6.31's `gr.Plot` has no click event, so the figure is drawn by plotly.js inside a `gr.HTML`
component. The component's value is the figure as JSON (a string from `fig.to_json()`);
`js_on_load` draws it and redraws when the value changes, and a `plotly_click` listener sends the
clicked cell back as `trigger('select', {index: [row, col], value: z})`, so a Python `.select`
handler receives `evt.index == [y, x]` in the figure's own coordinates. A clicked point whose
`customdata` is a cell [a, b] (the damage panel's scatter of candidate blocks) sends that cell.

The cell is read from the click's own pointer position (converted with the axes' pixel-to-data
maps and rounded to the nearest cell), not from plotly's hover point: after a fast jump of the
pointer, or a tap on a touch screen, the hover point is still the previously hovered cell.

plotly.js is served from the plotly Python package's own copy (no CDN: users may be offline), made
reachable with `gr.set_static_paths` and loaded once through the component's `head`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import plotly


def plotly_js_path() -> Path:
    """The plotly.min.js file shipped inside the plotly package."""
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def enable_static_plotly() -> None:
    """Let Gradio serve the plotly package's data folder (call before building the Blocks)."""
    gr.set_static_paths(paths=[str(plotly_js_path().parent)])


def _head() -> str:
    return f'<script src="/gradio_api/file={plotly_js_path()}"></script>'


_TEMPLATE = '<div class="lx-clickplot" style="width:100%;min-height:{h}px"></div>'

# `element`, `props`, `trigger` and `watch` are provided by gr.HTML. The template may be re-rendered
# when the value changes, so the target div is looked up again on every draw.
_JS = """
// The clicked cell {index: [row, col], value: z}: from the pointer's position when the event has
// one (the hover point may be stale), else from plotly's point.
const pointed = (target, ev) => {
  const p = ev.points && ev.points[0];
  // a point that carries its cell (customdata [a, b]: a scatter of candidate blocks) gives it
  if (p && Array.isArray(p.customdata) && p.customdata.length === 2) {
    return {index: p.customdata, value: p.y};
  }
  const e = ev.event, fl = target._fullLayout;
  const area = target.querySelector('.nsewdrag');
  if (e && e.clientX !== undefined && fl && fl.xaxis && fl.yaxis && area) {
    const r = area.getBoundingClientRect();
    const x = Math.round(fl.xaxis.p2d(e.clientX - r.left));
    const y = Math.round(fl.yaxis.p2d(e.clientY - r.top));
    const z = (((target.data || [])[0] || {}).z || [])[y];
    if (isFinite(x) && isFinite(y)) {
      return {index: [y, x], value: (z && z[x] !== undefined ? z[x] : null)};
    }
  }
  if (!p) { return null; }
  return {index: [p.y, p.x], value: (p.z === undefined ? null : p.z)};
};
const draw = () => {
  const target = element.querySelector('.lx-clickplot');
  if (!target || typeof Plotly === 'undefined') { return; }
  const raw = props.value;
  if (!raw) {
    if (target.dataset.lxEmpty !== '1' || !target.firstChild) {
      try { Plotly.purge(target); } catch (e) { /* empty */ }
      target.dataset.lxEmpty = '1';
      target.innerHTML = '<p style="opacity:.6;padding:1em">' + (props.placeholder || '') + '</p>';
    }
    return;
  }
  const present = target.querySelector('.main-svg') !== null;
  if (target.lxBusy || (target.lxDrawn === raw && present)) { return; }
  target.lxDrawn = raw;
  target.dataset.lxEmpty = '0';
  if (!present) {  // first draw, or Gradio emptied the div when it re-rendered the template
    try { Plotly.purge(target); } catch (e) { /* nothing drawn yet */ }
    target.lxBound = false;
    target.innerHTML = '';
  }
  const fig = typeof raw === 'string' ? JSON.parse(raw) : raw;
  target.lxBusy = true;
  Promise.resolve(Plotly.react(target, fig.data || [], fig.layout || {},
                               {responsive: true, displaylogo: false}))
    .finally(() => { target.lxBusy = false; })
    .then(() => {
      if (!target.lxBound) {
        target.lxBound = true;
        target.on('plotly_click', (ev) => {
          const cell = pointed(target, ev);
          if (cell) { trigger('select', cell); }
        });
      }
      draw();  // the value may have changed while drawing
    });
};
const start = () => {
  draw();
  watch('value', draw);
  // Gradio may re-render the template after a value change, which empties or replaces the
  // plot's div: redraw whenever the drawn plot has gone.
  new MutationObserver(() => { draw(); }).observe(element, {childList: true, subtree: true});
};
if (typeof Plotly === 'undefined') {
  const wait = setInterval(() => {
    if (typeof Plotly !== 'undefined') { clearInterval(wait); start(); }
  }, 100);
} else { start(); }
"""


def ClickPlot(label: str | None = None, height: int = 520, placeholder: str = "",
              elem_id: str | None = None, **kwargs) -> gr.HTML:
    """A gr.HTML that draws a Plotly figure JSON and reports clicks through its `select` event."""
    return gr.HTML(value=None, label=label, html_template=_TEMPLATE.format(h=height),
                   js_on_load=_JS, head=_head(), elem_id=elem_id, placeholder=placeholder,
                   min_height=height, **kwargs)
