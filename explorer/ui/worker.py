"""A long step run in a worker thread while its handler streams what it produces to the page.

Gradio shows a generator handler's yields as they come. The work itself runs in a thread that
gets a copy of the handler's context: gr.Progress finds its event through context variables,
which a bare thread does not inherit (its reports would show nothing). What the work hands over
(`put`) reaches the handler in batches, at most every `every` seconds, so that a fast stream of
items does not send a figure to the page for each one.
"""

from __future__ import annotations

import contextvars
import math
import queue
import threading
import time
from typing import Any, Callable, Generator, TypeVar

T = TypeVar("T")
STREAM_SECONDS = 1.0      # a live figure is redrawn at most this often (each redraw is sent whole)


def streamed(job: Callable[[Callable[[Any], None]], T], name: str,
             every: float = STREAM_SECONDS) -> Generator[list, None, T]:
    """Run `job(put)` in a worker thread; yield the items it put since the last yield (at most
    every `every` seconds, 0: as soon as there are any) while it runs; return its result, or
    raise its error in this thread. Items put after the last yield are left to the caller's
    final view."""
    items: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            box["out"] = job(items.put)
        except BaseException as exc:  # re-raised in the handler's thread below
            box["error"] = exc

    worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                              name=name)
    worker.start()
    shown, new = -math.inf, []
    while worker.is_alive() or not items.empty():
        worker.join(0.1)
        while not items.empty():
            new.append(items.get())
        if new and time.monotonic() - shown >= every:
            shown = time.monotonic()
            yield new
            new = []
    if "error" in box:
        raise box["error"]
    return box["out"]
