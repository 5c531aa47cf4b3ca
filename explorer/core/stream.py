"""Layer-major execution: one decoder layer's weights at a time, every window through it.

`run_backbone` (explorer/core/backbone.py) is batch-major: each batch of windows runs through every
slot before the next batch starts, so every layer's weights must be at hand. `run_layer_major`
turns the loop around, as "sequential onloading" does (llm-compressor, ReplaceMe): for slot i of a
variant it

1. brings that layer's weights onto the compute device (`Variant.loaded` -> `LayerWeights.fetch`:
   from RAM, or read from the model folder's safetensors shards, or the module itself for a
   resident model),
2. runs every batch of windows through it, reading boundary i and writing boundary i+1 of a
   `BoundaryStore` (RAM within a budget, then files in a temporary folder),
3. releases the weights, and keeps boundary i only when the caller records it.

Masks, rotary embeddings and every argument a layer gets come from transformers itself, through
the skeleton both passes share (`passes.skeleton_pass`: the base model's own embedding, rotary
and mask modules, its layer list replaced by recorders that return their input), run once per
batch shape to record how each slot is called (`passes.LayerCall`), and for every batch's
embeddings. No attention is re-implemented, and nothing of the loaded model is swapped or
written.

The arguments of a call depend only on the batch's shape (windows hold no padding and no attention
mask is given, so the mask and the position ids are the same for every batch of b windows): the
skeleton therefore records them for each distinct batch size once (two at most), and the
embeddings for each batch.

The results are the batch-major pass's, bit for bit: every batch goes through the same modules
with the same arguments in the same dtype; only the order of the work changes
(tests/test_core_stream.py).

Example:
    >>> for b in run_layer_major(lm, ids, variant=v, record=[0, 5], final_norm=True):
    ...     b.states[5]            # (b, T, H) residual stream entering slot 5
    ...     b.hidden               # (b, T, H) after the final norm
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from explorer.core.gather import Gather, SlotGathers
from explorer.core.passes import Batch, StartStates, check_boundaries, rows_of, skeleton_pass
from explorer.apply.layer_config import variant_config
from explorer.core.errors import LayerError, one_line
from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.core.settings import get
from explorer.core.resume import LayerCheckpoint, slot_digest
from explorer.core.tokens import auto_batch_size

def state_budget() -> int:
    """Bytes of boundary states a layer-major pass keeps in RAM before it spills to disk
    (LAYER_EXPLORER_STREAM_STATE_MB)."""
    return get("LAYER_EXPLORER_STREAM_STATE_MB")


# -- where the boundary states live -------------------------------------------------------------

class BoundaryStore:
    """The residual stream of every batch at the boundaries a pass keeps, (b, T, H) per entry.

    Entries stay on the compute device while the bytes held stay within `budget`; later ones go to
    raw files in a private temporary folder (under `folder`, default the system's), read back
    whole when asked. `close` deletes the folder.
    """

    def __init__(self, budget: int, folder: str | Path | None = None) -> None:
        self.budget = budget
        self.folder = folder
        self._dir: Path | None = None
        self._ram: dict[tuple[int, int], torch.Tensor] = {}
        self._disk: dict[tuple[int, int], tuple[Path, torch.dtype, tuple, torch.device]] = {}
        self.ram_bytes = 0
        self.peak_ram_bytes = 0
        self.disk_bytes = 0

    def put(self, boundary: int, batch: int, t: torch.Tensor) -> None:
        self.drop_entry(boundary, batch)
        size = t.numel() * t.element_size()
        if self.ram_bytes + size <= self.budget:
            self._ram[boundary, batch] = t
            self.ram_bytes += size
            self.peak_ram_bytes = max(self.peak_ram_bytes, self.ram_bytes)
            return
        path = self._folder() / f"b{boundary}-{batch}.bin"
        raw = t.detach().contiguous().cpu().view(torch.uint8).numpy()
        try:
            _write_raw(raw, path)
        except OSError as exc:
            raise LayerError(f"could not write boundary states to {path.parent}: "
                             f"{one_line(exc)}") from None
        self._disk[boundary, batch] = (path, t.dtype, tuple(t.shape), t.device)
        self.disk_bytes += raw.nbytes

    def get(self, boundary: int, batch: int) -> torch.Tensor:
        if (boundary, batch) in self._ram:
            return self._ram[boundary, batch]
        path, dtype, shape, device = self._disk[boundary, batch]
        raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        return raw.view(dtype).reshape(shape).to(device)

    def drop_entry(self, boundary: int, batch: int) -> None:
        t = self._ram.pop((boundary, batch), None)
        if t is not None:
            self.ram_bytes -= t.numel() * t.element_size()
        entry = self._disk.pop((boundary, batch), None)
        if entry is not None:
            self.disk_bytes -= entry[0].stat().st_size
            entry[0].unlink(missing_ok=True)

    def drop(self, boundary: int) -> None:
        for b, k in [key for key in list(self._ram) + list(self._disk) if key[0] == boundary]:
            self.drop_entry(b, k)

    def _folder(self) -> Path:
        if self._dir is None:
            try:
                if self.folder is not None:
                    Path(self.folder).mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="explorer-states-", dir=self.folder))
            except OSError as exc:
                raise LayerError(f"cannot write boundary states under "
                                 f"{self.folder or tempfile.gettempdir()}: {one_line(exc)}") from None
        return self._dir

    def close(self) -> None:
        self._ram.clear()
        self._disk.clear()
        self.ram_bytes = self.disk_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _write_raw(raw: np.ndarray, path: Path) -> None:
    raw.tofile(path)


def layer_bytes(lm: LoadedModel) -> list[int]:
    """Bytes of each original decoder layer's parameters in the model's dtype."""
    size = torch.empty((), dtype=lm.dtype).element_size()
    return [sum(p.numel() for p in layer.parameters()) * size for layer in lm.original_layers]


# -- the executor -------------------------------------------------------------------------------

def _slot_module(lm: LoadedModel, variant, i: int) -> tuple[nn.Module, str]:
    """The module of slot i with its weights on the compute device, and a label for progress."""
    where = "in memory" if lm.weights is None else f"from {lm.weights.where}"
    return variant.loaded(i), where


def run_layer_major(lm: LoadedModel, ids: torch.Tensor, *, variant=None, start: int = 0,
                    start_states: StartStates | None = None, stop: int | None = None,
                    final_norm: bool = False, record=(), capture_call: bool = False,
                    batch_size: int | None = None, progress: Progress | None = None,
                    label: str = "forward", grad: bool = False,
                    store: BoundaryStore | None = None,
                    gather: Sequence[Gather] = (),
                    checkpoint: LayerCheckpoint | None = None) -> Iterator[Batch]:
    """`backbone.run_backbone`'s contract (same arguments, same `Batch`es, same values), computed
    layer by layer: every window goes through slot i before any goes through slot i+1.

    All the work happens before the first batch is yielded; then each `Batch` carries its windows'
    recorded boundaries and the hidden states at `stop`. store: where boundary states live
    (default: RAM within `state_budget()`, the rest in a temporary folder). gather: per-layer
    accumulators fed at their slots (explorer/core/gather.py). checkpoint: save the frontier boundary,
    the recorded ones and the gathers' sums after each layer, and with `resume` start from the
    saved boundary (explorer/core/resume.py).
    """
    from explorer.core.variant import Variant

    if grad:
        raise LayerError("training runs batch by batch on a model in memory; layer-major "
                         "execution is for measuring (grad=False)")
    variant = variant or Variant.identity(lm)
    L = variant.num_layers
    stop, wanted = check_boundaries(L, start, stop, final_norm, start_states, record)
    taps = SlotGathers(gather, start, stop)
    B, T = ids.shape
    batch_size = batch_size or auto_batch_size(lm.device, T)
    batches = [slice(b0, min(B, b0 + batch_size)) for b0 in range(0, B, batch_size)]
    own_store = store is None
    store = store or BoundaryStore(state_budget(), lm.weights.state_folder
                                   if lm.weights is not None else None)
    try:
        with torch.no_grad():
            first = start
            if checkpoint is not None:
                first = _resume(checkpoint, lm, variant, ids, batches, start, stop, wanted,
                                final_norm, gather, store)
            calls = _start_boundary(lm, variant, ids, batches, start, start_states, store,
                                    need_calls=start < stop or capture_call,
                                    embed=first == start)
            for i in range(first, stop):
                module, where = _slot_module(lm, variant, i)
                module = taps.module(i, module)
                for k, rows in enumerate(batches):
                    x = store.get(i, k)
                    y = calls[rows.stop - rows.start][i].run(module, x)
                    taps.feed(i, rows, x, y)
                    store.put(i + 1, k, y)
                if i not in wanted:
                    store.drop(i)
                del module                 # a fetched copy's weights go with it
                if checkpoint is not None:
                    checkpoint.save(i + 1, {(b, k): store.get(b, k) for b in {i + 1, *wanted}
                                            if b <= i + 1 for k in range(len(batches))},
                                    [g.sums for g in gather], set(wanted))
                if progress:
                    progress(Event(label, (i + 1 - start) / max(1, stop - start), step=i + 1,
                                   total=L, unit="layers", note=f"{B} windows, weights {where}"))
        for k, rows in enumerate(batches):
            with torch.no_grad():
                h = store.get(stop, k)
                hidden = lm.arch.norm(lm.model)(h) if final_norm else h
            call = calls[rows.stop - rows.start].get(start) if capture_call else None
            yield Batch(rows=rows, ids=ids[rows].to(lm.device), hidden=hidden,
                        states={b: store.get(b, k) for b in wanted}, call=call)
    finally:
        if own_store:
            store.close()


def _resume(checkpoint: LayerCheckpoint, lm: LoadedModel, variant, ids: torch.Tensor,
            batches: list[slice], start: int, stop: int, wanted: list[int], final_norm: bool,
            gather: Sequence[Gather], store: BoundaryStore) -> int:
    """The first slot to run: `start`, or the checkpoint's boundary with its states (the
    frontier and the recorded boundaries before it) put in `store` and the gathers' sums
    restored."""
    from explorer.core.dense_key import weights_fingerprint, windows_digest

    fingerprint = {
        "model": weights_fingerprint(lm), "windows": windows_digest(ids),
        "protocol": {"start": start, "stop": stop, "record": wanted, "final_norm": final_norm,
                     "batches": [[r.start, r.stop] for r in batches], "dtype": str(lm.dtype),
                     "gathers": [[g.slot, sorted(g.parts.items()), list(g.inputs), g.first,
                                  getattr(g.reduce, "__qualname__", "")] for g in gather]}}
    prefix = [slot_digest(variant, i) for i in range(variant.num_layers)]
    k = checkpoint.start(fingerprint, prefix)
    if k < 0 or not start < k <= stop:
        return start
    for b in {k, *(w for w in wanted if w < k)}:
        for j in range(len(batches)):
            store.put(b, j, checkpoint.states(b, j).to(lm.device))
    for g, saved in zip(gather, checkpoint.sums()):
        g.sums.merge(saved)
    return k


def _start_boundary(lm: LoadedModel, variant, ids: torch.Tensor, batches: list[slice],
                    start: int, start_states: StartStates | None, store: BoundaryStore,
                    need_calls: bool, embed: bool = True) -> dict[int, dict]:
    """Put boundary `start` of every batch in `store` (embed=False: a resumed pass has its
    states already); return, per batch size, how each slot is called ({slot: LayerCall}), from
    one skeleton pass per size (embeddings: one per batch)."""
    calls: dict[int, dict] = {}
    for k, rows in enumerate(batches):
        size = rows.stop - rows.start
        if (start == 0 and embed) or (need_calls and size not in calls):
            x0, got = skeleton_pass(lm, variant, ids[rows].to(lm.device))
            calls.setdefault(size, got)
            if start == 0 and embed:
                store.put(0, k, x0)
        if start > 0 and embed:
            x = rows_of(start_states, rows).to(device=lm.device, dtype=lm.dtype)
            store.put(start, k, x)
    return calls


# -- export, shard by shard ---------------------------------------------------------------------

SHARD_BYTES = 2 * 2**30


def save_streamed(variant, folder: str | Path, shard_bytes: int = SHARD_BYTES) -> None:
    """Write `variant` of a model whose layers are offloaded as a transformers folder: config
    (its layer count and layer types), safetensors shards of at most ~`shard_bytes` and their
    index (model.safetensors.index.json). One layer is fetched at a time, so the peak is one
    layer plus one shard, never the model; `AutoModelForCausalLM.from_pretrained` loads it.
    The caller (`export.export`) writes into a temporary folder and renames it when complete.
    """
    from safetensors.torch import save_file

    lm = variant.lm
    folder = Path(folder)
    prefix = lm.arch.layers + "."
    n = variant.num_layers
    cfg = variant_config(lm, variant, copy.deepcopy(lm.config))
    cfg.dtype = lm.dtype
    if variant.head is not None:       # its own head: written below, no longer the embedding
        cfg.tie_word_embeddings = False
    cfg.save_pretrained(folder)

    parts: list[tuple[str, list[str]]] = []
    pending: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal pending, size
        if pending:
            name = f"part-{len(parts):05d}.safetensors"
            save_file(pending, str(folder / name), metadata={"format": "pt"})
            parts.append((name, list(pending)))
        pending, size = {}, 0

    def add(key: str, t: torch.Tensor) -> None:
        nonlocal size
        pending[key] = t.detach().to("cpu").contiguous().clone()
        size += t.numel() * t.element_size()
        if size >= shard_bytes:
            flush()

    head = lm.arch.lm_head(lm.model)
    tied = head.weight is lm.model.get_input_embeddings().weight
    head_prefix = lm.arch.head + "."
    own_head = variant.head is not None
    seen: set[int] = set()
    for key, t in lm.model.state_dict(keep_vars=True).items():
        if key.startswith(prefix) or t.is_meta or (tied and key == head_prefix + "weight") \
                or (own_head and key.startswith(head_prefix)):
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        add(key, t)
    if own_head:
        for name, t in variant.head.state_dict().items():
            add(head_prefix + name, t)
    for i in range(n):
        module, _ = _slot_module(lm, variant, i)
        for name, t in module.state_dict().items():
            add(f"{prefix}{i}.{name}", t)
        del module
    flush()
    total = len(parts)
    weight_map: dict[str, str] = {}
    total_size = 0
    for k, (tmp_name, keys) in enumerate(parts):
        final = f"model-{k + 1:05d}-of-{total:05d}.safetensors"
        (folder / tmp_name).rename(folder / final)
        weight_map.update({key: final for key in keys})
    for f in folder.glob("model-*.safetensors"):
        total_size += f.stat().st_size
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=1))
