"""Runs that die (issue 30's bad input): two gloo ranks started as plain processes (no torchrun
agent, so nothing kills the survivor for the test) run `similarity --checkpoint`; rank 1 exits
right after its checkpoint holds layer 3 (the test hook LAYER_EXPLORER_TEST_EXIT_AFTER_LAYER).
Rank 0 stops at the next collective with one line, not a traceback, and the same command with
`--resume` finishes with the uninterrupted run's matrices. `eval --checkpoint` killed after layer 3
resumes there and gives the uninterrupted NLL."""

from __future__ import annotations

import json
import sys

import pytest
from rank_launch import plain_ranks

from explorer import cli

HOOK = "LAYER_EXPLORER_TEST_EXIT_AFTER_LAYER"
QUICK = {"LAYER_EXPLORER_RANK_TIMEOUT": "60"}     # a collective waits at most a minute


def _boundary(folder) -> int:
    return json.loads((folder / "manifest.json").read_text())["boundary"]


def test_a_rank_that_dies_stops_the_other_in_one_line_and_resume_finishes(tiny_factory, tmp_path,
                                                                           capsys):
    folder, cp = tiny_factory("llama", num_layers=6), tmp_path / "cp"
    args = ["similarity", "--model", str(folder), "--samples", "5", "--seqlen", "32", "--json"]
    run = ["-m", "explorer", *args, "--checkpoint", str(cp)]
    r0, r1 = plain_ranks(2, run, {0: QUICK, 1: {**QUICK, HOOK: "3"}})
    assert r1.returncode == 3                                  # the hook's exit
    assert r0.returncode == 2 and r0.stdout == "", r0.stderr[-2000:]
    line = r0.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: a rank stopped while the ranks were collecting")
    assert f"the checkpoint in {cp} stays usable" in line and "--resume" in line
    assert (_boundary(cp / "rank-0-of-2"), _boundary(cp / "rank-1-of-2")) == (6, 3)

    r0, r1 = plain_ranks(2, run + ["--resume"], {0: QUICK, 1: QUICK})
    assert r0.returncode == r1.returncode == 0, r0.stderr[-2000:] + r1.stderr[-2000:]
    assert r1.stdout == ""                                     # rank 0 alone printed
    resumed = json.loads(r0.stdout)
    assert resumed["resumed_at_layer"] == 6                    # rank 0 had saved every layer
    assert cli.main(args) == 0                                 # one process, uninterrupted
    whole = json.loads(capsys.readouterr().out)
    assert resumed["num_tokens"] == whole["num_tokens"]
    assert max(abs(a - b) for ra, rb in zip(resumed["matrix"], whole["matrix"])
               for a, b in zip(ra, rb)) <= 1e-6


def test_eval_killed_after_a_layer_resumes_there(tiny_factory, sample_text, tmp_path, capsys):
    import subprocess

    from rank_launch import _env

    text = tmp_path / "eval.txt"
    text.write_text(sample_text)
    cp = tmp_path / "cp"
    args = ["eval", "--model", str(tiny_factory("llama", num_layers=6)), "--text", str(text),
            "--seqlen", "24", "--max-tokens", "240", "--drop", "4", "--json"]
    killed = subprocess.run([sys.executable, "-m", "explorer", *args, "--checkpoint", str(cp)],
                            env=_env(**{HOOK: "3"}), capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert _boundary(cp / "dense") == 3 and not (cp / "variant").exists()
    assert cli.main(args + ["--checkpoint", str(cp), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed_at_layer"] == {"dense": 3}         # layers 1-3 were not run again
    assert (_boundary(cp / "dense"), _boundary(cp / "variant")) == (6, 5)
    assert cli.main(args) == 0
    whole = json.loads(capsys.readouterr().out)
    for key in ("ppl_before", "ppl_after", "nll"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-9), key
    # the text changed: --resume refused in one line
    text.write_text(sample_text[100:])
    assert cli.main(args + ["--checkpoint", str(cp), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "made for another input" in err and err.count("\n") == 1
    assert cli.main(args + ["--resume"]) == 2
    assert "--resume needs --checkpoint FOLDER" in capsys.readouterr().err
