"""Data-parallel ranks (explorer/core/ranks.py): two gloo ranks, each on half of the windows, fit the
same closed-form map and the same per-window NLLs and similarity matrices as one process, and
healing's dense passes are split between them; ranks that disagree on the text, and more ranks
than windows, are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rank_launch import torchrun

from explorer.core.errors import ExplorerError

WORKER = Path(__file__).with_name("rank_worker.py")


def _torchrun(n: int, folder, out, *extra) -> dict:
    done = torchrun(n, str(WORKER), str(folder), str(out), *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out)


def test_two_gloo_ranks_fit_the_one_process_map(tiny_factory, tmp_path):
    folder = tiny_factory("llama", num_layers=6)
    one = _torchrun(1, folder, tmp_path / "one.pt")
    two = _torchrun(2, folder, tmp_path / "two.pt")
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert (two["down"] - one["down"]).abs().max() <= 1e-5 * one["down"].abs().max()
    assert two["fits"][0]["mse_after"] == pytest.approx(one["fits"][0]["mse_after"], rel=1e-6)
    assert two["after"] == pytest.approx(one["after"], rel=1e-5)
    assert len(two["nll"]) == len(one["nll"]) == 20                 # per-window NLL, in order
    assert sum(two["nll"]) == pytest.approx(sum(one["nll"]), rel=1e-9)
    assert set(one["sims"]) >= {"cosine", "bi", "angular", "cka", "npib"}
    for m, a in one["sims"].items():                               # probed on 4 + 3 windows
        assert a.shape == (7, 7) and not a.isnan().any(), m
        assert (two["sims"][m] - a).abs().max() <= 1e-6, m
    # the measures' work is shared: each rank ran a part of every split, the parts disjoint
    # and together every item (token chunks, CKA rows, NPIB's boundaries and cells)
    (alone,), (r0, r1) = one["shares"], two["shares"]
    assert len(alone) == len(r0) == len(r1) >= 8
    for (n, all_items), (n0, a), (n1, b) in zip(alone, r0, r1):
        assert n == n0 == n1 and all_items == list(range(n))
        assert sorted(a + b) == all_items
        if n > 1:
            assert a and b, (n, a, b)
    # healing's dense states and held-out figures: each rank ran its part of every pass
    (alone,), (p0, p1) = one["passes"], two["passes"]
    assert len(alone) == len(p0) == len(p1) >= 3 and 12 in alone and 2 in alone
    assert all(n0 + n1 == n and n0 and n1 for n, n0, n1 in zip(alone, p0, p1)), (alone, p0, p1)
    # layer-wise training: each rank its half of every step's windows, gradients added
    assert two["lw_after"] == pytest.approx(one["lw_after"], rel=1e-5)
    assert max(float((a - b).abs().max()) for a, b in zip(one["lw"], two["lw"])) <= 1e-5
    bad = _torchrun(2, folder, tmp_path / "bad.pt", " Another sentence.")
    assert "ranks disagree" in bad["error"] and "\n" not in bad["error"]


def test_more_ranks_than_windows_is_one_line(monkeypatch):
    from explorer.core import ranks

    monkeypatch.setattr(ranks, "world", lambda: (1, 4))
    assert ranks.shard(9) == slice(2, 4)
    with pytest.raises(ExplorerError, match="4 ranks but only 3 windows") as info:
        ranks.shard(3)
    assert "\n" not in str(info.value)


def test_torchrun_similarity_command_equals_one_process(tiny_factory, capsys):
    """`torchrun --nproc_per_node 2 -m explorer similarity`: rank 0 alone prints, the matrix is
    the one process's; a command that does not run as ranks yet is refused in one line."""
    import json

    from explorer.cli import main

    folder = tiny_factory("llama", num_layers=6)
    args = ["similarity", "--model", str(folder), "--samples", "5", "--seqlen", "32", "--json"]
    done = torchrun(2, "-m", "explorer", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1                                          # rank 0 alone printed
    two = json.loads(lines[0])
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)
    diff = max(abs(a - b) for ra, rb in zip(one["matrix"], two["matrix"]) for a, b in zip(ra, rb))
    assert diff <= 1e-6 and two["num_tokens"] == one["num_tokens"]
    done = torchrun(2, "-m", "explorer", "export", "--model", str(folder), "--drop", "1",
                    "--out", str(folder.parent / "never"))
    assert done.returncode != 0
    assert "error: 'export' does not run as 2 ranks yet" in done.stderr


def test_share_items_splits_by_cost_into_disjoint_runs(monkeypatch):
    """Each rank's share of a measure's items: contiguous runs in item order, disjoint, covering
    every item, balanced by cost (a costly first item counts for several cheap ones)."""
    from explorer.core import ranks

    costs = [8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]       # total 20
    got = []
    for r in range(3):
        monkeypatch.setattr(ranks, "world", lambda r=r: (r, 3))
        got.append(ranks.share_items(costs))
    # item midpoints 4 | 10, 13 | 14.5, 15.5, ... of thirds 6.67 and 13.33
    assert got == [[0], [1, 2], [3, 4, 5, 6, 7, 8]]
    assert [sum(costs[i] for i in g) for g in got] == [8.0, 6.0, 6.0]
    monkeypatch.setattr(ranks, "world", lambda: (0, 1))        # one process: every item, as is
    assert ranks.share_items(costs) == list(range(9))
    parts = {i: torch.full((2,), float(i)) for i in range(3)}
    assert [float(t[0]) for t in ranks.gather_items(parts, 3)] == [0.0, 1.0, 2.0]
    with pytest.raises(ExplorerError, match="items"):
        ranks.gather_items({0: torch.zeros(1)}, 2)
    assert ranks.shard_bounds(7) == [0, 7]
