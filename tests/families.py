"""One tiny random model per decoder-only family that transformers can build (issue 29 part 7).

The families come from transformers itself (`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), so a new
release with a new family shows up here: every model_type is either INCLUDED or has a stated
reason in EXCLUDED, and the conformance suite asserts `INCLUDED | EXCLUDED == mapping keys`.

tiny_config(model_type) gives a 4-layer, hidden-64 config with the family's NON-default settings
(sliding windows with mixed layer_types, multipliers, softcapping, MoE/dense mixes, hybrid layer
kinds): defaults hide bugs. `facts(model)` records what generic per-layer code needs to know.
tests/families_check.py builds, saves and reloads every included family with plain transformers.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tiny import VOCAB, byte_tokenizer

NUM_LAYERS = 4

# Fields every family gets where its config has the field (by dataclass field or attribute_map).
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
               num_hidden_layers=NUM_LAYERS, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
               eos_token_id=2)

# MoE sizes under the names families use for them: 4 experts, top-2, small experts.
_MOE = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=32,
            expert_intermediate_size=32, moe_topk=2, num_experts_per_token=2,
            n_group=1, topk_group=1, num_expert_group=1)  # 1 group: any expert count divides

# Windows small enough that the 24-token check batch crosses them (defaults of 512-4096 would
# make sliding / chunked layers behave exactly like full ones: a default that hides bugs).
_WINDOWS = dict(sliding_window=16, sliding_window_size=16, attention_chunk_size=16, window_size=16)

# Other widths under family-specific names, so no family keeps a multi-million default block.
_SIZES = dict(ffn_dim=128, dff=128, dim_ff=128, dense_intermediate_size=128,
              shared_intermediate_size=32, moe_shared_expert_intermediate_size=32,
              o_lora_rank=16, vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=16,
              swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16,
              linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
              linear_value_head_dim=16, mamba_d_ssm=128, mamba_d_state=16, mamba_chunk_size=16,
              ssm_state_size=16, mamba_num_heads=8, mamba_head_dim=16, moe_num_experts=4,
              moe_topk=2, moe_num_shared_experts=1, word_embed_proj_dim=64)

# Multi-head latent attention (DeepSeek-style) ranks; head_dim follows qk_rope_head_dim there.
_MLA = dict(kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=16, index_topk=8, index_head_dim=16, index_n_heads=2)

# Mixed sliding / full attention over the 4 layers, for families that take `layer_types`.
_SWA_MIX = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]

_DENSE_SPARSE = ["dense", "sparse", "sparse", "sparse"]
_HYB_MIX = ["hybrid_sliding", "hybrid", "hybrid_sliding", "hybrid"]
_MAMBA_HYBRID = ["linear_attention", "hybrid", "linear_attention", "hybrid"]
_LIN_FULL = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
# Mamba-2 mixers sized to hidden 64: heads * head size == expand * hidden.
_MAMBA2 = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=16)

# Per-family NON-default settings over _COMMON (and _MOE). A comment says why where not obvious.
OVERRIDES: dict[str, dict] = {
    "llama": dict(),
    "mistral": dict(sliding_window=16),
    "mixtral": dict(sliding_window=16),
    "ministral": dict(sliding_window=16, layer_types=_SWA_MIX),
    # qwen2/qwen3: sliding only with use_sliding_window; layer_types given explicitly so that
    # both kinds appear (the default derives them from max_window_layers).
    "qwen2": dict(use_sliding_window=True, sliding_window=16, layer_types=_SWA_MIX),
    "qwen3": dict(use_sliding_window=True, sliding_window=16, layer_types=_SWA_MIX),
    # MoE on layers 1 and 3 only: decoder_sparse_step=1 with mlp_only_layers=[0, 2] (dense).
    "qwen2_moe": dict(decoder_sparse_step=1, mlp_only_layers=[0, 2], use_sliding_window=True,
                      layer_types=_SWA_MIX),
    # Every 2nd layer sparse (layers 1, 3: (k + 1) % step == 0), layer 3 forced dense too.
    "qwen3_moe": dict(decoder_sparse_step=2, mlp_only_layers=[3]),
    "granite": dict(embedding_multiplier=12.0, residual_multiplier=0.22,
                    attention_multiplier=0.0078125, logits_scaling=8.0),
    "granitemoe": dict(embedding_multiplier=12.0, residual_multiplier=0.22,
                       attention_multiplier=0.0078125, logits_scaling=8.0),
    "granitemoeshared": dict(embedding_multiplier=12.0, residual_multiplier=0.22,
                             attention_multiplier=0.0078125, logits_scaling=8.0),
    "cohere": dict(logit_scale=0.125),
    # Its rope_parameters are per layer type and the default ({}) names none.
    "cohere_compass_text": dict(logit_scale=0.125, sliding_window=16, layer_types=_SWA_MIX,
                                rope_parameters={t: dict(rope_type="default", rope_theta=1e4)
                                                 for t in set(_SWA_MIX)}),
    "cohere2": dict(logit_scale=0.125, sliding_window=16, layer_types=_SWA_MIX),
    "gemma": dict(),
    "gemma2": dict(sliding_window=16, layer_types=_SWA_MIX, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, query_pre_attn_scalar=16),
    "gemma3_text": dict(sliding_window=16, layer_types=_SWA_MIX, final_logit_softcapping=30.0,
                        attn_logit_softcapping=50.0, query_pre_attn_scalar=16),
    "vaultgemma": dict(sliding_window=16, layer_types=_SWA_MIX, final_logit_softcapping=30.0,
                       attn_logit_softcapping=50.0, query_pre_attn_scalar=16),
    # A NoPE layer (0) in the middle: layers 0, 1, 3 use RoPE, layer 2 does not.
    "smollm3": dict(no_rope_layers=[1, 1, 0, 1], use_sliding_window=True, sliding_window=16,
                    layer_types=_SWA_MIX),
    # first_k_dense_replace=1: layer 0 dense MLP, layers 1-3 MoE. MLA ranks small but non-trivial.
    "deepseek_v3": dict(first_k_dense_replace=1, n_shared_experts=1, n_group=2, topk_group=1,
                        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16),
    "deepseek_v2": dict(first_k_dense_replace=1, n_shared_experts=1, n_group=2, topk_group=1,
                        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16),
    # Jamba: attention on layers 1 and 3 (period 2, offset 1), MoE on layers 1 and 3.
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                  expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=8, mamba_expand=2),
    "lfm2": dict(layer_types=["conv", "full_attention", "conv", "full_attention"]),
    "qwen3_next": dict(layer_types=["linear_attention", "linear_attention", "full_attention",
                                    "full_attention"], decoder_sparse_step=1, mlp_only_layers=[0],
                       linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                       linear_value_head_dim=16, linear_conv_kernel_dim=4),
    "phi": dict(partial_rotary_factor=0.5),
    "stablelm": dict(partial_rotary_factor=0.25),
    "gptj": dict(rotary_dim=8),
    "starcoder2": dict(sliding_window=16),
    "codegen": dict(rotary_dim=8),  # default 64 > head size 16
    # MoE on layers 1-3 (mlp_layer_types), layer 0 dense; these take the MLA ranks of _MLA.
    "axk1": dict(mlp_layer_types=_DENSE_SPARSE),
    "axk2": dict(mlp_layer_types=_DENSE_SPARSE, num_key_value_heads=4),
    "deepseek_v32": dict(mlp_layer_types=_DENSE_SPARSE, first_k_dense_replace=1,
                         num_key_value_heads=4),
    "glm4_moe_lite": dict(mlp_layer_types=_DENSE_SPARSE),
    "glm_moe_dsa": dict(mlp_layer_types=_DENSE_SPARSE, first_k_dense_replace=1,
                        num_key_value_heads=4),
    # Its sliding layers are plain attention: head_dim = qk_nope_head_dim + qk_rope_head_dim.
    "dots3_note_text": dict(mlp_layer_types=_DENSE_SPARSE, num_key_value_heads=4, head_dim=16,
                            sliding_window=16, per_layer_config={},
                            layer_types=["indexed_attention", "sliding_attention",
                                         "sliding_attention", "indexed_attention"]),
    # Hybrids: linear attention (or Mamba) layers with full attention on layers 1 and 3.
    "bailing_hybrid": dict(layer_types=_LIN_FULL, mlp_layer_types=_DENSE_SPARSE,
                           first_k_dense_replace=1, linear_head_dim=16, linear_num_heads=4,
                           num_shared_experts=1, layer_group_size=2),
    "kimi_linear": dict(layer_types=_LIN_FULL, mlp_layer_types=_DENSE_SPARSE,
                        linear_head_dim=16, linear_num_heads=4, num_shared_experts=1),
    "bamba": dict(attn_layer_indices=[1, 3], **_MAMBA2),
    "granitemoehybrid": dict(layer_types=["mamba", "attention", "mamba", "attention"],
                             embedding_multiplier=12.0, residual_multiplier=0.22,
                             attention_multiplier=0.0078125, logits_scaling=8.0,
                             shared_intermediate_size=32, **_MAMBA2),
    "beam": dict(sliding_window=16, layer_types=_SWA_MIX, mlp_layer_types=_DENSE_SPARSE),
    "dots1": dict(n_shared_experts=1, first_k_dense_replace=1, use_sliding_window=True,
                  sliding_window=16, layer_types=_SWA_MIX),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"],
                     num_dense_layers=1),
    "gpt_neo": dict(num_layers=4, num_heads=4, attention_types=[[["global", "local"], 2]],
                    window_size=16),
    "mamba2": dict(num_heads=8, head_dim=16, n_groups=1, state_size=16, chunk_size=16,
                   time_step_rank=8),  # num_heads * head_dim == expand * hidden
    "dbrx": dict(d_model=64, n_heads=4, n_layers=4, max_seq_len=512,
                 # clip_qkv set: with None, DbrxAttention calls clamp(None, None) and fails.
                 attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(ffn_hidden_size=128, moe_num_experts=4, moe_top_k=2)),
    "gemma3n_text": dict(layer_types=_SWA_MIX, sliding_window=16, num_kv_shared_layers=2,
                         intermediate_size=[128] * 4,
                         activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0],
                         hidden_size_per_layer_input=16, vocab_size_per_layer_input=VOCAB,
                         laurel_rank=8, altup_num_inputs=2),
    # qk_dim_factor 0.5 (default) fails in the native chunkwise kernel (matC_old shape) when
    # the sequence spans several chunks; 1.0 with chunk 8 keeps 3 chunks for 24 tokens.
    "xlstm": dict(embedding_dim=64, num_blocks=4, num_heads=4, chunk_size=8, qk_dim_factor=1.0),
    # Zamba ties one shared attention block into every "hybrid" layer: it needs two of them.
    "zamba": dict(layers_block_type=_MAMBA_HYBRID, attn_layer_period=2, attn_layer_offset=1,
                  attention_hidden_size=128,
                  attention_head_dim=32, mamba_dt_rank=8, n_mamba_heads=2),
    "zamba2": dict(layers_block_type=_MAMBA_HYBRID, attention_hidden_size=128,
                   attention_head_dim=32,
                   mamba_headdim=16, n_mamba_heads=8, kv_channels=16, num_query_groups=4,
                   adapter_rank=8, chunk_size=16, mamba_d_state=16),
    # Both attention kinds and a dense layer 0 where the default 4-layer config has one kind.
    "kolibri1": dict(layer_types=_SWA_MIX),
    "laguna": dict(layer_types=_SWA_MIX),
    "mellum": dict(layer_types=_SWA_MIX, mlp_layer_types=_DENSE_SPARSE),
    "minimax_m3_vl_text": dict(mlp_layer_types=_DENSE_SPARSE),  # no sliding attention there
    "cohere2_moe": dict(logit_scale=0.125, mlp_layer_types=_DENSE_SPARSE),
    "inkling_text": dict(layer_types=_HYB_MIX, mlp_layer_types=_DENSE_SPARSE),
    "inkling2_text": dict(layer_types=_HYB_MIX),
    "zaya": dict(router_hidden_size=32, num_experts_per_tok=1,  # ZAYA allows top-1 only
                 layer_types=["hybrid", "hybrid_sliding", "hybrid", "hybrid_sliding"]),
    # MoE on layers 1 and 3 only (moe_layers derived from the step); chunked attention 16.
    "llama4_text": dict(interleave_moe_layer_step=2, intermediate_size_mlp=128),
    "qwen4_exp_text": dict(layer_types=["linear_attention", "indexed_attention",
                                        "linear_attention", "indexed_attention"],
                           linear_num_value_heads=4, linear_num_key_heads=2,
                           linear_key_head_dim=16, linear_value_head_dim=16, hc_lowrank=16,
                           ple_embed_dim=64, indexer_n_heads=2, indexer_kv_heads=1,
                           indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4),
}


def _fields(config_cls) -> set[str]:
    """The keyword names `config_cls` understands: its dataclass fields and attribute_map keys."""
    return {f.name for f in dataclasses.fields(config_cls)} | set(config_cls.attribute_map)


def _config_cls(model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    return CONFIG_MAPPING[model_type]


def _mapping() -> dict[str, str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


# --- which families, and why not the others ------------------------------------------------------

# Reasons that no config field states. Keep each to one short sentence.
_HAND_EXCLUDED: dict[str, str] = {
    "xlnet": "permutation LM with two-stream attention; not a causal decoder stack",
    "xlm": "masked/translation LM (XLM) with a causal option; an encoder family",
    "reformer": "LSH/chunked attention encoder-style LM; layers are reversible pairs",
    "trocr": "the text decoder of an image-to-text encoder-decoder (cross-attention to pixels)",
    "hrm_text": "num_hidden_layers counts cache slots (stack x H_cycles x (L_cycles+1)): the "
                "stack is re-run per cycle; a 4-slot config fails (IndexError in the cache)",
    "longcat_flash": "each layer module holds two attention sublayers (num_hidden_layers = 2 x "
                     "modules), so no 4-module stack has num_hidden_layers == 4",
}


def _computed_reason(model_type: str) -> str | None:
    """A reason read from the config class, or None when the config says nothing against it."""
    cls = _config_cls(model_type)
    names = _fields(cls)
    subs = dict(getattr(cls, "sub_configs", {}) or {})
    if cls.model_type != model_type:
        return f"alias of {cls.model_type} (same config class {cls.__name__})"
    if "text_config" in subs:
        text = getattr(subs["text_config"], "model_type", "")  # "" where it is AutoConfig
        return (f"multimodal wrapper; its text decoder is the `{text}` type" if text
                else "multimodal wrapper; its text decoder is whatever text_config names")
    if any("vision" in s for s in subs):
        return f"vision-language model (sub-configs {sorted(subs)})"
    if any("audio" in s or "vq" in s for s in subs) or "decoder" in subs:
        return f"audio/multimodal model with sub-configs {sorted(subs)}"
    if "is_decoder" in names and "add_cross_attention" in names:
        return "bidirectional encoder (BERT-style) run as a decoder via is_decoder=True"
    try:
        with _quiet():
            default = cls()
    except Exception as e:  # noqa: BLE001 - the reason is the point
        return f"default config does not build: {_short(e)}"
    if default.is_encoder_decoder:
        return "encoder-decoder model (config.is_encoder_decoder); its causal LM is the decoder"
    if getattr(default, "num_hidden_layers", None) is None:
        return "config has no num_hidden_layers (no single decoder layer stack)"
    return None


@contextmanager
def _quiet():
    """Silence transformers' config warnings (default token ids outside a default vocab...)."""
    from transformers.utils import logging
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _short(e: BaseException, n: int = 120) -> str:
    """An error as one short line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:n]}"


# Families whose tiny config or model fails with plain transformers (from families_check.py):
# model_type -> the error, shortened. Filled from the check's output, not guessed.
_BUILD_FAILS: dict[str, str] = {
}


def _excluded() -> dict[str, str]:
    out: dict[str, str] = {}
    for mt in _mapping():
        reason = _HAND_EXCLUDED.get(mt) or _computed_reason(mt) or _BUILD_FAILS.get(mt)
        if reason:
            out[mt] = reason
    return out


EXCLUDED: dict[str, str] = _excluded()
INCLUDED: list[str] = sorted(set(_mapping()) - set(EXCLUDED))


# --- tiny configs ------------------------------------------------------------------------------

def tiny_config(model_type: str):
    """A tiny random config for `model_type`: _COMMON (and _MOE) where the family has the field,
    then OVERRIDES[model_type]; num_hidden_layers is NUM_LAYERS whatever the family calls it."""
    from transformers import AutoConfig

    cls = _config_cls(model_type)
    names = _fields(cls)
    shared = {**_COMMON, **_MOE, **_MLA, **_WINDOWS, **_SIZES}
    kwargs = {k: v for k, v in shared.items() if k in names}
    if "kv_lora_rank" in names and "head_dim" in names:
        kwargs["head_dim"] = _MLA["qk_rope_head_dim"]  # MLA: rotary part of the head
    kwargs.update(OVERRIDES.get(model_type, {}))
    config = AutoConfig.for_model(model_type, **kwargs)
    if config.num_hidden_layers != NUM_LAYERS:
        raise ValueError(f"{model_type}: num_hidden_layers={config.num_hidden_layers}")
    _check_per_layer_lengths(model_type, config)
    return config


def _check_per_layer_lengths(model_type: str, config) -> None:
    """Every field that is per-layer in the family's default config (a list as long as its
    num_hidden_layers) must be NUM_LAYERS long here too: a stale 32-long list would slip by."""
    try:
        with _quiet():
            default = _config_cls(model_type)()
    except Exception:  # noqa: BLE001 - no default to compare with
        return
    n = default.num_hidden_layers
    for key, val in default.to_dict().items():
        if isinstance(val, list) and len(val) == n != NUM_LAYERS:
            got = getattr(config, key, None)  # None: derived from another field (lfm2 idxs)
            if got is not None and not (isinstance(got, list) and len(got) == NUM_LAYERS
                                        or _is_index_list(key, got)):
                raise ValueError(f"{model_type}: per-layer field {key} is not {NUM_LAYERS} long")


def build(model_type: str, seed: int = 0):
    """The tiny float32 model for `model_type`, random under torch.manual_seed(seed), in eval."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    return model.eval()


def save_family(folder: Path, model_type: str, seed: int = 0) -> Path:
    """Write the tiny `model_type` model and the byte tokenizer to `folder`, as
    tiny.make_tiny_model does for its families."""
    folder = Path(folder)
    build(model_type, seed).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


# --- facts the generic per-layer code needs -----------------------------------------------------

# Int fields whose name says they encode a per-layer pattern (period, offset, step...).
_PATTERN_NAME = re.compile(r"period|offset|(?<!time_)step|pattern|first_k|every|interval|"
                           r"_replace|window_layers|sparse|dense_layers|layer_group|"
                           r"layer_start_index|layer_end_index|"
                           r"num_.*_layers$")
# List fields that are layer-index lists (e.g. mlp_only_layers=[0, 2]) even when empty.
_INDEX_NAME = re.compile(r"(_layers|_idxs|_indices|_layer_ids)$")


@dataclass
class FamilyFacts:
    model_type: str
    model_class: str
    layers_path: str                 # attribute path of the ModuleList of the decoder layers
    layer_classes: list[str]         # distinct decoder layer classes, in order of first use
    heterogeneous: bool              # layers differ in class or in their children's classes
    moe: bool                        # some layer holds experts
    moe_layers: list[int] = field(default_factory=list)   # indices of the layers with experts
    layer_kinds: list[int] = field(default_factory=list)  # per layer: index of its structure
    per_layer_fields: dict[str, list] = field(default_factory=dict)   # len == num_hidden_layers
    index_fields: dict[str, list] = field(default_factory=dict)       # lists of layer indices
    pattern_fields: dict[str, int] = field(default_factory=dict)      # period/offset/step ints
    params: int = 0


def layers_path(model, n: int = NUM_LAYERS) -> str:
    """The shallowest nn.ModuleList of `n` modules: the decoder layer stack (expert lists of 4
    are deeper, so the shallowest wins)."""
    found = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not found:
        raise LookupError(f"no ModuleList of {n} layers")
    return min(found, key=lambda s: (s.count("."), s))


def _signature(layer: torch.nn.Module) -> tuple:
    """A layer's class and its direct children's names and classes: equal for same-kind layers."""
    return (type(layer).__name__,) + tuple((k, type(c).__name__) for k, c in layer.named_children())


def _is_moe(layer: torch.nn.Module) -> bool:
    return any(re.search(r"experts?$", name) or "Expert" in type(m).__name__
               for name, m in layer.named_modules())


def config_layer_fields(config, n: int = NUM_LAYERS) -> tuple[dict, dict, dict]:
    """(per-layer lists, layer-index lists, pattern ints) among `config`'s top-level fields."""
    per_layer, index, pattern = {}, {}, {}
    for key, val in config.to_dict().items():
        if isinstance(val, list):
            if len(val) == n:
                per_layer[key] = val
            elif _INDEX_NAME.search(key) and all(isinstance(x, int) and 0 <= x < n for x in val):
                index[key] = val
        elif isinstance(val, int) and not isinstance(val, bool) and _PATTERN_NAME.search(key):
            if key not in ("num_hidden_layers",) and not key.endswith("_token_id"):
                pattern[key] = val
    return per_layer, index, pattern


def _is_index_list(key: str, val) -> bool:
    """A list of layer indices (llama4 moe_layers: all 48 layers by default, [1, 3] here)."""
    return (isinstance(val, list) and bool(_INDEX_NAME.search(key))
            and all(isinstance(x, int) and 0 <= x < NUM_LAYERS for x in val))


def facts(model) -> FamilyFacts:
    """What generic per-layer code needs to know about `model`, read off the built model."""
    config = model.config
    path = layers_path(model, config.num_hidden_layers)
    layers = list(model.get_submodule(path))
    classes = list(dict.fromkeys(type(layer).__name__ for layer in layers))
    kinds = list(dict.fromkeys(_signature(x) for x in layers))
    per_layer, index, pattern = config_layer_fields(config, config.num_hidden_layers)
    return FamilyFacts(
        model_type=config.model_type, model_class=type(model).__name__, layers_path=path,
        layer_classes=classes, heterogeneous=len(kinds) > 1,
        moe=any(_is_moe(x) for x in layers),
        moe_layers=[k for k, x in enumerate(layers) if _is_moe(x)],
        layer_kinds=[kinds.index(_signature(x)) for x in layers],
        per_layer_fields=per_layer, index_fields=index,
        pattern_fields=pattern, params=sum(p.numel() for p in model.parameters()))


@functools.cache
def family_facts(model_type: str) -> FamilyFacts:
    """FamilyFacts of the tiny `model_type` model, built once (about 0.1 s a family)."""
    return facts(build(model_type))
