"""Settings of the web app: sizes of the probe and of the perplexity run, folders, defaults.

Every field can be set by an environment variable (for deployments and for the tests, which make
everything small) or passed to `build_app(settings=...)`. The defaults suit a CPU and a small model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from explorer.load.embedded import DEFAULT_MODEL
from explorer.evaluate.generate import DEFAULT_PROMPTS
from explorer.core.settings import SETTINGS, get


def _default(name: str):
    return SETTINGS[f"LAYER_EXPLORER_{name}"].default


@dataclass
class UISettings:
    """The app's sizes and defaults; each field's meaning and default is declared once, in
    explorer/core/settings.py (the variable named in capitals after LAYER_EXPLORER_)."""

    default_model: str = DEFAULT_MODEL
    default_text: str = _default("TEXT")
    probe_seqlen: int = _default("PROBE_SEQLEN")
    probe_samples: int = _default("PROBE_SAMPLES")
    probe_max_tokens: int = _default("PROBE_MAX_TOKENS")
    ppl_seqlen: int = _default("PPL_SEQLEN")
    ppl_max_tokens: int = _default("PPL_TOKENS")
    method_seqlen: int = _default("METHOD_SEQLEN")
    method_samples: int = _default("METHOD_SAMPLES")
    gen_tokens: int = _default("GEN_TOKENS")
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    token_points: int = _default("TOKEN_POINTS")
    output_dir: Path = field(default_factory=lambda: Path("exports"))
    preload: bool = _default("PRELOAD")

    @staticmethod
    def from_env() -> "UISettings":
        """Defaults overridden by the LAYER_EXPLORER_* variables of explorer/core/settings.py (a bad
        value raises SettingError, one line)."""
        return UISettings(
            default_model=get("LAYER_EXPLORER_MODEL") or DEFAULT_MODEL,
            default_text=get("LAYER_EXPLORER_TEXT"),
            probe_seqlen=get("LAYER_EXPLORER_PROBE_SEQLEN"),
            probe_samples=get("LAYER_EXPLORER_PROBE_SAMPLES"),
            probe_max_tokens=get("LAYER_EXPLORER_PROBE_MAX_TOKENS"),
            ppl_seqlen=get("LAYER_EXPLORER_PPL_SEQLEN"),
            ppl_max_tokens=get("LAYER_EXPLORER_PPL_TOKENS"),
            method_seqlen=get("LAYER_EXPLORER_METHOD_SEQLEN"),
            method_samples=get("LAYER_EXPLORER_METHOD_SAMPLES"),
            gen_tokens=get("LAYER_EXPLORER_GEN_TOKENS"),
            token_points=get("LAYER_EXPLORER_TOKEN_POINTS"),
            output_dir=get("LAYER_EXPLORER_OUTPUT_DIR") or Path("exports"),
            preload=get("LAYER_EXPLORER_PRELOAD"),
        )
