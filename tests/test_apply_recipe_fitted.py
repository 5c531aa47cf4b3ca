"""Self-contained recipes: the fitted ops' results saved next to the recipe as safetensors, loaded
by a replay bit for bit without data or training (also in a new process), fitted again only when
absent (and said so); a damaged file is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from explorer import Recipe, Variant, replay
from explorer.apply import fitted as F
from explorer.heal import heal
from explorer.plan import compress
from tiny import SAMPLE_TEXT, same_weights

SMALL = dict(calibration=SAMPLE_TEXT, seqlen=32, windows=24, held_out=4)


def weights(v: Variant) -> dict[str, torch.Tensor]:
    """Every tensor of the variant's layer stack, by slot and name, and of its own head."""
    out = {f"{k}.{n}": t for k in range(v.num_layers)
           for n, t in {**dict(v.layer(k).named_parameters()),
                        **dict(v.layer(k).named_buffers())}.items()}
    if v.head is not None:
        out.update({f"head.{n}": t for n, t in v.head.named_parameters()})
    return out


def test_heal_recipe_replays_from_saved_tensors_without_training(tiny_lm, tmp_path, monkeypatch):
    lm = tiny_lm
    merged = Variant.identity(lm).merge([2, 3], [0.5, 0.5]).drop([4])   # a merge, then a drop
    r = heal(merged, "layerwise", steps=3, **SMALL)
    path = tmp_path / "recipe.json"
    assert Recipe.of(r.variant).save(path, lm) == []
    assert F.fitted_path(path).is_file()
    recipe = Recipe.load(path)
    assert len(recipe.fitted) == 1
    F.RESULTS.clear()                       # nothing from this process: only the file
    from explorer.heal import registry as heal_registry

    def no_training(*a, **k):
        raise AssertionError("replay trained")
    monkeypatch.setattr(heal_registry, "heal", no_training)
    said = []
    again = recipe.build(lm, report=said.append)
    assert said == [] and same_weights(again, r.variant)
    # what healing left shared with the loaded model stays shared (nothing copied needlessly)
    orig = {id(p) for p in lm.original_layers.parameters()}

    def shared(v):
        return [[id(p) in orig for p in v.layer(k).parameters()] for k in range(v.num_layers)]
    assert shared(again) == shared(r.variant)
    # without the file (and nothing in memory) the replay trains again, and says so
    monkeypatch.undo()
    F.RESULTS.clear()
    said = []
    redone = replay(lm, recipe.ops, report=said.append)
    assert len(said) == 1 and "fitting it again" in said[0] and "heal" in said[0]
    assert same_weights(redone, r.variant)     # the schedule replays exactly on the CPU


@pytest.fixture(scope="module")
def tied_lm(tiny_factory):
    """A tiny llama whose head is its input embedding (as SmolLM2's)."""
    from explorer import load_model

    return load_model(str(tiny_factory("llama", num_layers=6, initializer_range=0.15,
                                       tie_word_embeddings=True)))


def test_a_trained_head_replays_from_saved_tensors(tied_lm, tmp_path, monkeypatch):
    """tail-finetune's head slot is saved with the recipe (`<key>/head/weight`) and a replay
    from the file alone rebuilds it bit for bit; a later op keeps it ("prev"); without the
    file the replay trains again to the same bits."""
    from explorer import perplexity

    lm = tied_lm
    r = heal(Variant.identity(lm).drop([4, 5]), "tail-finetune", k=2, steps=3, head_lr=1e-3,
             **SMALL)
    assert r.variant.head is not None
    later = heal(r.variant.drop([0]), "closed-form", **SMALL).variant     # keeps the head
    assert later.head is r.variant.head
    path = tmp_path / "recipe.json"
    assert Recipe.of(later).save(path, lm) == []
    recipe = Recipe.load(path)
    metas = {e.head for e in recipe.fitted.values()}
    assert metas == {"new", "prev"}
    F.RESULTS.clear()
    from explorer.heal import registry as heal_registry

    def no_training(*a, **k):
        raise AssertionError("replay trained")
    monkeypatch.setattr(heal_registry, "heal", no_training)
    again = recipe.build(lm)
    assert same_weights(again, later) and again.head is not None
    assert again.head.weight.data_ptr() != lm.model.lm_head.weight.data_ptr()
    a = perplexity(lm, SAMPLE_TEXT, variant=again, seqlen=32, max_tokens=512).ppl
    b = perplexity(lm, SAMPLE_TEXT, variant=later, seqlen=32, max_tokens=512).ppl
    assert a == b
    monkeypatch.undo()
    F.RESULTS.clear()
    said = []
    redone = replay(lm, recipe.ops, report=said.append)
    assert len(said) == 2 and same_weights(redone, later)
    # a head of another shape (another model) is refused in one line
    from explorer.core.errors import LayerError

    entry = next(e for e in recipe.fitted.values() if e.head == "new")
    entry.head_tensors["weight"] = torch.zeros(3, 3)
    F.RESULTS.clear()
    with pytest.raises(LayerError, match="does not match this model's vocabulary head"):
        recipe.build(lm)


def test_in_process_replay_reuses_the_live_variant(tiny_lm):
    r = heal(Variant.identity(tiny_lm).drop([1, 2]), "closed-form", **SMALL)
    said = []
    again = replay(tiny_lm, [dict(op) for op in r.variant.steps], report=said.append)
    assert said == [] and all(a is b for a, b in zip(again.slots, r.variant.slots))


def test_the_same_healing_done_again_and_dropped_leaves_the_first_savable(tiny_lm, tmp_path):
    """Issue 32: the app keeps its healed variant; a second healing of the same plan (a library
    call, another session) that is then dropped must not hide the first one's tensors, or the
    app's recipe would come without them (recipe.json alone instead of recipe.zip)."""
    import gc

    base = Variant.identity(tiny_lm).drop([1, 2])
    kept = heal(base, "closed-form", **SMALL)
    again = heal(base, "closed-form", **SMALL)
    assert again.variant.steps == kept.variant.steps       # the same steps: one key
    del again
    gc.collect()
    path = tmp_path / "recipe.json"
    assert Recipe.of(kept.variant).save(path, tiny_lm) == []            # nothing missing
    F.RESULTS.clear()
    assert same_weights(Recipe.load(path).build(tiny_lm), kept.variant)


@pytest.mark.parametrize("replacement", ["layer", "linear", "ffn"])
def test_streamline_and_come_results_are_saved(tiny_lm, tmp_path, replacement):
    lm = tiny_lm
    plan = compress(lm, "streamline", remove=2, calibration=SAMPLE_TEXT, seqlen=32,
                    num_samples=4, steps=2, replacement=replacement)
    v = heal(plan.variant, "closed-form", **SMALL).variant if replacement == "layer" else \
        plan.variant
    path = tmp_path / "s.json"
    assert Recipe.of(v).save(path, lm) == []
    F.RESULTS.clear()
    said = []
    assert same_weights(Recipe.load(path).build(lm, report=said.append), v) and said == []
    come = compress(lm, "come", remove=1, calibration=SAMPLE_TEXT, seqlen=32, num_samples=4,
                    recover_steps=2).variant
    assert Recipe.of(come).save(tmp_path / "c.json", lm) == []
    F.RESULTS.clear()
    assert same_weights(Recipe.load(tmp_path / "c.json").build(lm), come)


def test_a_recipe_without_fitted_ops_writes_no_tensors(tiny_lm, tmp_path):
    path = tmp_path / "r.json"
    assert Recipe.of(Variant.identity(tiny_lm).drop([1])).save(path, tiny_lm) == []
    assert not F.fitted_path(path).exists() and Recipe.load(path).fitted == {}


def test_damaged_or_foreign_tensors_are_one_line(tiny_lm, tmp_path):
    from explorer.core.errors import LayerError

    r = heal(Variant.identity(tiny_lm).drop([1, 2]), "closed-form", **SMALL)
    path = tmp_path / "recipe.json"
    Recipe.of(r.variant).save(path, tiny_lm)
    F.fitted_path(path).write_bytes(b"\x00" * 40)
    with pytest.raises(LayerError, match="cannot read the fitted tensors"):
        Recipe.load(path)
    # tensors of another shape (another model) are refused, not loaded
    Recipe.of(r.variant).save(path, tiny_lm)
    recipe = Recipe.load(path)
    entry = next(iter(recipe.fitted.values()))
    n, tensors = next(iter(entry.tensors.items()))
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, 3)
    F.RESULTS.clear()
    with pytest.raises(LayerError, match="do not match this model"):
        recipe.build(tiny_lm)


CHILD = """
import sys, time, json, hashlib
t0 = time.perf_counter()
from explorer import Recipe, load_model
lm = load_model(sys.argv[1])
said = []
v = Recipe.load(sys.argv[2]).build(lm, report=said.append)
h = hashlib.sha256()
for k in range(v.num_layers):
    m = v.layer(k)
    for n, t in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items():
        h.update(f"{k}.{n}".encode()); h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
for n, t in (v.head.named_parameters() if v.head is not None else ()):
    h.update(f"head.{n}".encode()); h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
print(json.dumps({"sha": h.hexdigest(), "said": said}))
"""


def digest(v: Variant) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in weights(v).items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("mode,kw", [("distill", {"init": "none"}),
                                     ("tail-finetune", {"k": 2, "head_lr": 1e-3})])
def test_a_new_process_replays_the_same_weights(tiny_lm, tiny_factory, tmp_path, mode, kw):
    r = heal(Variant.identity(tiny_lm).drop([2, 3]), mode, steps=3, **kw, **SMALL)
    assert (r.variant.head is not None) == (mode == "tail-finetune")
    path = tmp_path / "recipe.json"
    Recipe.of(r.variant).save(path, tiny_lm)
    out = subprocess.run([sys.executable, "-c", "import torch\n" + CHILD,
                          str(tiny_factory("llama", num_layers=6)), str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["said"] == [] and got["sha"] == digest(r.variant)
