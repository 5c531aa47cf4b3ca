"""The damage map against independent computations: each cell equals the perplexity of a really
dropped variant through the normal eval path (same windows, same protocol), KL against a plain
full-vocabulary computation, Stop keeps the cells done, bad input gets one line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from explorer import ExplorerError
from explorer.measure.damage import DamageMap, block_label, candidate_cells, damage_map
from explorer.evaluate.windows import evaluation_windows
from explorer.evaluate.perplexity import perplexity
from explorer.probe.probe import calibration_windows
from explorer.core.progress import CancelToken
from explorer.core.variant import Variant


@pytest.fixture(scope="module")
def tiny_ids(tiny_lm, sample_text):
    return calibration_windows(tiny_lm, sample_text, seqlen=32, num_samples=6)


@pytest.fixture(scope="module")
def tiny_map(tiny_lm, tiny_ids):
    return damage_map(tiny_lm, tiny_ids, max_block=3, batch_size=4)


def test_cells_equal_eval_of_the_dropped_variant(tiny_lm, tiny_ids, tiny_map, sample_text):
    # the eval path's windows of the same text are the calibration windows the map ran on
    w = evaluation_windows(tiny_lm, sample_text, 32, 32 * 6)
    assert torch.equal(w, tiny_ids)
    dense = perplexity(tiny_lm, sample_text, seqlen=32, max_tokens=32 * 6, cache=False)
    assert tiny_map.dense_ppl == pytest.approx(dense.ppl, rel=1e-6)
    for a, b in [(0, 1), (2, 3), (5, 6), (1, 4), (3, 5)]:
        v = Variant.identity(tiny_lm).drop(range(a, b))
        r = perplexity(tiny_lm, sample_text, variant=v, seqlen=32, max_tokens=32 * 6)
        assert tiny_map.ppl[a, b] == pytest.approx(r.ppl, rel=1e-6), (a, b)
        assert tiny_map.ppl[b, a] == tiny_map.ppl[a, b]
        assert tiny_map.nll[a, b] == pytest.approx(r.nll - dense.nll, abs=1e-6)


def test_kl_matches_a_full_forward_pass(tiny_lm, tiny_ids, tiny_map):
    """KL(p_dense || p_cut) from the models' own full forward passes (HF logits, no backbone)."""
    a, b = 2, 4
    with torch.no_grad():
        dense = tiny_lm.model(tiny_ids).logits[:, :-1].float()
        with Variant.identity(tiny_lm).drop(range(a, b)).applied() as m:
            cut = m(tiny_ids).logits[:, :-1].float()
    p, q = F.log_softmax(dense, -1), F.log_softmax(cut, -1)
    ref = (p.exp() * (p - q)).sum(-1).mean().item()
    assert tiny_map.kl[a, b] == pytest.approx(ref, rel=1e-4)
    assert tiny_map.kl[a, b] > 0


def test_layout_json_csv(tiny_map):
    L = 6
    assert tiny_map.done == candidate_cells(L, 3)
    assert len(tiny_map.done) == 6 + 5 + 4 and not tiny_map.partial
    nll = tiny_map.matrix("nll")
    assert nll.shape == (L + 1, L + 1) and torch.allclose(nll, nll.T, equal_nan=True)
    assert math.isnan(float(nll[0, 4])) and float(nll[2, 2]) == 0.0     # block of 4: not asked
    d = tiny_map.to_dict()
    assert d["cells_done"] == d["cells_total"] == 15 and len(d["cells"]) == 15
    assert d["matrix"]["nll"][0][4] is None
    lines = tiny_map.to_csv().splitlines()
    assert lines[0] == "a,b,layers,ppl,nll_increase,kl" and len(lines) == 16
    assert lines[1].startswith("0,1,0,") and block_label(1, 4) == "1-3"
    assert all(len(v) == tiny_map.windows for v in tiny_map.window_nll.values())


def test_stop_keeps_cells_done_and_marks_partial(tiny_lm, tiny_ids, tiny_map):
    token = CancelToken()
    seen: list[int] = []

    def on_cell(m: DamageMap) -> None:
        seen.append(len(m.done))
        if len(m.done) == 4:
            token.cancel()
    part = damage_map(tiny_lm, tiny_ids, max_block=3, cancel=token, on_cell=on_cell)
    assert part.partial and seen == [1, 2, 3, 4] and len(part.done) == 4
    assert part.to_dict()["partial"] is True
    for a, b in part.done:
        assert float(part.ppl[a, b]) == pytest.approx(float(tiny_map.ppl[a, b]), rel=1e-9)


def test_bad_input_is_one_line(tiny_lm, tiny_ids, sample_text):
    for bad, words in [(7, "larger than the model"), (6, "every layer"), (0, ">= 1")]:
        with pytest.raises(ExplorerError, match=words) as e:
            damage_map(tiny_lm, tiny_ids, max_block=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ExplorerError, match="fewer than one window") as e:
        calibration_windows(tiny_lm, sample_text[:20], seqlen=128, num_samples=4)
    with pytest.raises(ExplorerError, match="at least one window"):
        damage_map(tiny_lm, tiny_ids[:, :1], max_block=1)


def test_cli_similarity_measure_damage_json_and_csv(tiny_factory, sample_text, tmp_path, capsys):
    import csv
    import json

    from explorer import load_model, load_texts
    from explorer.cli import main

    folder = str(tiny_factory("llama", num_layers=4))
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    table = tmp_path / "map.csv"
    rc = main(["similarity", "--model", folder, "--text", str(text), "--measure", "damage",
               "--param", "max_block=2", "--seqlen", "32", "--samples", "3", "--csv",
               str(table), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["measure"] == "damage" and out["cells_done"] == 4 + 3
    lm = load_model(folder)
    ids = calibration_windows(lm, load_texts(str(text)).calibration, 32, 3)
    ref = damage_map(lm, ids, max_block=2)
    assert out["matrix"]["nll"][1][3] == pytest.approx(float(ref.nll[1, 3]), abs=1e-6)
    assert out["adjacent"] == [out["matrix"]["nll"][i][i + 1] for i in range(4)]
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 7 and rows[0]["layers"] == "0"
    row = next(r for r in rows if r["layers"] == "2-3")
    assert (row["a"], row["b"]) == ("2", "4")
    assert float(row["ppl"]) == pytest.approx(float(ref.ppl[2, 4]), rel=1e-6)
    errors = __import__("io").StringIO()
    assert main(["similarity", "--model", folder, "--text", str(text), "--measure", "damage",
                 "--param", "max_block=9", "--seqlen", "32", "--json"], stderr=errors) != 0
    assert "larger than the model (4 layers)" in errors.getvalue()
    assert len(errors.getvalue().strip().splitlines()) == 1


def test_kl_recomputed_when_the_dense_distribution_does_not_fit(tiny_lm, tiny_ids, tiny_map,
                                                                monkeypatch):
    import explorer.measure.damage as D

    monkeypatch.setattr(D, "KL_CACHE_BYTES", 0)
    again = damage_map(tiny_lm, tiny_ids, max_block=1, batch_size=4)
    assert torch.allclose(again.kl[:, :].diagonal(1), tiny_map.kl.diagonal(1), rtol=1e-5)
    no_kl = damage_map(tiny_lm, tiny_ids, max_block=1, kl=False)
    assert torch.isnan(no_kl.kl[0, 1]) and torch.equal(no_kl.ppl.diagonal(1),
                                                       tiny_map.ppl.diagonal(1))


def test_stop_through_a_watched_progress_keeps_the_cells(tiny_lm, tiny_ids):
    from explorer.core.progress import watched

    token = CancelToken()
    events = []

    def bar(e):
        events.append(e)
        if e.stage == "damage map" and e.step == 3:
            token.cancel()
    part = damage_map(tiny_lm, tiny_ids, max_block=2, progress=watched(bar, token))
    # the Stop pressed after the third candidate is seen at the fourth's report: four stay
    assert part.partial and len(part.done) == 4
    done = [e for e in events if e.stage == "damage map"]
    assert [e.step for e in done] == [1, 2, 3] and done[0].total == 11 and done[0].figure > 0


def test_each_candidate_runs_only_from_its_cut(tiny_lm, tiny_ids):
    """Layer forwards counted by hooks on the model's own layers: the dense pass runs all L, and
    the candidate without layers a..b-1 runs only the L - b layers after its cut (the layers
    before it come from the dense states), not the L - (b - a) of a full pass."""
    L, W = tiny_lm.num_layers, tiny_ids.shape[0]
    calls = [0]
    hooks = [layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for layer in tiny_lm.original_layers]
    per_cell: dict[tuple[int, int], int] = {}
    marks: list[int] = []            # the count when each candidate finished

    def on_cell(m: DamageMap) -> None:
        per_cell[m.done[-1]] = calls[0] - (marks[-1] if marks else L)
        marks.append(calls[0])
    try:
        dense_only = damage_map(tiny_lm, tiny_ids, max_block=1, sizes=(), batch_size=W, kl=False)
        assert calls[0] == L and dense_only.done == []          # the dense pass alone
        calls[0] = 0
        dm = damage_map(tiny_lm, tiny_ids, max_block=3, batch_size=W, kl=False, on_cell=on_cell)
    finally:
        for h in hooks:
            h.remove()
    assert dm.done == candidate_cells(L, 3)
    # one batch of W windows: each layer forward is one call
    assert per_cell == {(a, b): L - b for a, b in dm.done}
    assert calls[0] == L + sum(L - b for _, b in dm.done)
    assert per_cell[(0, 1)] == L - 1 and per_cell[(3, 4)] == L - 4 and per_cell[(3, 6)] == 0


def test_cli_ctrl_c_prints_the_cells_done_marked_partial(tiny_factory, sample_text, tmp_path,
                                                          capsys, monkeypatch):
    """A real SIGINT, raised as the CLI writes the second candidate's progress line: the map ends
    at the next candidate and its two cells are printed, marked partial, with one stderr line
    saying so; a text too short for one window is refused in one line."""
    import io
    import json
    import signal
    import sys

    from explorer.cli import main

    folder = str(tiny_factory("llama", num_layers=4))
    text = tmp_path / "text.txt"
    text.write_text(sample_text)

    class Presses(io.StringIO):           # stderr that presses Ctrl-C at the second candidate
        def write(self, s: str) -> int:
            if "2/7 candidates" in s:
                signal.raise_signal(signal.SIGINT)
            return super().write(s)
    err = Presses()
    monkeypatch.setattr(sys, "stderr", err)
    before = signal.getsignal(signal.SIGINT)
    rc = main(["similarity", "--model", folder, "--text", str(text), "--measure", "damage",
               "--param", "max_block=2", "--seqlen", "32", "--samples", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["partial"] is True
    assert (out["cells_done"], out["cells_total"]) == (2, 7)
    assert [(c["a"], c["b"]) for c in out["cells"]] == [(0, 1), (1, 2)]
    assert out["matrix"]["nll"][2][3] is None and out["matrix"]["nll"][0][1] is not None
    assert "stopped: partial: 2 of 7 candidates" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is before          # Ctrl-C is itself again

    short = tmp_path / "short.txt"
    short.write_text(sample_text[:400])           # a text, but not one window of 1024 tokens
    errors = io.StringIO()
    assert main(["similarity", "--model", folder, "--text", str(short), "--measure", "damage",
                 "--seqlen", "1024", "--json"], stderr=errors) == 2
    line = errors.getvalue().strip()
    assert len(line.splitlines()) == 1 and "fewer than one window" in line, line


def test_two_gloo_ranks_measure_the_one_process_map(tiny_factory, sample_text, tmp_path, capsys):
    """`torchrun --nproc_per_node 2 -m explorer similarity --measure damage`: each rank runs every
    candidate on its shard of the windows (2 + 3 of 5), the per-window sums are collected in
    window order, and rank 0 alone prints the one-process map."""
    import json

    from rank_launch import torchrun

    from explorer.cli import main

    folder = str(tiny_factory("llama", num_layers=5))
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    args = ["similarity", "--model", folder, "--text", str(text), "--measure", "damage",
            "--param", "max_block=2", "--seqlen", "32", "--samples", "5", "--json"]
    done = torchrun(2, "-m", "explorer", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1                                          # rank 0 alone printed
    two = json.loads(lines[0])
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)
    assert two["cells_done"] == one["cells_done"] == 5 + 4
    for metric in ("nll", "kl", "ppl"):
        for ra, rb in zip(one["matrix"][metric], two["matrix"][metric]):
            for a, b in zip(ra, rb):
                assert (a is None) == (b is None)
                if a is not None:
                    assert b == pytest.approx(a, rel=1e-6, abs=2e-6), metric   # 6 decimals


def test_kl_of_a_small_change_over_a_large_vocabulary_stays_accurate():
    """The map's KL is sum p log p - sum p log q (damage._row_dots). Over a 49k vocabulary a
    single float32 dot product drifts by about 2e-4 nats, more than the KL of a harmless layer;
    the blocked sums must stay near the float64 figure."""
    from explorer.measure.damage import _row_dots

    g = torch.Generator().manual_seed(0)
    dense = torch.randn(64, 49152, generator=g) * 3
    cut = dense + torch.randn(64, 49152, generator=g) * 0.01          # KL about 5e-5 nats
    logp, logq = F.log_softmax(dense, -1), F.log_softmax(cut, -1)
    p = logp.exp()
    exact = (logp.double().exp() * (logp.double() - F.log_softmax(cut.double(), -1))).sum(-1)
    ours = (p * logp).sum(-1, dtype=torch.float64) - _row_dots(p, logq)
    assert float(exact.mean()) == pytest.approx(5e-5, rel=0.2)
    assert float((ours - exact).abs().max()) < 3e-5
    assert abs(float(ours.mean() - exact.mean())) < 0.05 * float(exact.mean())
