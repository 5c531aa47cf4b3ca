"""The config of a variant: every per-layer setting follows the layers the variant keeps.

A config describes its layers in three ways, and each is rewritten for a variant whose slot i
stands for original layer `origin(i)`:
* per-layer lists (`layer_types`, `no_rope_layers`, `mlp_layer_types`, per-layer expert counts,
  ...): any list in the config as long as the layer count; slot i takes entry origin(i); a
  dict keyed by layer index (Gemma 4's `per_layer_config`) likewise;
* lists of layer indices (`mlp_only_layers`, `moe_layers`, `global_attn_indexes`, ...): the
  new indices of the slots whose origin is listed;
* counts from the start (`first_k_dense_replace`, `num_dense_layers`): the number of leading
  slots whose origin is below the old count, refused when those are not the leading slots.
Patterns given as a period or an offset (`decoder_sparse_step`, `attn_layer_period`, ...) are
written out as an explicit list where the family has one (`mlp_only_layers` for Qwen-MoE), and
otherwise left as they are: `check_structure` then compares the layers that config builds
with the variant's and refuses, naming the field, when they differ.

Example:
    >>> cfg = variant_config(lm, variant)         # a copy; lm.config is not touched
    >>> cfg.num_hidden_layers, cfg.layer_types
"""

from __future__ import annotations

import copy
from typing import Any

from explorer.core.errors import LayerError, named_line

# Config keys that are lists of layer indices.
INDEX_LISTS = ("mlp_only_layers", "moe_layers", "global_attn_indexes", "rope_scaling_layers",
               "full_attn_idxs", "swa_layers", "attn_layer_indices", "dense_layers")
# Counts of leading layers of one kind.
LEADING_COUNTS = ("first_k_dense_replace", "num_dense_layers")
# Keys that hold a pattern as a period, offset or step: rewritten where possible, otherwise
# checked through the layers they build (check_structure).
PATTERN_WORDS = ("period", "offset", "step", "interval", "freq", "every", "pattern",
                 "start_index", "end_index")
_NOT_LAYERWISE = ("architectures",)
# Pattern keys written out as explicit lists (see `updates`).
REWRITTEN = ("decoder_sparse_step",)


def layer_count_key(config: Any) -> str:
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return name
    raise LayerError(f"the {config.model_type} config names no layer count")


def snapshot(config: Any) -> dict[str, Any]:
    """The per-layer fields of a model's config as loaded (a variant applied in place rewrites
    the config; its rewrite always starts from these)."""
    n = getattr(config, layer_count_key(config))
    out: dict[str, Any] = {}
    for key in _keys(config):
        try:
            value = getattr(config, key, None)
        except Exception:    # a per-layer attribute of a heterogeneous config read globally
            continue
        if isinstance(value, dict) and value and _layer_keyed(value, n):
            out[key] = dict(value)
        elif key in INDEX_LISTS or key in LEADING_COUNTS or key in REWRITTEN or \
                _period_pair(config, key):
            out[key] = copy.copy(value)
        elif isinstance(value, (list, tuple)) and len(value) == n and key not in _NOT_LAYERWISE \
                and not key.endswith(("token_id", "token_ids")):
            out[key] = list(value)
    return out


def _layer_keyed(value: dict, n: int) -> bool:
    """A dict keyed by layer index (Gemma 4's per_layer_config: {layer: settings})."""
    try:
        return all(0 <= int(k) < n for k in value)
    except (TypeError, ValueError):
        return False


def _keys(config: Any) -> list[str]:
    try:
        return list(config.to_dict())
    except Exception:   # a config that cannot serialise: its plain attributes
        return [k for k in vars(config) if not k.startswith("_")]


def pattern_keys(config: Any) -> list[str]:
    """Config keys that look like a layer pattern given by period or offset (set, non-zero)."""
    def value(k: str) -> Any:
        try:
            return getattr(config, k, None)
        except Exception:
            return None
    return [k for k in _keys(config)
            if (("layer" in k and any(w in k for w in PATTERN_WORDS)) or k in REWRITTEN)
            and value(k) not in (None, 0, False)]


def _period_pair(config: Any, key: str) -> bool:
    """`key` is half of a (period, offset) pair: layer i is of a kind when i % period ==
    offset (Jamba's attention and expert layers)."""
    stem = key.removesuffix("_period").removesuffix("_offset")
    return key.endswith(("_period", "_offset")) and hasattr(config, stem + "_period") and \
        hasattr(config, stem + "_offset")


def _periodic(kinds: list[bool]) -> tuple[int, int] | None:
    """The smallest (period, offset) with kinds[j] == (j % period == offset), or None."""
    n = len(kinds)
    for period in range(1, n + 2):
        for offset in range(period):
            if all(k == (j % period == offset) for j, k in enumerate(kinds)):
                return period, offset
    return None


def updates(original: dict[str, Any], config: Any, origins: list[int]) -> dict[str, Any]:
    """The config fields to set for a variant whose slot i stands for original layer
    origins[i]; `original` is `snapshot(config)` of the model as loaded."""
    out: dict[str, Any] = {layer_count_key(config): len(origins)}
    for key, value in original.items():
        if isinstance(value, dict):       # keyed by layer: the kept layers, renumbered
            by_layer = {int(k): v for k, v in value.items()}
            out[key] = {i: by_layer[o] for i, o in enumerate(origins) if o in by_layer}
            continue
        if key in REWRITTEN or key.endswith("_offset") and _period_pair(config, key):
            continue
        if key.endswith("_period") and _period_pair(config, key):
            stem = key.removesuffix("_period")
            period, offset = value, original.get(stem + "_offset", 0)
            found = _periodic([o % period == offset for o in origins])
            if found is not None:       # else unchanged: check_structure names the field
                out[key], out[stem + "_offset"] = found
            continue
        if key in INDEX_LISTS:
            if value is not None:
                listed = set(value)
                out[key] = [i for i, o in enumerate(origins) if o in listed]
        elif key in LEADING_COUNTS:
            if isinstance(value, int):
                lead = [o < value for o in origins]
                k = sum(lead)
                if any(lead[k:]):
                    raise LayerError(f"config field {key}={value} says the first {value} layers "
                                     "are of another kind; this variant puts such a layer after "
                                     "one of the rest, which the config cannot say")
                out[key] = k
        else:
            out[key] = [value[o] for o in origins]
    step = original.get("decoder_sparse_step")
    if isinstance(step, int) and step > 1 and "mlp_only_layers" in original:
        # Qwen-MoE: layer i has experts when (i + 1) % step == 0 and i is not in
        # mlp_only_layers; written out as step 1 and an explicit list of the dense layers
        dense = set(original.get("mlp_only_layers") or [])
        out["decoder_sparse_step"] = 1
        out["mlp_only_layers"] = [i for i, o in enumerate(origins)
                                  if o in dense or (o + 1) % step != 0]
    return out


def variant_config(lm, variant, config: Any | None = None) -> Any:
    """A shallow copy of `config` (default the model's) with the variant's per-layer fields."""
    cfg = copy.copy(config if config is not None else lm.config)
    origins = [variant.origin(i) for i in range(variant.num_layers)]
    for key, value in updates(lm.layer_fields, cfg, origins).items():
        setattr(cfg, key, value)
    return cfg


def check_structure(lm, variant, config: Any) -> None:
    """The layers `config` builds must have the variant's layer classes and parameter shapes
    (built on the meta device: no memory); a one-line LayerError naming the config's pattern
    fields otherwise."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            built = AutoModelForCausalLM.from_config(config, dtype=lm.dtype)
    except Exception as exc:          # the family's own validation of the rewritten config
        raise LayerError(f"transformers refuses this variant's {lm.arch.family} config "
                         f"({named_line(exc)}): it "
                         "cannot be saved as a transformers folder") from None
    layers = lm.arch.layer_list(built)
    for i in range(variant.num_layers):
        have = variant.layer(i)
        want = layers[i]
        same = type(want) is type(have) and {
            n: tuple(p.shape) for n, p in want.named_parameters()} == {
            n: tuple(p.shape) for n, p in have.named_parameters()}
        if not same:
            fields = pattern_keys(config)
            why = (f" (its pattern fields {', '.join(fields)} cannot follow this variant's "
                   "layers)") if fields else ""
            raise LayerError(f"the config of this variant would build slot {i} as a different "
                             f"layer than the one it holds (original layer {variant.origin(i)})"
                             f"{why}: this {lm.arch.family} variant cannot be saved as a "
                             "transformers folder")
