"""What GGUF export knows about each model family: llama.cpp's architecture name and the
conventions in which its files differ from transformers' weights (one record per family).

Adding a family GGUF export writes: a `GGUFFamily` row in `GGUF_FAMILIES`, then the round trip
in tests/test_export_gguf.py (the file must load back through transformers' GGUF reader with the
variant's logits).
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.core.errors import ExplorerError
from explorer.core.model import LoadedModel


class GGUFExportError(ExplorerError):
    """The variant cannot be written as GGUF (architecture, module or setting the format lacks)."""


@dataclass(frozen=True)
class GGUFFamily:
    """Everything GGUF export knows about one model family, as llama.cpp writes it and
    transformers' GGUF reader (`modeling_gguf_pytorch_utils`, `integrations/ggml.py`) undoes it."""

    # llama.cpp's `general.architecture` (a value of gguf.MODEL_ARCH_NAMES): picks the tensor
    # name map and the key prefix, and the reader picks its config class and tensor fix-ups by it.
    arch: str
    # q/k rows permuted per head into llama.cpp's interleaved rotary layout. The reader undoes
    # this for arch "llama" only (LlamaTensorProcessor); every other arch keeps transformers' rows.
    permute_qk: bool = False
    # Added to every norm weight: Gemma computes x * (1 + w), llama.cpp stores 1 + w and the
    # reader subtracts 1 from every "*norm.weight" (Gemma2TensorProcessor).
    norm_offset: float = 0.0
    # Tensors stored transposed, by GGUF leaf name: GPT-2's Conv1D holds (in, out), llama.cpp
    # (out, in); the reader transposes these four back (GPT2TensorProcessor).
    transposed: tuple[str, ...] = ()
    # The family's norm: "rms" (RMSNorm, key attention.layer_norm_rms_epsilon) or "layer"
    # (LayerNorm with a bias, key attention.layer_norm_epsilon).
    norm: str = "rms"
    # Rotary position embeddings (rope.* keys); False: learned positions (GPT-2's wpe).
    rope: bool = True
    # Local/global attention written as sliding_window (+ the local rope base and the per-layer
    # pattern for "pattern"): None, "window" (Gemma2: the reader takes the window, its config
    # rebuilds alternating layers) or "pattern" (Gemma3).
    sliding: str | None = None
    # Gemma2's attention and final logit soft-capping (llama.cpp needs both keys).
    softcap: bool = False
    # Config fields the reader cannot carry (it rebuilds them from the config class's defaults):
    # compared with the variant's before anything is written, beyond the common ones.
    checked: tuple[str, ...] = ()
    # Non-empty: why transformers cannot read llama.cpp's file of this family back as the model
    # runs; export refuses it in one line with this reason.
    unreadable: str = ""


_NO_READER = "transformers has no GGUF reader for llama.cpp's '{}'"
_GEMMA_CHECKED = ("query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping")

# transformers model_type -> its GGUF facts. A family without `unreadable` loads back through
# transformers' own GGUF reader with the variant's logits (tests/test_export_gguf.py checks each).
GGUF_FAMILIES: dict[str, GGUFFamily] = {
    "llama": GGUFFamily("llama", permute_qk=True),
    # llama.cpp converts Mistral as "llama"; transformers reads it back as Llama, the same
    # computation while there is no sliding window (checked: Llama's config has none).
    "mistral": GGUFFamily("llama", permute_qk=True),
    "qwen2": GGUFFamily("qwen2"),
    "qwen3": GGUFFamily("qwen3"),
    "phi3": GGUFFamily("phi3"),      # qkv_proj -> attn_qkv, gate_up_proj -> ffn_up, both fused
    "gemma2": GGUFFamily("gemma2", norm_offset=1.0, sliding="window", softcap=True,
                         checked=_GEMMA_CHECKED),
    "gemma3_text": GGUFFamily("gemma3", norm_offset=1.0, sliding="pattern",
                              checked=_GEMMA_CHECKED),
    "gpt2": GGUFFamily("gpt2", norm="layer", rope=False,
                       transposed=("attn_qkv", "attn_output", "ffn_up", "ffn_down"),
                       checked=("n_inner", "scale_attn_by_inverse_layer_idx",
                                "reorder_and_upcast_attn")),
    # llama.cpp names these, but transformers cannot read its files of them back:
    "mixtral": GGUFFamily("llama", unreadable="llama.cpp writes it as 'llama' with stacked "
                          "experts, which transformers reads back as a dense Llama"),
    "gemma": GGUFFamily("gemma", unreadable=_NO_READER.format("gemma")),
    "cohere": GGUFFamily("command-r", unreadable=_NO_READER.format("command-r")),
    "gpt_neox": GGUFFamily("gptneox", unreadable=_NO_READER.format("gptneox")),
    "olmo": GGUFFamily("olmo", unreadable=_NO_READER.format("olmo")),
    "olmo2": GGUFFamily("olmo2", unreadable=_NO_READER.format("olmo2")),
    "granite": GGUFFamily("granite", unreadable=_NO_READER.format("granite")),
    "smollm3": GGUFFamily("smollm3", unreadable=_NO_READER.format("smollm3")),
}
# model_type -> GGUF arch name, for the families export writes
ARCHES = {mt: fam.arch for mt, fam in GGUF_FAMILIES.items() if not fam.unreadable}


def gguf_family(lm: LoadedModel) -> GGUFFamily:
    """This model's GGUF facts, or a one-line refusal."""
    mt = lm.config.model_type
    fam = GGUF_FAMILIES.get(mt)
    if fam is None or fam.unreadable:
        why = f" ({fam.unreadable})" if fam is not None else ""
        raise GGUFExportError(f"GGUF export supports {', '.join(sorted(ARCHES))} models; "
                              f"this one is '{mt}'{why}: export a transformers folder instead "
                              "(--format folder) and convert it with llama.cpp's "
                              "convert_hf_to_gguf.py")
    return fam


def gguf_arch(lm: LoadedModel) -> str:
    """The GGUF architecture name for this model, or a one-line refusal."""
    return gguf_family(lm).arch
