"""Every environment variable Layer Explorer reads, declared once: its type, default and meaning.

A deployment (a Space, a shared server, CI) sets these; the library, the CLI and the app read them
only through `get(name)`, so a value is parsed one way everywhere and a bad one fails the same way
everywhere: a `SettingError` whose message is one line naming the variable and what it accepts.
Values are read from the environment at each call (tests and long-lived servers change them).

The README's settings table is generated from `SETTINGS` (`python -m explorer.cli.doc_tables`).

    >>> import os; os.environ["LAYER_EXPLORER_STATE_CACHE_MB"] = "256"
    >>> get("LAYER_EXPLORER_STATE_CACHE_MB")      # MiB settings come back as bytes
    268435456
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from explorer.core.errors import ExplorerError

PREFIX = "LAYER_EXPLORER_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingError(ExplorerError):
    """An environment variable has a value Layer Explorer cannot use."""


def _integer(raw: str) -> int:
    return int(raw)


def _mebibytes(raw: str) -> int:
    """'512' or '0.5' MiB -> bytes (negative values are refused)."""
    value = float(raw)
    if value < 0 or value != value:
        raise ValueError(raw)
    return int(value * 2**20)


def _switch(raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(raw)


_PARSERS: dict[str, tuple[Callable[[str], object], str]] = {
    "int": (_integer, "an integer"),
    "MiB": (_mebibytes, "a number of MiB (e.g. 512)"),
    "switch": (_switch, "1 or 0 (also true/false, yes/no, on/off)"),
    "text": (str, "text"),
    "folder": (Path, "a folder path"),
}


@dataclass(frozen=True)
class Setting:
    """One environment variable: `kind` names its parser, `default` is the parsed value used when
    the variable is unset or empty (None: no default, the feature is off)."""

    name: str
    kind: str
    default: object
    meaning: str
    where: str          # who reads it: "app", "library", "cli"

    def read(self) -> object:
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.default
        parse, accepted = _PARSERS[self.kind]
        try:
            return parse(raw)
        except (ValueError, TypeError):
            raise SettingError(f"{self.name} must be {accepted} (got '{raw[:40]}')") from None

    def shown_default(self) -> str:
        if self.default is None:
            return "unset"
        if self.kind == "MiB":
            return f"{self.default // 2**20} MiB"
        if self.kind == "switch":
            return "1" if self.default else "0"
        return str(self.default)


def _declare(*settings: Setting) -> dict[str, Setting]:
    out = {}
    for s in settings:
        assert s.name.startswith(PREFIX) and s.kind in _PARSERS and s.name not in out, s.name
        out[s.name] = s
    return out


SETTINGS: dict[str, Setting] = _declare(
    # -- where things go ---------------------------------------------------------------------
    Setting("LAYER_EXPLORER_CACHE", "folder", None,
            "folder for converted embedded models, parsed texts and cached states "
            "(unset: ~/.cache/layer-explorer)", "library"),
    Setting("LAYER_EXPLORER_OUTPUT_DIR", "folder", None,
            "every export must stay inside this folder (the app's export folder; unset in the "
            "library and CLI: no confinement)", "library"),
    # -- what a public server allows ---------------------------------------------------------
    Setting("LAYER_EXPLORER_ALLOW_REMOTE_CODE", "switch", True,
            "0 forbids models that need trust_remote_code for the whole process (a public Space)",
            "library"),
    Setting("LAYER_EXPLORER_ALLOW_PUSH", "switch", False,
            "1 lets the app push exports to the hub with the server's HF_TOKEN", "app"),
    # -- memory --------------------------------------------------------------------------------
    Setting("LAYER_EXPLORER_MAX_MEMORY_MB", "MiB", None,
            "the most memory a model may take on a device before its layers are offloaded "
            "(unset: the free memory)", "library"),
    Setting("LAYER_EXPLORER_STATE_CACHE_MB", "MiB", None,
            "in-memory budget of the dense boundary states (unset: 512 MiB on CPU, 2 GiB on CUDA)",
            "library"),
    Setting("LAYER_EXPLORER_DENSE_DISK", "switch", True,
            "0 keeps dense figures and states in this process only (nothing written to the cache "
            "folder)", "library"),
    Setting("LAYER_EXPLORER_STATE_DISK_MB", "MiB", 1024 * 2**20,
            "disk budget of the dense boundary states in the cache folder (least recently used go "
            "first)", "library"),
    Setting("LAYER_EXPLORER_STREAM_STATE_MB", "MiB", 1024 * 2**20,
            "boundary states a layer-major pass keeps in RAM before it spills to disk", "library"),
    # -- ranks and runs that resume (docs/scale.md) ------------------------------------------
    Setting("LAYER_EXPLORER_RANK_TIMEOUT", "int", 1800,
            "seconds a rank waits at a collective for the others before it stops with one line "
            "(a rank that died)", "library"),
    Setting("LAYER_EXPLORER_TEST_EXIT_AFTER_LAYER", "int", None,
            "test hook: the process exits (os._exit) right after its checkpoint holds this layer "
            "(tests of a run that dies and resumes; never set it otherwise)", "library"),
    # -- the command line ----------------------------------------------------------------------
    Setting("LAYER_EXPLORER_VERBOSE", "switch", False,
            "1 keeps the warnings of transformers and other libraries (as --verbose)", "cli"),
    # -- the app's defaults and sizes ----------------------------------------------------------
    Setting("LAYER_EXPLORER_MODEL", "text", None, "the model the app proposes (unset: the "
            "embedded default)", "app"),
    Setting("LAYER_EXPLORER_TEXT", "text", "wiki", "the text the app proposes: wiki, news or "
            "wikitext2", "app"),
    Setting("LAYER_EXPLORER_PRELOAD", "switch", False,
            "1 loads the default model in the background when the app starts", "app"),
    Setting("LAYER_EXPLORER_PROBE_SEQLEN", "int", 128, "tokens per calibration window of the "
            "probe", "app"),
    Setting("LAYER_EXPLORER_PROBE_SAMPLES", "int", 32, "calibration windows of the probe", "app"),
    Setting("LAYER_EXPLORER_PROBE_MAX_TOKENS", "int", 4096,
            "recorded tokens kept per layer (bounds the probe's memory)", "app"),
    Setting("LAYER_EXPLORER_PPL_SEQLEN", "int", 256, "tokens per perplexity window", "app"),
    Setting("LAYER_EXPLORER_PPL_TOKENS", "int", 8192, "evaluation tokens of each perplexity",
            "app"),
    Setting("LAYER_EXPLORER_METHOD_SEQLEN", "int", 128,
            "tokens per calibration window of the compression methods", "app"),
    Setting("LAYER_EXPLORER_METHOD_SAMPLES", "int", 16,
            "calibration windows of the compression methods", "app"),
    Setting("LAYER_EXPLORER_GEN_TOKENS", "int", 24,
            "new tokens per greedy generation (0: no generations)", "app"),
    Setting("LAYER_EXPLORER_TOKEN_POINTS", "int", 800, "points in a token-cloud plot", "app"),
)


def get(name: str) -> object:
    """The parsed value of the declared variable `name` (its default when unset or empty).

    Raises SettingError (one line) on a value its type does not accept, KeyError on a name that
    is not declared here (a programming error: declare it in SETTINGS first)."""
    return SETTINGS[name].read()


def settings_table() -> str:
    """The Markdown table of every variable, for the README."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS.values():
        rows.append(f"| `{s.name}` | {s.where} | {s.shown_default()} | {s.meaning} |")
    return "\n".join(rows)
