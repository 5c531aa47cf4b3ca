"""Issue 25, the app's third pass, checked below the browser: the Stop button's state follows
the steps that really run, human labels for declared parameters, plans in original layer
numbers, a history plot with fixed colours and lines only within one method, sizes cut by the
text said, out-of-range numbers that name their field, no server path shown, exported files with
the usual modes, the CLI's eval with its before/after. The browser walk
(tests/test_ui_walkthrough.py) checks the same on the page."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest

from explorer.core.errors import ParamError
from explorer.core.progress import Event
from explorer.core.params import Param, markdown_table
from explorer.ui import controls, plots, stop
from explorer.ui.state import SessionPlan, Tried, plan_from_text


class Request:       # what stop.py reads of a gr.Request: its type's name and session_hash
    def __init__(self, session: str) -> None:
        self.session_hash = session


Request.__name__ = "Request"


# -- Stop ---------------------------------------------------------------------------------------
def test_running_counts_a_step_until_it_ends_even_when_it_fails():
    from explorer.ui.common import STOP_LABEL, _stop_idle

    req, other = Request("s1"), Request("s2")
    inside, release = threading.Event(), threading.Event()

    @stop.tracked
    def long_step(request):
        inside.set()
        release.wait(10)
        raise ValueError("failed")

    @stop.tracked
    def streamed(request):
        yield 1
        yield 2

    worker = threading.Thread(target=lambda: pytest.raises(ValueError, long_step, req))
    worker.start()
    assert inside.wait(10)
    assert stop.running(req) == 1 and stop.running(other) == 0
    assert _stop_idle(req).interactive is True          # another step still runs: stays active
    assert list(streamed(req)) == [1, 2]
    assert stop.running(req) == 1                        # the stream ended: back to one
    release.set()
    worker.join(10)
    assert stop.running(req) == 0                        # the failure ended the count too
    idle = _stop_idle(req)
    assert idle.interactive is False and idle.value == STOP_LABEL    # "Stopping..." is gone


def test_a_stop_for_a_running_step_is_not_cleared_by_a_second_step():
    req = Request("s3")
    gate = threading.Event()

    @stop.tracked
    def first(request):
        report = stop.watch(None, request)
        gate.wait(10)
        report(Event("probe", 0.5))

    @stop.tracked
    def second(request):
        stop.watch(None, request)       # starts while the first runs: must not clear its Stop

    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(stop.Stopped, first, req)))
    t.start()
    while stop.running(req) == 0:
        pass
    stop.stop(req)
    second(req)
    gate.set()
    t.join(10)
    assert errors, "the first step was not stopped"


# -- labels -------------------------------------------------------------------------------------
def test_params_have_human_labels_and_the_docs_show_them():
    p = Param("held_out", int, 8, "windows kept out", min=1)
    assert p.label == "Held out"                                   # default: from the name
    q = Param("objective", str, "lstsq", "what is fitted", choices=("lstsq", "cosine"),
              label="Objective", choice_labels=(("lstsq", "least squares"),))
    assert q.choice_label("lstsq") == "least squares" and q.choice_label("cosine") == "cosine"
    table = markdown_table([("mine", (p, q))], owner_column=False)
    assert table.splitlines()[0] == "| parameter | default | allowed | meaning |"
    assert "| Held out (`held_out`) | `8` |" in table and "mine" not in table

    from explorer.heal import get_mode
    from explorer.plan import get_method

    heal = {p.name: p for p in get_mode("closed-form").params}
    assert heal["held_out"].label == "Held-out windows"
    assert heal["objective"].choice_label("lstsq") == "least squares"
    measure = get_method("shortgpt").params[0]
    assert measure.choice_label("bi") == "Block Influence (1 - cosine)"


def test_controls_show_labels_and_choice_words():
    import gradio as gr

    with gr.Blocks():
        box = controls.control(Param("skip_first", bool, True, "leave it out",
                                     label="Leave out each window's first token"))
        menu = controls.control(Param("objective", str, "lstsq", "what", choices=("lstsq", "cos"),
                                      choice_labels=(("lstsq", "least squares"),)))
    assert box.label == "Leave out each window's first token"
    assert [tuple(c) for c in menu.choices] == [("least squares", "lstsq"), ("cos", "cos")]


def test_out_of_range_numbers_name_their_field():
    assert controls.whole_number("12", "Calibration windows", 1, 1024) == 12
    with pytest.raises(ParamError, match=r"^Tokens per calibration window must be a whole "
                                         r"number from 4 to 4096 \(got -5\)$"):
        controls.whole_number(-5, "Tokens per calibration window", 4, 4096)
    with pytest.raises(ParamError, match=r"Layers to remove must be a whole number >= 0 \(got "
                                         r"2.5\)"):
        controls.whole_number(2.5, "Layers to remove", 0)


def test_plans_in_original_layer_numbers():
    plan = plan_from_text(30, "12", "14-15")
    assert plan.ops[-1]["layers"] == [12] and plan.describe() == "drop layer 12; merge layers 14-15"
    later = plan_from_text(30, "20,22-24", "3-4")        # the merge shifts the drop's slots
    assert later.ops[-1]["layers"] == [19, 21, 22, 23]
    assert later.describe() == "drop layers 20, 22-24; merge layers 3-4"
    assert SessionPlan().describe() == "no change"


# -- the history plot ---------------------------------------------------------------------------
def _tried(method, removed, ppl, healed="", ops=None):
    return Tried(method=method, change=f"{method} {removed}", layers_after=30 - removed,
                 removed=removed, params_after=1, ppl_before=20.0, ppl_after=ppl,
                 ops=ops or [{"op": "drop", "layers": list(range(removed)), "m": method}],
                 params={}, protocol="p", healed=healed)


def test_history_lines_join_only_one_methods_sizes_with_fixed_colours():
    a = [_tried("shortgpt", 4, 40.0), _tried("manual", 2, 30.0), _tried("shortgpt", 2, 25.0),
         _tried("angular", 3, 35.0)]
    fig = plots.history(a, {"shortgpt": "ShortGPT"})
    traces = {t.name: t for t in fig.data if t.name}
    short = traces["ShortGPT"]
    assert list(short.x) == [2, 4] and list(short.y) == [25.0, 40.0]   # no point at (0, dense)
    assert short.mode == "lines+markers"
    assert traces["angular"].mode == "markers"                         # one size: a point
    assert traces["manual plans"].mode == "markers"
    # the same kinds keep their colours whatever else is drawn
    b = plots.history([a[3], a[1]] + [_tried("sleb", 5, 50.0)])
    again = {t.name: t for t in b.data if t.name}
    assert again["angular"].marker.color == traces["angular"].marker.color
    assert again["manual plans"].marker.color == traces["manual plans"].marker.color
    assert again["sleb"].marker.color != traces["angular"].marker.color
    # no variant yet (a new session, or after Clear history): the frame says what fills it
    empty = plots.history([])
    assert not empty.data and "Each plan you Apply" in empty.layout.annotations[0].text
    assert not fig.layout.annotations


def test_the_empty_plots_of_a_new_page_say_what_fills_them():
    import json

    from explorer.ui import build_app

    demo = build_app(warm_up=False)
    shown = {b.label: json.loads(b.value["plot"]) for b in demo.blocks.values()
             if getattr(b, "label", None) in ("Token clouds", "Perplexity against layers removed")}
    words = {label: " ".join(a["text"] for a in fig["layout"].get("annotations", []))
             for label, fig in shown.items()}
    assert "press Embed tokens" in words["Token clouds"]
    assert "Each plan you Apply" in words["Perplexity against layers removed"]


# -- sizes, paths, files ------------------------------------------------------------------------
def test_a_probe_cut_by_the_text_says_so_and_a_reuse_is_not_called_fresh():
    from explorer.ui.analyse_tab import probe_status

    pr = SimpleNamespace(num_samples=83, num_tokens=4096, skip_first=True, seconds=22.0)
    cut = probe_status(pr, 4096, 1024, fresh=True)
    assert "You asked for 1024 windows" in cut and "only 83 windows of 4096 tokens" in cut
    reused = probe_status(SimpleNamespace(num_samples=32, num_tokens=4096, skip_first=False,
                                          seconds=22.0), 128, 32, fresh=False)
    assert reused.startswith("Reused the earlier probe") and "asked" not in reused


def test_the_analysis_time_covers_its_whole_wall_time(tiny_factory, monkeypatch, clean_registry):
    """Issue 32 [12]: "in 19.8 s" was the probe alone against 36 s of wall time. The status
    names the probe's own time and the whole analysis' time, which includes what follows the
    probe (here a layer map made slow on purpose) and is at most the call's own wall time."""
    import re
    import time

    from explorer.ui import analysis, analyse_tab
    from explorer.ui.caches import APP_CACHES
    from explorer.ui.settings import UISettings
    from explorer.ui.state import Session
    from tiny import SAMPLE_TEXT

    spec = str(tiny_factory("llama", num_layers=4))
    APP_CACHES.ensure_model(spec)
    state = Session(model=spec, num_layers=4, text=APP_CACHES.add_user_text(SAMPLE_TEXT))
    slow = analysis.layer_map_figure

    def slow_map(*a, **k):
        time.sleep(1.5)
        return slow(*a, **k)
    monkeypatch.setattr(analysis, "layer_map_figure", slow_map)
    t0 = time.monotonic()
    status = analyse_tab.analyse(UISettings(), state, 16, 4, "mds")[1]
    wall = time.monotonic() - t0
    probe_s, total = (float(x) for x in re.search(
        r"Probed .* in ([\d.]+) s; the whole analysis .* took ([\d.]+) s", status).groups())
    assert total >= probe_s + 1.5 and total <= wall + 0.05


def test_the_model_table_shows_no_server_path(tmp_path):
    from explorer.ui.model_tab import info_markdown

    info = {"model": str(tmp_path / "my-llama"), "source": str(tmp_path / "my-llama"),
            "model_type": "llama", "adapter": "llama", "num_layers": 4, "hidden_size": 8,
            "parameters": 1000, "device": "cpu", "dtype": "float32", "memory_mb": 1,
            "load_seconds": 0.1}
    (tmp_path / "my-llama").mkdir()
    table = info_markdown(info)
    assert str(tmp_path) not in table and "my-llama" in table
    hub = dict(info, model="HuggingFaceTB/SmolLM2-360M",
               source="/root/.cache/huggingface/hub/models--x/snapshots/abc")
    assert "/root" not in info_markdown(hub) and "HuggingFaceTB/SmolLM2-360M" in info_markdown(hub)


def test_exported_files_get_the_usual_modes(tiny_lm, tmp_path):
    from explorer import Variant
    from explorer.export.folder import export

    out = export(Variant.identity(tiny_lm).drop([1]), tmp_path / "x")
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes["x"] == 0o777 & ~mask
    assert modes["model.safetensors"] == 0o666 & ~mask                # was 0600
    assert len({m for n, m in modes.items() if n != "x"}) == 1, modes


def test_cli_eval_with_drop_shows_before_and_after(tiny_factory, capsys):
    from explorer.cli import main

    model = str(tiny_factory("llama", num_layers=6))
    args = ["eval", "--model", model, "--text", "wiki", "--seqlen", "32", "--max-tokens", "256",
            "--drop", "2,3"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(args + ["--json"]) == 0
    r = json.loads(out.getvalue())
    assert r["ppl_after"] == r["ppl"] and r["ppl_before"] != r["ppl_after"]
    assert r["ppl_ratio"] == pytest.approx(r["ppl_after"] / r["ppl_before"])
    text = io.StringIO()
    with redirect_stdout(text):
        assert main(args) == 0
    shown = text.getvalue()
    assert "ppl_before" in shown and "ppl_after" in shown
    assert "window_nll" not in shown and " start:" not in shown


def test_the_running_figure_names_the_model_it_measures(monkeypatch):
    """Issue 25 [9]: Apply's two passes report as "original model: ..." and "variant: ..."."""
    from explorer.core.progress import scaled
    from explorer.ui import compare_tab, jobs

    shown = []
    report = scaled(stop.bar(lambda f, desc: shown.append(desc)), 0.0, 1.0, "original model")
    report(Event("perplexity", 0.5, step=16, total=32, unit="windows", figure=23.42))
    assert shown == ["original model: perplexity: 16/32 windows, 23.42 so far"]

    labels = []

    def fake_ppl(spec, text, ops, seqlen, max_tokens, progress=None, label=""):
        labels.append(label)
        return SimpleNamespace(ppl=2.0 if ops else 1.0, window_nll=(), protocol=lambda: "p",
                               seqlen=seqlen, seconds=0.0)

    monkeypatch.setattr(jobs, "ppl_job", fake_ppl)
    monkeypatch.setattr(jobs, "variant_facts_job", lambda spec, ops: {
        "layers_before": 4, "layers_after": 3, "params_before": 10, "params_after": 8,
        "change": "drop layer 1"})
    from explorer.ui.state import Session

    state = Session(model="m", num_layers=4).with_plan(plan_from_text(4, "1", ""))
    compare_tab.measure(SimpleNamespace(ppl_seqlen=8, ppl_max_tokens=16), state, state.plan.ops)
    assert labels == ["original model", "variant"]
