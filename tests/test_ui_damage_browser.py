"""The damage panel in a real headless Chromium on the default model: the map is measured on the
analysis' windows, a click on a point of the score-against-damage scatter puts that block in
the plan (as a click on the heatmap's cell does), and the map fills in while it runs, a Stop
leaving the cells done on screen marked partial."""

from __future__ import annotations

import shutil

import pytest

from app_server import CHROMIUM, CHROMIUM_ARGS, fill_field, wait_text

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian chromium"),
              pytest.mark.usefixtures("clean_registry"), pytest.mark.slow]

LONG = 400_000


def analysed_page(pw, url: str):
    """A page with the default model loaded and analysed on 2 windows, the damage panel open."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(url)
    pg.click("#lx-load")
    wait_text(pg, "#lx-model-info", "134,515,008", LONG)
    pg.get_by_role("tab", name="2 · Analyse").click()
    fill_field(pg, "#lx-samples input", "2")
    pg.click("#lx-analyse")
    # "Probed ..." on the first page, "Reused the earlier probe ..." on a later one (same windows)
    wait_text(pg, "#lx-analysis-status", "2 windows x 32 tokens", LONG)
    pg.wait_for_selector("#lx-stop[disabled]", timeout=LONG)     # nothing of it still runs
    pg.get_by_text("Measured damage: how far can each similarity be trusted?").click()
    return browser, pg, errors


def measure(pg, block: str) -> None:
    """Ask the damage map of blocks up to `block` layers (the field typed until it holds)."""
    fill_field(pg, "#lx-damage-block input", block)
    pg.click("#lx-damage-run")


def test_click_a_scatter_point_selects_its_block(live_app):
    with playwright.sync_playwright() as pw:
        browser, pg, errors = analysed_page(pw, live_app.url)
        measure(pg, "1")
        wait_text(pg, "#lx-damage-status", "Measured 30 removals", LONG, errors_end_it=True)
        pg.wait_for_selector("#lx-damage-scatter .js-plotly-plot .nsewdrag", timeout=60_000)
        pg.locator("#lx-damage-scatter").scroll_into_view_if_needed()
        pg.wait_for_timeout(500)
        # the page position of the point farthest from the others (points may overlap), by
        # plotly's own data-to-pixel maps, and the layer it is labelled with
        x, y, layer = pg.evaluate("""() => {
            const p = document.querySelector('#lx-damage-scatter .js-plotly-plot');
            const fl = p._fullLayout, r = p.querySelector('.nsewdrag').getBoundingClientRect();
            const d = p.data[0];
            const px = d.x.map((v, k) => [r.left + fl.xaxis.d2p(v), r.top + fl.yaxis.d2p(d.y[k])]);
            let best = 0, far = -1;
            px.forEach((a, k) => {
                const near = Math.min(...px.filter((_, j) => j !== k)
                    .map(b => Math.hypot(a[0] - b[0], a[1] - b[1])));
                if (near > far) { far = near; best = k; }
            });
            return [px[best][0], px[best][1], d.text[best]];
        }""")
        pg.mouse.click(x, y)
        pg.wait_for_timeout(3000)            # the select round trip, before leaving the tab
        pg.get_by_role("tab", name="3 · Plan").click()
        pg.wait_for_timeout(3000)            # the tab's first render
        pg.wait_for_function("(v) => document.querySelector('#lx-drops textarea, #lx-drops "
                             "input')?.value === v", arg=layer, timeout=60_000)
        browser.close()
    assert not errors, errors


def test_the_map_fills_in_and_stop_leaves_it_partial(live_app, monkeypatch):
    # On the test app's small windows (2 x 32 tokens) all 87 candidates take a few seconds, so
    # the map could end before the Stop reaches it (the run then never reads "partial"): each
    # candidate is paced to 0.4 s here (the app runs in this process), about 35 s in all.
    import time

    import explorer.measure.damage as D

    measured = D._candidate

    def paced(*args, **kwargs):
        time.sleep(0.4)
        return measured(*args, **kwargs)

    monkeypatch.setattr(D, "_candidate", paced)
    with playwright.sync_playwright() as pw:
        browser, pg, errors = analysed_page(pw, live_app.url)
        measure(pg, "3")                                         # 30 + 29 + 28 = 87 candidates
        # live: the status counts the candidates done and the map is drawn before the end
        wait_text(pg, "#lx-damage-status", "Measuring:", LONG, errors_end_it=True)
        pg.wait_for_function("() => /of 87 candidates so far/.test(document.querySelector("
                             "'#lx-damage-map .js-plotly-plot')?._fullLayout?.title?.text "
                             "|| '')", timeout=60_000)
        pg.click("#lx-stop")
        wait_text(pg, "#lx-damage-status", "Stopped, partial:", LONG, errors_end_it=True)
        status = pg.locator("#lx-damage-status").inner_text()
        k = int(status.split("Stopped, partial: ")[1].split(" of 87")[0])
        assert 0 < k < 87, status
        pg.wait_for_function("(t) => (document.querySelector('#lx-damage-map .js-plotly-plot')"
                             "?._fullLayout?.title?.text || '').includes(t)",
                             arg=f"(partial: {k} of 87 candidates)", timeout=60_000)
        # the cells done stay on the heatmap: k measured cells above the diagonal, the rest blank
        shown = pg.evaluate("""() => {
            const z = document.querySelector('#lx-damage-map .js-plotly-plot')._fullData[0].z;
            let n = 0;
            Array.from(z).forEach((row, a) => Array.from(row).forEach((v, b) => {
                if (b > a && v !== null && !Number.isNaN(v)) n++; }));
            return n;
        }""")
        assert shown == k
        browser.close()
    assert not errors, errors
