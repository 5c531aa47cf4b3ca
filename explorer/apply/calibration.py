"""Calibration texts that recipe ops were fitted on: their fingerprint and where to find them again.

A recipe op whose weights were fitted from text (streamline, come with recovery, heal) records
`{"source": "wiki" | None, "sha256": text_digest(text), ...}`. Replaying it needs the same text:
`find_calibration` returns it from this process's memo (the texts fitted on recently, the user's
own included) or reloads a builtin source and checks its fingerprint. Across processes only
builtin sources can be reloaded, unless the recipe's fitted tensors were saved with it
(`explorer.apply.recipe.save_recipe`), in which case no text is needed at all.

A neutral module: the plan stage (`methods/`), the heal stage (`heal/`) and the recipe all use it,
and it imports none of them.

Example:
    >>> key = remember_text(my_text)                  # while fitting
    >>> find_calibration({"source": None, "sha256": key}) == my_text
    True
"""

from __future__ import annotations

import hashlib

from explorer.core.cache import Store
from explorer.core.errors import ExplorerError, LayerError
from explorer.probe.text import load_texts

# Calibration texts fitted on in this process, by digest: the last few, so that a recipe made from
# the user's own text replays within the same session.
TEXTS: Store = Store("calibration texts", size=8)


def text_digest(text: str) -> str:
    """A short fingerprint of a text (the first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def remember_text(text: str) -> str:
    """Keep `text` for later replays in this process; returns its digest."""
    key = text_digest(text)
    TEXTS.put(key, text)
    return key


def find_calibration(ref: dict) -> str:
    """The calibration text a recipe op was fitted on: from this process, or a builtin source."""
    key, source = ref.get("sha256"), ref.get("source")
    found = TEXTS.get(key) if isinstance(key, str) else None
    if found is not None:
        return found
    if source:
        try:
            text = load_texts(source).calibration
        except ExplorerError:
            text = ""
        if text_digest(text) == key:
            return text
        raise LayerError(f"the calibration text '{source}' has changed since this recipe was made "
                         "(fingerprint differs): its fitted layer cannot be rebuilt exactly")
    raise LayerError("this recipe step was fitted on calibration text that is not available in "
                     "this session (user-supplied text); run the method again with that text "
                     "instead of replaying the recipe")
