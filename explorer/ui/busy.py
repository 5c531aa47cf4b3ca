"""One step at a time on a browser session's state.

Every handler that reads the session state and writes it back returns a copy made from the state
it was *given*: two such handlers running at once each write their own copy, and the one that
ends last silently undoes the other. Issue 32 met exactly this: Apply pressed while ShortGPT was
planning measured the old plan, then wrote the old plan back over the method's. A handler that
only reads the state (generations, the report, a check) has the same fault in a milder form: it
shows a result of a state that is about to change.

So each such handler claims the session for the time it runs (`claims(doing, action)`), and one
pressed meanwhile is refused in one line that names the running step and what to do:
"a plan is being computed; Apply when it is ready". Nothing waits behind a long step, and no
button ever acts on a state that another step is changing. Steps that only read the plan
(`reads=True`: generations, checks, the report, Save) may run side by side; a step that changes
it runs alone. The claim is per browser session (gr.Request.session_hash): another visitor's
steps never refuse this one's.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from explorer.core.errors import ExplorerError
from explorer.ui.stop import around, session_key

_claims: dict[str, list[tuple[str, bool]]] = {}   # session -> (doing, reads only) of its steps
_guard = threading.Lock()


class Busy(ExplorerError):
    """A step was pressed while another step of the same session was changing its state."""


def running(request: Any) -> str | None:
    """What this session's claiming step is doing now ("a plan is being computed"), or None."""
    with _guard:
        held = _claims.get(session_key(request) or "")
        return held[0][0] if held else None


def _refusal(key: str, action: str, reads: bool) -> str | None:
    """The one line refusing `action` now, or None (call with the guard held)."""
    held = _claims.get(key, [])
    blocking = [doing for doing, shared in held if not (reads and shared)]
    return f"{blocking[0]}; {action} when it is ready" if blocking else None


def refuse_if_busy(request: Any, action: str, reads: bool = False) -> None:
    """Raise `Busy` in one line when a step of this session holds its state."""
    with _guard:
        line = _refusal(session_key(request) or "", action, reads)
    if line:
        raise Busy(line)


def _claim(request: Any, doing: str, action: str, reads: bool) -> tuple[str, tuple] | None:
    key = session_key(request)
    if not key:                 # a direct API call without a session: nothing to guard
        return None
    with _guard:
        line = _refusal(key, action, reads)
        if line:
            raise Busy(line)
        claim = (doing, reads)
        _claims.setdefault(key, []).append(claim)
    return key, claim


def _release(held: tuple[str, tuple] | None) -> None:
    if held:
        key, claim = held
        with _guard:
            left = _claims.get(key, [])
            if claim in left:
                left.remove(claim)
            if not left:
                _claims.pop(key, None)


def claims(doing: str, action: str, reads: bool = False) -> Callable[[Callable], Callable]:
    """Decorate a handler (taking a gr.Request) that reads or writes the session state.

    doing: what the step does while it runs, for the refusal of another ("the plan is being
    measured"); action: what the user pressed, for its own refusal ("Apply"); reads: the step
    only reads the plan (it may run beside other readers, never beside a step that changes the
    state). Generators hold the claim until they end."""
    def wrap(fn: Callable) -> Callable:
        return around(fn, lambda request: _claim(request, doing, action, reads), _release)
    return wrap


def forget(request: Any) -> None:
    """Drop the session's claims when its page closes (demo.unload)."""
    with _guard:
        _claims.pop(session_key(request) or "", None)
