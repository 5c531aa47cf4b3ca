"""Architecture adapters, found from the model itself: where its decoder layers, final norm and
vocabulary head are, what it does to the logits, and which projections its layers have.

No family has to be listed for the explorer to run it. `adapter_for(model)` finds:
* the decoder layer list: the `nn.ModuleList` of `num_hidden_layers` modules (the shallowest
  one), and the base model, its parent, whose forward embeds the tokens and calls the layers;
* the head, `model.get_output_embeddings()`, and the logit rule: what the family's causal-LM
  forward does after the head (Granite's `logits_scaling`, Cohere's `logit_scale`, Falcon-H1's
  `lm_head_multiplier`, Gemma's soft-capping), read from the config;
* the final norm: at load, `explorer.load.selfcheck` records which of the base model's own modules
  its forward calls after the last layer (a norm, OPT's projection, or nothing);
* each layer's projections, norms, experts and kind, by the names in `PART_NAMES`.

Data, not code, for what cannot be found (`FAMILY_TRAITS`): which families put BOS in front
of every window. Whatever is found is then checked at load (`explorer.load.selfcheck`): the
explorer's own pass must give the model's own logits, or the model is refused.

Example:
    >>> arch = adapter_for(model)            # e.g. base "model", layers "model.layers"
    >>> layers = arch.layer_list(model)      # nn.ModuleList of decoder layers
    >>> arch.part(layers[0], arch.mlp_down)  # the layer's MLP down projection, or None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from explorer.core.errors import ModelLoadError


def _get(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# Where a layer keeps each projection, by the names transformers' families use (first found
# wins; a family that fuses q/k/v or gate/up has none of the separate ones, and the methods that
# need them refuse in one line).
PART_NAMES: dict[str, tuple[str, ...]] = {
    "attn_q": ("self_attn.q_proj", "attn.q_proj", "attention.q_proj", "self_attention.q_proj"),
    "attn_k": ("self_attn.k_proj", "attn.k_proj", "attention.k_proj", "self_attention.k_proj"),
    "attn_v": ("self_attn.v_proj", "attn.v_proj", "attention.v_proj", "self_attention.v_proj"),
    "attn_o": ("self_attn.o_proj", "self_attn.dense", "self_attn.out_proj", "attn.c_proj",
               "attn.o_proj", "attn.out_proj", "attention.dense", "attention.o_proj",
               "self_attention.dense", "self_attention.o_proj", "attn.dense"),
    "mlp_gate": ("mlp.gate_proj", "feed_forward.gate_proj", "mlp.w1"),
    "mlp_up": ("mlp.up_proj", "feed_forward.up_proj", "mlp.c_fc", "mlp.dense_h_to_4h",
               "mlp.fc1", "mlp.fc_in", "mlp.w3"),
    "mlp_down": ("mlp.down_proj", "feed_forward.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h",
                 "mlp.fc2", "mlp.fc_out", "mlp.w2"),
}
PARTS = tuple(PART_NAMES)
LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")

# What cannot be found from the modules: model_type prefixes -> traits.
FAMILY_TRAITS: dict[str, dict[str, Any]] = {
    "gemma": {"needs_bos": True},          # Gemma, Gemma 2/3 and their text models
    "vaultgemma": {"needs_bos": True},
    "recurrent_gemma": {"needs_bos": True},
}


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "norm" in name and not isinstance(module, (nn.ModuleList, nn.ModuleDict))


def _has_experts(layer: nn.Module) -> bool:
    """A mixture-of-experts layer: some sub-module named or typed as experts."""
    for name, m in layer.named_modules():
        leaf = name.rpartition(".")[2]
        if leaf == "experts" or "experts" in type(m).__name__.lower():
            return True
    return False


@dataclass(frozen=True)
class LogitRule:
    """What the causal-LM forward does to head(h): logits = cap * tanh(scale * head(h) / cap),
    or scale * head(h) without a cap."""

    scale: float = 1.0
    softcap: float | None = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def describe(self) -> str:
        parts = [f"x {self.scale:g}"] if self.scale != 1.0 else []
        parts += [f"soft cap {self.softcap:g}"] if self.softcap else []
        return ", ".join(parts) or "none"


def logit_rule(model: nn.Module) -> LogitRule:
    """The family's post-head rule from its config (and Cohere's model attribute)."""
    cfg = model.config
    scale = 1.0
    div = getattr(cfg, "logits_scaling", None)              # Granite: logits / logits_scaling
    if isinstance(div, (int, float)) and div:
        scale /= float(div)
    mul = getattr(model, "logit_scale", None)               # Cohere: logits * logit_scale
    if not isinstance(mul, (int, float)):
        mul = getattr(cfg, "logit_scale", None) if hasattr(model, "logit_scale") else None
    if isinstance(mul, (int, float)):
        scale *= float(mul)
    head_mul = getattr(cfg, "lm_head_multiplier", None)     # Falcon-H1
    if isinstance(head_mul, (int, float)):
        scale *= float(head_mul)
    cap = getattr(cfg, "final_logit_softcapping", None)    # Gemma 2/3
    return LogitRule(scale=scale, softcap=float(cap) if cap else None)


class Tail(nn.Module):
    """The modules the base model applies after its last layer, in order (hidden -> hidden);
    the identity when there are none."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        object.__setattr__(self, "steps", list(modules))   # shared, not registered as children

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for m in self.steps:
            out = m(h)
            h = out[0] if isinstance(out, tuple) else out
        return h


@dataclass(frozen=True)
class Architecture:
    """Where one model keeps its parts (dotted attribute paths), found by `adapter_for`."""

    family: str                 # config.model_type, shown to users
    base: str                   # the base model: embeds tokens, calls the layers
    layers: str                 # the nn.ModuleList of decoder layers, relative to the model
    final_norm: tuple[str, ...] = ()   # modules applied after the last layer (found at load)
    head: str = "lm_head"       # the output projection to the vocabulary
    needs_bos: bool = False     # prepend BOS to every perplexity window (Gemma is trained with it)
    logits: LogitRule = field(default_factory=LogitRule)
    # Projections inside a decoder layer (relative to it); None: not found (fused or absent).
    mlp_gate: str | None = None
    mlp_up: str | None = None
    mlp_down: str | None = None
    attn_q: str | None = None
    attn_k: str | None = None
    attn_v: str | None = None
    attn_o: str | None = None
    norms: tuple[str, ...] = ()          # the norm modules directly in a layer, in order
    layer_kinds: tuple[str, ...] = ()    # each layer's class name (hybrids have several)
    moe_layers: tuple[int, ...] = ()     # layers that hold a mixture of experts
    layer_returns_tuple: bool = False    # a layer returns (hidden, ...) rather than hidden

    # -- the parts -------------------------------------------------------------------------
    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order: `nn.ModuleList` of L modules."""
        return _get(model, self.layers)

    def set_layer_list(self, model: nn.Module, layers: nn.ModuleList) -> None:
        """Replace the decoder layer list (used by variants; the caller restores it)."""
        parent_path, _, name = self.layers.rpartition(".")
        parent = _get(model, parent_path) if parent_path else model
        setattr(parent, name, layers)

    def base_model(self, model: nn.Module) -> nn.Module:
        return _get(model, self.base) if self.base else model

    def norm(self, model: nn.Module) -> nn.Module:
        """What the base model does after its last layer: (b, T, H) -> (b, T, H)."""
        if len(self.final_norm) == 1:
            return _get(model, self.final_norm[0])
        return Tail([_get(model, p) for p in self.final_norm])

    def lm_head(self, model: nn.Module) -> nn.Module:
        return _get(model, self.head)

    def set_lm_head(self, model: nn.Module, head: nn.Module) -> None:
        """Replace the vocabulary head (used by variants with a head slot; the caller restores
        it)."""
        parent_path, _, name = self.head.rpartition(".")
        setattr(_get(model, parent_path) if parent_path else model, name, head)

    def part(self, layer: nn.Module, path: str | None) -> nn.Module | None:
        """A sub-module of a decoder layer by dotted path, or None when the layer has no such
        part."""
        if path is None:
            return None
        try:
            return _get(layer, path)
        except AttributeError:
            return None

    def mlp_branch(self, layer: nn.Module) -> str | None:
        """Dotted path of the module whose output is the MLP's contribution to the residual
        stream (the layer's output is the stream before it plus that output): the norm after
        the down projection where there is one (Gemma), else the down projection; None when the
        layer has neither."""
        for path in ("post_feedforward_layernorm", self.mlp_down):
            if self.part(layer, path) is not None:
                return path
        return None

    # -- what the methods ask --------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layers)

    @property
    def is_hybrid(self) -> bool:
        """Layers of more than one class (attention and state-space layers, say)."""
        return len(set(self.layer_kinds)) > 1

    @property
    def llama_style(self) -> bool:
        """Pre-norm layers with separate q/k/v/o and gate/up/down projections and exactly
        the two pre-norms input_layernorm and post_attention_layernorm (Llama, Mistral, Qwen)."""
        return (self.norms == LLAMA_NORMS and not self.is_moe and not self.is_hybrid
                and all(getattr(self, p) for p in PARTS))

    def layer_is_moe(self, origin: int) -> bool:
        return origin in self.moe_layers

    def describe(self) -> str:
        """One line: what was found (for info and the support matrix)."""
        kinds = sorted(set(self.layer_kinds))
        what = [f"layers {self.layers} ({len(self.layer_kinds)} x {'/'.join(kinds)})",
                f"final {'+'.join(self.final_norm) or 'nothing'}", f"head {self.head}"]
        if self.logits != LogitRule():
            what.append(f"logits {self.logits.describe()}")
        if self.is_moe:
            what.append(f"experts in {len(self.moe_layers)} layers")
        return "; ".join(what)


def _num_layers(config: Any) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        n = getattr(config, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def find_layer_list(model: nn.Module) -> str:
    """The dotted path of the decoder layer list: the shallowest `nn.ModuleList` with
    num_hidden_layers entries (not inside another list)."""
    n = _num_layers(model.config)
    if n is None:
        raise ModelLoadError(f"the {model.config.model_type} config names no layer count "
                             "(num_hidden_layers): its decoder layers cannot be found")
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n and name:
            inside = any(name.startswith(f + ".") for f in found)
            if not inside:
                found.append(name)
    if not found:
        raise ModelLoadError(f"no list of {n} decoder layers found in the "
                             f"{model.config.model_type} model: it cannot be studied layer by "
                             "layer")
    depth = min(f.count(".") for f in found)
    shallow = [f for f in found if f.count(".") == depth]
    if len(shallow) > 1:
        named = [f for f in shallow if f.rpartition(".")[2] in ("layers", "h", "blocks", "layer")]
        if len(named) != 1:
            raise ModelLoadError(f"the {model.config.model_type} model has several lists of {n} "
                                 f"modules ({', '.join(shallow)}): which one holds the decoder "
                                 "layers is ambiguous")
        shallow = named
    return shallow[0]


def _module_path(model: nn.Module, target: nn.Module) -> str | None:
    for name, m in model.named_modules(remove_duplicate=False):
        if m is target and name:
            return name
    return None


def _find_part(layers: nn.ModuleList, names: tuple[str, ...]) -> str | None:
    """The first of `names` that some layer has as a sub-module with a weight."""
    for path in names:
        for layer in layers:
            try:
                m = _get(layer, path)
            except AttributeError:
                continue
            if isinstance(getattr(m, "weight", None), torch.Tensor):
                return path
    return None


def _static_tail(base: nn.Module, layers_name: str) -> tuple[str, ...]:
    """Before the model runs: the base model's norm children registered after its layer list
    (or its last norm child). The self-check at load replaces this with what the forward really
    calls."""
    children = list(base.named_children())
    names = [n for n, _ in children]
    after = names[names.index(layers_name) + 1:] if layers_name in names else []
    norms = [n for n, m in children if _is_norm(m)]
    late = [n for n in after if n in norms]
    return tuple(late[:1] or norms[-1:])


def adapter_for(model: nn.Module) -> Architecture:
    """The adapter for a model, found from its modules (works on a model whose weights are still
    on the meta device); a one-line ModelLoadError when no decoder layer list can be found."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "?")
    layers_path = find_layer_list(model)
    base_path, _, layers_name = layers_path.rpartition(".")
    base = _get(model, base_path) if base_path else model
    head_module = model.get_output_embeddings()
    head = _module_path(model, head_module) if head_module is not None else None
    if head is None or not isinstance(getattr(head_module, "weight", None), torch.Tensor):
        raise ModelLoadError(f"the {model_type} model has no vocabulary head "
                             "(get_output_embeddings): it is not a causal language model")
    layers = _get(model, layers_path)
    parts = {role: _find_part(layers, names) for role, names in PART_NAMES.items()}
    first = layers[0]
    norms = tuple(n for n, m in first.named_children() if _is_norm(m))
    prefix = base_path + "." if base_path else ""
    traits: dict[str, Any] = {}
    for key, t in FAMILY_TRAITS.items():
        if model_type.startswith(key):          # "gemma" covers gemma2, gemma3_text, ...
            traits.update(t)
    return Architecture(
        family=model_type, base=base_path, layers=layers_path,
        final_norm=tuple(prefix + n for n in _static_tail(base, layers_name)), head=head,
        logits=logit_rule(model), norms=norms,
        layer_kinds=tuple(type(layer).__name__ for layer in layers),
        moe_layers=tuple(i for i, layer in enumerate(layers) if _has_experts(layer)),
        **parts, **traits)
