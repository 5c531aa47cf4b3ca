"""GGUF export: the file loads back through transformers' own GGUF reader with the variant's layer
count and gives the variant's perplexity (f16 within 1%, q8_0 within 2%); what GGUF cannot carry
is refused in one line."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from explorer import cli, load_model, perplexity
from explorer.export.gguf import export_gguf
from explorer.export.gguf_families import GGUF_FAMILIES, GGUFExportError
from explorer.core.variant import Variant

TOLERANCE = {"f16": 0.01, "q8_0": 0.02}      # relative perplexity change allowed


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Conversions of the exported files go to a temporary cache, not the user's."""
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path


def reader_layers(path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.config.num_hidden_layers


# model_type -> (layers dropped from 4, config overrides). Every family GGUF export supports is
# here (test_every_family_is_tested). The overrides set what transformers' GGUF reader rebuilds
# from a config default instead of the file (any other value is refused, test_header_refusals).
FAMILIES = {
    "llama": ([1], {}),
    "mistral": ([1], {}),               # written as llama.cpp's "llama", read back as Llama
    "qwen2": ([1], {}),
    "qwen3": ([1], {"head_dim": 128}),  # the reader's Qwen3 head_dim is the default 128
    "phi3": ([1], {}),                  # fused qkv_proj / gate_up_proj
    "gemma2": ([1, 2], {}),             # a pair: the local/global alternation stays in place
    "gemma3_text": ([1], {}),
    "gpt2": ([1], {"n_positions": 1024}),  # the reader's GPT-2 n_positions is the default 1024
}


def reader_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32)


def variant_logits(variant, ids):
    """(the variant's logits, the same with every matrix rounded through f16): what an f16 file
    holds, computed without it. A copy is rounded; the loaded model is never modified."""
    with torch.no_grad(), variant.applied() as model:
        want = model(ids).logits
        rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() >= 2:                  # matrices are F16 in the file, norms/biases F32
                p.copy_(p.half().float())
        return want, rounded(ids).logits


def test_every_family_is_tested():
    """Every written family has a round trip below; every family names a llama.cpp arch, and the
    ones refused for want of a reader indeed have none in the installed transformers."""
    from gguf import MODEL_ARCH_NAMES
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    assert set(FAMILIES) == {mt for mt, fam in GGUF_FAMILIES.items() if not fam.unreadable}
    for mt, fam in GGUF_FAMILIES.items():
        assert fam.arch in MODEL_ARCH_NAMES.values(), mt
        if "no GGUF reader" in fam.unreadable:
            assert fam.arch not in GGUF_SUPPORTED_ARCHITECTURES, mt


def window_ppl(model, ids) -> float:
    """Perplexity of next-token prediction over windows `ids` (b, T), from the plain forward."""
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    return float(torch.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1))))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_round_trip(model_type, tiny_factory, sample_text, cache):
    """f16: transformers' reader rebuilds the variant with its matrices rounded to f16, logit for
    logit (within 1e-5; the f16 rounding itself moves them by under 2e-3); q8_0: the perplexity
    within 2%; the reader's tokenizer encodes as the original."""
    from transformers import AutoTokenizer

    drop, overrides = FAMILIES[model_type]
    lm = load_model(str(tiny_factory(model_type, num_layers=4, **overrides)))
    variant = Variant.identity(lm).drop(drop)
    ids = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(0))
    want, rounded = variant_logits(variant, ids)
    path = cache / f"{model_type}-f16.gguf"
    export_gguf(variant, path)
    back = reader_model(path)
    assert back.config.num_hidden_layers == 4 - len(drop)
    with torch.no_grad():
        got = back(ids).logits
    assert float((got - rounded).abs().max()) < 1e-5
    assert float((got - want).abs().max()) < 2e-3

    text = lm.tokenizer(sample_text)["input_ids"]
    windows = torch.tensor(text[:512]).reshape(8, 64)
    with variant.applied() as model:
        ppl = window_ppl(model, windows)
    path = cache / f"{model_type}-q8_0.gguf"
    r = export_gguf(variant, path, quant="q8_0")
    assert r.num_layers == 4 - len(drop) and load_model(str(path)).num_layers == r.num_layers
    got = window_ppl(reader_model(path), windows)
    assert abs(got / ppl - 1) < TOLERANCE["q8_0"], (got, ppl)
    tok = AutoTokenizer.from_pretrained(str(cache), gguf_file=path.name)
    assert tok(sample_text[:300])["input_ids"] == lm.tokenizer(sample_text[:300])["input_ids"]


def test_gemma3_round_trip_and_layer_pattern(tiny_factory, cache):
    """Gemma stores norms as 1 + w and rebuilds its local/global pattern from the layer count:
    the logits come back, and a variant whose global layer moved is refused."""
    from transformers import AutoModelForCausalLM

    lm = load_model(str(tiny_factory("gemma3_text", num_layers=4)))
    variant = Variant.identity(lm).drop([1])
    ids = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(0))
    with variant.applied() as model:
        want = model(ids).logits
    export_gguf(variant, cache / "g.gguf")
    back = AutoModelForCausalLM.from_pretrained(str(cache), gguf_file="g.gguf", dtype=torch.float32)
    assert back.config.num_hidden_layers == 3
    assert torch.allclose(back(ids).logits, want, atol=5e-3)

    lm7 = load_model(str(tiny_factory("gemma3_text", num_layers=7)))   # global layer: 5
    export_gguf(Variant.identity(lm7).drop([6]), cache / "g7.gguf")     # pattern kept
    with pytest.raises(GGUFExportError, match="global layers"):
        export_gguf(Variant.identity(lm7).drop([0]), cache / "g7b.gguf")  # global moves to 4
    assert not (cache / "g7b.gguf").exists()


def test_what_gguf_cannot_carry_is_refused(tiny_factory, tmp_path):
    lm = load_model(str(tiny_factory("llama", num_layers=4)))
    linear = Variant.identity(lm).replace([1, 2], nn.Linear(32, 32), "linear(1,2)")
    with pytest.raises(GGUFExportError, match="standard decoder layer"):
        export_gguf(linear, tmp_path / "lin.gguf")
    with pytest.raises(GGUFExportError, match="unknown GGUF quantization"):
        export_gguf(Variant.identity(lm), tmp_path / "q.gguf", quant="q4_k")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(Exception, match="could not write"):
        export_gguf(Variant.identity(lm), blocker / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]     # nothing half-written


@pytest.mark.parametrize("model_type", ["gpt_neox", "mixtral"])
def test_unreadable_family_is_refused(model_type, tiny_factory, tmp_path):
    """A family transformers' GGUF reader cannot rebuild is refused in one line, nothing written."""
    lm = load_model(str(tiny_factory(model_type, num_layers=2)))
    with pytest.raises(GGUFExportError, match=f"'{model_type}' \\(") as err:
        export_gguf(Variant.identity(lm), tmp_path / "x.gguf")
    assert "\n" not in str(err.value) and "export a transformers folder" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model_type, overrides, field", [
    ("qwen3", {"head_dim": 8}, "head_dim"),                 # the reader's Qwen3 head_dim: 128
    ("gpt2", {"n_positions": 512}, "max_position_embeddings"),
    ("gemma2", {"query_pre_attn_scalar": 8}, "query_pre_attn_scalar"),
    ("mistral", {"sliding_window": 16}, "sliding_window"),  # Llama has none
])
def test_header_refusals(model_type, overrides, field, tiny_factory, tmp_path):
    """A setting the reader would rebuild otherwise (from its config class's default) is refused
    before any tensor is written."""
    lm = load_model(str(tiny_factory(model_type, num_layers=2, **overrides)))
    with pytest.raises(GGUFExportError, match=f"cannot carry this model's {field}"):
        export_gguf(Variant.identity(lm), tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_gguf_and_one_line_errors(tiny_factory, tmp_path, capsys):
    folder = str(tiny_factory("llama", num_layers=4))
    out = tmp_path / "x"        # ".gguf" is added
    assert cli.main(["export", "--model", folder, "--drop", "0", "--format", "gguf", "--quant",
                     "q8_0", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) + ".gguf" and result["quant"] == "q8_0"
    assert result["num_layers"] == 3 and reader_layers(tmp_path / "x.gguf") == 3
    for extra in (["--format", "gguf", "--out", str(tmp_path / "x.gguf")],        # exists
                  ["--format", "gguf", "--out", str(tmp_path / "x.gguf" / "y")],  # under a file
                  ["--quant", "f16", "--out", str(tmp_path / "folder")]):       # not gguf
        errors = io.StringIO()
        assert cli.main(["export", "--model", folder, *extra, "--json"], stderr=errors) == 2
        line = errors.getvalue()
        assert line.count("\n") == 1 and line.startswith("error: "), line


@pytest.mark.slow
def test_embedded_default_round_trip(smol, wiki, cache):
    """SmolLM2 came from a GGUF file: its tokenizer keys are copied over, and the exported file,
    read back by transformers, gives the variant's perplexity."""
    from gguf import GGUFReader

    from explorer.export.gguf import source_gguf

    variant = Variant.identity(smol).drop([14])
    want = perplexity(smol, wiki.evaluation, variant=variant, seqlen=256, max_tokens=512).ppl
    source = GGUFReader(str(source_gguf(smol)))
    for quant, tol in TOLERANCE.items():
        path = cache / f"smol-{quant}.gguf"
        r = export_gguf(variant, path, quant=quant)
        assert r.tokenizer.startswith("copied from SmolLM2")
        fields = GGUFReader(str(path)).fields
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre"):
            assert fields[key].contents() == source.fields[key].contents()
        back = load_model(str(path))
        assert back.num_layers == 29
        got = perplexity(back, wiki.evaluation, seqlen=256, max_tokens=512).ppl
        assert abs(got / want - 1) < tol, (quant, got, want)
        del back
