"""Shared fixtures: tiny random models (fast logic tests) and the real default model (loaded once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    """The real embedded default model, SmolLM2-135M, loaded once per test session."""
    from explorer import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def wiki():
    from explorer import load_texts

    return load_texts("wiki")
