"""The Stop button, and the app's edge of the pipeline's progress events.

Gradio's `cancels=` only abandons an event on the page: a handler already running in a worker
thread goes on, and it holds the resident model's lock, so every later request would wait for it.
Each browser session therefore has a `CancelToken` (`explorer.core.progress`). The long handlers wrap
their gr.Progress in `watch(progress, request)`: a pipeline `Progress` that checks the session's
token at each event (per batch of windows in the probe and the perplexity, per training step) and
raises `Stopped` there, then shows the event on the step's bar as `event.describe()`. The
pipeline's context managers (`Variant.applied`, the model lock) put the model back on the way out.

Stop lands at the next report, so a step that reports rarely (one UMAP fit, one generation) runs
to its end first. Under ZeroGPU the job runs in another process and never sees the token: there
Stop only abandons the event.

The button's state follows the steps that really run: `tracked(fn)` counts a session's running
handlers (from their start to their end, error or not), and the button goes idle only when the
count is back to zero, so a step that ends while another one of the page still runs (the
background dense figure, say) leaves Stop active for the other.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import threading
import time
from typing import Any, Callable

from explorer.core.cache import Store
from explorer.core.progress import CancelToken, Cancelled, Event, Progress, watched
from explorer.ui.controls import human


class Stopped(Cancelled):
    """The user pressed Stop while this job was running."""


# One cancel token per browser session, in the cache service: dropped when the page closes
# (`forget`), and bounded, so sessions whose page never said goodbye do not pile up.
_tokens: Store[CancelToken] = Store("stop tokens", size=1024)
_running: dict[str, int] = {}          # session -> handlers of long steps running now
_guard = threading.Lock()


def session_key(request: Any) -> str | None:
    """The browser session a gr.Request belongs to (None: a direct API call without one)."""
    return getattr(request, "session_hash", None) or None


def _token(request: Any) -> CancelToken | None:
    key = session_key(request)
    if not key:
        return None
    return _tokens.get_or_compute(key, lambda: CancelToken(lambda: Stopped(
        "stopped: you pressed Stop (the model is back as it was)")))


def bar(progress: Any) -> Progress | None:
    """A pipeline `Progress` that shows each event on a gr.Progress bar (None: no bar)."""
    if progress is None:
        return None

    seen: dict[str, list[tuple[float, float]]] = {}    # stage -> its (time, fraction) so far

    def show(event: Event) -> None:      # the pipeline's stage names said as display names
        progress(event.fraction, desc=human(event.describe(), mark=False) + time_left(event, seen))
    return show


RECENT = 1 / 3          # the rate is measured over this last part of the stage's time so far


def time_left(event: Event, seen: dict[str, list[tuple[float, float]]],
              now: float | None = None) -> str:
    """' — about 40 s left', from this stage's own recent rate: the progress made over the last
    third of its time so far (at least 2 s). Gradio's own estimate is the mean duration of
    earlier runs of the button, whatever their sizes; a rate since the stage's start is fooled by
    a fast first part (the speed measurement's prefill calls before its decode calls)."""
    now = time.monotonic() if now is None else now
    points = seen.setdefault(event.stage, [])
    points.append((now, event.fraction))          # times only grow: bisect finds the window
    t0 = points[0][0]
    if not 0 < event.fraction < 1 or now - t0 < 2:
        return ""
    since = now - max(2.0, (now - t0) * RECENT)
    t1, f1 = points[bisect.bisect_left(points, (since, -1.0))]
    if event.fraction <= f1 or now <= t1:
        return ""
    rest = (now - t1) * (1 - event.fraction) / (event.fraction - f1)
    return f" — about {rest:.0f} s left" if rest < 90 else f" — about {rest / 60:.0f} min left"


def watch(progress: Any, request: Any) -> Progress | None:
    """`bar(progress)`, stopped with `Stopped` at its next event once this session presses Stop.

    Resets an earlier Stop of the session first when no other step of the session runs (one
    pressed while nothing ran stops nothing; one pressed for a step still running stays).
    Without a session (`request` None) nothing is watched.
    """
    shown = bar(progress)
    token = _token(request)
    if token is None:
        return shown
    if running(request) <= 1:       # this step only (or a direct API call, not counted)
        token.reset()
    return watched(shown, token)


def stop(request: Any) -> None:
    """Ask this session's running jobs to stop at their next progress event."""
    token = _token(request)
    if token is not None:
        token.cancel()


def running(request: Any) -> int:
    """How many tracked handlers of this session run now."""
    with _guard:
        return _running.get(session_key(request) or "", 0)


def _request_of(args: tuple, kwargs: dict) -> Any:
    """The gr.Request among a handler's arguments, or None."""
    return next((a for a in (*args, *kwargs.values())
                 if type(a).__name__ == "Request" and session_key(a)), None)


def around(fn: Callable, enter: Callable[[Any], Any], leave: Callable[[Any], None]) -> Callable:
    """`fn` (a handler taking a gr.Request) with `enter(request)` before it runs and
    `leave(what enter returned)` after it, however it ends; a generator is held until it ends."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            held = enter(_request_of(args, kwargs))
            try:
                yield from fn(*args, **kwargs)
            finally:
                leave(held)
        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        held = enter(_request_of(args, kwargs))
        try:
            return fn(*args, **kwargs)
        finally:
            leave(held)
    return wrapper


def tracked(fn: Callable) -> Callable:
    """`fn` (a handler taking a gr.Request) counted in `running` while it runs, generators too."""
    def enter(request: Any) -> str | None:
        key = session_key(request)
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

    return around(fn, enter, leave)


def forget(request: Any) -> None:
    """Drop the session's token when its page closes (demo.unload)."""
    with _guard:
        _tokens.pop(session_key(request) or "", None)
        _running.pop(session_key(request) or "", None)
