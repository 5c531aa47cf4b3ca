"""Cached residual-stream states and dense perplexity figures, so that measuring a variant only
pays for the layers it changed.

This is the one dense-state service of the process: every cached answer of the dense model is
keyed by a `DenseKey`, the fingerprint of what determines it: the model's weights
(`weights_fingerprint`), the windows (their token ids, which fix the text, the window length, the
BOS rule and the token cap), the dtypes, the device and the protocol (what was computed from them:
perplexity's figure and states, or healing's fit/held-out split). The variant prefix is the dense
model's (slots 0..L-1 unchanged); `PrefixStates` carries another variant's prefix with its states.
Three things are cached:

- The dense "before" figure: a small dict (a `PPLResult`'s fields), kept in this process for every
  caller (CLI, API, every app session) and on disk under the cache folder, so that a second
  `compress` in a new process does not recompute it either. The dense states go to disk too (one
  file per boundary, within LAYER_EXPLORER_STATE_DISK_MB, default 1 GB, least recently used
  first out), so that process's "after" figure starts from the boundary before its first change.
- `PrefixStates`: the residual stream of a reference variant (the dense model, or a search's
  current model) at some of its layer boundaries, for every window. A variant whose slots 0..k-1
  are the reference's starts its pass at the largest stored boundary b <= k with the stored
  states: slots before b are not run. Slots b..k-1 are the reference's own layers, so the result
  is the full pass's, to floating-point rounding (docs/search.md).
- `DenseAnswers`: healing's dense targets (heal/data.py's `HealData`) on its calibration windows:
  float32 CPU states per boundary and the top-k next-token distributions, filled on demand
  (`DenseCache.answers`; the last set is kept, dropped when the resident model goes).

Memory: one boundary of W windows of T tokens holds W x T x H values of the model's dtype (16k
tokens x 576 x 4 bytes = 38 MB for SmolLM2). `checkpoints` keeps every boundary when they fit in
the budget and evenly spaced ones otherwise (a variant then re-runs a few unchanged layers from
the checkpoint below its first change). The process-wide `CACHE` holds states of several
(model, text) pairs within one budget (LAYER_EXPLORER_STATE_CACHE_MB, default 512 MB on CPU and
2 GB on CUDA), dropping the least recently used; figures are a few hundred bytes each.

Example:
    >>> key = dense_key(lm, windows)                 # weights fingerprint + windows + dtypes
    >>> CACHE.figure(key)                            # the dense figure, if measured before
    >>> ref = CACHE.states(key, lm)                  # PrefixStates of the dense model, or None
    >>> start, states = ref.start_for(variant)       # run the variant from boundary `start`
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from explorer.core.cache import Disk, Store
from explorer.core.dense_key import DenseKey
from explorer.core.model import LoadedModel
from explorer.core.settings import get
from explorer.core.variant import Variant

DEFAULT_BUDGET_MB = {"cpu": 512, "cuda": 2048}
MAX_FIGURES = 256                            # figures kept in memory (a few hundred bytes each)


def default_budget(device: torch.device | str) -> int:
    """Bytes of cached states allowed on this device type: LAYER_EXPLORER_STATE_CACHE_MB, else
    512 MB on CPU and 2 GB on CUDA."""
    chosen = get("LAYER_EXPLORER_STATE_CACHE_MB")
    if chosen is not None:
        return chosen
    kind = torch.device(device).type
    return DEFAULT_BUDGET_MB.get(kind, DEFAULT_BUDGET_MB["cpu"]) * 2**20


# -- prefix states ---------------------------------------------------------------------------------

def first_change(reference: Variant, variant: Variant) -> int:
    """The first slot where `variant` differs from `reference`: slots 0..k-1 are the same modules.

    Original layers compare by index, new layers (merges, trained layers, sub-block drops) by
    identity, so a variant built from the reference's edits shares the reference's prefix."""
    if reference.lm is not variant.lm:
        return 0
    k = 0
    for a, b in zip(reference.slots, variant.slots):
        if a is b or (isinstance(a, int) and isinstance(b, int) and a == b):
            k += 1
        else:
            break
    return k


def checkpoints(num_layers: int, boundary_bytes: int, budget_bytes: int) -> list[int]:
    """Boundaries to store for a reference of `num_layers` slots within `budget_bytes`.

    Boundary 0 (the embeddings) costs nothing to recompute and boundary L serves no variant that
    changes a layer, so the candidates are 1..L-1: all of them when they fit, else n evenly spaced
    ones, n = budget // boundary_bytes (none when one does not fit)."""
    inner = list(range(1, num_layers))
    n = budget_bytes // boundary_bytes if boundary_bytes > 0 else len(inner)
    if n >= len(inner):
        return inner
    if n <= 0:
        return []
    return sorted({round(k * num_layers / (n + 1)) for k in range(1, n + 1)} & set(inner))


@dataclass
class PrefixStates:
    """The residual stream of `variant` at some boundaries, for every window of `ids`.

    states: boundary -> (W, T, H) in the model's dtype, on the model's device, rows in window order.
    """

    variant: Variant
    ids: torch.Tensor                     # (W, T) the windows these states belong to (CPU)
    states: dict[int, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states.values())

    def start_for(self, variant: Variant) -> tuple[int, torch.Tensor | None]:
        """(boundary, states there) from which `variant` can be run: the largest stored boundary
        at or before its first change; (0, None) when there is none (a full pass)."""
        k = first_change(self.variant, variant)
        usable = [b for b in self.states if b <= k and b <= variant.num_layers]
        if not usable:
            return 0, None
        b = max(usable)
        return b, self.states[b]


class DenseAnswers:
    """Healing's dense answers on its windows (one `heal_key`): `ids` (W, T) fitted on,
    `held_out` (V, T) watched, `states` boundary -> (W, T, H) float32 CPU, `topk` (indices,
    log-probs) (W, T, k), filled by `explorer.heal.data.HealData` under `lock` (two sessions
    healing at once compute each thing once). No reference to the model: it never keeps one
    alive."""

    def __init__(self, key: DenseKey, ids: torch.Tensor, held_out: torch.Tensor) -> None:
        self.key, self.ids, self.held_out = key, ids, held_out
        self.states: dict[int, torch.Tensor] = {}
        self.topk: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lock = threading.RLock()


# -- the process-wide cache ------------------------------------------------------------------------

class DenseCache:
    """Dense figures and dense states, shared by every caller in the process (thread-safe).

    `building(key)` serialises the work for one key: a second session that asks for the same dense
    figure waits for the first and then finds it cached instead of computing it again.
    """

    def __init__(self, budget_bytes: int | None = None, disk: bool | None = None) -> None:
        self._lock = threading.RLock()
        self._budget = budget_bytes
        self._disk = disk
        # both are stores of the cache service (`explorer.core.cache`): figures (JSON-ready dicts) in
        # memory and on disk; states within a byte budget, as tensors only, so that a cached
        # entry never keeps a model alive (a PrefixStates is rebuilt around the caller's model)
        self._figures: Store[dict] = Store(
            "dense figures", size=MAX_FIGURES,
            disk=Disk("dense-ppl", name=lambda key: key.digest(), enabled=lambda: self.disk))
        self._states: Store[tuple[torch.Tensor, dict[int, torch.Tensor]]] = Store(
            "dense states", budget_bytes=self.budget(), weigh=_states_bytes)
        # healing's answers (tens of MB): the last set, emptied when the resident model goes
        self._answers: Store[DenseAnswers] = Store("dense answers", size=1, model_bound=True)
        self._building: dict[DenseKey, tuple[threading.Lock, int]] = {}   # lock, its users

    # budget and disk are read late so that tests and the app can set the environment first
    def budget(self, device: torch.device | str = "cpu") -> int:
        return self._budget if self._budget is not None else default_budget(device)

    def set_budget(self, budget_bytes: int | None) -> None:
        """Set the states budget in bytes (None: back to the default); evicts down to it."""
        with self._lock:
            self._budget = budget_bytes
            self._states.resize(budget_bytes=self.budget())

    @property
    def disk(self) -> bool:
        if self._disk is not None:
            return self._disk
        return get("LAYER_EXPLORER_DENSE_DISK")

    @contextmanager
    def building(self, key: DenseKey) -> Iterator[None]:
        """One builder per key at a time (the others wait, then find its result); the key's lock
        is forgotten once nobody holds or waits for it, so keys do not pile up."""
        with self._lock:
            lock, users = self._building.get(key, (threading.Lock(), 0))
            self._building[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._building[key]
                if users == 1:
                    del self._building[key]
                else:
                    self._building[key] = (lock, users - 1)

    # figures
    def figure(self, key: DenseKey) -> dict | None:
        """The dense figure for `key`: from memory, else from disk (then kept in memory)."""
        fig = self._figures.get(key)
        return dict(fig) if isinstance(fig, dict) else None

    def store_figure(self, key: DenseKey, figure: dict) -> None:
        """Keep a dense figure (JSON-ready dict) in memory and, unless disabled, on disk."""
        self._figures.put(key, dict(figure))

    # states
    def states(self, key: DenseKey, lm: LoadedModel) -> PrefixStates | None:
        """The dense states for `key` as PrefixStates of `lm`'s dense model, or None."""
        entry = self._states.get(key)
        if entry is None:
            return None
        return PrefixStates(Variant.identity(lm), entry[0], dict(entry[1]))

    def store_states(self, key: DenseKey, ref: PrefixStates) -> bool:
        """Keep `ref`, evicting the least recently used states to stay within the budget; states
        larger than the whole budget are not kept (returns False)."""
        with self._lock:
            self._states.resize(budget_bytes=self.budget(ref.variant.lm.device))
            if not ref.states:
                self._states.pop(key)
                return False
            return self._states.put(key, (ref.ids, dict(ref.states)))

    # healing's answers
    def answers(self, key: DenseKey, ids: torch.Tensor, held_out: torch.Tensor) -> DenseAnswers:
        """Healing's answers for `key` (made by `heal_key` from `ids` and `held_out`): the kept
        set when the key matches, else a new empty one (which replaces it)."""
        return self._answers.get_or_compute(key, lambda: DenseAnswers(key, ids, held_out))

    @property
    def nbytes(self) -> int:
        """Bytes of states held now."""
        return self._states.nbytes

    # states on disk: one file per boundary, read one at a time
    def save_states(self, key: DenseKey, ref: PrefixStates) -> None:
        """Write `ref`'s boundaries under the cache folder (unless disabled), then drop the
        least recently written entries beyond the disk budget. Failures to write are ignored."""
        if not self.disk or not ref.states:
            return
        folder = _states_dir() / key.digest()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for b, t in ref.states.items():
                target = folder / f"b{b}.pt"
                if not target.exists():
                    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
                    with os.fdopen(fd, "wb") as f:
                        torch.save(t.detach().cpu().contiguous(), f)
                    os.replace(tmp, target)
            os.utime(folder)
        except (OSError, RuntimeError):
            return
        _trim_disk(_states_dir(), get("LAYER_EXPLORER_STATE_DISK_MB"))

    def states_from_disk(self, key: DenseKey, variant: Variant, ids: torch.Tensor
                         ) -> PrefixStates | None:
        """The stored dense boundary nearest below `variant`'s first change, read from disk, as
        PrefixStates of the dense model (one boundary); None when there is none."""
        if not self.disk:
            return None
        folder = _states_dir() / key.digest()
        k = first_change(Variant.identity(variant.lm), variant)
        have = sorted(int(f.stem[1:]) for f in folder.glob("b*.pt") if f.stem[1:].isdigit()) \
            if folder.is_dir() else []
        usable = [b for b in have if b <= k]
        if not usable:
            return None
        b = usable[-1]
        try:
            t = torch.load(folder / f"b{b}.pt", map_location=variant.lm.device, weights_only=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if tuple(t.shape[:2]) != tuple(ids.shape) or t.dtype != variant.lm.dtype:
            return None
        os.utime(folder)
        return PrefixStates(Variant.identity(variant.lm), ids.cpu(), {b: t})

    def clear(self, disk: bool = False) -> None:
        """Forget everything in memory (and the figures and states on disk when `disk`)."""
        import shutil

        self._figures.clear(disk=disk)
        self._states.clear()
        self._answers.clear()
        if disk:
            shutil.rmtree(_states_dir(), ignore_errors=True)


def _states_bytes(entry: tuple[torch.Tensor, dict[int, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for t in entry[1].values())


def _states_dir() -> Path:
    from explorer.load.embedded import cache_root

    return cache_root() / "dense-states"


def _trim_disk(root: Path, budget: int) -> None:
    """Delete the least recently used entries (folders) of `root` until it holds <= budget."""
    import shutil

    try:
        entries = sorted((d for d in root.iterdir() if d.is_dir()),
                         key=lambda d: d.stat().st_mtime, reverse=True)
        total = 0
        for d in entries:
            total += sum(f.stat().st_size for f in d.glob("*.pt"))
            if total > budget:
                shutil.rmtree(d, ignore_errors=True)
    except OSError:
        pass


CACHE = DenseCache()
