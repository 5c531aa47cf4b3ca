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

The button's state follows the steps that really run: `tracked(fn)` counts a session's running
handlers (from their start to their end, error or not), and the button goes idle only when the
count is back to zero, so a step that ends while another one of the page still runs (the
background dense figure, say) leaves Stop active for the other.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable

from ..errors import ExplorerError


class Stopped(ExplorerError):
    """The user pressed Stop while this job was running."""


_flags: dict[str, threading.Event] = {}
_running: dict[str, int] = {}          # session -> handlers of long steps running now
_guard = threading.Lock()


def _key(request: Any) -> str | None:
    return getattr(request, "session_hash", None) or None


def _flag(request: Any) -> threading.Event | None:
    key = _key(request)
    if not key:
        return None
    with _guard:
        return _flags.setdefault(key, threading.Event())


def watch(progress: Any, request: Any) -> Callable[..., Any] | Any:
    """A progress callable that raises `Stopped` once this session presses Stop.

    Clears an earlier Stop of the session first when no other step of the session runs (one
    pressed while nothing ran stops nothing; one pressed for a step still running stays).
    `progress` is a gr.Progress or None; without a session (`request` None) it is returned as is.
    """
    flag = _flag(request)
    if flag is None:
        return progress
    if running(request) <= 1:       # this step only (or a direct API call, not counted)
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


def running(request: Any) -> int:
    """How many tracked handlers of this session run now."""
    with _guard:
        return _running.get(_key(request) or "", 0)


def _request_of(args: tuple, kwargs: dict) -> Any:
    return next((a for a in (*args, *kwargs.values())
                 if type(a).__name__ == "Request" and _key(a)), None)


def tracked(fn: Callable) -> Callable:
    """`fn` (a handler taking a gr.Request) counted in `running` while it runs, generators too."""
    def enter(args: tuple, kwargs: dict) -> str | None:
        key = _key(_request_of(args, kwargs))
        if key:
            with _guard:
                _running[key] = _running.get(key, 0) + 1
        return key

    def leave(key: str | None) -> None:
        if key:
            with _guard:
                left = _running.get(key, 1) - 1
                if left > 0:
                    _running[key] = left
                else:
                    _running.pop(key, None)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            key = enter(args, kwargs)
            try:
                yield from fn(*args, **kwargs)
            finally:
                leave(key)
        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        key = enter(args, kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            leave(key)
    return wrapper


def forget(request: Any) -> None:
    """Drop the session's flag when its page closes (demo.unload)."""
    with _guard:
        _flags.pop(_key(request) or "", None)
        _running.pop(_key(request) or "", None)
