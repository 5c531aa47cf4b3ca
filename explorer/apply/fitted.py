"""Fitted tensors of recipe ops: what a replay loads instead of training again.

Some recipe ops are fitted from data (a heal op's trained or closed-form layers, streamline's
trained layer or linear map, CoMe's recovered merge). Their result is the variant's layer stack
after the op: some slots unchanged, some new modules. `record(before, after)` notes that result when
the op is made (by the method, by `heal`, or by a replay that trained), keyed by a hash of the ops up
to and including this one (`op_key`: the same op on another variant is another key). The
process keeps weak references only: a result stays available while its variant is alive somewhere.

`save(path, ops, lm)` writes the results of a recipe's fitted ops next to its JSON, as one
safetensors file (`fitted_path`): per op, a JSON description of the slots in its metadata and each
new module's own tensors. A new module that is a copy of a decoder layer is stored as the tensors
in which it differs from the original layer it stands for (the ones it shares are not written);
other modules (streamline's linear map and SwiGLU block) name a class registered with
`register_module`. A variant's own vocabulary head (`Variant.head`, trained by tail-finetune) is
part of the result too: "new" (its tensors are written, `<key>/head/<name>`), "prev" (the head
the variant had before the op) or none (the loaded model's). `load(path)` reads the file back;
`restore(v, op, entry)` rebuilds the variant after the op from it, bit for bit, without data or
training.

Example:
    >>> save("out/recipe.json", recipe.ops, lm)      # writes out/recipe.fitted.safetensors
    >>> Recipe.load("out/recipe.json").build(lm)     # loads them: no training
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from explorer.core.cache import Store
from explorer.core.errors import LayerError, one_line
from explorer.core.model import LoadedModel
from explorer.core.variant import NewLayer, Variant

FORMAT = "layer-explorer-fitted/1"

# class name -> builder(lm, tensors by name) -> an empty module of that shape (the non-layer
# modules a fitted op can produce: streamline's LinearReplacement and FFNReplacement)
MODULES: dict[str, Callable[[LoadedModel, dict[str, torch.Tensor]], nn.Module]] = {}

# op name -> predicate(op) -> whether that op's result is fitted from data (register_op(fitted=))
FITTED_OPS: dict[str, Callable[[dict], bool]] = {}

# The results of fitted ops made in this process, by (op_key, id(model)): a list of entries (one
# per variant made with those steps, oldest first) holding weak references to the new layers, so
# the store never keeps a variant alive.
RESULTS: Store = Store("fitted results", size=256, model_bound=True)


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: `cls.from_state(lm, tensors)` builds an empty module that fits `tensors`
    (a fitted op's new module that is not a copy of a decoder layer)."""
    MODULES[cls.__name__] = cls.from_state
    return cls


def is_fitted(op: dict) -> bool:
    test = FITTED_OPS.get(op.get("op")) if isinstance(op, dict) else None
    return bool(test and test(op))


def op_key(steps: list[dict] | tuple[dict, ...]) -> str:
    """A hash of the ops up to and including a fitted op (the op and the variant it was fitted on).
    An op's "summary" is left out: it describes the op for people and is not always written (a
    plan's drop op has none, the variant's own step has one), while the op is the same."""
    content = [{k: v for k, v in op.items() if k != "summary"} for op in steps]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class Entry:
    """One fitted op's result: the slots after it, and the new modules' tensors (from a file) or the
    new layers themselves (recorded in this process)."""

    slots: list[dict]                           # {"orig": i} | {"prev": j} | {"new": n, ...}
    tensors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    layers: dict[int, "weakref.ref[NewLayer]"] = field(default_factory=dict)
    model: "weakref.ref | None" = None          # the model the layers were made on
    head: str | None = None                     # "new" | "prev" | None (the loaded model's)
    head_tensors: dict[str, torch.Tensor] = field(default_factory=dict)   # of a "new" head
    head_ref: "weakref.ref[nn.Linear] | None" = None                       # recorded "new" head

    def live_layers(self) -> dict[int, NewLayer] | None:
        """The recorded new layers, or None when one of them (or the new head) is gone."""
        out = {n: ref() for n, ref in self.layers.items()}
        if self.head_ref is not None and self.head_ref() is None:
            return None
        return None if any(x is None for x in out.values()) else out


def _head_of(before: Variant, after: Variant) -> str | None:
    """How the head after an op relates to the one before: "new", "prev" or None (loaded)."""
    if after.head is None:
        return None
    return "prev" if after.head is before.head else "new"


def _describe(before: Variant, after: Variant) -> tuple[list[dict], dict[int, NewLayer]]:
    prev = {id(s): j for j, s in enumerate(before.slots) if isinstance(s, NewLayer)}
    slots, new = [], {}
    for s in after.slots:
        if not isinstance(s, NewLayer):
            slots.append({"orig": int(s)})
        elif id(s) in prev:
            slots.append({"prev": prev[id(s)]})
        else:
            n = len(new)
            new[n] = s
            slots.append({"new": n, "like": s.like, "stands_for": list(s.stands_for),
                          "label": s.label,
                          "parts_dropped": list(s.parts_dropped)})
    return slots, new


def record(before: Variant, after: Variant) -> None:
    """Note the result of the fitted op that made `after` from `before` (its last step)."""
    slots, new = _describe(before, after)
    head = _head_of(before, after)
    entry = Entry(slots, layers={n: weakref.ref(s) for n, s in new.items()},
                  model=weakref.ref(after.lm.model), head=head,
                  head_ref=weakref.ref(after.head) if head == "new" else None)
    key = (op_key(after.steps), id(after.lm.model))
    with RESULTS.lock:       # keep the earlier results of these steps that are still alive
        RESULTS.put(key, [e for e in RESULTS.get(key, []) if _alive(e, after.lm)] + [entry])


def _alive(entry: Entry, lm: LoadedModel) -> bool:
    return entry.model is not None and entry.model() is lm.model and \
        entry.live_layers() is not None


def recorded(lm: LoadedModel, steps: list[dict] | tuple[dict, ...]) -> Entry | None:
    """The newest entry recorded in this process for these steps on this model whose layers
    live. Several variants can hold results of the same steps (the app's healed variant, and
    the same healing done again by a library call that drops it soon after): the one alive is
    the one to save."""
    found = [e for e in RESULTS.get((op_key(steps), id(lm.model)), []) if _alive(e, lm)]
    return found[-1] if found else None


def restore(lm: LoadedModel, before: Variant, op: dict, entry: Entry) -> Variant:
    """The variant after `op`, rebuilt from `entry` (no data, no training)."""
    try:
        return _restore(lm, before, op, entry)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise LayerError(f"the saved fitted tensors of the {op.get('op')} step are damaged: "
                         f"{one_line(exc)}") from None


def _restore(lm: LoadedModel, before: Variant, op: dict, entry: Entry) -> Variant:
    live = entry.live_layers() if entry.layers else None
    slots: list = []
    for d in entry.slots:
        if "orig" in d:
            i = int(d["orig"])
            if not 0 <= i < lm.num_layers:
                raise LayerError("the saved fitted tensors do not match this model")
            slots.append(i)
        elif "prev" in d:
            j = int(d["prev"])
            if not 0 <= j < before.num_layers or not isinstance(before.slots[j], NewLayer):
                raise LayerError("the saved fitted tensors do not match this recipe's steps")
            slots.append(before.slots[j])
        else:
            n = int(d["new"])
            if live is not None:
                slots.append(live[n])
            else:
                module = _build(lm, int(d["like"]), entry.tensors.get(n, {}), d.get("class"))
                # "stands_for" since the origin map moved onto Variant; older files: "like" alone
                group = tuple(int(o) for o in d.get("stands_for", [d["like"]]))
                slots.append(NewLayer(module, stands_for=group, label=str(d["label"]),
                                      parts_dropped=tuple(d.get("parts_dropped", ()))))
    if entry.head == "new":
        head = entry.head_ref() if entry.head_ref is not None else None
        head = head if head is not None else _build_head(lm, entry.head_tensors)
    elif entry.head == "prev":
        if before.head is None:
            raise LayerError("the saved fitted tensors do not match this recipe's steps")
        head = before.head
    elif entry.head is None:
        head = None
    else:
        raise ValueError(f"head {entry.head!r}")
    return Variant(lm, tuple(slots), before.steps + (dict(op),), head)


# -- modules <-> tensors --------------------------------------------------------------------------

def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _own_tensors(lm: LoadedModel, layer: NewLayer) -> tuple[dict[str, torch.Tensor], str | None]:
    """(the tensors to save, the module class to build when it is not a decoder layer copy)."""
    mine = _named_tensors(layer.module)
    template = lm.original_layers[layer.like]
    theirs = _named_tensors(template)
    if type(layer.module) is type(template) and mine.keys() == theirs.keys() and \
            all(mine[k].shape == theirs[k].shape for k in mine):
        return {k: t for k, t in mine.items() if t is not theirs[k]}, None
    name = type(layer.module).__name__
    if name not in MODULES:
        raise LayerError(f"a fitted {name} module cannot be saved (no registered builder)")
    return mine, name


def _build(lm: LoadedModel, like: int, tensors: dict[str, torch.Tensor],
           cls: str | None) -> nn.Module:
    """A module holding `tensors` (on the model's device); the rest shared with original layer
    `like` (decoder layer copies)."""
    tensors = {k: t.to(lm.device) for k, t in tensors.items()}
    if cls is not None:
        if cls not in MODULES:
            raise LayerError(f"fitted tensors name an unknown module '{cls}'")
        module = MODULES[cls](lm, tensors)
        _check_names(module, tensors, exact=True)
    else:
        if not 0 <= like < lm.num_layers:
            raise LayerError("the saved fitted tensors do not match this model")
        template = lm.original_layers[like]
        memo = {id(t): t for t in _named_tensors(template).values()}
        module = copy.deepcopy(template, memo)     # new modules sharing every tensor
        _check_names(module, tensors, exact=False)
    for name, t in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(t, requires_grad=False)
        else:
            owner._buffers[leaf] = t
    return module


def _build_head(lm: LoadedModel, tensors: dict[str, torch.Tensor]) -> nn.Linear:
    """The variant's own vocabulary head from its saved tensors ("weight" (V, H), "bias" (V,)
    when it has one), on the model's device."""
    ref = lm.arch.lm_head(lm.model).weight
    w = tensors.get("weight")
    if w is None or set(tensors) - {"weight", "bias"} or tuple(w.shape) != tuple(ref.shape):
        raise LayerError("the saved fitted head does not match this model's vocabulary head")
    head = nn.Linear(w.shape[1], w.shape[0], bias="bias" in tensors, device="meta")
    head.weight = nn.Parameter(w.to(lm.device), requires_grad=False)
    if "bias" in tensors:
        head.bias = nn.Parameter(tensors["bias"].to(lm.device), requires_grad=False)
    return head


def _check_names(module: nn.Module, tensors: dict[str, torch.Tensor], exact: bool) -> None:
    have = _named_tensors(module)
    bad = [k for k in tensors if k not in have or have[k].shape != tensors[k].shape]
    if bad or (exact and set(have) != set(tensors)):
        raise LayerError("the saved fitted tensors do not match this model "
                         f"({(bad or sorted(set(have) - set(tensors)))[0]})")


# -- files ----------------------------------------------------------------------------------------

def fitted_path(recipe_path: str | os.PathLike) -> Path:
    """Where a recipe's fitted tensors live: next to it, `<name>.fitted.safetensors`."""
    p = Path(recipe_path)
    return p.with_name(p.stem + ".fitted.safetensors")


def save(recipe_path: str | os.PathLike, ops: list[dict], lm: LoadedModel,
         entries: dict[str, Entry] | None = None) -> tuple[Path | None, list[int]]:
    """Write the fitted tensors of `ops` next to the recipe at `recipe_path`.

    Each fitted op's result comes from `entries` (loaded with the recipe) or from this process's
    records. Returns (the file written, or None when nothing was to save; the indices of fitted ops
    whose result was not available, which a replay will fit again).
    """
    from safetensors.torch import save as save_bytes

    meta: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    missing = []
    for k, op in enumerate(ops):
        if not is_fitted(op):
            continue
        key = op_key(ops[:k + 1])
        entry = (entries or {}).get(key)
        live = None
        if entry is None:
            entry = recorded(lm, ops[:k + 1])
            live = entry.live_layers() if entry is not None else None
        if entry is None:
            missing.append(k)
            continue
        slots = [dict(d) for d in entry.slots]
        for d in slots:
            if "new" not in d:
                continue
            n = int(d["new"])
            if live is not None:
                own, d["class"] = _own_tensors(lm, live[n])
            else:
                own = entry.tensors.get(n, {})
            for name, t in own.items():
                tensors[f"{key}/{n}/{name}"] = t.detach().cpu().contiguous()
        if entry.head == "new":
            live_head = entry.head_ref() if entry.head_ref is not None else None
            own = dict(live_head.named_parameters()) if live_head is not None else \
                entry.head_tensors
            for name, t in own.items():
                tensors[f"{key}/head/{name}"] = t.detach().cpu().contiguous()
        meta[key] = {"step": k, "op": op.get("op"), "slots": slots, "head": entry.head}
    path = fitted_path(recipe_path)
    if not meta:
        path.unlink(missing_ok=True)
        return None, missing
    _dedupe_storage(tensors)
    tmp = path.with_name(path.name + ".part")     # written whole, then renamed (umask's mode)
    tmp.write_bytes(save_bytes(tensors, metadata={"format": FORMAT, "ops": json.dumps(meta)}))
    os.replace(tmp, path)
    return path, missing


def _dedupe_storage(tensors: dict[str, torch.Tensor]) -> None:
    """safetensors refuses tensors that share memory: give each its own copy."""
    seen: set[int] = set()
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[k] = t.clone()
        seen.add(ptr)


def load(recipe_path: str | os.PathLike) -> dict[str, Entry]:
    """The fitted tensors saved next to a recipe, by op key ({} when there is no file)."""
    from safetensors import safe_open

    path = fitted_path(recipe_path)
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            if info.get("format") != FORMAT:
                raise LayerError(f"'{path.name}' is not a fitted-tensors file of this version")
            meta = json.loads(info.get("ops", "{}"))
            entries = {key: Entry([dict(d) for d in m["slots"]], head=m.get("head"))
                       for key, m in meta.items()}
            for name in f.keys():
                key, n, tname = name.split("/", 2)
                if n == "head":
                    entries[key].head_tensors[tname] = f.get_tensor(name)
                else:
                    entries[key].tensors.setdefault(int(n), {})[tname] = f.get_tensor(name)
    except LayerError:
        raise
    except Exception as exc:        # a damaged file: one line, whatever safetensors raised
        raise LayerError(f"cannot read the fitted tensors '{path.name}': {one_line(exc)}") from None
    return entries
