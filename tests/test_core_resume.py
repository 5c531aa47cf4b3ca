"""Runs that resume (explorer/core/resume.py): a layer-major probe killed after layer k resumes with
resume=True, computes at most one layer again and gives the uninterrupted result; a changed input
with resume asked is refused in one line; without resume an old checkpoint is replaced."""

from __future__ import annotations

import pytest
import torch

from explorer import load_model
from explorer.core.errors import ExplorerError
from explorer.probe.probe import probe
from explorer.core.resume import LayerCheckpoint
from tiny import SAMPLE_TEXT

KW = dict(seqlen=16, num_samples=5, batch_size=2, layer_major=True)


class _Killed(Exception):
    pass


def test_a_killed_probe_resumes_at_its_layer(tiny_factory, tmp_path):
    lm = load_model(str(tiny_factory("llama", num_layers=8)))
    whole = probe(lm, SAMPLE_TEXT, **KW)
    ran: list[int] = []

    def kill_after_4(event):
        ran.append(event.step)
        if event.step == 4:
            raise _Killed

    with pytest.raises(_Killed):
        probe(lm, SAMPLE_TEXT, checkpoint=LayerCheckpoint(tmp_path / "cp"), progress=kill_after_4,
              **KW)
    assert ran == [1, 2, 3, 4]
    ran.clear()
    cp = LayerCheckpoint(tmp_path / "cp", resume=True)
    again = probe(lm, SAMPLE_TEXT, checkpoint=cp, progress=lambda e: ran.append(e.step), **KW)
    assert ran == [5, 6, 7, 8]                                # slots 4..7 only
    assert torch.equal(again.states, whole.states) and torch.equal(again.last, whole.last)

    # another text, resume asked: one line, the checkpoint left as it was
    other = LayerCheckpoint(tmp_path / "cp", resume=True)
    with pytest.raises(ExplorerError, match="made for another input .*windows changed") as info:
        probe(lm, SAMPLE_TEXT[200:], checkpoint=other, **KW)
    assert "\n" not in str(info.value)
    assert torch.equal(probe(lm, SAMPLE_TEXT, checkpoint=LayerCheckpoint(tmp_path / "cp", True),
                             **KW).states, whole.states)
    # without resume: computed afresh, the old checkpoint replaced
    ran.clear()
    fresh = probe(lm, SAMPLE_TEXT[200:], checkpoint=LayerCheckpoint(tmp_path / "cp"),
                  progress=lambda e: ran.append(e.step), **KW)
    assert ran == list(range(1, 9))
    assert torch.equal(fresh.states, probe(lm, SAMPLE_TEXT[200:], **KW).states)


def test_resumed_gathers_keep_the_sums_of_the_layers_before(tiny_factory, tmp_path):
    """Accumulators at slots before the resumed boundary come back from the checkpoint."""
    from explorer.core.backbone import run_backbone
    from explorer.core.gather import Gather
    from explorer.probe.probe import calibration_windows

    lm = load_model(str(tiny_factory("llama", num_layers=8)))
    ids = calibration_windows(lm, SAMPLE_TEXT, 16, 5)

    def gathers():
        return [Gather(s, lambda v, acc: acc.add("yy", v.y.double().pow(2).sum()), first=1)
                for s in (1, 6)]

    ref = gathers()
    for _ in run_backbone(lm, ids, gather=ref, batch_size=2, layer_major=True):
        pass

    def kill(event):
        if event.step == 3:
            raise _Killed

    with pytest.raises(_Killed):
        for _ in run_backbone(lm, ids, gather=gathers(), batch_size=2, progress=kill,
                              checkpoint=LayerCheckpoint(tmp_path / "g")):
            pass
    got = gathers()
    for _ in run_backbone(lm, ids, gather=got, batch_size=2,
                          checkpoint=LayerCheckpoint(tmp_path / "g", resume=True)):
        pass
    for a, b in zip(ref, got):
        assert float(b.sums["yy"]) == pytest.approx(float(a.sums["yy"]), rel=1e-12)
