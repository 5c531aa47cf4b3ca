"""The Stop button, and the app's edge of the pipeline's progress events.

Gradio's `cancels=` only abandons an event on the page: a handler already running in a worker
thread goes on, and it holds the resident model's lock, so every later request would wait for it.
Each browser session therefore has a `CancelToken` (`explorer.progress`). The long handlers wrap
their gr.Progress in `watch(progress, request)`: a pipeline `Progress` that checks the session's
token at each event (per batch of windows in the probe and the perplexity, per training step) and
raises `Stopped` there, then shows the event on the step's bar as `event.describe()`. The
pipeline's context managers (`Variant.applied`, the model lock) put the model back on the way out.

Stop lands at the next report, so a step that reports rarely (one UMAP fit, one generation) runs
to its end first. Under ZeroGPU the job runs in another process and never sees the token: there
Stop only abandons the event.
"""

from __future__ import annotations

import threading
from typing import Any

from ..progress import CancelToken, Cancelled, Event, Progress, watched


class Stopped(Cancelled):
    """The user pressed Stop while this job was running."""


_tokens: dict[str, CancelToken] = {}
_guard = threading.Lock()


def _token(request: Any) -> CancelToken | None:
    key = getattr(request, "session_hash", None)
    if not key:
        return None
    with _guard:
        if key not in _tokens:
            _tokens[key] = CancelToken(lambda: Stopped("stopped: you pressed Stop (the model is "
                                                       "back as it was)"))
        return _tokens[key]


def bar(progress: Any) -> Progress | None:
    """A pipeline `Progress` that shows each event on a gr.Progress bar (None: no bar)."""
    if progress is None:
        return None

    def show(event: Event) -> None:
        progress(event.fraction, desc=event.describe())
    return show


def watch(progress: Any, request: Any) -> Progress | None:
    """`bar(progress)`, stopped with `Stopped` at its next event once this session presses Stop.

    Resets an earlier Stop of the session first (one pressed while nothing ran stops nothing).
    Without a session (`request` None) nothing is watched.
    """
    shown = bar(progress)
    token = _token(request)
    if token is None:
        return shown
    token.reset()
    return watched(shown, token)


def stop(request: Any) -> None:
    """Ask this session's running jobs to stop at their next progress event."""
    token = _token(request)
    if token is not None:
        token.cancel()


def forget(request: Any) -> None:
    """Drop the session's token when its page closes (demo.unload)."""
    with _guard:
        _tokens.pop(getattr(request, "session_hash", None) or "", None)
