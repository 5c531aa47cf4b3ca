"""Structured progress (explorer/core/progress.py): the pipeline reports events with data, the edges
make the sentences, and a cancel token stops work at its next event with the model put back."""

from __future__ import annotations

import math

import pytest

from explorer import Variant, perplexity
from explorer.core.progress import CancelToken, Cancelled, Event, scaled, watched
from explorer.ui import plots
from tiny import state_checksum


def test_describe_is_made_from_the_fields():
    e = Event("heal layerwise", 0.06, step=12, total=200, unit="steps", loss=0.43214,
              held_out=31.25, seconds=14.2)
    assert e.describe() == "heal layerwise: step 12/200, loss 0.4321, held-out ppl 31.25 (14 s)"
    # a time budget: the schedule's length is not known yet
    assert Event("distill", 0.1, step=2, unit="steps", loss=math.inf).describe() == \
        "distill: step 2/?, loss inf"
    assert Event("perplexity", 0.25, step=8, total=32, unit="windows", figure=23.4123,
                 band=(22.81, 24.1)).describe() == \
        "perplexity: 8/32 windows, 23.41 so far (95% band 22.81-24.1)"
    assert Event("load", 1.0, note="loaded smollm2-135m").describe() == \
        "load: loaded smollm2-135m"
    assert Event("x", 7.0).fraction == 1.0 and Event("x", -1).fraction == 0.0   # clamped


def test_a_part_of_a_larger_step_is_scaled_and_named():
    seen: list[Event] = []
    part = scaled(seen.append, 0.5, 0.75, "gemma3-270m")
    part(Event("probe", 0.5, step=4, total=8, unit="windows"))
    assert seen[0].fraction == pytest.approx(0.625) and seen[0].stage == "gemma3-270m: probe"
    assert seen[0].step == 4                            # the data travels unchanged
    assert scaled(None, 0, 1) is None


def test_training_events_carry_the_loss_the_history_records(tiny_lm, sample_text):
    from explorer.heal import heal

    events: list[Event] = []
    r = heal(Variant.identity(tiny_lm).drop([2]), "layerwise", calibration=sample_text, steps=4,
             seqlen=16, windows=4, held_out=1, init="none", progress=events.append)
    steps = [e for e in events if e.unit == "steps" and e.loss is not None]   # training steps
    assert [e.step for e in steps] == [1, 2, 3, 4] and {e.total for e in steps} == {4}
    checks = [e for e in events if e.note == "checking the held-out windows"]
    assert checks and all(e.loss is None and e.total == 4 for e in checks)   # said on the bar
    assert [e.loss for e in steps] == [h["loss"] for h in r.history]
    assert {e.stage for e in steps} == {"layerwise"}
    assert [e.fraction for e in steps] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert events[0].stage == "heal layerwise" and events[-1].stage == "heal layerwise"
    assert events[-1].fraction == 1.0
    assert events[-1].held_out == pytest.approx(r.held_out_after)


def test_cancel_token_stops_a_pass_and_leaves_the_model_as_it_was(tiny_lm, sample_text):
    before = state_checksum(tiny_lm.model)
    token = CancelToken()
    seen: list[Event] = []

    def report(event: Event) -> None:
        seen.append(event)
        token.cancel()                  # pressed during the first batch

    with pytest.raises(Cancelled):
        perplexity(tiny_lm, sample_text, variant=Variant.identity(tiny_lm).drop([1]), seqlen=32,
                   max_tokens=320, batch_size=3, cache=False, progress=watched(report, token))
    assert len(seen) == 1                                   # stopped at the next event
    assert state_checksum(tiny_lm.model) == before
    assert len(tiny_lm.arch.layer_list(tiny_lm.model)) == 6  # the variant's swap was undone
    token.reset()
    watched(None, token)(Event("probe", 0.1))               # a reset token lets work run


def test_a_loss_that_is_not_finite_still_draws_a_point():
    fig = plots.heal_curve([(1, 0.5, None), (2, math.inf, None), (3, math.nan, 40.0)])
    names = [t.name for t in fig.data]
    assert "loss not finite" in names
    marks = fig.data[names.index("loss not finite")]
    assert list(marks.x) == [2, 3] and list(marks.y) == [0.5, 0.5]
    assert list(fig.data[0].y) == [0.5, None, None]         # a gap in the line, not a crash
