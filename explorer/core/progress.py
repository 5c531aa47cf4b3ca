"""Progress of long work as small events that carry data, and a cancel token kept apart from them.

The pipeline never writes sentences for people into its progress: it reports an `Event` (what
stage runs, how far, and the figures it has: a training step's loss, a held-out perplexity, the
running perplexity and its band). The edges turn events into what people see: the CLI prints
`event.describe()`, the app feeds its progress bar and draws the healing curve from the fields
(no parsing of messages).

Stopping is a `CancelToken`, not a message: the app's Stop sets the session's token, and
`watched(progress, token)` checks it at every event, raising `Cancelled` there (the pipeline's
context managers put the model back on the way out). `Cancelled` is an `ExplorerError`, so the
CLI prints it as one line, and the app reports it as a stop, not as an error.

Example:
    >>> seen = []
    >>> token = CancelToken()
    >>> report = watched(seen.append, token)
    >>> report(Event("perplexity", 0.5, step=4, total=8, unit="windows", figure=23.4))
    >>> seen[0].describe()
    'perplexity: 4/8 windows, 23.4 so far'
    >>> token.cancel()
    >>> report(Event("perplexity", 0.6))
    Traceback (most recent call last):
    ...
    explorer.core.progress.Cancelled: stopped
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Callable

from explorer.core.errors import ExplorerError


@dataclass(frozen=True)
class Event:
    """One progress report of a long step. Only `stage` and `fraction` are required."""

    stage: str                          # what runs: "load", "probe", "perplexity", "heal", ...
    fraction: float                     # done, in [0, 1]
    step: int | None = None             # units done (windows, optimiser steps, candidates ...)
    total: int | None = None            # of how many (None: not known yet)
    unit: str = ""                      # what a step counts: "windows", "steps", "layers" ...
    loss: float | None = None           # a training step's loss
    held_out: float | None = None       # held-out perplexity (healing), the latest measured
    figure: float | None = None         # a running figure: the perplexity of the windows so far
    band: tuple[float, float] | None = None   # its 95% band over the windows still to come
    seconds: float | None = None        # time the stage has run
    note: str = ""                      # what is being done, in words (figures go in the fields)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", min(1.0, max(0.0, float(self.fraction))))

    def within(self, lo: float, hi: float, prefix: str = "") -> "Event":
        """The same event as part of a larger step that runs from `lo` to `hi`, its stage named
        `prefix: stage` when a prefix is given (a model among several, a task among several)."""
        stage = f"{prefix}: {self.stage}" if prefix else self.stage
        return replace(self, fraction=lo + (hi - lo) * self.fraction, stage=stage)

    def describe(self) -> str:
        """The sentence for people: 'heal layerwise: step 12/200, loss 0.4321, held-out ppl 31.2
        (14 s)', 'perplexity: 8/32 windows, 23.41 so far (95% band 22.8-24.1)'."""
        parts = []
        if self.note:
            parts.append(self.note)
        if self.step is not None:
            of = f"/{self.total}" if self.total is not None else ("/?" if self.unit == "steps"
                                                                   else "")
            if self.unit == "steps":
                parts.append(f"step {self.step}{of}")
            else:
                parts.append(f"{self.step}{of} {self.unit}".rstrip())
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.held_out is not None and math.isfinite(self.held_out):
            parts.append(f"held-out ppl {self.held_out:.4g}")
        if self.figure is not None:
            text = f"{self.figure:.4g} so far" if self.fraction < 1 else f"{self.figure:.4g}"
            if self.band is not None:
                text += f" (95% band {self.band[0]:.4g}-{self.band[1]:.4g})"
            parts.append(text)
        text = ", ".join(parts)
        if self.seconds is not None:
            text += f" ({self.seconds:.0f} s)"
        return f"{self.stage}: {text}" if text else self.stage


Progress = Callable[[Event], None]


class Cancelled(ExplorerError):
    """The work was stopped through its cancel token (the app's Stop button)."""


class CancelToken:
    """Set once to stop the work that checks it; thread-safe (the app sets it from another
    request's thread). `error` makes the exception `check` raises (the app's says Stop was
    pressed)."""

    def __init__(self, error: Callable[[], Cancelled] = lambda: Cancelled("stopped")) -> None:
        self._flag = threading.Event()
        self._error = error

    def cancel(self) -> None:
        self._flag.set()

    def reset(self) -> None:
        self._flag.clear()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def check(self) -> None:
        """Raise `Cancelled` when the token was set."""
        if self._flag.is_set():
            raise self._error()


def watched(progress: Progress | None, token: CancelToken | None) -> Progress | None:
    """`progress` with the token checked first at every event (work stops at its next report)."""
    if token is None:
        return progress

    def report(event: Event) -> None:
        token.check()
        if progress is not None:
            progress(event)
    return report


def scaled(progress: Progress | None, lo: float, hi: float, prefix: str = "") -> Progress | None:
    """A progress callable for a part of a larger step (see `Event.within`)."""
    if progress is None:
        return None
    return lambda e: progress(e.within(lo, hi, prefix))


def printer(stream) -> Progress:
    """The CLI's edge: one line per event on `stream` (stderr), carriage-returned."""
    def report(event: Event) -> None:
        stream.write(f"\r{event.describe()[:160]:<160}")
        stream.flush()
    return report
