"""The app's shared caches: what sessions may reuse, bounded, behind methods that take the lock.

The resident model itself lives in `explorer.core.session` (one per process, for the library, the CLI
and the app alike); this registry only keeps values computed from it and empties them when that
model is released (`session.on_release`). The original model's perplexity is cached by
`explorer.evaluate.perplexity` itself (the dense cache, shared with the CLI). Sessions hold only names and
keys (see `state.py`); everything heavy lives here, each cache a bounded store of the process's one
cache service (`explorer.core.cache`, where they are listed, sized and cleared with the others):

    texts       built-in sources by name ("wiki", "news", "wikitext2")
    user_texts  users' own texts by a hash of their content                "user:<sha256[:16]>"
    probes      a probe of the calibration text with its adjacent-layer profiles and the similarity
                matrices asked so far (`ProbeEntry`), by `ProbeKey`
    variants    variants rebuilt from recipe ops, by (model, ops) (a merged layer costs memory)
    fitted      variants with fitted layers (a healing, streamline's or CoMe's fits), by (model,
                ops): kept apart from `variants`, so that browsing other plans never drops the
                healing a session shows (its replay would train again, and its recipe would come
                without the fitted tensors: `explorer.apply.fitted` holds them weakly)

`Store.get_or_compute` computes a missing entry once even when several sessions ask for it at the
same moment (the others wait for it), outside the store's lock, and drops a result that belongs to
a model released meanwhile. Sharing is safe: entries are fixed functions of their keys, and a
`Variant` never modifies the model outside `Variant.applied()`, which holds the model's lock.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from explorer.core import session
from explorer.core.cache import Store
from explorer.core.errors import ExplorerError, TextError
from explorer.core.model import LoadedModel
from explorer.core.progress import Progress
from explorer.probe.probe import ProbeResult
from explorer.apply.fitted import is_fitted
from explorer.apply.recipe import replay
from explorer.probe.text import Texts, load_texts, user_texts
from explorer.core.variant import Variant
from explorer.ui.state import ProbeKey, Session

# Entries each cache keeps (least recently used go first).
SIZES = {"texts": 4, "user_texts": 8, "probes": 4, "variants": 8, "fitted": 8}


@dataclass
class ProbeEntry:
    """A probe and what the Analyse tab draws from it (CPU values)."""

    probe: ProbeResult
    adjacent: dict[str, np.ndarray]           # measure -> (L,) adjacent-layer profile
    seconds: float                            # the probe's own time
    sims: dict[str, np.ndarray] = field(default_factory=dict)   # measure -> (L+1, L+1) matrix


class AppCaches:
    """The app's caches; use the module-level `APP_CACHES`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()      # guards the similarity matrices inside probe entries
        self.texts: Store[Texts] = Store("texts", size=SIZES["texts"])
        self.user_texts: Store[Texts] = Store("user texts", size=SIZES["user_texts"])
        self.probes: Store[ProbeEntry] = Store("probes", size=SIZES["probes"], model_bound=True)
        self.variants: Store[Variant] = Store("variants", size=SIZES["variants"],
                                              model_bound=True)
        self.fitted: Store[Variant] = Store("fitted variants", size=SIZES["fitted"],
                                            model_bound=True)
        session.on_release(self.clear_model_caches)

    # -- model ------------------------------------------------------------------------------
    @property
    def lm(self) -> LoadedModel | None:
        """The resident model (`explorer.core.session.current_model()`), or None."""
        return session.current_model()

    def clear_model_caches(self) -> None:
        """Forget everything computed from the resident model (called when it is released; the
        process's stores are also emptied by `explorer.core.cache.release_model_values`)."""
        self.probes.clear()
        self.variants.clear()
        self.fitted.clear()

    @staticmethod
    def ensure_model(spec: str, progress: Progress | None = None) -> LoadedModel:
        """The resident model for `spec`, loading it (and replacing the old one) when needed."""
        return session.get_model((spec or "").strip(), progress=progress)

    def model_for(self, state: Session, progress: Progress | None = None) -> LoadedModel:
        """The model a session works on (reloaded if another session replaced it meanwhile)."""
        if not state.model:
            raise ExplorerError("no model loaded yet: pick one in the Model tab and press Load")
        return self.ensure_model(state.model, progress)

    # -- caches (explorer.core.cache stores: bounded, locked, computed once) ---------------------------
    def probe(self, key: ProbeKey, compute: Callable[[], ProbeEntry]) -> ProbeEntry:
        return self.probes.get_or_compute(key, compute)

    def similarity(self, entry: ProbeEntry, measure: str,
                   compute: Callable[[ProbeResult], np.ndarray]) -> np.ndarray:
        """One measure's matrix for a probe entry (`compute(entry.probe)` the first time)."""
        with self._lock:
            found = entry.sims.get(measure)
        if found is not None:
            return found
        matrix = compute(entry.probe)
        with self._lock:
            return entry.sims.setdefault(measure, matrix)

    # -- texts ------------------------------------------------------------------------------
    def add_user_text(self, text: str, name: str = "user") -> str:
        """Register a user's text; returns its key ("user:<hash>")."""
        texts = user_texts(text, name=name)
        key = "user:" + hashlib.sha256(text.encode("utf-8", errors="ignore")).hexdigest()[:16]
        self.user_texts.put(key, texts)
        return key

    def get_texts(self, key: str) -> Texts:
        if key.startswith("user:"):
            found = self.user_texts.get(key)
            if found is None:
                raise TextError("your text is no longer in memory (the server keeps a few); "
                                "paste or upload it again")
            return found
        return self.texts.get_or_compute(key, lambda: load_texts(key))

    # -- variants ---------------------------------------------------------------------------
    @staticmethod
    def ops_key(ops: list[dict]) -> str:
        return json.dumps(ops, sort_keys=True)

    def variant(self, lm: LoadedModel, ops: list[dict]) -> Variant:
        """The variant described by recipe `ops` (cached: merges and fits are not redone)."""
        if not ops:
            return Variant.identity(lm)
        found = self._store(ops).get_or_compute((lm.spec, self.ops_key(ops)),
                                                lambda: replay(lm, ops))
        return found if found.lm is lm else replay(lm, ops)

    def _store(self, ops: list[dict]) -> Store[Variant]:
        return self.fitted if any(is_fitted(op) for op in ops) else self.variants

    def remember_variant(self, v: Variant, ops: list[dict]) -> None:
        """Keep a variant built elsewhere (a method's plan, a healing) under its recipe `ops`; one
        with fitted ops goes to the store of fitted variants."""
        self._store(ops).put((v.lm.spec, self.ops_key(ops)), v)


APP_CACHES = AppCaches()
