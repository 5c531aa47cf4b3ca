"""End to end in a real headless Chromium: load the default model, analyse, click heatmap cells,
apply, and read perplexity before and after in the page. Screenshots go to test-artifacts/, and the
Plan view refreshes assets/screenshot.png (the README picture)."""

from __future__ import annotations

import re
import shutil

import pytest

from app_server import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, launch

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian chromium")

TIMEOUT = 150_000  # ms per long step: the CI machine may be shared


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    demo, url = launch(tmp_path_factory.mktemp("app"))
    yield url
    demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(app_url)
        pg.js_errors = errors
        yield pg
        browser.close()


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def tab(pg, label: str) -> None:
    pg.get_by_role("tab", name=label).click()


def click_cell(pg, plot_id: str, row: int, col: int, n: int) -> None:
    """Click cell (row, col) of an n x n heatmap drawn with row 0 at the top."""
    area = pg.locator(f"#{plot_id} .nsewdrag").first
    box = area.bounding_box()
    pg.mouse.click(box["x"] + box["width"] * (col + 0.5) / n,
                   box["y"] + box["height"] * (row + 0.5) / n)


def test_load_analyse_click_apply(page):
    pg = page
    pg.click("#lx-load")
    pg.wait_for_function("document.querySelector('#lx-model-info').innerText.includes('134,515,008')",
                         timeout=TIMEOUT)
    assert "llama" in pg.inner_text("#lx-model-info")
    shot(pg, "1-model")

    tab(pg, "2 · Analyse")
    pg.click("#lx-analyse")
    pg.wait_for_selector("#lx-heatmap-analyse .js-plotly-plot .nsewdrag", timeout=TIMEOUT)
    pg.wait_for_function("document.querySelector('#lx-analysis-status').innerText.includes('Probed')",
                         timeout=TIMEOUT)
    shot(pg, "2-analyse")

    tab(pg, "3 · Plan")
    pg.wait_for_selector("#lx-heatmap-plan .js-plotly-plot .nsewdrag", timeout=TIMEOUT)
    n = 31  # SmolLM2: 30 layers, 31 boundaries
    # cell (12, 13) = layer 12 alone: drop it
    click_cell(pg, "lx-heatmap-plan", 12, 13, n)
    pg.wait_for_function("document.querySelector('#lx-drops textarea, #lx-drops input').value == '12'",
                         timeout=30_000)
    # cell (16, 14) (below the diagonal) = layers 14..15: merge them into one
    pg.get_by_label("merge the block into one layer").check()
    click_cell(pg, "lx-heatmap-plan", 16, 14, n)
    pg.wait_for_function(
        "document.querySelector('#lx-merges textarea, #lx-merges input').value == '14-15'",
        timeout=30_000)
    pg.wait_for_function("document.querySelector('#lx-plan-status').innerText.includes('28 layers')",
                         timeout=30_000)
    shot(pg, "3-plan")
    pg.locator("#lx-heatmap-plan").screenshot(path=str(ARTIFACTS / "3-plan-heatmap.png"))
    (ROOT / "assets").mkdir(exist_ok=True)
    pg.screenshot(path=str(ROOT / "assets" / "screenshot.png"))

    pg.click("#lx-apply")
    pg.wait_for_function("(document.querySelector('#lx-summary')?.innerText || '').includes('perplexity')",
                         timeout=TIMEOUT)
    summary = pg.inner_text("#lx-summary")
    m = re.search(r"perplexity\s+([\d.]+)\s+([\d.]+)", summary)
    assert m, summary
    before, after = float(m.group(1)), float(m.group(2))
    assert 1.0 < before < after, summary  # removing 2 of 30 layers costs perplexity
    assert "non-overlapping windows" in summary  # the protocol is stated
    assert "28" in summary and "30" in summary
    shot(pg, "4-compare")
    assert not pg.js_errors, pg.js_errors


def test_bad_input_shows_error_and_app_keeps_running(page):
    pg = page
    tab(pg, "3 · Plan")
    pg.fill("#lx-drops textarea, #lx-drops input", "99")
    pg.click("#lx-update-plan")
    pg.wait_for_selector("text=out of range", timeout=30_000)
    shot(pg, "5-error")
    pg.click("#lx-stop")          # Stop with nothing running: harmless, the next step still runs
    pg.fill("#lx-drops textarea, #lx-drops input", "20")
    pg.click("#lx-update-plan")
    pg.wait_for_function("document.querySelector('#lx-plan-status').innerText.includes('28 layers')",
                         timeout=30_000)


def test_export_and_learn_tabs(page):
    pg = page
    tab(pg, "5 · Export")
    pg.wait_for_function("document.body.innerText.includes('python -m explorer')", timeout=30_000)
    assert "--recipe recipe.json" in pg.inner_text("body")   # plan left: drop 20, merge 14-15
    shot(pg, "6-export")
    tab(pg, "6 · Learn")
    pg.locator("#lx-learn").get_by_text("How to read the heatmaps").wait_for(timeout=30_000)
    text = pg.inner_text("#lx-learn")
    assert "arXiv" in text and "block of layers" in text
    shot(pg, "7-learn")
