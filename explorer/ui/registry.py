"""The process-level registry: one resident model shared by every session, and small caches.

A model takes hundreds of MB to GBs, so the process keeps exactly one: `ensure_model(spec)` returns it,
loading it first when another one (or none) is resident; loading a different model replaces it and
empties every cache that belonged to the old one. Sessions hold only names and keys (see
`state.py`); everything heavy lives here:

- texts: built-in sources by name, users' own texts by a hash of their content (a few, LRU);
- probes: probe results (CPU tensors) with their similarity matrices, by (model, text, sizes);
- baselines: perplexity of the unmodified model, by (model, text, protocol sizes);
- variants: variants rebuilt from recipe ops, by (model, ops) (LRU; a merged layer costs memory).

Sharing these caches is safe: their entries are fixed functions of their keys, and a `Variant`
never modifies the model outside `Variant.applied()`, which holds the model's lock.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any, Callable

from ..errors import ExplorerError, TextError
from ..load import LoadedModel
from ..recipe import replay
from ..session import get_model
from ..text import Texts, load_texts, user_texts
from ..variant import Variant

Progress = Callable[[float, str], None]


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def get_fresh(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None


class Registry:
    """Process-wide state; use the module-level `REGISTRY`."""

    def __init__(self) -> None:
        self._load_lock = threading.Lock()
        self._lock = threading.RLock()
        self.lm: LoadedModel | None = None
        self.texts: dict[str, Texts] = {}
        self.user_texts: _LRU = _LRU(8)
        self.probes: _LRU = _LRU(4)          # key -> dict(probe=ProbeResult, sims=..., adj=...)
        self.baselines: dict[tuple, Any] = {}
        self.variants: _LRU = _LRU(8)

    # -- model ------------------------------------------------------------------------------
    def resident(self) -> str | None:
        return self.lm.spec if self.lm is not None else None

    def _clear(self) -> None:
        with self._lock:
            self.lm = None
            self.probes.clear()
            self.baselines.clear()
            self.variants.clear()

    def ensure_model(self, spec: str, progress: Progress | None = None) -> LoadedModel:
        """The resident model for `spec`, loading it (and replacing the old one) when needed."""
        spec = (spec or "").strip()
        lm = self.lm
        if lm is not None and lm.spec == spec:
            return lm
        with self._load_lock:  # one load at a time; a second caller waits and then reuses it
            if self.lm is not None and self.lm.spec == spec:
                return self.lm
            # session.get_model releases the old model only after the new one passed every
            # weight-free check (a typo or an unknown hub id keeps the working model); our caches
            # reference the old model, so they are dropped at that moment.
            new = get_model(spec, progress=progress, on_release=self._clear)
            with self._lock:
                self.lm = new
            return new

    def model_for(self, state: dict, progress: Progress | None = None) -> LoadedModel:
        """The model a session works on (reloaded if another session replaced it meanwhile)."""
        spec = state.get("model")
        if not spec:
            raise ExplorerError("no model loaded yet: pick one in the Model tab and press Load")
        return self.ensure_model(spec, progress)

    # -- texts ------------------------------------------------------------------------------
    def add_user_text(self, text: str, name: str = "user") -> str:
        """Register a user's text; returns its key ("user:<hash>")."""
        texts = user_texts(text, name=name)
        key = "user:" + hashlib.sha256(text.encode("utf-8", errors="ignore")).hexdigest()[:16]
        with self._lock:
            self.user_texts.put(key, texts)
        return key

    def get_texts(self, key: str) -> Texts:
        with self._lock:
            if key.startswith("user:"):
                found = self.user_texts.get_fresh(key)
                if found is None:
                    raise TextError("your text is no longer in memory (the server keeps a few); "
                                    "paste or upload it again")
                return found
            if key not in self.texts:
                self.texts[key] = load_texts(key)
            return self.texts[key]

    # -- variants ---------------------------------------------------------------------------
    @staticmethod
    def ops_key(ops: list[dict]) -> str:
        return json.dumps(ops, sort_keys=True)

    def variant(self, lm: LoadedModel, ops: list[dict]) -> Variant:
        """The variant described by recipe `ops` (cached: merges and fits are not redone)."""
        if not ops:
            return Variant.identity(lm)
        key = (lm.spec, self.ops_key(ops))
        with self._lock:
            found = self.variants.get_fresh(key)
        if found is not None and found.lm is lm:
            return found
        v = replay(lm, ops)
        with self._lock:
            self.variants.put(key, v)
        return v

    def remember_variant(self, v: Variant, ops: list[dict]) -> None:
        with self._lock:
            self.variants.put((v.lm.spec, self.ops_key(ops)), v)


REGISTRY = Registry()
