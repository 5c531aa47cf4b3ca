"""Architecture adapters: where each model family keeps its decoder layers, final norm and head.

Everything that walks a model's layers goes through `adapter_for(model)`, so supporting a new family
means adding one `Architecture` entry here. The entry also names the projections inside a layer,
which the merge methods need (CoMe concatenates FFN channels and attention heads).

Example:
    >>> arch = adapter_for(model)            # e.g. the "llama" adapter for a Qwen2 model
    >>> layers = arch.layers(model)          # nn.ModuleList of decoder layers
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from .errors import ModelLoadError


def _get(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Architecture:
    """Names of the parts of one family of decoder-only transformers (dotted attribute paths)."""

    family: str                 # adapter name shown to users
    model_types: tuple[str, ...]  # config.model_type values it serves
    base: str                   # the backbone module (embeddings + layers + final norm)
    layers: str                 # the nn.ModuleList of decoder layers, relative to the model
    final_norm: str             # the norm applied after the last layer
    head: str = "lm_head"       # the output projection to the vocabulary
    needs_bos: bool = False     # prepend BOS to every perplexity window (Gemma is trained with it)
    # Projections inside one decoder layer (relative to the layer). None: the family fuses or
    # transposes them and the channel-level methods do not support it.
    mlp_gate: str | None = "mlp.gate_proj"
    mlp_up: str | None = "mlp.up_proj"
    mlp_down: str | None = "mlp.down_proj"
    attn_q: str | None = "self_attn.q_proj"
    attn_k: str | None = "self_attn.k_proj"
    attn_v: str | None = "self_attn.v_proj"
    attn_o: str | None = "self_attn.o_proj"
    norms: tuple[str, ...] = field(default=("input_layernorm", "post_attention_layernorm"))

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order: `nn.ModuleList` of L modules."""
        return _get(model, self.layers)

    def set_layer_list(self, model: nn.Module, layers: nn.ModuleList) -> None:
        """Replace the decoder layer list (used by variants; the caller restores it)."""
        parent_path, _, name = self.layers.rpartition(".")
        parent = _get(model, parent_path) if parent_path else model
        setattr(parent, name, layers)

    def base_model(self, model: nn.Module) -> nn.Module:
        return _get(model, self.base)

    def norm(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm)

    def lm_head(self, model: nn.Module) -> nn.Module:
        return _get(model, self.head)

    def set_lm_head(self, model: nn.Module, head: nn.Module) -> None:
        """Replace the vocabulary head (used by variants with a head slot; the caller restores
        it)."""
        parent_path, _, name = self.head.rpartition(".")
        setattr(_get(model, parent_path) if parent_path else model, name, head)

    def part(self, layer: nn.Module, path: str | None) -> nn.Module | None:
        """A sub-module of a decoder layer by dotted path, or None when the family has no such part."""
        if path is None:
            return None
        try:
            return _get(layer, path)
        except AttributeError:
            return None


_LLAMA_LIKE = dict(base="model", layers="model.layers", final_norm="model.norm")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", ("llama", "mistral", "mixtral", "qwen2", "qwen3", "olmo", "olmo2",
                           "smollm3", "granite", "cohere"), **_LLAMA_LIKE),
    Architecture("gemma", ("gemma", "gemma2", "gemma3_text"), needs_bos=True,
                 norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                        "post_feedforward_layernorm"), **_LLAMA_LIKE),
    # Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj.
    Architecture("phi3", ("phi3",), mlp_gate=None, mlp_up=None, attn_q=None, attn_k=None,
                 attn_v=None, **_LLAMA_LIKE),
    # GPT-2 keeps its blocks in transformer.h and uses transposed Conv1D projections.
    Architecture("gpt2", ("gpt2",), base="transformer", layers="transformer.h",
                 final_norm="transformer.ln_f", mlp_gate=None, mlp_up="mlp.c_fc",
                 mlp_down="mlp.c_proj", attn_q=None, attn_k=None, attn_v=None,
                 attn_o="attn.c_proj", norms=("ln_1", "ln_2")),
    Architecture("gpt_neox", ("gpt_neox",), base="gpt_neox", layers="gpt_neox.layers",
                 final_norm="gpt_neox.final_layer_norm", mlp_gate=None,
                 mlp_up="mlp.dense_h_to_4h", mlp_down="mlp.dense_4h_to_h", attn_q=None,
                 attn_k=None, attn_v=None, attn_o="attention.dense",
                 norms=("input_layernorm", "post_attention_layernorm")),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ARCHITECTURES for t in a.model_types)


def adapter_for(model_or_type: nn.Module | str) -> Architecture:
    """The adapter for a model (or a `config.model_type` string); a clear error if unsupported."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise ModelLoadError(
        f"architecture '{model_type}' is not supported; supported model types: "
        + ", ".join(SUPPORTED_MODEL_TYPES)
    )
