"""The HTML report (explorer/report/build.py, `python -m explorer report`): built from a tiny random
model, its figures compared with independent computations, its CLI errors, and the file opened in
Debian's Chromium with the network blocked (each figure drawn, no console error)."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
from dataclasses import replace

import pytest

from app_server import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tiny import SAMPLE_TEXT

from explorer.evaluate.generate import generate
from explorer.evaluate.perplexity import perplexity
from explorer.apply.recipe import Recipe, replay
from explorer.report.build import (ReportSizes, Subject, build_report, plan_layers,
                                   subject_of_recipe)
from explorer.probe.text import user_texts
from explorer.core.variant import Variant

SIZES = ReportSizes(probe_seqlen=32, probe_samples=4, probe_max_tokens=256, seqlen=32,
                    max_tokens=512, gen_tokens=6, prompts=("The capital of France is", "def f(n):"))
HEAL = dict(calibration=SAMPLE_TEXT, seqlen=32, windows=24, held_out=4)


@pytest.fixture(scope="module")
def texts():
    return user_texts(SAMPLE_TEXT, name="sample.txt")


@pytest.fixture(scope="module")
def healed(tiny_lm):
    """Layers 2 and 3 dropped, then 4 steps of layer-wise healing (a training curve to draw)."""
    from explorer.heal import heal

    return heal(Variant.identity(tiny_lm).drop([2, 3]), "layerwise", steps=4, **HEAL)


@pytest.fixture(scope="module")
def healed_report(tiny_lm, texts, healed):
    base = Variant.identity(tiny_lm).drop([2, 3])
    subject = Subject(healed.variant, unhealed=base, healing=healed)
    return build_report(tiny_lm, texts, subject, sizes=SIZES)


def _ppl(lm, texts, v) -> float:
    """The figure from a full pass of every layer (no dense cache): an independent computation."""
    return perplexity(lm, texts.evaluation, variant=v, seqlen=SIZES.seqlen,
                      max_tokens=SIZES.max_tokens, cache=False).ppl


def test_report_figures_and_numbers(tiny_lm, texts, tiny_factory):
    v = Variant.identity(tiny_lm).drop([2, 3])
    said = []
    r = build_report(tiny_lm, texts, Subject(v), sizes=SIZES, progress=said.append)
    page = r.html
    # the running perplexity says which model it measures (the original's pass may be cached)
    assert any(e.stage == "variant model: perplexity" and e.figure for e in said), said
    assert [e.fraction for e in said] == sorted(e.fraction for e in said)
    # two heatmaps, the profiles and the layer map, each a Plotly div drawn by the inlined script
    assert r.figures == 4 == page.count('class="plotly-graph-div"')
    assert page.count("Plotly.newPlot") == 4
    # self-contained: plotly.js inlined, nothing fetched, no path of this machine
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page)
    from plotly.offline import get_plotlyjs
    assert page.count(get_plotlyjs()) == 1
    assert str(tiny_factory("llama", num_layers=6)) not in page and tiny_lm.source not in page
    assert "/tmp/" not in page
    # perplexities equal a full pass of each model
    assert r.summary["ppl"]["original"] == pytest.approx(_ppl(tiny_lm, texts, None), rel=1e-5)
    assert r.summary["ppl"]["variant"] == pytest.approx(_ppl(tiny_lm, texts, v), rel=1e-5)
    assert "windows of 32 tokens" in r.summary["protocol"] and r.summary["protocol"] in \
        html.unescape(page)
    # greedy generations of both models, as `generate` makes them
    for model in (None, v):
        for text in generate(tiny_lm, list(SIZES.prompts), variant=model, max_new_tokens=6):
            assert html.escape(text) in page
    # each figure says what it was measured on
    assert page.count("sample.txt calibration half: 4 windows of 32 tokens") >= 4


def test_plan_layers_in_original_numbering(tiny_lm):
    """A merge then a drop, as the app's manual plan writes them: the report draws the same
    original layers that the plan names."""
    from explorer.ui.state import manual_plan

    plan = manual_plan(6, drops=[4], merges=[[1, 2]])
    assert plan_layers(replay(tiny_lm, plan.ops)) == (plan.removed, plan.merged) == ([4], [[1, 2]])
    assert plan_layers(Variant.identity(tiny_lm)) == ([], [])


def test_healed_recipe_replays_its_healing(tiny_lm, texts, healed):
    """A recipe whose last op heals: the replayed healing's figures go into the report, and the
    table has the original, the unhealed and the healed model."""
    subject = subject_of_recipe(tiny_lm, Recipe.of(healed.variant))
    h = subject.healing
    assert h is not None and h.mode == "layerwise" and h.steps == healed.steps   # the kept step
    assert h.held_out_before == pytest.approx(healed.held_out_before, rel=1e-6)
    assert h.held_out_after == pytest.approx(healed.held_out_after, rel=1e-5)
    assert [s["op"] for s in subject.unhealed.steps] == ["drop"]
    assert subject.variant.steps[-1]["op"] == "heal"


def test_healed_report(tiny_lm, texts, healed, healed_report):
    r = healed_report
    assert r.figures == 5 and r.summary["healed"]            # + the healing curve
    ppl = r.summary["ppl"]
    assert list(ppl) == ["original", "variant", "healed (layerwise)"]
    assert ppl["healed (layerwise)"] == pytest.approx(_ppl(tiny_lm, texts, healed.variant),
                                                      rel=1e-5)
    assert "held-out calibration perplexity" in r.html
    assert f"{healed.held_out_after:.2f}" in r.html


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from explorer.cli import main

    err = io.StringIO()
    code = main(args, stderr=err)
    return code, capsys.readouterr().out, err.getvalue()


def test_cli_report_and_its_errors(tiny_factory, tmp_path, capsys, healed):
    model = str(tiny_factory("llama", num_layers=6))
    text = tmp_path / "sample.txt"
    text.write_text(SAMPLE_TEXT)
    sizes = ["--text", str(text), "--seqlen", "32", "--max-tokens", "512", "--calib-seqlen",
             "32", "--calib-samples", "4", "--gen-tokens", "4"]
    out = tmp_path / "report.html"
    code, stdout, _ = _cli(["report", "--model", model, "--drop", "1,4", "--out", str(out),
                            "--json", *sizes], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["num_layers"] == 4 and result["figures"] == 4 and out.is_file()
    assert result["bytes"] == out.stat().st_size and model not in out.read_text()
    # a healed recipe: healed again, its figures in the page
    recipe = tmp_path / "recipe.json"
    recipe.write_text(Recipe.of(healed.variant).to_json())
    code, stdout, _ = _cli(["report", "--model", model, "--recipe", str(recipe), "--out",
                            str(tmp_path / "healed.html"), "--json", *sizes], capsys)
    result = json.loads(stdout)
    assert code == 0 and result["healed"] and result["figures"] == 5
    assert list(result["ppl"]) == ["original", "variant", "healed (layerwise)"]
    bad = [
        (["--drop", "1", "--out", str(tmp_path / "missing" / "r.html")], "does not exist"),
        (["--drop", "1", "--out", str(tmp_path)], "is a folder"),
        (["--drop", "1", "--out", str(out)], "already exists"),
        (["--drop", "1,x", "--out", str(tmp_path / "a.html")], "cannot read layer list"),
        (["--drop", "9", "--out", str(tmp_path / "a.html")], "out of range"),
        (["--drop", "1", "--measures", "nope", "--out", str(tmp_path / "a.html")], "nope"),
        (["--drop", "1", "--recipe", "r.json", "--out", str(tmp_path / "a.html")], "not both"),
    ]
    for extra, words in bad:
        code, _, err = _cli(["report", "--model", model, *extra, *sizes], capsys)
        assert code == 2 and err.startswith("error: ") and words in err, (extra, err)
        assert err.count("\n") == 1
    assert not (tmp_path / "a.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian chromium")
def test_report_opens_offline_in_chromium(healed_report, tmp_path):
    """The healed report in a real Chromium with every request but the file itself refused:
    each figure is drawn (an SVG per plot), no console error, nothing fetched."""
    playwright = pytest.importorskip("playwright.sync_api")
    path = healed_report.write(tmp_path / "report.html")
    refused: list[str] = []
    errors: list[str] = []

    def block(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.route("**/*", block)
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(path.as_uri())
            pg.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length == "
                                 f"{healed_report.figures}", timeout=30_000)
            drawn = pg.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                ".map(d => d.querySelectorAll('.main-svg').length > 0 && "
                                "d.querySelectorAll('.plot .trace, .heatmaplayer image, "
                                ".scatterlayer .trace').length > 0)")
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert drawn == [True] * healed_report.figures
    assert not errors, errors
    assert not refused, refused


@pytest.mark.usefixtures("clean_registry")
def test_app_report_uses_the_session_analysis_and_healing(tiny_factory):
    """The Export tab's report, without a browser: the session's measure comes first and its
    matrix is the cached one, the healed variant's figures and the healing's are in it."""
    from explorer.ui import analysis, export_tab, heal_panel
    from explorer.ui.caches import APP_CACHES
    from explorer.ui.settings import UISettings
    from explorer.ui.state import Session, plan_from_text

    spec = str(tiny_factory("llama", num_layers=6))
    lm = APP_CACHES.ensure_model(spec)
    text = APP_CACHES.add_user_text(SAMPLE_TEXT, name="sample.txt")
    settings = UISettings(probe_seqlen=32, probe_samples=4, probe_max_tokens=256, ppl_seqlen=32,
                          ppl_max_tokens=256, gen_tokens=3, prompts=("Hello",))
    state = Session(model=spec, num_layers=6, text=text).with_plan(plan_from_text(6, "2", ""))
    state, _ = analysis.run(state, 32, 4, 256)
    state = replace(state, analysis=replace(state.analysis, measure="cka"))
    mode = heal_panel.get_mode("closed-form")
    raw = {p.name: p.default for p in mode.params} | {"seqlen": 16, "windows": 24, "held_out": 2}
    *_, (state, _, _) = heal_panel.heal_stream(settings, state, "closed-form", None, None,
                                               [raw[p.name] for p in mode.params],
                                               lambda f, desc="": None, lambda st: st)
    path = export_tab.report_file(settings, state)
    page = open(path, encoding="utf-8").read()
    assert spec not in page and path.endswith("-report.html")
    # the five measures (issue 32 [12]: CKA and NPIB too), the session's first; profiles, map
    assert page.count('class="plotly-graph-div"') == 7
    order = [page.index(t) for t in ("Linear CKA: layer", "Mean token cosine: layer",
                                     "Angular distance (last token): layer")]
    assert order == sorted(order)
    entry = analysis.entry(state)
    assert "cka" in entry.sims                                # measured once, for the screen
    texts = user_texts(SAMPLE_TEXT, name="sample.txt")
    healed = APP_CACHES.variant(lm, state.heal.ops)
    want = perplexity(lm, texts.evaluation, variant=healed, seqlen=32, max_tokens=256,
                      cache=False).ppl
    assert f"<b>{want:.2f}</b>" in page and "healed (closed-form)" in page
    assert f"{state.heal.held_out_after:.2f}" in page


def test_app_report_button_through_the_api(live_app, tiny_factory):
    """The "Download report" step of the launched app (gradio_client): it answers the file."""
    gradio_client = pytest.importorskip("gradio_client")
    c = gradio_client.Client(live_app.url, verbose=False)
    c.predict("smollm2-135m", str(tiny_factory("llama", num_layers=6)), api_name="/load_model")
    c.predict("own", SAMPLE_TEXT, None, api_name="/set_text")
    c.predict("1", "", "average", api_name="/update_plan")
    button, line = c.predict(api_name="/report")
    path = button["value"] if isinstance(button, dict) else button       # an update of the button
    path = path["path"] if isinstance(path, dict) else path
    page = open(path, encoding="utf-8").read()
    assert "Report ready" in line and "drop 1" in page
    assert page.count('class="plotly-graph-div"') == 4


@pytest.mark.slow
@pytest.mark.usefixtures("clean_registry")
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian chromium")
def test_download_report_button_in_chromium(live_app, tiny_factory):
    """One click on the Export tab's "Download report" builds the report and downloads it."""
    playwright = pytest.importorskip("playwright.sync_api")
    model = str(tiny_factory("llama", num_layers=6))
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(live_app.url)
            pg.get_by_label("…or a hub id, model folder or .gguf file").fill(model)
            pg.click("#lx-load")
            pg.wait_for_function("(document.querySelector('#lx-model-info')?.innerText || '')"
                                 ".includes('Hidden size')", timeout=60_000)
            pg.get_by_role("tab", name="5 · Export").click()
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                with pg.expect_download(timeout=120_000) as download:
                    pg.click("#lx-report-btn")
            except Exception:
                pg.screenshot(path=str(ARTIFACTS / "report-failed.png"), full_page=True)
                raise
            name = download.value.suggested_filename
            page = open(download.value.path(), encoding="utf-8").read()
            pg.wait_for_function("(document.querySelector('#lx-report-line')?.innerText || '')"
                                 ".includes('Report ready')", timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / "report-export-tab.png"), full_page=True)
        finally:
            browser.close()
    assert name.endswith("-report.html")
    assert page.count('class="plotly-graph-div"') == 4 and model not in page
    assert not errors, errors


def test_report_with_the_damage_map(tiny_lm, texts):
    from explorer.measure.damage import damage_map
    from explorer.probe.probe import calibration_windows
    from explorer.report.build import analyse
    from explorer.measure.trust import trust_rows

    sizes = ReportSizes(probe_seqlen=32, probe_samples=4, probe_max_tokens=256, seqlen=32,
                        max_tokens=256, gen_tokens=0)
    a = analyse(tiny_lm, texts, ("cosine",), sizes)
    r = build_report(tiny_lm, texts, Subject(Variant.identity(tiny_lm).drop([1])), sizes=sizes,
                     measures=("cosine",), analysis=a, damage=2)
    page = html.unescape(r.html)
    assert r.figures == 4 and "Measured damage" in page and "Partial" not in page
    dm = damage_map(tiny_lm, calibration_windows(tiny_lm, texts.calibration, 32, 4), max_block=2)
    row = trust_rows(dm, "cosine", a.matrices["cosine"])[0]
    assert f"<td class=num>1</td><td class=num>{row.spearman:.3f}</td>" in r.html
    assert "arxiv.org/abs/2605.14075" in page and "/tmp/" not in page


def test_the_title_says_the_change_in_original_layers(tiny_lm):
    """Issue 32 [6]: the report's title reads "drop layer 4; merge layers 1-2", not the recipe's
    op summaries ("merge(1-2; average); drop 3", in slot numbers)."""
    from explorer.apply.recipe import replay
    from explorer.report.build import change_words
    from explorer.ui.state import plan_from_text

    v = replay(tiny_lm, plan_from_text(tiny_lm.num_layers, "4", "1-2").ops)
    assert change_words(v) == "drop layer 4; merge layers 1-2"
    assert change_words(replay(tiny_lm, [])) == "the original model"
