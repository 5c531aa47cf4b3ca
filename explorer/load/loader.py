"""The load stage's entry: place the model (`load.place_model`), then the self-check
(`selfcheck.require`): a model whose figures the explorer cannot match is never returned.

Example:
    >>> lm = load_model("smollm2-135m")
    >>> lm.self_check.passed
    True
"""

from __future__ import annotations

import functools
import time

from explorer.core.model import LoadedModel
from explorer.load.place import place_model
from explorer.core.progress import Event
from explorer.load.selfcheck import require


@functools.wraps(place_model)
def load_model(*args, **kwargs) -> LoadedModel:
    lm = place_model(*args, **kwargs)
    start = time.perf_counter()
    require(lm)            # the explorer's logits must be the model's own, or no model
    progress = kwargs.get("progress")
    if progress:
        progress(Event("load", 1.0, note=f"checked {lm.spec}: {lm.self_check.describe()}"))
    lm.load_seconds += time.perf_counter() - start
    return lm


load_model.__doc__ = ("Load a causal LM and its tokenizer, and check that the explorer's logits "
                      "are the model's own (explorer/load/selfcheck.py); the arguments are "
                      "`load.place_model`'s:\n" + (place_model.__doc__ or "").split("\n", 1)[1])
