"""One resident model per process: `get_model(spec)` loads once and replaces the previous model.

The library-level model registry. A model costs hundreds of MB to many GB; a web server or a
notebook that keeps every model it ever loaded runs out of memory after a few switches. Here the
process holds at most one `LoadedModel`: asking for the resident one returns it at once, asking for
another one releases the resident model first (dropped, garbage-collected, CUDA cache emptied) and
then loads the new one, so the peak is one model, not two. Callers that keep their own reference to
an old `LoadedModel` keep it alive: hold the spec (a string) or a recipe, not the model.

Everything a session (a browser tab, a CLI call) needs to come back to its work is small: the model
spec and a `Recipe` (JSON, a few hundred bytes); variants are rebuilt from it on demand and share the
resident model's unchanged layers.

Example:
    >>> lm = get_model("smollm2-135m")          # loads
    >>> get_model("smollm2-135m") is lm          # resident: no reload
    True
    >>> lm2 = get_model("/models/other")         # releases SmolLM2 first, then loads
"""

from __future__ import annotations

import gc
import threading
from typing import Any, Callable

import torch

from .load import LoadedModel, Progress, load_model, resolve

_lock = threading.Lock()
_resident: LoadedModel | None = None
_key: tuple | None = None


def _model_key(spec: str, device: str | None, dtype: Any, trust_remote_code: bool) -> tuple:
    return ((spec or "").strip(), device or "auto", str(dtype or "auto"), bool(trust_remote_code))


def current_model() -> LoadedModel | None:
    """The resident model, or None."""
    return _resident


def release_model() -> None:
    """Drop the resident model and give its memory back (RAM, and the CUDA cache on a GPU).
    Memory held by other references to it (a request still running) goes when they end."""
    with _lock:
        _release_locked()


def _release_locked() -> None:
    """Release with `_lock` held."""
    global _resident, _key
    had_cuda = _resident is not None and _resident.device.type == "cuda"
    _resident, _key = None, None
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
    callers are serialised: a second caller asking for the same model waits and reuses it.

    on_release: called just before the old model is released (only when the new one passed its
    checks): a caller that keeps its own references or caches of the old model (the web app's
    registry) drops them there, so the memory really goes.
    """
    global _resident, _key
    key = _model_key(spec, device, dtype, trust_remote_code)
    with _lock:
        if _resident is not None and _key == key:
            return _resident
        resolve(spec)            # cheap checks first: a typo must not unload the working model
        # The old model goes just before the new weights are read (and before the memory check,
        # so that the memory it frees counts): the peak is one model, not two.
        def release() -> None:
            if on_release is not None:
                on_release()
            _release_locked()

        lm = load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                        progress=progress, before_weights=release)
        _resident, _key = lm, key
        return lm
