"""The settings module: every LAYER_EXPLORER_* variable the code names is declared there, parsed one
way, and a bad value is refused in one line wherever it is read."""

import re
from pathlib import Path

import pytest

from explorer.core import dense_cache, stream
from explorer.load import memory
from explorer.core.errors import ExplorerError
from explorer.core.settings import SETTINGS, SettingError, get
from explorer.ui.settings import UISettings

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"LAYER_EXPLORER_[A-Z0-9_]*[A-Z0-9]")


def test_every_variable_the_code_names_is_declared_once():
    """Scans the package and app.py (not a hand-kept list): a variable read anywhere without a
    declaration would be parsed its own way."""
    named = set()
    for path in [ROOT / "app.py", *(ROOT / "explorer").rglob("*.py")]:
        named |= set(NAME.findall(path.read_text(encoding="utf-8")))
    assert named, "the scan found nothing: the pattern is wrong"
    assert named - set(SETTINGS) == set()


def test_every_declared_variable_is_read_through_get():
    """No stale row in the README's table: each declared variable is read somewhere, by name."""
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "explorer").rglob("*.py")
                      if p.name != "settings.py")
    sources += (ROOT / "explorer" / "ui" / "settings.py").read_text(encoding="utf-8")
    for name in SETTINGS:
        short = name.removeprefix("LAYER_EXPLORER_")
        assert f'get("{name}")' in sources or f'_default("{short}")' in sources, name


@pytest.mark.parametrize("name, raw, value", [
    ("LAYER_EXPLORER_STATE_CACHE_MB", "1.5", int(1.5 * 2**20)),
    ("LAYER_EXPLORER_STREAM_STATE_MB", "0", 0),
    ("LAYER_EXPLORER_DENSE_DISK", "off", False),
    ("LAYER_EXPLORER_ALLOW_REMOTE_CODE", "No", False),
    ("LAYER_EXPLORER_PRELOAD", "1", True),
    ("LAYER_EXPLORER_PROBE_SAMPLES", " 7 ", 7),
    ("LAYER_EXPLORER_CACHE", "/tmp/x", Path("/tmp/x")),
])
def test_values_are_parsed_by_their_type(monkeypatch, name, raw, value):
    monkeypatch.setenv(name, raw)
    assert get(name) == value


def test_unset_or_empty_gives_the_default(monkeypatch):
    for name, s in SETTINGS.items():
        monkeypatch.setenv(name, "")
        assert get(name) == s.default
        monkeypatch.delenv(name)
        assert get(name) == s.default


@pytest.mark.parametrize("name, raw", [
    ("LAYER_EXPLORER_STATE_CACHE_MB", "lots"),        # was ignored silently before
    ("LAYER_EXPLORER_STATE_DISK_MB", "-5"),
    ("LAYER_EXPLORER_STREAM_STATE_MB", "1GiB"),
    ("LAYER_EXPLORER_MAX_MEMORY_MB", "nan"),
    ("LAYER_EXPLORER_DENSE_DISK", "maybe"),
    ("LAYER_EXPLORER_PROBE_SEQLEN", "12.5"),
])
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingError) as err:
        get(name)
    msg = str(err.value)
    assert name in msg and raw in msg and "\n" not in msg
    assert isinstance(err.value, ExplorerError)     # the CLI prints it as `error: ...`, status 2


def test_the_readers_use_the_declared_parsing(monkeypatch):
    """The places that used to parse these variables their own way now agree."""
    monkeypatch.setenv("LAYER_EXPLORER_STATE_CACHE_MB", "3")
    assert dense_cache.default_budget("cpu") == 3 * 2**20
    monkeypatch.setenv("LAYER_EXPLORER_STREAM_STATE_MB", "2")
    assert stream.state_budget() == 2 * 2**20
    monkeypatch.setenv("LAYER_EXPLORER_MAX_MEMORY_MB", "1")
    assert memory.available_bytes(__import__("torch").device("cpu")) <= 2**20
    for reader, name in [(lambda: dense_cache.default_budget("cpu"), "LAYER_EXPLORER_STATE_CACHE_MB"),
                         (stream.state_budget, "LAYER_EXPLORER_STREAM_STATE_MB"),
                         (UISettings.from_env, "LAYER_EXPLORER_PPL_TOKENS")]:
        monkeypatch.setenv(name, "x")
        with pytest.raises(SettingError, match=name):
            reader()
        monkeypatch.delenv(name)


def test_the_app_settings_take_their_defaults_from_the_declarations(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    s = UISettings.from_env()
    assert s.probe_samples == SETTINGS["LAYER_EXPLORER_PROBE_SAMPLES"].default == UISettings().probe_samples
    assert s.output_dir == Path("exports")
    monkeypatch.setenv("LAYER_EXPLORER_OUTPUT_DIR", "/srv/out")
    monkeypatch.setenv("LAYER_EXPLORER_GEN_TOKENS", "0")
    s = UISettings.from_env()
    assert s.output_dir == Path("/srv/out") and s.gen_tokens == 0
