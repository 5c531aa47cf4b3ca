"""Variants of a loaded model, made of its original layers plus new ones.

A `Variant` is an ordered list of slots. A slot is either the index of an original layer (shared,
never copied) or a `NewLayer` (a module built by a merge method). A variant may also hold a head
slot: its own vocabulary head (`head`, an `nn.Linear` owning its weight, e.g. trained by
tail-finetune); without one it uses the loaded model's head. Every logit is computed with
`head_module()`. Applying a variant swaps the model's layer list for one built from the slots,
renumbers every `layer_idx` (the KV cache is indexed by it), sets the layer count and every
per-layer config field to the kept layers' (`layer_config.updates`: layer_types, no_rope_layers,
expert layer lists, ...), and puts the variant's head in place of the model's (with
`config.tie_word_embeddings` False, since it is no longer the embedding); leaving the context
restores all of it. The original weights are never written, so the model is bit-identical
afterwards, and applying costs microseconds instead of a reload.

The loaded model is shared (by the web app's sessions, by threads), so `applied()` holds the
model's lock for as long as the variant is in place.

Each slot knows the original layers it stands for (`groups`), so methods edit a variant with its
*current* slot indices and still report removed and merged layers in *original* indices, the ones
the heatmaps show; this origin map is the only one.

Example:
    >>> v = Variant.identity(lm).drop([14])           # 29 layers, original layer 14 removed
    >>> with v.applied() as model:
    ...     out = model(input_ids)
    >>> v.describe()
    'drop 14'
    >>> w = Variant.identity(lm).merge([2, 3], [0.5, 0.5]).drop([4])   # slots 0 1 (2,3) 5 6 ...
    >>> w.groups[:4], w.removed()[:2], w.merged()
    (((0,), (1,), (2, 3), (5,)), [3, 4], [[2, 3]])
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch.nn as nn

from explorer.core.errors import LayerError
from explorer.core.new_layers import combine_layers, without_part
from explorer.core.model import LoadedModel


@dataclass(eq=False)
class NewLayer:
    """A layer that is not in the original model: a merge result or a trained replacement."""

    module: nn.Module
    stands_for: tuple[int, ...]   # the original layers it replaces, ascending: one for a trained
                                  # stand-in or a part drop, the block for a merge
    label: str       # short description, e.g. "merge(12,13; a=0.62)"
    parts_dropped: tuple[str, ...] = ()   # sub-blocks zeroed by `Variant.drop_part` ("attn", "mlp")

    @property
    def like(self) -> int:
        """The original layer whose attention type (sliding/full) and position it takes: the first
        one it stands for."""
        return self.stands_for[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


Slot = int | NewLayer

# The sub-blocks of a decoder layer that `Variant.drop_part` can drop, and the adapter field naming
# each one's output projection (explorer/load/arch.py).
PARTS = {"attn": "attn_o", "mlp": "mlp_down"}


@dataclass(frozen=True, eq=False)
class Variant:
    """An edited layer stack over a `LoadedModel`; immutable, every edit returns a new variant.

    `steps` records each edit as a JSON-ready dict (the recipe's history); edits index the
    variant's *current* slots, as a user sees them.
    """

    lm: LoadedModel
    slots: tuple[Slot, ...]
    steps: tuple[dict, ...] = field(default=())
    # the variant's own vocabulary head (an nn.Linear owning its weight: `head_copy`), or None:
    # the loaded model's head. Edits of the layer stack keep it.
    head: nn.Linear | None = None

    @staticmethod
    def identity(lm: LoadedModel) -> "Variant":
        return Variant(lm, tuple(range(lm.num_layers)))

    # -- queries -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.slots)

    def is_identity(self) -> bool:
        return self.slots == tuple(range(self.lm.num_layers)) and self.head is None

    def head_module(self) -> nn.Module:
        """The vocabulary head this variant's logits come from: its own, or the loaded model's
        (every path that computes logits from final-norm states asks here)."""
        return self.head if self.head is not None else self.lm.arch.lm_head(self.lm.model)

    def with_head(self, head: nn.Linear | None) -> "Variant":
        """The same layers with vocabulary head `head` (None: the loaded model's), same steps:
        the edit that trained it records its own step (`heal`)."""
        return dataclasses.replace(self, head=head)

    def layer(self, i: int) -> nn.Module:
        """The module in slot i (original or new)."""
        s = self.slots[self.check_index(i)]
        return s.module if isinstance(s, NewLayer) else self.lm.original_layers[s]

    def loaded(self, i: int) -> nn.Module:
        """Slot i's module with its weights present, for code that reads or copies a layer's
        weights (merges, fits, healing): the module itself when the model is in memory, else a
        copy on the compute device fetched from where the layers stay (`LoadedModel.weights`:
        CPU RAM or the safetensors shards), which the caller owns and drops."""
        module = self.layer(i)
        weights = self.lm.weights
        slot = self.slots[i]
        if weights is None or (isinstance(slot, NewLayer) and not slot.parts_dropped):
            # (an original layer on the meta device here is accelerate's disk offload, whose
            # hooks load it when it runs; a new layer built from such weights has none)
            if isinstance(slot, NewLayer) and any(p.is_meta for p in module.parameters()):
                raise LayerError(f"slot {i} ({slot.label}) was built from weights that were "
                                 "never loaded (accelerate's disk offload): merges and fits need "
                                 "the layers' weights; load with offload='disk' or 'cpu'")
            return module
        fetched = weights.fetch(self.lm, module, self.origin(i))
        if isinstance(slot, NewLayer) and fetched is not module:
            # A sub-block drop of an empty layer holds an empty zeroed projection, which the
            # fetch filled with the original one: zero it again (drop_part).
            for part in slot.parts_dropped:
                path = getattr(self.lm.arch, PARTS[part])
                if any(p.is_meta for p in module.get_submodule(path).parameters()):
                    for p in fetched.get_submodule(path).parameters():
                        p.data.zero_()
        return fetched

    # -- the origin map: which original layers each slot stands for ----------------------------
    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Per slot, the original layers it stands for: (i,) for original layer i, the merged
        block for a merge, the replaced layer(s) for a trained stand-in."""
        return tuple(s.stands_for if isinstance(s, NewLayer) else (s,) for s in self.slots)

    def origin(self, i: int) -> int:
        """The original layer whose place slot i takes (the first it stands for)."""
        s = self.slots[self.check_index(i)]
        return s.like if isinstance(s, NewLayer) else s

    def slot_of(self, original: int) -> int:
        """The slot that stands for this original layer; LayerError if none does (it was dropped)."""
        for i, group in enumerate(self.groups):
            if original in group:
                return i
        if not 0 <= original < self.lm.num_layers:
            raise LayerError(f"layer {original} is out of range: the model has "
                             f"{self.lm.num_layers} layers (0..{self.lm.num_layers - 1})")
        raise LayerError(f"original layer {original} is not in this variant (it was dropped)")

    def removed(self) -> list[int]:
        """Original layers that no longer head a slot: dropped, or merged into the layer before."""
        heads = {g[0] for g in self.groups}
        return [i for i in range(self.lm.num_layers) if i not in heads]

    def merged(self) -> list[list[int]]:
        """The blocks of original layers that one slot stands for (merges, block stand-ins)."""
        return [list(g) for g in self.groups if len(g) > 1]

    def new_layers(self) -> list[NewLayer]:
        return [s for s in self.slots if isinstance(s, NewLayer)]

    def num_parameters(self) -> int:
        """Parameters of the model as this variant would have them (an own head of a model that
        ties its head to the embeddings adds its weight: the export is no longer tied)."""
        orig = self.lm.original_layers
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in orig]
        total_layers = sum(per_layer)
        kept = sum(s.num_parameters() if isinstance(s, NewLayer) else per_layer[s]
                   for s in self.slots)
        untied = self.head.weight.numel() if self.head is not None and head_is_tied(self.lm) \
            else 0
        return self.lm.num_parameters - total_layers + kept + untied

    def extra_bytes(self) -> int:
        """Memory this variant adds on top of the loaded model: its new layers' own tensors (the
        weights a sub-block drop shares with the original layer cost nothing)."""
        shared = {id(p) for p in self.lm.original_layers.parameters()}
        own = {id(p): p for s in self.new_layers() for p in s.module.parameters()
               if id(p) not in shared}
        if self.head is not None:
            own.update({id(p): p for p in self.head.parameters()})
        return sum(p.numel() * p.element_size() for p in own.values())

    def describe(self) -> str:
        return "; ".join(s.get("summary", s["op"]) for s in self.steps) or "original"

    def layer_labels(self) -> list[str]:
        """One label per slot: the original index, or the new layer's label."""
        return [s.label if isinstance(s, NewLayer) else str(s) for s in self.slots]

    def check_index(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self.slots):
            raise LayerError(f"layer index {i!r} is out of range: this model has "
                             f"{len(self.slots)} layers (0..{len(self.slots) - 1})")
        return i

    def check_indices(self, indices: Sequence[int], what: str = "layers") -> list[int]:
        idx = [self.check_index(i) for i in indices]
        if len(set(idx)) != len(idx):
            raise LayerError(f"{what} {list(indices)} name the same layer twice")
        return idx

    # -- edits (each returns a new Variant) ---------------------------------------------------
    def drop(self, indices: Sequence[int]) -> "Variant":
        """Delete the layers at these slot indices."""
        idx = set(self.check_indices(indices))
        if len(idx) >= len(self.slots):
            raise LayerError(f"dropping {len(idx)} of {len(self.slots)} layers would leave none")
        slots = tuple(s for i, s in enumerate(self.slots) if i not in idx)
        step = {"op": "drop", "layers": sorted(idx),
                "summary": "drop " + ",".join(map(str, sorted(idx)))}
        return dataclasses.replace(self, slots=slots, steps=self.steps + (step,))

    def replace(self, indices: Sequence[int], module: nn.Module, label: str,
                step: dict | None = None) -> "Variant":
        """Replace the layers at these slot indices by one new module, placed at the first index.

        step: the recipe entry for this edit (default: {"op": "replace", "layers": ...}).
        """
        idx = sorted(self.check_indices(indices))
        groups = self.groups
        new = NewLayer(module=module, stands_for=tuple(sorted(o for i in idx for o in groups[i])),
                       label=label)
        slots = list(self.slots)
        slots[idx[0]] = new
        slots = tuple(s for i, s in enumerate(slots) if i not in idx[1:])
        step = dict(step or {"op": "replace", "layers": idx})
        step.setdefault("summary", label)
        return dataclasses.replace(self, slots=slots, steps=self.steps + (step,))

    def merge(self, indices: Sequence[int], weights: Sequence[float], label: str | None = None,
              extra: dict | None = None) -> "Variant":
        """Replace the layers at `indices` by one layer whose linear weights are sum_k w_k theta_k.

        Norm weights are taken from the first layer unchanged (docs/methods.md: norms are never
        averaged unless a method says so). Used by MKA (w = a, 1-a) and LaCo (w = 1-m, 1, ..., 1).
        """
        idx = self.check_indices(indices, "merge layers")
        if len(idx) < 2:
            raise LayerError("a merge needs at least two layers")
        if len(weights) != len(idx):
            raise LayerError(f"{len(idx)} layers but {len(weights)} weights")
        self.check_mergeable(idx)
        module = combine_layers([self.loaded(i) for i in idx], [float(w) for w in weights])
        label = label or "merge(" + ",".join(map(str, idx)) + ")"
        step = {"op": "merge", "layers": idx, "weights": [float(w) for w in weights],
                "summary": label, **(extra or {})}
        return self.replace(idx, module, label, step)

    def check_mergeable(self, idx: Sequence[int]) -> None:
        """A weight average needs layers of one kind whose weights correspond entry by entry: a
        one-line LayerError for layers of different classes or shapes (a hybrid's attention and
        state-space layers) and for mixtures of experts (expert k of one layer is not expert k of
        another: their average means nothing)."""
        arch = self.lm.arch
        moe = [i for i in idx if arch.layer_is_moe(self.origin(i))]
        if moe:
            raise LayerError(f"layer {moe[0]} is a mixture of experts: a merge averages weights "
                             "entry by entry, and the experts of two layers are not matched, so "
                             "their average means nothing; drop the layers instead")
        first = self.layer(idx[0])
        shapes = {n: tuple(p.shape) for n, p in first.named_parameters()}
        for i in idx[1:]:
            other = self.layer(i)
            if type(other) is not type(first) or shapes != {
                    n: tuple(p.shape) for n, p in other.named_parameters()}:
                raise LayerError(f"layers {idx[0]} and {i} are of different kinds "
                                 f"({type(first).__name__}, {type(other).__name__}) or shapes: "
                                 "a merge needs layers whose weights correspond; drop instead")

    def drop_part(self, index: int, part: str) -> "Variant":
        """Drop the attention ("attn") or the MLP ("mlp") sub-block of the layer at slot `index`.

        The slot becomes a NewLayer that shares every weight with the layer except the part's
        output projection, a zeroed copy (weight and bias): the part then adds nothing to the
        residual stream, and the variant still exports as a plain transformers model. It keeps
        that part's FLOPs (docs/search.md). Dropping the second part of a layer drops the slot.
        """
        i = self.check_index(index)
        if part not in PARTS:
            raise LayerError(f"unknown sub-block '{part}'; use one of: {', '.join(PARTS)}")
        slot = self.slots[i]
        gone = slot.parts_dropped if isinstance(slot, NewLayer) else ()
        if part in gone:
            raise LayerError(f"the {part} sub-block of layer {i} is already dropped")
        step = {"op": "drop_part", "layer": i, "part": part,
                "summary": f"drop {part} of layer {i}"}
        if gone:   # the other part went before: nothing is left of this layer
            step["summary"] += " (nothing left: layer dropped)"
            slots = self.slots[:i] + self.slots[i + 1:]
            return dataclasses.replace(self, slots=slots, steps=self.steps + (step,))
        path = getattr(self.lm.arch, PARTS[part])
        if path is None or self.lm.arch.part(self.layer(i), path) is None:
            raise LayerError(f"the {self.lm.arch.family} adapter names no {part} output "
                             "projection: its sub-blocks cannot be dropped")
        with self.lm.lock:   # no run's hooks are on the layer while it is copied
            module = without_part(self.layer(i), path)
        new = NewLayer(module, stands_for=self.groups[i],
                       label=f"{self.layer_labels()[i]}-{part}", parts_dropped=(part,))
        slots = self.slots[:i] + (new,) + self.slots[i + 1:]
        return dataclasses.replace(self, slots=slots, steps=self.steps + (step,))

    # -- applying ------------------------------------------------------------------------------
    @contextmanager
    def applied(self) -> Iterator[nn.Module]:
        """Put this variant in place for the duration of the block; yields the model (its layers,
        and its own head when it has one, with `config.tie_word_embeddings` False meanwhile:
        save_pretrained then writes that head, untied)."""
        lm = self.lm
        if lm.weights is not None and not lm.weights.runs_whole:
            raise LayerError(f"this needs the whole model in memory, but its layers stay in "
                             f"{lm.weights.where} and are read one at a time (docs/scale.md); "
                             "load it with --offload none on a machine where it fits")
        from explorer.apply.layer_config import updates

        arch, model, cfg = lm.arch, lm.model, lm.model.config
        with lm.lock:
            original = arch.layer_list(model)
            fields = updates(lm.layer_fields, cfg, [self.origin(i) for i in range(len(self.slots))])
            saved_fields = {k: getattr(cfg, k) for k in fields}
            modules = [self.layer(i) for i in range(len(self.slots))]
            saved_idx = [(m, m.layer_idx) for layer in modules for m in layer.modules()
                         if isinstance(getattr(m, "layer_idx", None), int)]
            saved_head = arch.lm_head(model) if self.head is not None else None
            saved_tie = getattr(cfg, "tie_word_embeddings", None)
            try:
                if self.head is not None:
                    arch.set_lm_head(model, self.head)
                    cfg.tie_word_embeddings = False
                arch.set_layer_list(model, nn.ModuleList(modules))
                for new_idx, layer in enumerate(modules):
                    _set_layer_idx(layer, new_idx)
                for key, value in fields.items():
                    setattr(cfg, key, value)
                yield model
            finally:
                arch.set_layer_list(model, original)
                if self.head is not None:
                    arch.set_lm_head(model, saved_head)
                    cfg.tie_word_embeddings = saved_tie
                for m, idx in saved_idx:
                    m.layer_idx = idx
                for key, value in saved_fields.items():
                    setattr(cfg, key, value)


def head_is_tied(lm: LoadedModel) -> bool:
    """Whether the loaded model's vocabulary head is its input embedding (SmolLM2, Gemma)."""
    return lm.arch.lm_head(lm.model).weight is lm.model.get_input_embeddings().weight


def _set_layer_idx(layer: nn.Module, idx: int) -> None:
    for m in layer.modules():
        if isinstance(getattr(m, "layer_idx", None), int):
            m.layer_idx = idx
