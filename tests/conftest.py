"""Shared fixtures: tiny random models (fast logic tests), the real default model (loaded once),
the web app (launched once) and a clean slate of resident models for the modules that need one.

`tiny` and `app_server` are importable because pyproject.toml's pytest options put tests/ on the
path (`pythonpath`); `explorer` is the installed package (`pip install -e .`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # no test may need the network

from tiny import SAMPLE_TEXT, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory):
    """Build (and cache per session) a tiny model folder: tiny_factory("llama", num_layers=4)."""
    made: dict = {}

    def build(model_type: str = "llama", num_layers: int = 4, **overrides) -> Path:
        key = (model_type, num_layers, tuple(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{model_type}-{num_layers}")
            made[key] = make_tiny_model(folder, model_type, num_layers, **overrides)
        return made[key]

    return build


@pytest.fixture(scope="session")
def tiny_lm(tiny_factory):
    """A loaded tiny llama with 6 layers (shared: tests must not modify it in place)."""
    from explorer import load_model

    return load_model(str(tiny_factory("llama", num_layers=6)))


@pytest.fixture(scope="session")
def sample_text() -> str:
    return SAMPLE_TEXT


@pytest.fixture(scope="session")
def smol():
    """The real embedded default model, SmolLM2-135M-Instruct (Q4_1), loaded once per test session."""
    from explorer import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def wiki():
    from explorer import load_texts

    return load_texts("wiki")


@pytest.fixture(scope="session")
def live_app(tmp_path_factory):
    """The web app, launched once per session on 127.0.0.1 with small sizes (app_server.start):
    `.url`, `.settings`, `.exports` and `.client()` (a new gradio_client session). It serves
    whichever model each session loads; pair it with `clean_registry` for a known start."""
    from app_server import start

    app = start(tmp_path_factory.mktemp("app"))
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="session")
def app_url(live_app) -> str:
    """The launched app's address (the browser tests' name for it)."""
    return live_app.url


@pytest.fixture(scope="module")
def clean_registry():
    """No resident model when the module starts, and none left behind when it ends.

    The process keeps one resident model (`explorer.core.session`), and the web app's caches
    (`explorer.ui.caches.APP_CACHES`) empty themselves when it is released, so releasing it
    gives a module the state of a fresh process without leaking another module's model (or its
    memory) into it. Use with `pytestmark = pytest.mark.usefixtures("clean_registry")`."""
    from explorer.core import session

    session.release_model()
    yield
    session.release_model()
