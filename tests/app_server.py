"""Launch the web app in-process on a free 127.0.0.1 port for the app tests (small sizes)."""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_settings(tmp: Path):
    """Settings that keep every step to seconds on a CPU: 4 windows x 32 tokens of probe, a
    perplexity on 128 tokens, 4 generated tokens for one prompt."""
    from explorer.ui.settings import UISettings

    return UISettings(probe_seqlen=32, probe_samples=4, probe_max_tokens=256, ppl_seqlen=64,
                      ppl_max_tokens=128, method_seqlen=32, method_samples=4, gen_tokens=4,
                      prompts=("The capital of France is",), token_points=100,
                      output_dir=tmp / "exports")


def launch(tmp: Path):
    """Build and launch the app; returns (demo, url). Close with demo.close()."""
    from explorer.ui import CSS, build_app

    demo = build_app(small_settings(tmp), warm_up=False)
    demo.queue(default_concurrency_limit=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True, css=CSS)
    return demo, f"http://127.0.0.1:{port}/"
