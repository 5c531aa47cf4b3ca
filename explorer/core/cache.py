"""One cache service: every cache of the process is a `Store`, bounded, locked, listed in one place.

A `Store` is a least-recently-used map with a bound in entries (`size`) and/or in bytes
(`budget_bytes`, with a `weigh(value) -> bytes`), a lock around every use, and `get_or_compute`,
which computes a missing entry once even when several threads ask for it at the same moment (the
others wait for it) and drops a result whose store was cleared meanwhile (a model released while
it was computed). A store can keep small JSON values on disk too (`disk=...`, under the cache
folder), so that a later process finds them.

Stores register themselves under their name in `STORES`; that is the one place to see, size and
clear them:

    >>> from explorer import cache
    >>> cache.stats()                       # {"tokens": {"entries": 3, "size": 8, ...}, ...}
    >>> cache.configure("variants", size=16)
    >>> cache.clear()                       # every store (cache.clear(disk=True): their disk too)

Stores made with `model_bound=True` hold values computed from the resident model (probes,
variants, token ids of its tokenizer, healing data); `explorer.core.session` calls
`release_model_values()` whenever the resident model goes, which empties them.

The stores of the package (tests/test_core_cache.py finds every `Store(...)` in the source and checks
this list): "tokens" (tokens.py), "calibration texts" (calibration.py), "dense figures" and
"dense states" and "dense answers" (dense_cache.py), "fitted results" (fitted.py),
"profiles" (profiles.py), "lm-eval task indexes" (tasks.py), and the app's "texts", "user texts",
"probes", "variants", "fitted variants" (ui/caches.py), "stop tokens" (ui/stop.py) and "damage maps"
(ui/damage_panel.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")

STORES: dict[str, "Store"] = {}
_STORES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Disk:
    """Where a store keeps its JSON-ready values on disk: one file per key under
    `cache_root()/folder`, named by `name(key)`. Read when memory misses, written on `put`;
    `LAYER_EXPLORER_DENSE_DISK=0`-style switches are the caller's (`enabled`)."""

    folder: str
    name: Callable[[Hashable], str]           # key -> file stem (a digest)
    enabled: Callable[[], bool] = lambda: True

    def path(self, key: Hashable) -> Path:
        from explorer.load.embedded import cache_root

        return cache_root() / self.folder / f"{self.name(key)}.json"


class Store(Generic[V]):
    """A bounded, locked LRU map; see the module's docstring."""

    def __init__(self, name: str, *, size: int | None = None, budget_bytes: int | None = None,
                 weigh: Callable[[Any], int] | None = None, model_bound: bool = False,
                 disk: Disk | None = None) -> None:
        if budget_bytes is not None and weigh is None:
            raise ValueError(f"store '{name}' has a byte budget but no weigh function")
        self.name = name
        self.size = size                      # most entries kept (None: no limit)
        self.budget_bytes = budget_bytes      # most bytes kept (None: no limit)
        self.weigh = weigh
        self.model_bound = model_bound
        self.disk = disk
        self.lock = threading.RLock()
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._inflight: dict[Hashable, threading.Lock] = {}
        self._generation = 0                  # bumped by clear(): late results are dropped
        with _STORES_LOCK:           # the first store of a name is the process's (a test's
            STORES.setdefault(name, self)   # own instance of a class does not replace it)

    # -- reading ------------------------------------------------------------------------------
    def get(self, key: Hashable, default: Any = None) -> V | Any:
        """The value for `key` (now the most recently used), from memory or disk; `default`."""
        with self.lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        if self.disk is not None and self.disk.enabled():
            try:
                data = json.loads(self.disk.path(key).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return default
            if isinstance(data, dict) and data.get("key") == self.disk.name(key) \
                    and "value" in data:
                self._keep(key, data["value"])
                return data["value"]
        return default

    def __contains__(self, key: Hashable) -> bool:
        with self.lock:
            return key in self._items

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)

    def values(self) -> list[V]:
        """A snapshot of the values in memory, least recently used first."""
        with self.lock:
            return list(self._items.values())

    def items(self) -> list[tuple[Hashable, V]]:
        with self.lock:
            return list(self._items.items())

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (0 without a weigh function)."""
        if self.weigh is None:
            return 0
        with self.lock:
            return sum(self.weigh(v) for v in self._items.values())

    # -- writing ------------------------------------------------------------------------------
    def put(self, key: Hashable, value: V) -> bool:
        """Keep `value` (and write it to disk when the store has one). Returns False when it was
        not kept in memory: larger than the whole byte budget."""
        kept = self._keep(key, value)
        if self.disk is not None and self.disk.enabled():
            path = self.disk.path(key)
            write_atomic(path, json.dumps({"key": self.disk.name(key), "value": value}))
        return kept

    def _keep(self, key: Hashable, value: V) -> bool:
        with self.lock:
            self._items.pop(key, None)
            if self.budget_bytes is not None and self.weigh(value) > self.budget_bytes:
                return False
            self._items[key] = value
            self._evict()
            return True

    def pop(self, key: Hashable, default: Any = None) -> V | Any:
        with self.lock:
            return self._items.pop(key, default)

    def _evict(self) -> None:
        """Drop the least recently used entries beyond the bounds (lock held)."""
        while self.size is not None and len(self._items) > self.size:
            self._items.popitem(last=False)
        if self.budget_bytes is not None:
            total = sum(self.weigh(v) for v in self._items.values())
            while self._items and total > self.budget_bytes:
                _, v = self._items.popitem(last=False)
                total -= self.weigh(v)

    def resize(self, size: int | None = ..., budget_bytes: int | None = ...) -> None:
        """New bounds (leave one out to keep it; None: no limit); evicts down to them."""
        with self.lock:
            if size is not ...:
                self.size = size
            if budget_bytes is not ...:
                if budget_bytes is not None and self.weigh is None:
                    raise ValueError(f"store '{self.name}' cannot weigh its values")
                self.budget_bytes = budget_bytes
            self._evict()

    def clear(self, disk: bool = False) -> None:
        """Forget every entry (results being computed now are not kept); `disk`: the files too."""
        with self.lock:
            self._generation += 1
            self._items.clear()
        if disk and self.disk is not None:
            from explorer.load.embedded import cache_root

            for f in (cache_root() / self.disk.folder).glob("*.json"):
                f.unlink(missing_ok=True)

    # -- computing once -----------------------------------------------------------------------
    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value for `key`, computing it with `compute()` when missing. Concurrent callers
        with the same key wait for the first one's result; `compute` runs outside the store's
        lock. A result computed across a `clear()` is returned but not kept."""
        found = self.get(key)
        if found is not None:
            return found
        with self.lock:
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                found = self._items.get(key)
                generation = self._generation
            if found is not None:
                return found
            try:
                value = compute()
                with self.lock:
                    if generation == self._generation:
                        self._keep(key, value)
                return value
            finally:
                with self.lock:
                    self._inflight.pop(key, None)

    def __repr__(self) -> str:
        return f"Store({self.name!r}, entries={len(self)}, size={self.size}, " \
               f"budget_bytes={self.budget_bytes})"


# -- the one place to see, size and clear the stores ---------------------------------------------

def get_store(name: str) -> Store:
    from explorer.core.errors import ExplorerError

    if name not in STORES:
        raise ExplorerError(f"unknown cache '{name}'; known: {', '.join(sorted(STORES))}")
    return STORES[name]


def configure(name: str, *, size: int | None = ..., budget_bytes: int | None = ...) -> None:
    """Resize one store (by its name in `STORES`)."""
    get_store(name).resize(size=size, budget_bytes=budget_bytes)


def clear(disk: bool = False) -> None:
    """Empty every store (and what they keep on disk when `disk`)."""
    for store in list(STORES.values()):
        store.clear(disk=disk)


def release_model_values() -> None:
    """Empty the stores of values computed from the resident model (`session` calls this when
    the model goes, so its memory really goes)."""
    for store in list(STORES.values()):
        if store.model_bound:
            store.clear()


def stats() -> dict[str, dict]:
    """Every store's entries, bounds and bytes held."""
    return {name: {"entries": len(s), "size": s.size, "budget_bytes": s.budget_bytes,
                   "bytes": s.nbytes, "model_bound": s.model_bound, "disk": s.disk is not None}
            for name, s in sorted(STORES.items())}


def digest(*parts: Any) -> str:
    """A file-name-safe fingerprint of JSON-ready parts (for `Disk.name`)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def write_atomic(path: Path, text: str | bytes) -> bool:
    """Write `path` through a temporary file and a rename: a reader sees all or nothing. A cache
    that cannot be written (read-only disk) is not an error: returns False."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w",
                       **({} if isinstance(text, bytes) else {"encoding": "utf-8"})) as f:
            f.write(text)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
