"""Export a variant as one GGUF file (llama.cpp, Ollama, LM Studio), written with the `gguf` package.

What goes in (docs/evaluation.md, "GGUF export"):
* tensors under llama.cpp's names (`blk.N.attn_q.weight`, ...; gguf's own name map), renumbered
  0..L-1 for the variant's L layers; 2-D weights as F16 or Q8_0 (blocks of 32 values with one f16
  scale; a matrix whose rows are not a multiple of 32 stays F16, as llama.cpp does), norms and
  biases as F32;
* the conventions in which llama.cpp differs from transformers, per family (GGUF_FAMILIES, one
  record each; transformers' GGUF reader undoes each): llama's (and Mistral's) q/k rows permuted
  per head into llama.cpp's rotary layout, Gemma's RMSNorm weights stored as 1 + w (Gemma computes
  x * (1 + w)), GPT-2's Conv1D matrices transposed to (out, in); Phi-3's fused qkv and gate_up
  matrices go in as they are;
* the architecture's hyperparameters with the new `block_count`, and the recipe as
  `layer_explorer.recipe` (JSON);
* the tokenizer: copied key by key from the source GGUF when the model came from one (embedded
  models, .gguf files), else built from a byte-level BPE tokenizer.json (tokens, merges, token
  types, special ids, chat template).

Before anything is written the file's header is checked against the variant: what transformers
would rebuild from it (layer count, sizes, rotary bases, Gemma's local/global layer pattern, ...)
must be what the variant runs; anything the format cannot carry is refused in one line that says
to export a transformers folder instead. Writes are atomic (a temporary file renamed into place).

Example:
    >>> export_gguf(variant, "exports/smol-drop14.gguf", quant="q8_0")
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.load.embedded import EMBEDDED, embedded_gguf
from explorer.core.errors import ExplorerError, LayerError, one_line
from explorer.export.folder import check_exportable, output_root, safe_output_path
from explorer.export.gguf_families import GGUFExportError, GGUFFamily, gguf_family
from explorer.export.gguf_tokenizer import build_tokenizer, copy_tokenizer
from explorer.core.model import LoadedModel
from explorer.load.spec import resolve
from explorer.core.progress import Event, Progress
from explorer.apply.recipe import Recipe
from explorer.core.variant import Variant

QUANTS = ("f16", "q8_0")
RECIPE_KEY = "layer_explorer.recipe"


@dataclass(frozen=True)
class GGUFResult:
    path: str
    arch: str
    quant: str
    num_layers: int
    tensors: int
    bytes: int
    tokenizer: str               # "copied from <file>" or "built from tokenizer.json (<pre>)"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out": self.path, "format": "gguf", "arch": self.arch, "quant": self.quant,
                "num_layers": self.num_layers, "tensors": self.tensors,
                "size_mb": round(self.bytes / 2**20, 2), "tokenizer": self.tokenizer,
                "notes": list(self.notes)}


def source_gguf(lm: LoadedModel) -> Path | None:
    """The GGUF file the model was loaded from (embedded model or .gguf path), or None."""
    try:
        kind, where = resolve(lm.spec)
        if kind == "embedded" and EMBEDDED[where].locate() is not None:
            return embedded_gguf(where)
    except ExplorerError:      # loaded from the hub copy: no source file
        return None
    return Path(where) if kind == "gguf" else None


def _check_standard_layers(variant: Variant) -> None:
    try:
        check_exportable(variant)
    except LayerError as exc:
        raise GGUFExportError(f"GGUF cannot hold this variant: {exc}") from None


# -- tensors ---------------------------------------------------------------------------------

def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k rows (per head: all first halves of the rotary pairs, then the second
    halves) -> llama.cpp's (per head: pairs interleaved). w: (n_head * head_dim, in)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_name(names: Any, hf_name: str) -> tuple[str | None, str]:
    """(GGUF base name, suffix) of a state-dict key: "model.layers.0.self_attn.q_proj.weight" ->
    ("blk.0.attn_q", "weight"). A key without a weight/bias leaf (stacked experts) is looked up
    whole and stored as ".weight"."""
    base, _, suffix = hf_name.rpartition(".")
    if suffix in ("weight", "bias"):
        return names.get_name(base), suffix
    return names.get_name(hf_name), "weight"


def _convert(w: np.ndarray, name: str, suffix: str, fam: GGUFFamily, cfg: Any) -> np.ndarray:
    """One transformers tensor as llama.cpp stores it (the reader undoes each step)."""
    leaf = name.rpartition(".")[2]                  # "blk.3.attn_q" -> "attn_q"
    if fam.permute_qk and leaf in ("attn_q", "attn_k") and suffix == "weight":
        heads = cfg.num_attention_heads if leaf == "attn_q" else cfg.num_key_value_heads
        w = _llama_permute(w, heads)                # (heads * head_dim, hidden), rows reordered
    if fam.norm_offset and leaf.endswith("norm") and suffix == "weight":
        w = w + fam.norm_offset                     # (dim,): Gemma's x * (1 + w) as a plain scale
    if leaf in fam.transposed and suffix == "weight":
        w = w.T                                     # Conv1D (in, out) -> (out, in)
    return w


def _tensors(variant: Variant, fam: GGUFFamily) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of the variant, in the model's order."""
    import gguf

    cfg = variant.lm.config
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == fam.arch)
    names = gguf.get_tensor_name_map(arch_enum, variant.num_layers)
    out = []
    with variant.applied() as model:
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        for hf_name, t in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue
            name, suffix = _gguf_name(names, hf_name)
            if name is None:
                raise GGUFExportError(f"weight '{hf_name}' has no GGUF name for '{fam.arch}': "
                                      "GGUF cannot hold it; export a transformers folder instead")
            w = _convert(t.detach().to(torch.float32).cpu().numpy(), name, suffix, fam, cfg)
            out.append((f"{name}.{suffix}", np.ascontiguousarray(w)))
    return out


def _encode(w: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type): 1-D tensors F32; matrices F16 or Q8_0 (rows of 32k values)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if w.ndim < 2:
        return w.astype(np.float32), Q.F32
    if quant == "q8_0" and w.shape[-1] % 32 == 0:
        return quantize(w, Q.Q8_0), Q.Q8_0
    return w.astype(np.float16), Q.F16


# -- metadata --------------------------------------------------------------------------------

def _rope_theta(cfg: Any, layer_type: str = "full_attention") -> float | None:
    rp = getattr(cfg, "rope_parameters", None) or {}
    if layer_type in rp and isinstance(rp[layer_type], dict):
        rp = rp[layer_type]
    theta = rp.get("rope_theta") if isinstance(rp, dict) else None
    return float(theta) if theta is not None else getattr(cfg, "rope_theta", None)


def _check_rope(cfg: Any) -> None:
    rp = getattr(cfg, "rope_parameters", None) or {}
    for params in (rp.values() if all(isinstance(v, dict) for v in rp.values()) and rp
                   else [rp]):
        kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
        if kind not in ("default", None):
            raise GGUFExportError(f"rotary scaling '{kind}' is not read back from GGUF by "
                                  "transformers: export a transformers folder instead")


def _first(cfg: Any, *attrs: str) -> Any:
    """The first of these config fields that is set (families name the same thing apart)."""
    return next((getattr(cfg, a) for a in attrs if getattr(cfg, a, None) is not None), None)


def _head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _rotary_dims(cfg: Any) -> int:
    """Rotated dimensions per head: head_dim times the partial rotary factor (Phi-3: 1.0)."""
    rp = getattr(cfg, "rope_parameters", None) or {}
    factor = rp.get("partial_rotary_factor") if isinstance(rp, dict) else None
    factor = factor or getattr(cfg, "partial_rotary_factor", None) or 1.0
    return int(_head_dim(cfg) * factor)


def _hyperparameters(w: Any, cfg: Any, fam: GGUFFamily, num_layers: int) -> None:
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(num_layers)
    # the FFN width: intermediate_size, or GPT-2's n_inner (None: 4 * hidden)
    w.add_feed_forward_length(int(_first(cfg, "intermediate_size", "n_inner")
                                  or 4 * cfg.hidden_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(_first(cfg, "num_key_value_heads", "num_attention_heads")))
    eps = float(_first(cfg, "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps"))
    (w.add_layer_norm_rms_eps if fam.norm == "rms" else w.add_layer_norm_eps)(eps)
    w.add_key_length(_head_dim(cfg))
    w.add_value_length(_head_dim(cfg))
    w.add_vocab_size(int(cfg.vocab_size))
    if fam.rope:
        w.add_rope_dimension_count(_rotary_dims(cfg))
        theta = _rope_theta(cfg)
        if theta is not None:
            w.add_rope_freq_base(theta)
    if fam.sliding and getattr(cfg, "sliding_window", None):
        w.add_sliding_window(int(cfg.sliding_window))
    if fam.sliding == "pattern":
        local = _rope_theta(cfg, "sliding_attention")
        if local is not None:
            w.add_rope_freq_base_swa(local)
        types = getattr(cfg, "layer_types", None) or []
        w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
    if fam.softcap:
        for value, add in ((cfg.attn_logit_softcapping, w.add_attn_logit_softcapping),
                           (cfg.final_logit_softcapping, w.add_final_logit_softcapping)):
            if value is not None:
                add(float(value))


_CHECKED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim",
            "layer_types", "sliding_window", "use_sliding_window", "attention_bias", "mlp_bias",
            "hidden_act", "hidden_activation", "activation_function")


def _check_header(path: Path, variant: Variant, fam: GGUFFamily) -> None:
    """Refuse when transformers' GGUF reader would rebuild a config unlike the variant's."""
    from transformers import AutoConfig

    got = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with variant.applied() as model:
        want = model.config
        pairs = [(k, getattr(want, k, None), getattr(got, k, None))
                 for k in _CHECKED + fam.checked]
        if fam.rope:
            pairs.append(("rope_theta", _rope_theta(want), _rope_theta(got)))
            pairs.append(("rotary dimensions", _rotary_dims(want), _rotary_dims(got)))
        if getattr(want, "layer_types", None) and "sliding_attention" in want.layer_types:
            pairs.append(("local rope_theta", _rope_theta(want, "sliding_attention"),
                          _rope_theta(got, "sliding_attention")))
        for name, a, b in pairs:
            if a is None or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                             and list(a) == list(b)) or a == b:
                continue
            if name == "layer_types":
                raise GGUFExportError(
                    "GGUF readers rebuild this model's local/global attention pattern from the "
                    f"layer count ({_pattern(b)}), but this variant has {_pattern(a)}: keep the "
                    "global layers in place or export a transformers folder instead")
            raise GGUFExportError(f"the GGUF format as transformers reads it cannot carry this "
                                  f"model's {name} ({a!r}; it would load as {b!r}): export a "
                                  "transformers folder instead")


def _pattern(types: Any) -> str:
    types = list(types or [])
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    return f"global layers {full} of {len(types)}"


# -- the export --------------------------------------------------------------------------------

def _gguf_target(out: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    name = str(out)
    if not name.lower().endswith(".gguf"):
        name += ".gguf"
    return safe_output_path(name, output_root(root))


def _write_metadata(w: Any, variant: Variant, fam: GGUFFamily, quant: str, recipe: Recipe,
                    source: Path | None) -> tuple[str, list[str]]:
    """Every key-value pair of the file; returns (tokenizer note, notes)."""
    import gguf

    lm = variant.lm
    notes: list[str] = []
    w.add_name(f"{lm.spec} ({variant.describe()})"[:200])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16"
                        else gguf.LlamaFileType.MOSTLY_Q8_0))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    with variant.applied() as model:
        _hyperparameters(w, model.config, fam, variant.num_layers)
    if source is not None:
        tok_note = f"copied from {source.name} ({copy_tokenizer(w, source)} keys)"
    else:
        pre = build_tokenizer(w, lm.tokenizer)
        tok_note = f"built from tokenizer.json (pre-tokenizer '{pre}')"
        if pre == "default":
            notes.append("pre-tokenizer written as 'default' (GPT-2's split): llama.cpp may "
                          "split text unlike the original tokenizer")
    w.add_string(RECIPE_KEY, recipe.to_json())
    return tok_note, notes


def _temp_file(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".gguf", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise ExplorerError(f"could not write '{target}': {one_line(exc)}") from None
    return Path(name)


def export_gguf(variant: Variant, out: str | os.PathLike, *, quant: str = "f16",
                recipe: Recipe | None = None, root: str | os.PathLike | None = None,
                overwrite: bool = False, progress: Progress | None = None) -> GGUFResult:
    """Write `variant` as one GGUF file at `out` (".gguf" added when missing).

    quant: "f16" (matrices in half precision, the reference) or "q8_0" (8-bit blocks, about half
        the size; see docs/evaluation.md for the perplexity it costs).
    root: confine the output to this folder (default $LAYER_EXPLORER_OUTPUT_DIR, if set).
    """
    import gguf

    if quant not in QUANTS:
        raise GGUFExportError(f"unknown GGUF quantization '{quant}'; use one of: "
                              + ", ".join(QUANTS))
    lm = variant.lm
    fam = gguf_family(lm)
    _check_standard_layers(variant)
    _check_rope(lm.config)
    target = _gguf_target(out, root)
    if target.is_dir():
        raise ExplorerError(f"'{target}' is a folder; give a file name ending in .gguf")
    if target.exists() and not overwrite:
        raise ExplorerError(f"'{target}' already exists; choose another name or allow overwrite")
    recipe = recipe or Recipe.of(variant)
    source = source_gguf(lm)
    if progress:
        progress(Event("GGUF", 0.0, note=f"checking what a GGUF reader rebuilds of "
                                      f"{variant.num_layers} layers"))
    tmp = _temp_file(target)
    try:
        # 1. The header alone (no tensors): what would a reader make of it? Refuse before the
        #    weights are converted if that is not the variant.
        w = gguf.GGUFWriter(str(tmp), fam.arch)
        tok_note, notes = _write_metadata(w, variant, fam, quant, recipe, source)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        _check_header(tmp, variant, fam)
        # 2. The file itself.
        tensors = _tensors(variant, fam)
        w = gguf.GGUFWriter(str(tmp), fam.arch)
        _write_metadata(w, variant, fam, quant, recipe, source)
        for k, (name, arr) in enumerate(tensors):
            data, qtype = _encode(arr, quant)
            w.add_tensor(name, data, raw_dtype=qtype)
            if progress:
                progress(Event("GGUF", 0.1 + 0.8 * (k + 1) / len(tensors), step=k + 1,
                               total=len(tensors), unit="tensors"))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExplorerError(f"could not write '{target}': {one_line(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if progress:
        progress(Event("GGUF", 1.0, note=f"wrote {target.name}"))
    return GGUFResult(path=str(target), arch=fam.arch, quant=quant, num_layers=variant.num_layers,
                      tensors=len(tensors), bytes=target.stat().st_size, tokenizer=tok_note,
                      notes=notes)
