"""The web app for the tests: launched in-process on 127.0.0.1 with small sizes, once per session
(the `live_app` fixture in conftest.py).

The app runs in the test process, so a test can reach its registry (`explorer.ui.caches.APP_CACHES`)
and check the shared model directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def toasts(pg) -> list[str]:
    """The messages of the toasts on the page (without their title and close button)."""
    return pg.evaluate("() => [...document.querySelectorAll('[data-testid=toast-text]')]"
                       ".map(t => t.innerText)")


def wait_text(pg, selector: str, fragment: str, timeout: int = 30_000,
              errors_end_it: bool = False) -> None:
    """Until the text of `selector` holds `fragment` (checked every 250 ms, not on animation
    frames, which a busy headless page may deliver late). With `errors_end_it`, an error toast
    that appears meanwhile ends the wait at once. Either way, a failed wait says what the
    element showed instead and which toasts were up, so a timeout in CI can be read."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = pg.locator(".toast-body.error").count()
    try:
        pg.wait_for_function(
            """([s, f, stop, before]) => (document.querySelector(s)?.innerText || '').includes(f)
               || (stop && document.querySelectorAll('.toast-body.error').length > before)""",
            arg=[selector, fragment, errors_end_it, before], timeout=timeout, polling=250)
    except PlaywrightTimeout:
        pass
    shown = pg.evaluate("(s) => document.querySelector(s)?.innerText ?? null", selector)
    if shown is None or fragment not in shown:
        raise AssertionError(f"{selector} never showed {fragment!r} (waited up to {timeout} ms); "
                             f"it shows {shown!r}; toasts on the page: {toasts(pg)}")


def fill_field(pg, selector: str, value: str, tries: int = 20) -> None:
    """Type `value` into the input `selector` and leave it, until it holds for 250 ms. Seen in CI
    (twice): a field in an accordion just opened read its initial value again right after the
    typing (probably mounted late), and the step then ran with the wrong value."""
    field = pg.locator(selector)
    for _ in range(tries):
        field.fill(value)
        field.press("Tab")
        pg.wait_for_timeout(250)
        if field.input_value() == value:
            return
    raise AssertionError(f"{selector} would not keep {value!r}: it shows {field.input_value()!r}")


def small_settings(tmp: Path):
    """Settings that keep every step to seconds on a CPU: 4 windows x 32 tokens of probe, a
    perplexity on 128 tokens (2 windows of 64), 4 generated tokens for one prompt."""
    from explorer.ui.settings import UISettings

    return UISettings(probe_seqlen=32, probe_samples=4, probe_max_tokens=256, ppl_seqlen=64,
                      ppl_max_tokens=128, method_seqlen=32, method_samples=4, gen_tokens=4,
                      prompts=("The capital of France is",), token_points=100,
                      output_dir=tmp / "exports")


@dataclass
class LiveApp:
    """A launched app: its address, the settings it runs with, and the Blocks to close."""

    url: str                    # "http://127.0.0.1:<port>/"
    settings: Any               # explorer.ui.settings.UISettings
    demo: Any                   # gradio.Blocks

    @property
    def exports(self) -> Path:
        """The app's output folder (exports are confined to it)."""
        return Path(self.settings.output_dir)

    def client(self):
        """A new gradio_client session (a fresh browser tab)."""
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def close(self) -> None:
        self.demo.close()


def start(tmp: Path) -> LiveApp:
    """Launch the app as `python app.py` does (explorer.ui.launch), with `small_settings(tmp)`.

    No port is chosen here: with server_port=None gradio tries 7860, 7861, ... and takes the first
    port its server really binds (a port taken in between makes the bind fail and the search go
    on), so two test runs on one machine cannot race for the same port."""
    from explorer import ui

    settings = small_settings(tmp)
    demo = ui.launch(settings, server_name="127.0.0.1", server_port=None,
                     prevent_thread_lock=True, quiet=True)
    return LiveApp(url=demo.local_url, settings=settings, demo=demo)


def launch(tmp: Path):
    """(demo, url) of a launched app: the older form, kept until every app test uses `live_app`."""
    app = start(tmp)
    return app.demo, app.url

