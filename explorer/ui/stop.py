"""The Stop button: a flag per browser session that the running job's progress reports check.

Gradio's `cancels=` only abandons an event on the page: a handler already running in a worker
thread goes on, and it holds the resident model's lock, so every later request would wait for it.
The long handlers therefore wrap their gr.Progress in `watch(progress, request)`: each progress
report (per batch of windows in the probe and the perplexity, per training step of a method)
first checks the session's flag and raises `Stopped`, and the pipeline's context managers
(`Variant.applied`, the model lock) put the model back on the way out.

Stop lands at the next report, so a step that reports rarely (one UMAP fit, one generation) runs
to its end first. Under ZeroGPU the job runs in another process and never sees the flag: there
Stop only abandons the event.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..errors import ExplorerError


class Stopped(ExplorerError):
    """The user pressed Stop while this job was running."""


_flags: dict[str, threading.Event] = {}
_guard = threading.Lock()


def _flag(request: Any) -> threading.Event | None:
    key = getattr(request, "session_hash", None)
    if not key:
        return None
    with _guard:
        return _flags.setdefault(key, threading.Event())


def watch(progress: Any, request: Any) -> Callable[..., Any] | Any:
    """A progress callable that raises `Stopped` once this session presses Stop.

    Clears an earlier Stop of the session first (one pressed while nothing ran stops nothing).
    `progress` is a gr.Progress or None; without a session (`request` None) it is returned as is.
    """
    flag = _flag(request)
    if flag is None:
        return progress
    flag.clear()

    def report(*args: Any, **kwargs: Any) -> Any:
        if flag.is_set():
            raise Stopped("stopped: you pressed Stop (the model is back as it was)")
        return progress(*args, **kwargs) if progress is not None else None
    return report


def stop(request: Any) -> None:
    """Ask this session's running jobs to stop at their next progress report."""
    flag = _flag(request)
    if flag is not None:
        flag.set()


def forget(request: Any) -> None:
    """Drop the session's flag when its page closes (demo.unload)."""
    with _guard:
        _flags.pop(getattr(request, "session_hash", None) or "", None)
