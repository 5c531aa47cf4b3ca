"""Models side by side: one adjacent-layer curve per model on relative depth 0..1, equal to the
measure on an independent probe; one model resident at a time; kept profiles load nothing."""

from __future__ import annotations

import gc
import json
import shutil

import pytest

from explorer import cli, load_model, load_texts, probe
from explorer.core import session
from explorer.core.model import LoadedModel
from explorer.measure.measures import adjacent
from explorer.measure.profiles import ProfileStore, compare_models, profile_of, relative_depth


@pytest.fixture
def two_models(tiny_factory, sample_text, tmp_path):
    """Two tiny models in folders of this test's own (so no other test holds a model of the same
    spec), and a text file."""
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    a, b = tmp_path / "llama4", tmp_path / "qwen6"
    shutil.copytree(tiny_factory("llama", num_layers=4), a)
    shutil.copytree(tiny_factory("qwen2", num_layers=6), b)
    yield str(a), str(b), str(text)
    session.release_model()       # leave no tiny model resident for other tests


def live(spec: str) -> int:
    gc.collect()
    return sum(type(o) is LoadedModel and o.spec == spec for o in gc.get_objects())


def test_profiles_side_by_side(two_models):
    a, b, text = two_models
    store = ProfileStore()
    cmp = compare_models([a, b], measure="cosine", text=text, seqlen=32, samples=4, store=store)
    assert [p.model for p in cmp.profiles] == [a, b] and cmp.reused == []
    # One model resident at a time: the first is gone once the second is loaded.
    assert session.current_model().spec == b and live(a) == 0
    texts = load_texts(text)
    for prof, layers in zip(cmp.profiles, (4, 6)):
        assert prof.num_layers == layers and len(prof.x) == len(prof.y) == layers
        assert prof.x[0] == 0.0 and prof.x[-1] == 1.0 and prof.x == sorted(set(prof.x))
        pr = probe(load_model(prof.model), texts.calibration, seqlen=32, num_samples=4)
        assert prof.y == pytest.approx(adjacent(pr, "cosine").tolist(), abs=1e-5)
        assert profile_of(pr, prof.model, measure="cosine").y == pytest.approx(prof.y, abs=1e-6)
    # Kept profiles: asking again loads nothing (the resident model stays the second one).
    again = compare_models([a, b], measure="cosine", text=text, seqlen=32, samples=4,
                           store=store)
    assert again.reused == [a, b] and session.current_model().spec == b
    assert again.profiles[0] is cmp.profiles[0]
    assert json.loads(json.dumps(again.to_dict()))["profiles"][1]["num_layers"] == 6


def test_cli_models_and_bad_input(two_models, capsys):
    a, b, text = two_models
    assert cli.main(["similarity", "--models", f"{a},{b}", "--measure", "angular", "--text", text,
                     "--seqlen", "32", "--samples", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["measure"] == "angular" and len(out["profiles"]) == 2
    assert all(p["x"][0] == 0 and p["x"][-1] == 1 for p in out["profiles"])
    assert relative_depth(1) == [0.0] and relative_depth(3) == [0.0, 0.5, 1.0]
    with pytest.raises(Exception, match="no model given"):
        compare_models(" , ")


def test_a_failing_model_is_named_and_the_others_said_fine(two_models):
    """Issue 32 [12]: "a, nonexistent-model-xyz, b": the one error names the model that failed
    with its own reason, and says the others were fine; their profiles are kept, so asking
    again without the failed one loads and probes nothing."""
    from explorer.core.errors import ModelLoadError

    a, b, text = two_models
    store = ProfileStore()
    with pytest.raises(ModelLoadError) as caught:
        compare_models(f"{a}, nonexistent-model-xyz, {b}", measure="cosine", text=text,
                       seqlen=32, samples=4, store=store)
    said = str(caught.value)
    assert said.startswith("'nonexistent-model-xyz' failed: could not load "
                           "'nonexistent-model-xyz'"), said
    assert said.endswith(f"; {a}, {b} were fine (their profiles are kept)"), said
    assert "\n" not in said
    again = compare_models([a, b], measure="cosine", text=text, seqlen=32, samples=4,
                           store=store)
    assert again.reused == [a, b]
    # two failures: both named, each with its own reason; one model alone: its own error
    with pytest.raises(ModelLoadError) as caught:
        compare_models(["/nonexistent/one", "/nonexistent/two"], text=text, store=store)
    assert str(caught.value) == ("'/nonexistent/one' failed: path '/nonexistent/one' does not "
                                 "exist; '/nonexistent/two' failed: path '/nonexistent/two' does "
                                 "not exist; no model could be compared")
    with pytest.raises(ModelLoadError, match=r"^path '/nonexistent/one' does not exist$"):
        compare_models("/nonexistent/one", text=text, store=store)
