"""Recipes: the JSON record of how a variant was made, and how to make it again.

A recipe names the model, the method and its parameters, and the list of edit operations ("ops")
applied to the original layer stack, each indexing the layers as they were at that step. Replaying
the ops on the same model rebuilds the variant. Ops whose result was trained or chosen from data
(a heal op, LLM-Streamline's fitted network, CoMe's recovered merge) register a handler that redoes
that work deterministically, marked `fitted`: `Recipe.save` writes their results next to the JSON
as safetensors (`explorer.apply.fitted`), and a replay loads them, bit for bit and at once; it fits again
only when they are absent, and says so.

Example:
    >>> r = Recipe(model="smollm2-135m", num_layers=30, ops=[{"op": "drop", "layers": [14]}])
    >>> Recipe.from_json(r.to_json()) == r
    True
    >>> v = replay(lm, r.ops)
    >>> Recipe.of(healed).save("out/recipe.json", lm)     # + out/recipe.fitted.safetensors
    >>> Recipe.load("out/recipe.json").build(lm, report=print)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from explorer.apply import fitted as _fitted
from explorer.core.errors import LayerError, one_line
from explorer.core.model import LoadedModel
from explorer.core.variant import Variant

FORMAT = "layer-explorer-recipe/1"
MAX_RECIPE_BYTES = 1 << 20

# op name -> handler(variant, op, lm) -> variant. Methods add their own with `register_op`.
OPS: dict[str, Callable[[Variant, dict, LoadedModel], Variant]] = {}


def register_op(name: str, fitted: bool | Callable[[dict], bool] = False):
    """Decorator: register a replay handler for recipe ops named `name`.

    fitted: the op's result is fitted from data (True, or a test of the op): its result is saved
    with the recipe (`Recipe.save`) and a replay loads it instead of calling the handler.
    """
    def deco(fn):
        OPS[name] = fn
        if fitted:
            _fitted.FITTED_OPS[name] = fitted if callable(fitted) else (lambda op: True)
        return fn
    return deco


@register_op("drop")
def _drop(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    return v.drop(_int_list(op, "layers"))


@register_op("merge")
def _merge(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    weights = op.get("weights")
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) and not
                                                isinstance(w, bool) for w in weights):
        raise LayerError("merge op needs 'weights': a list of numbers")
    try:
        weights = [float(w) for w in weights]
    except OverflowError:
        weights = [math.inf]
    if not all(math.isfinite(w) for w in weights):
        raise LayerError("merge op 'weights' must be finite numbers")
    label = op.get("summary")
    return v.merge(_int_list(op, "layers"), weights, label=label if isinstance(label, str) else None,
                   extra={k: op[k] for k in op if k not in ("op", "layers", "weights", "summary")})


@register_op("drop_part")
def _drop_part(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    layer, part = op.get("layer"), op.get("part")
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise LayerError("drop_part op needs 'layer': a layer index")
    if not isinstance(part, str):
        raise LayerError("drop_part op needs 'part': 'attn' or 'mlp'")
    return v.drop_part(layer, part)


def _int_list(op: dict, key: str) -> list[int]:
    val = op.get(key)
    if not isinstance(val, list) or not val or not all(isinstance(i, int) and not
                                                       isinstance(i, bool) for i in val):
        raise LayerError(f"{op.get('op')} op needs '{key}': a non-empty list of layer indices")
    return val


def merge_pairs(variant: Variant, pairs: list[tuple[int, int]] | list[list[int]],
                weights: list[tuple[float, float]] | None = None) -> Variant:
    """Merge several pairs of layers at once; indices are the variant's current slots.

    Pairs must be two different in-range layers each and must not share a layer ((3, 4) and
    (4, 5) overlap: merge them in two steps instead). Each pair becomes one layer at its lower
    index; weights default to (0.5, 0.5). Raises LayerError with one line otherwise.
    """
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise LayerError("no merge pairs given")
    weights = list(weights) if weights is not None else [(0.5, 0.5)] * len(pairs)
    if len(weights) != len(pairs):
        raise LayerError(f"{len(pairs)} merge pairs but {len(weights)} weight pairs")
    owner: dict[int, tuple[int, ...]] = {}
    checked = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise LayerError(f"merge pair {pair!r} must be two layer indices")
        if pair[0] == pair[1]:
            raise LayerError(f"merge pair {tuple(pair)} joins layer {pair[0]} with itself")
        a, b = variant.check_indices(list(pair), "merge pair")
        for i in (a, b):
            if i in owner:
                raise LayerError(f"merge pairs {owner[i]} and {(a, b)} overlap on layer {i}; "
                                 "merge them in separate steps")
            owner[i] = (a, b)
        checked.append((a, b))
    # Highest pair first: merging removes the pair's higher slot, so the lower pairs keep their
    # indices (pairs do not overlap, hence every remaining index is below the removed one).
    order = sorted(range(len(checked)), key=lambda k: max(checked[k]), reverse=True)
    for k in order:
        variant = variant.merge(list(checked[k]), list(weights[k]))
    return variant


def replay(lm: LoadedModel, ops: list[dict], fitted: dict | None = None,
           report: Callable[[str], None] | None = None) -> Variant:
    """Rebuild a variant by applying `ops` in order to the original model.

    A fitted op (heal, streamline, come with recovery) takes its result from `fitted` (the tensors
    saved with the recipe, `Recipe.load`) or from this process (the variant it made is still in
    memory), bit for bit and at once; only when neither has it does its handler fit it again, and
    `report` hears so (one line per op).
    """
    # The methods and the heal stage register the handlers of their own ops (streamline, come,
    # heal) when imported; the package's __init__ imports both, and it has run before any module
    # of the package can be used, so every handler is here whatever the caller imported.
    v = Variant.identity(lm)
    for k, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in OPS:
            name = op.get("op") if isinstance(op, dict) else op
            raise LayerError(f"recipe step {k}: unknown op {name!r}; known: {', '.join(sorted(OPS))}")
        if not _fitted.is_fitted(op):
            v = OPS[op["op"]](v, op, lm)
            continue
        entry = (fitted or {}).get(_fitted.op_key(ops[:k + 1])) or \
            _fitted.recorded(lm, ops[:k + 1])
        if entry is not None:
            after = _fitted.restore(lm, v, op, entry)
        else:
            if report:
                report(f"recipe step {k} ({op.get('summary', op['op'])}): no saved fitted "
                       "tensors, fitting it again")
            after = OPS[op["op"]](v, op, lm)
        _fitted.record(v, after)
        v = after
    return v


@dataclass
class Recipe:
    """What was done to which model; JSON-serialisable and replayable."""

    model: str
    num_layers: int                        # layers of the original model
    ops: list[dict] = field(default_factory=list)
    method: str = "manual"
    params: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)   # e.g. ppl before/after, protocol
    format: str = FORMAT
    # fitted ops' results read from the tensors file next to the recipe (`load`), by op key
    fitted: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def of(variant: Variant, method: str = "manual", params: dict | None = None,
           results: dict | None = None) -> "Recipe":
        return Recipe(model=variant.lm.spec, num_layers=variant.lm.num_layers,
                      ops=[dict(s) for s in variant.steps], method=method,
                      params=dict(params or {}), results=dict(results or {}))

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fitted"}
        return json.dumps(data, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> "Recipe":
        """Parse and validate a recipe; any malformed input raises LayerError with one line."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise LayerError("recipe must be JSON text")
        if len(text) > MAX_RECIPE_BYTES:
            raise LayerError(f"recipe is larger than {MAX_RECIPE_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LayerError(f"recipe is not valid JSON: {one_line(exc)}") from None
        except RecursionError:
            raise LayerError("recipe is not valid JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise LayerError("recipe must be a JSON object")
        if data.get("format") != FORMAT:
            raise LayerError(f"recipe format must be '{FORMAT}' (got {data.get('format')!r})")
        model, n, ops = data.get("model"), data.get("num_layers"), data.get("ops", [])
        if not isinstance(model, str) or not model:
            raise LayerError("recipe needs 'model': a model name")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise LayerError("recipe needs 'num_layers': a positive integer")
        if not isinstance(ops, list) or not all(isinstance(o, dict) and isinstance(o.get("op"), str)
                                                for o in ops):
            raise LayerError("recipe 'ops' must be a list of objects with an 'op' name")
        for key in ("params", "results"):
            if not isinstance(data.get(key, {}), dict):
                raise LayerError(f"recipe '{key}' must be an object")
        return Recipe(model=model, num_layers=n, ops=ops, method=str(data.get("method", "manual")),
                      params=data.get("params", {}), results=data.get("results", {}))

    def build(self, lm: LoadedModel, report: Callable[[str], None] | None = None) -> Variant:
        """Replay this recipe on `lm`, which must be the model it was made for (fitted ops from
        the saved tensors when loaded with them; `report` hears of each op fitted again)."""
        if lm.num_layers != self.num_layers:
            raise LayerError(f"recipe was made for a model with {self.num_layers} layers; this "
                             f"one has {lm.num_layers}")
        return replay(lm, self.ops, self.fitted, report)

    def fitted_ops(self) -> list[int]:
        """Indices of the ops whose result is fitted from data."""
        return [k for k, op in enumerate(self.ops) if _fitted.is_fitted(op)]

    def save(self, path: str | os.PathLike, lm: LoadedModel | None = None) -> list[int]:
        """Write the recipe as JSON at `path` and its fitted ops' results next to it
        (`<name>.fitted.safetensors`, from `self.fitted` or from this process's variants of
        `lm`). Returns the indices of fitted ops whose result was not available: a replay fits
        those again."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        if lm is None:
            return self.fitted_ops()
        _, missing = _fitted.save(path, self.ops, lm, self.fitted)
        return missing

    @staticmethod
    def load(path: str | os.PathLike) -> "Recipe":
        """Read a recipe file and the fitted tensors saved next to it (if any); one-line errors."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LayerError(f"recipe file '{path}' does not exist") from None
        except OSError as exc:
            raise LayerError(f"cannot read recipe file '{path}': {one_line(exc)}") from None
        recipe = Recipe.from_json(data)
        recipe.fitted = _fitted.load(path)
        return recipe
