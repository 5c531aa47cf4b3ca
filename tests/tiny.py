"""Tiny random models on disk, for tests that check logic without the real model.

Like mergekit's tests: hidden size 32, a few layers, a byte-level tokenizer built here (no network),
saved with save_pretrained so the model goes through `explorer.load_model` like a user's folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

# A byte-level BPE without merges: one token per byte, plus specials. Encodes any text offline.
SPECIALS = ["<pad>", "<s>", "</s>"]


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


VOCAB = len(SPECIALS) + 256

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)

CONFIGS = {
    "llama": dict(_COMMON),
    "mistral": dict(_COMMON, sliding_window=None),
    "qwen2": dict(_COMMON),
    "qwen3": dict(_COMMON, head_dim=8),
    "gemma": dict(_COMMON, head_dim=8),
    "gemma2": dict(_COMMON, head_dim=8, sliding_window=16),
    "gemma3_text": dict(_COMMON, head_dim=8, sliding_window=16),
    "phi3": dict(_COMMON),
    "gpt2": dict(vocab_size=VOCAB, n_embd=32, n_head=4, n_positions=512, bos_token_id=1,
                 eos_token_id=2),
    "gpt_neox": dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                     num_attention_heads=4, max_position_embeddings=512, bos_token_id=1,
                     eos_token_id=2),
    # GGUF export (tests/test_export_gguf.py): a family llama.cpp writes but transformers cannot
    # read back (its experts)
    "mixtral": dict(_COMMON, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
}


def state_checksum(model) -> str:
    """sha256 over every parameter and buffer, by name (bit-exact): 'the weights did not change'."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_tiny_model(folder: Path, model_type: str = "llama", num_layers: int = 4,
                    seed: int = 0, dtype: torch.dtype | None = None, **overrides) -> Path:
    """Write a random `model_type` causal LM with `num_layers` layers to `folder`; return it.

    overrides: config fields over CONFIGS[model_type] (bench/bench_gpu.py builds a 1B-class model
    this way); dtype: the weights' dtype (default float32).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(CONFIGS[model_type], **overrides)
    key = "n_layer" if model_type == "gpt2" else "num_hidden_layers"
    kwargs[key] = num_layers
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype else {}))
    folder = Path(folder)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


SAMPLE_TEXT = "\n\n".join(
    f"Paragraph {k}. The quick brown fox jumps over the lazy dog while layer {k} watches the "
    f"residual stream flow by, and numbers like {k * 37 % 101} appear now and then."
    for k in range(60)
)


def same_weights(a, b) -> bool:
    """Two variants hold bit-identical tensors (same names, dtypes and bits) in every slot, and
    in their own vocabulary head when they have one (`Variant.head`)."""
    import torch

    def tensors(v):
        out = {f"{k}.{n}": t for k in range(v.num_layers)
               for n, t in {**dict(v.layer(k).named_parameters()),
                            **dict(v.layer(k).named_buffers())}.items()}
        if v.head is not None:
            out.update({f"head.{n}": t for n, t in v.head.named_parameters()})
        return out
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k])
                                          for k in ta)


def kl_to_dense(lm, v, ids) -> float:
    """Mean full-vocabulary KL(dense || v) over windows `ids` (b, T), from the plain forward of
    each model put in place (`Variant.applied`)."""
    import torch.nn.functional as F
    from explorer import Variant

    with torch.no_grad():
        with Variant.identity(lm).applied() as model:
            p = F.log_softmax(model(input_ids=ids).logits, -1)
        with v.applied() as model:
            q = F.log_softmax(model(input_ids=ids).logits, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())
