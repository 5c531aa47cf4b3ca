"""The tokenizer of a GGUF export: copied key by key from the source GGUF file when the model came
from one, else built from a byte-level BPE tokenizer.json (tokens, merges, token types, special
ids, chat template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from explorer.export.gguf_families import GGUFExportError


def copy_tokenizer(w: Any, path: Path) -> int:
    """Every tokenizer.* key of the source GGUF, value and type as they are; returns the count."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    n = 0
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
        n += 1
    return n


def _pre_tokenizer(state: dict) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json's splitting rule (best match)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    text = json.dumps(state.get("pre_tokenizer") or {})
    for name in ("qwen2", "llama-bpe", "gpt-4o", "tekken"):
        if json.dumps(GGUF_PRE_TOKENIZER_SPLITS[name])[1:-1] in text:
            return name
    return "default"        # GPT-2's split, the byte-level default


def build_tokenizer(w: Any, tok: Any) -> str:
    """A byte-level BPE tokenizer.json as GGUF "gpt2" tokenizer metadata; returns its pre name."""
    from gguf import TokenType

    backend = getattr(tok, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    model = state.get("model") or {}
    pre = json.dumps(state.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise GGUFExportError("GGUF export can build byte-level BPE tokenizers only; this one is "
                              f"{model.get('type', type(tok).__name__)}: load the model from its "
                              ".gguf file (its tokenizer is then copied) or export a folder")
    vocab = dict(model["vocab"])
    added = {a["content"]: a for a in state.get("added_tokens", [])}
    for content, a in added.items():
        vocab[content] = a["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(TokenType.UNUSED)] * size
    for t, i in vocab.items():
        tokens[i] = t
        a = added.get(t)
        types[i] = int(TokenType.NORMAL if a is None else
                       TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    name = _pre_tokenizer(state)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(name)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    else:   # a vocabulary of single bytes: readers then derive (no) merges from the scores
        w.add_token_scores([0.0] * size)
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            add(value)
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)
    return name


# -- checking what a reader rebuilds -----------------------------------------------------------

# Config fields that must come back from the GGUF header as the variant has them.
# (tie_word_embeddings is not among them: a reader infers it from the absence of output.weight,
# which the writer leaves out exactly when the model ties its head.)
# Per-family fields (Gemma's soft-capping, GPT-2's n_inner) are GGUFFamily.checked.
