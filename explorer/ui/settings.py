"""Settings of the web app: sizes of the probe and of the perplexity run, folders, defaults.

Every field can be set by an environment variable (for deployments and for the tests, which make
everything small) or passed to `build_app(settings=...)`. Defaults suit a CPU with a small model:
a probe of 32 windows x 128 tokens and a perplexity on 8192 tokens take seconds on SmolLM2-135M.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..embedded import DEFAULT_MODEL
from ..evaluate import DEFAULT_PROMPTS
from ..export import OUTPUT_DIR_ENV


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (got {raw!r})") from None




@dataclass
class UISettings:
    default_model: str = DEFAULT_MODEL
    default_text: str = "wiki"             # wiki, news or wikitext2
    probe_seqlen: int = 128                # tokens per calibration window of the probe
    probe_samples: int = 32                # calibration windows of the probe
    probe_max_tokens: int = 4096           # recorded tokens kept per layer (bounds memory)
    ppl_seqlen: int = 256                  # tokens per perplexity window
    ppl_max_tokens: int = 8192             # evaluation tokens for each perplexity
    method_seqlen: int = 128               # calibration windows used by compression methods
    method_samples: int = 16
    gen_tokens: int = 24                   # new tokens per greedy generation (0: no generations)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    token_points: int = 800                # points in a token-cloud plot
    output_dir: Path = field(default_factory=lambda: Path("exports"))   # $LAYER_EXPLORER_OUTPUT_DIR
    preload: bool = False                  # load the default model in the background at start

    @staticmethod
    def from_env() -> "UISettings":
        """Defaults overridden by LAYER_EXPLORER_* environment variables."""
        s = UISettings()
        s.default_model = os.environ.get("LAYER_EXPLORER_MODEL", s.default_model)
        s.default_text = os.environ.get("LAYER_EXPLORER_TEXT", s.default_text)
        s.probe_seqlen = _env_int("LAYER_EXPLORER_PROBE_SEQLEN", s.probe_seqlen)
        s.probe_samples = _env_int("LAYER_EXPLORER_PROBE_SAMPLES", s.probe_samples)
        s.probe_max_tokens = _env_int("LAYER_EXPLORER_PROBE_MAX_TOKENS", s.probe_max_tokens)
        s.ppl_seqlen = _env_int("LAYER_EXPLORER_PPL_SEQLEN", s.ppl_seqlen)
        s.ppl_max_tokens = _env_int("LAYER_EXPLORER_PPL_TOKENS", s.ppl_max_tokens)
        s.method_seqlen = _env_int("LAYER_EXPLORER_METHOD_SEQLEN", s.method_seqlen)
        s.method_samples = _env_int("LAYER_EXPLORER_METHOD_SAMPLES", s.method_samples)
        s.gen_tokens = _env_int("LAYER_EXPLORER_GEN_TOKENS", s.gen_tokens)
        s.token_points = _env_int("LAYER_EXPLORER_TOKEN_POINTS", s.token_points)
        s.output_dir = Path(os.environ.get(OUTPUT_DIR_ENV) or s.output_dir)
        s.preload = os.environ.get("LAYER_EXPLORER_PRELOAD", "") not in ("", "0", "false")
        return s
