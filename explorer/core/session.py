"""One resident model per process: `get_model(spec)` loads once and replaces the previous model.

The one home of the resident model, for the library, the CLI and the web app alike. A model costs
hundreds of MB to many GB; a web server or a notebook that keeps every model it ever loaded runs out
of memory after a few switches. Here the process holds at most one `LoadedModel`: asking for the
resident one returns it at once, asking for another one releases the resident model first
(dropped, garbage-collected, CUDA cache emptied) and then loads the new one, so the peak is one
model, not two. Callers that keep their own reference to an old `LoadedModel` keep it alive: hold
the spec (a string) or a recipe, not the model, and keep caches of model-derived values behind
`on_release(...)`, which empties them at the moment the model goes.

Everything a session (a browser tab, a CLI call) needs to come back to its work is small: the model
spec and a `Recipe` (JSON, a few hundred bytes); variants are rebuilt from it on demand and share
the resident model's unchanged layers.

Example:
    >>> lm = get_model("smollm2-135m")          # loads
    >>> get_model("smollm2-135m") is lm          # resident: no reload
    True
    >>> on_release(my_cache.clear)               # emptied whenever the resident model goes
    >>> lm2 = get_model("/models/other")         # releases SmolLM2 (and my_cache) first, then loads
"""

from __future__ import annotations

import gc
import threading
from typing import Any, Callable

import torch

from explorer.core import cache
from explorer.core.model import LoadedModel
from explorer.load.spec import resolve
from explorer.load.loader import load_model
from explorer.core.progress import Progress

_lock = threading.Lock()
# (key, model) of the resident model, or None; one tuple so that a lock-free read sees a pair
# that belongs together.
_current: tuple[tuple, LoadedModel] | None = None
_listeners: list[Callable[[], None]] = []


def _model_key(spec: str, device: str | None, dtype: Any, trust_remote_code: bool) -> tuple:
    return ((spec or "").strip(), device or "auto", str(dtype or "auto"), bool(trust_remote_code))


def current_model() -> LoadedModel | None:
    """The resident model, or None."""
    found = _current
    return found[1] if found is not None else None


def on_release(fn: Callable[[], None]) -> None:
    """Call `fn` (no arguments) every time the resident model is released, just before it goes:
    a cache of values computed from the model (probes, variants, perplexities) empties itself
    there, so the model's memory really goes. Registered once per process per function."""
    with _lock:
        if fn not in _listeners:
            _listeners.append(fn)


def release_model() -> None:
    """Drop the resident model and give its memory back (RAM, and the CUDA cache on a GPU).
    Memory held by other references to it (a request still running) goes when they end."""
    with _lock:
        _release_locked()


def _release_locked(extra: Callable[[], None] | None = None) -> None:
    """Release with `_lock` held: listeners first (they drop their references), then the model."""
    global _current
    cache.release_model_values()
    for fn in [*_listeners, *([extra] if extra else [])]:
        fn()
    had_cuda = _current is not None and _current[1].device.type == "cuda"
    _current = None
    gc.collect()
    if had_cuda:
        torch.cuda.empty_cache()


def get_model(spec: str, *, device: str | None = None, dtype: str | torch.dtype | None = None,
              trust_remote_code: bool = False, progress: Progress | None = None,
              on_release: Callable[[], None] | None = None) -> LoadedModel:
    """The resident model for these arguments, loading it (after releasing the old one) if needed.

    The old model is released only once the new one has passed every check that needs no
    weights (`load_model(before_weights=...)`): a path that does not exist, an unknown hub id, an
    unsupported or non-causal model is refused with the resident model still in place. Concurrent
    callers are serialised: a second caller asking for the same model waits and reuses it; a
    caller asking for the resident model while nothing loads gets it without waiting.

    on_release: called (besides the listeners registered with the module's `on_release`) just
    before the old model is released, only when the new one passed its checks.
    """
    global _current
    key = _model_key(spec, device, dtype, trust_remote_code)
    found = _current
    if found is not None and found[0] == key:
        return found[1]
    with _lock:
        if _current is not None and _current[0] == key:
            return _current[1]
        resolve(spec)            # cheap checks first: a typo must not unload the working model
        # The old model goes just before the new weights are read (and before the memory check,
        # so that the memory it frees counts): the peak is one model, not two.
        lm = load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                        progress=progress, before_weights=lambda: _release_locked(on_release))
        _current = (key, lm)
        return lm
