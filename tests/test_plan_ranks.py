"""`compress` as data-parallel ranks (explorer/plan/ppl_search.py, docs/scale.md): two gloo ranks,
each scoring every candidate on its shard of the calibration windows, pick what one process
picks with the same figures (SLEB, BlockPruner, EvoPress, angular's plan), and the
`torchrun -m explorer compress` command writes one export with one recipe, from rank 0."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from rank_launch import torchrun

WORKER = Path(__file__).with_name("search_rank_worker.py")


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    done = torchrun(n, *args, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-9)


def test_two_ranks_search_what_one_process_searches(tiny_factory, tmp_path):
    folder = tiny_factory("llama", num_layers=6)
    outs = {}
    for n in (1, 2):
        _torchrun(n, str(WORKER), str(folder), str(tmp_path / f"{n}.pt"))
        outs[n] = torch.load(tmp_path / f"{n}.pt")
    one, two = outs[1], outs[2]
    assert (one["ranks"], two["ranks"], one["windows"]) == (1, 2, 7)
    assert (one["mine"], two["mine"]) == (7, 3)             # rank 0 of 2 scored windows 0-2
    # every candidate scored in full: the same order and every total within 1e-9
    assert two["exact"][0] == one["exact"][0]
    assert all(_close(a, b) for a, b in zip(two["exact"][1], one["exact"][1]))
    for sa, sb in zip(one["exact"][2], two["exact"][2]):
        assert [k for k, _, _ in sa] == [k for k, _, _ in sb]
        assert all(_close(ta, tb) for (_, ta, _), (_, tb, _) in zip(sa, sb))
    # with the bounds: the same choice as the full search; stops decided on the summed bounds
    assert two["fast"][0] == one["fast"][0] == one["exact"][0]
    assert all(_close(a, b) for a, b in zip(two["fast"][1], one["exact"][1]))
    full = {(i, k): t for i, step in enumerate(one["exact"][2]) for k, t, _ in step}
    stopped = 0
    for i, step in enumerate(two["fast"][2]):
        for k, t, complete in step:
            if complete:
                assert _close(t, full[(i, k)]), (i, k)
            else:
                stopped += 1
                assert t <= full[(i, k)] * (1 + 1e-9)      # a lower bound of the full total
    assert stopped > 0                                      # the bound test ran across ranks
    assert two["bp"][:2] == one["bp"][:2]                   # the blocks, in order, and the ppl
    assert two["evo"] == one["evo"]
    assert two["angular"][0] == one["angular"][0]
    for name, col in one["angular"][1].items():
        assert max(abs(a - b) for a, b in zip(col, two["angular"][1][name])) <= 1e-6, name


def test_torchrun_compress_command_writes_one_recipe(tiny_factory, tmp_path, capsys):
    from explorer.cli import main
    from explorer.export.folder import RECIPE_FILE

    folder = tiny_factory("llama", num_layers=6)
    args = ["compress", "--model", str(folder), "--method", "sleb", "--remove", "1",
            "--calib-seqlen", "32", "--calib-samples", "6", "--param", "samples=6",
            "--seqlen", "32", "--max-tokens", "320", "--json"]
    done = _torchrun(2, "-m", "explorer", *args, "--out", str(tmp_path / "two"))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1                                          # rank 0 alone printed
    two = json.loads(lines[0])
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert two["removed"] == one["removed"] and len(one["removed"]) == 1
    assert _close(two["ppl_before"], one["ppl_before"])
    assert _close(two["ppl_after"], one["ppl_after"])
    recipes = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob(RECIPE_FILE))
    assert recipes == [Path("one", RECIPE_FILE), Path("two", RECIPE_FILE)]
    a, b = (json.loads((tmp_path / r).read_text()) for r in recipes)
    assert a["ops"] == b["ops"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())
