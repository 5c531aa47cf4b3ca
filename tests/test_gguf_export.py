"""GGUF export: the file loads back through transformers' own GGUF reader with the variant's layer
count and gives the variant's perplexity (f16 within 1%, q8_0 within 2%); what GGUF cannot carry
is refused in one line."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn as nn

from explorer import cli, load_model, perplexity
from explorer.gguf_export import GGUFExportError, export_gguf
from explorer.variant import Variant

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


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_tiny_round_trip(model_type, tiny_factory, sample_text, cache):
    lm = load_model(str(tiny_factory(model_type, num_layers=4)))
    variant = Variant.identity(lm).drop([1])
    want = perplexity(lm, sample_text, variant=variant, seqlen=64, max_tokens=1024).ppl
    for quant, tol in TOLERANCE.items():
        r = export_gguf(variant, cache / f"{model_type}-{quant}.gguf", quant=quant)
        path = cache / f"{model_type}-{quant}.gguf"
        assert r.path == str(path) and r.num_layers == 3 and reader_layers(path) == 3
        back = load_model(str(path))                 # transformers' GGUF reader, then our loader
        assert back.num_layers == 3
        assert back.tokenizer(sample_text[:300])["input_ids"] == \
            lm.tokenizer(sample_text[:300])["input_ids"]
        got = perplexity(back, sample_text, seqlen=64, max_tokens=1024).ppl
        assert abs(got / want - 1) < tol, (quant, got, want)


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
    gpt2 = load_model(str(tiny_factory("gpt2", num_layers=2)))
    with pytest.raises(GGUFExportError, match="'gpt2': export a transformers folder"):
        export_gguf(Variant.identity(gpt2), tmp_path / "gpt2.gguf")
    with pytest.raises(GGUFExportError, match="unknown GGUF quantization"):
        export_gguf(Variant.identity(lm), tmp_path / "q.gguf", quant="q4_k")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(Exception, match="could not write"):
        export_gguf(Variant.identity(lm), blocker / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]     # nothing half-written


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

    from explorer.gguf_export import source_gguf

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
