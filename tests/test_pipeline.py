"""The core pipeline (issue 2): perplexity against an independent computation, layer edits that
leave the model untouched, export that reloads, and one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from explorer import Recipe, Variant, export, load_model, perplexity, probe
from explorer.cli import main as cli_main
from explorer.core.errors import ExplorerError, LayerError, ModelLoadError, TextError
from explorer.probe.text import split_documents, user_texts
from explorer.core.tokens import tokenize, windows


def cli_json(argv: list[str]) -> tuple[dict, int]:
    """Run the CLI in-process; (its one JSON object, exit status). Its stdout is taken with
    redirect_stdout rather than capsys: an app server left by an earlier test in another thread
    must not see or take it."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(argv)
    return json.loads(buf.getvalue()), code


def reference_ppl(model, ids: torch.Tensor, seqlen: int) -> float:
    """The model's own loss (labels through the model), one window at a time, token-weighted."""
    total, count = 0.0, 0
    for row in windows(ids, seqlen):
        out = model(row[None], labels=row[None])
        total += out.loss.item() * (row.numel() - 1)
        count += row.numel() - 1
    return math.exp(total / count)


@pytest.mark.slow
def test_cli_eval_json_matches_models_own_loss(smol, wiki, capsys):
    code = cli_main(["eval", "--model", "smollm2-135m", "--text", "wiki", "--seqlen", "256",
                     "--max-tokens", "1024", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"model", "num_layers", "ppl", "tokens", "seqlen"} <= out.keys()
    assert out["num_layers"] == 30 and out["seqlen"] == 256 and out["tokens"] == 4 * 255
    ids = tokenize(smol.tokenizer, wiki.evaluation, max_tokens=1024)
    with torch.no_grad():
        ref = reference_ppl(smol.model, ids, 256)
    assert out["ppl"] == pytest.approx(ref, rel=1e-4)
    assert 5 < out["ppl"] < 60  # a real English text on a real model


@pytest.mark.slow
def test_dropping_a_middle_layer_raises_perplexity_and_leaves_model_bit_identical(smol, wiki):
    before = {k: t.clone() for k, t in smol.model.state_dict().items()}
    base = perplexity(smol, wiki.evaluation, seqlen=256, max_tokens=1024)
    dropped = perplexity(smol, wiki.evaluation, seqlen=256, max_tokens=1024,
                         variant=Variant.identity(smol).drop([15]))
    again = perplexity(smol, wiki.evaluation, seqlen=256, max_tokens=1024)
    assert dropped.ppl > base.ppl * 1.02
    assert again.ppl == base.ppl
    after = smol.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_apply_restores_layers_indices_and_config(tiny_factory):
    lm = load_model(str(tiny_factory("gemma3_text", num_layers=6)))
    layers = lm.arch.layer_list(lm.model)
    types = list(lm.config.layer_types)
    v = Variant.identity(lm).drop([1, 4]).merge([0, 1], [0.3, 0.7])
    # slots: [merge of originals 0 and 2, original 3, original 5]
    with v.applied() as model:
        inner = lm.arch.layer_list(model)
        assert len(inner) == 3 and model.config.num_hidden_layers == 3
        assert [m.self_attn.layer_idx for m in inner] == [0, 1, 2]
        assert [m.layer_idx for m in inner] == [0, 1, 2]
        assert model.config.layer_types == [types[0], types[3], types[5]]
        assert inner[1] is layers[3] and inner[2] is layers[5]  # shared, not copied
        assert inner[0] is not layers[0]
    assert lm.arch.layer_list(lm.model) is layers
    assert [m.self_attn.layer_idx for m in layers] == list(range(6))
    assert lm.config.num_hidden_layers == 6 and lm.config.layer_types == types


def test_layer_types_follow_the_kept_layers(tiny_factory):
    lm = load_model(str(tiny_factory("gemma3_text", num_layers=6)))
    types = list(lm.config.layer_types)
    v = Variant.identity(lm).drop([0, 2])
    with v.applied() as model:
        assert model.config.layer_types == [types[i] for i in (1, 3, 4, 5)]


def test_merge_is_weighted_sum_of_linear_weights_and_keeps_first_norm(tiny_lm):
    v = Variant.identity(tiny_lm).merge([2, 3], [0.25, 0.75])
    layers = tiny_lm.arch.layer_list(tiny_lm.model)
    new = v.layer(2)
    q = 0.25 * layers[2].self_attn.q_proj.weight + 0.75 * layers[3].self_attn.q_proj.weight
    assert torch.allclose(new.self_attn.q_proj.weight, q)
    assert torch.equal(new.input_layernorm.weight, layers[2].input_layernorm.weight)
    assert v.num_layers == 5 and v.extra_bytes() == sum(
        p.numel() * p.element_size() for p in layers[2].parameters())


def test_export_reloads_with_automodel_and_same_perplexity(tiny_lm, sample_text, tmp_path):
    from transformers import AutoModelForCausalLM

    v = Variant.identity(tiny_lm).drop([5]).merge([1, 2], [0.5, 0.5])
    out = export(v, tmp_path / "exported", recipe=Recipe.of(v))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 4
    lm2 = load_model(str(out))
    a = perplexity(tiny_lm, sample_text, variant=v, seqlen=64, max_tokens=512)
    b = perplexity(lm2, sample_text, seqlen=64, max_tokens=512)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-5)
    recipe = Recipe.from_json((out / "layer_explorer_recipe.json").read_text())
    assert [op["op"] for op in recipe.ops] == ["drop", "merge"]
    c = perplexity(tiny_lm, sample_text, variant=recipe.build(tiny_lm), seqlen=64, max_tokens=512)
    assert c.ppl == a.ppl


def test_probe_records_residual_stream_before_final_norm(tiny_lm, sample_text):
    pr = probe(tiny_lm, sample_text, seqlen=32, num_samples=2, skip_first=False)
    ids = pr.input_ids
    with torch.no_grad():
        hs = tiny_lm.model(ids, output_hidden_states=True).hidden_states
    # transformers' hidden_states[i] for i < L equal x_i; its last entry is after the final norm.
    for i in range(tiny_lm.num_layers):
        assert torch.allclose(pr.states[i], hs[i].reshape(-1, hs[i].shape[-1]), atol=1e-5)
    norm = tiny_lm.arch.norm(tiny_lm.model)
    assert torch.allclose(norm(pr.states[-1]), hs[-1].reshape(-1, hs[-1].shape[-1]), atol=1e-5)
    assert torch.allclose(pr.last[:, 1], pr.states[:, 2 * 32 - 1])


def test_probe_token_budget_keeps_same_tokens_for_every_layer(tiny_lm, sample_text):
    full = probe(tiny_lm, sample_text, seqlen=32, num_samples=4)
    sub = probe(tiny_lm, sample_text, seqlen=32, num_samples=4, batch_size=3, max_tokens=50)
    assert sub.states.shape[1] == 50
    # every subsampled column is one of the full columns, at every layer
    d = torch.cdist(sub.states[3], full.states[3]).min(dim=1).values
    assert d.max() < 1e-4
    assert torch.equal(sub.sample_of, full.sample_of[torch.cdist(sub.states[3],
                                                                 full.states[3]).argmin(1)])


def test_calibration_and_evaluation_are_disjoint():
    docs = [f"document number {k} " * 5 for k in range(9)]
    cal, ev = split_documents(docs)
    assert not set(cal) & set(ev) and len(cal) + len(ev) == 9
    t = user_texts("".join(f"line {k} of a single long paragraph.\n" for k in range(40)))
    assert t.calibration and t.evaluation and t.calibration not in t.evaluation


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--model", "no-such-org/no-such-model-xyz"], "could not load"),
    (["eval", "--model", "./does/not/exist"], "does not exist"),
    (["eval", "--model", "TINY", "--drop", "99"], "out of range"),
    (["eval", "--model", "TINY", "--drop", "1,1"], "same layer twice"),
    (["eval", "--model", "TINY", "--drop", "x"], "cannot read layer list"),
    (["eval", "--model", "TINY", "--text", "EMPTY"], "empty"),
    (["eval", "--model", "TINY", "--text", "BINARY"], "not UTF-8"),
])
def test_bad_input_gives_one_clear_line(argv, needle, tiny_factory, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad" * 10)
    subst = {"TINY": str(tiny_factory("llama", num_layers=6)), "EMPTY": str(empty),
             "BINARY": str(binary)}
    errors = io.StringIO()
    code = cli_main([subst.get(a, a) for a in argv], stderr=errors)
    err = (errors.getvalue() + capsys.readouterr().err).strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_api_errors_are_typed(tiny_lm):
    with pytest.raises(ModelLoadError):
        load_model("")
    with pytest.raises(LayerError):
        Variant.identity(tiny_lm).drop(list(range(6)))
    with pytest.raises(TextError):
        perplexity(tiny_lm, "   ")
    with pytest.raises(TextError):
        perplexity(tiny_lm, "short text", seqlen=64)
    with pytest.raises(ExplorerError):
        perplexity(tiny_lm, "x " * 5000, seqlen=100000)


def test_perplexity_progress_reports_the_running_figure(tiny_lm, sample_text):
    """Each batch reports its fraction and the perplexity so far; windows run in a spread order,
    so the first figure is that of the first windows of `spread_order`; the last is the result."""
    import math

    from explorer import perplexity
    from explorer.evaluate.windows import spread_order

    seen: list = []
    r = perplexity(tiny_lm, sample_text, seqlen=32, max_tokens=320, batch_size=3,
                   progress=seen.append)
    assert [e.fraction for e in seen] == pytest.approx([0.3, 0.6, 0.9, 1.0])
    assert [e.step for e in seen] == [3, 6, 9, 10] and {e.total for e in seen} == {10}
    assert seen[-1].figure == pytest.approx(r.ppl) and seen[-1].band is None
    assert seen[-1].describe() == f"perplexity: 10/10 windows, {r.ppl:.4g}"
    first3 = spread_order(10)[:3]
    assert sorted(first3) != [0, 1, 2]          # spread over the text, not its beginning
    first = math.exp(sum(r.window_nll[i] for i in first3) / 3)   # equal-length windows
    assert seen[0].figure == pytest.approx(first)
    assert seen[0].describe().startswith(f"perplexity: 3/10 windows, {first:.4g} so far")


def test_eval_on_a_file_reads_the_whole_file_up_to_max_tokens(tiny_factory, tmp_path, capsys):
    """`eval --text FILE` evaluates the file, not its even paragraphs; compress, which also
    calibrates on it, evaluates its evaluation half and says so."""
    folder = str(tiny_factory("llama", num_layers=4))
    lm = load_model(folder)
    paragraphs = [f"Paragraph {i} says something about number {i * 37 % 101}." for i in range(60)]
    text = "\n\n".join(paragraphs)
    path = tmp_path / "doc.txt"
    path.write_text(text)
    n = tokenize(lm.tokenizer, text).numel()          # the byte tokenizer: one token per byte
    assert n > 2048
    for max_tokens in (2048, 0):
        out, code = cli_json(["eval", "--model", folder, "--text", str(path), "--seqlen", "64",
                              "--max-tokens", str(max_tokens), "--bos", "never", "--json"])
        assert code == 0
        expect = (2048 if max_tokens else n) // 64                 # whole windows of the file
        assert out["windows"] == expect and out["tokens"] == expect * 63
        ids = tokenize(lm.tokenizer, text, max_tokens=expect * 64)
        with torch.no_grad():
            assert out["ppl"] == pytest.approx(reference_ppl(lm.model, ids, 64), rel=1e-4)
        assert out["protocol"].startswith("doc.txt: ")
    code = cli_main(["compress", "--model", folder, "--text", str(path), "--method", "tail",
                     "--remove", "1", "--seqlen", "64", "--max-tokens", "0", "--bos", "never",
                     "--calib-seqlen", "32", "--calib-samples", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    half = tokenize(lm.tokenizer, user_texts(text, "doc.txt").evaluation).numel()
    assert code == 0 and half < n * 0.6
    assert out["protocol"].startswith("doc.txt, evaluation half (the other half calibrates): "
                                      f"{half // 64} non-overlapping windows")


def test_a_text_file_is_evaluated_as_it_is(tiny_lm, sample_text, tmp_path, capsys):
    """A file that starts with spaces and ends with newlines is evaluated byte for byte: every window
    keeps its place (stripping it first would shift them all), checked against the model's own loss
    on the raw file's tokens."""
    raw = "   \n  " + sample_text + "\n\n"
    path = tmp_path / "indented.txt"
    path.write_text(raw, encoding="utf-8")
    out, code = cli_json(["eval", "--model", tiny_lm.spec, "--text", str(path), "--seqlen", "32",
                          "--json"])
    assert code == 0
    ids = tokenize(tiny_lm.tokenizer, raw)
    assert out["tokens"] == sum(w.numel() - 1 for w in windows(ids, 32))
    with torch.no_grad():
        ref = reference_ppl(tiny_lm.model, ids, 32)
    assert out["ppl"] == pytest.approx(ref, rel=1e-5)
    stripped = tokenize(tiny_lm.tokenizer, raw.strip())
    assert not torch.equal(ids[: stripped.numel()], stripped)   # the case the test is about
