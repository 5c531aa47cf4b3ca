"""Fuzzing the parsers users feed directly: recipe files (Recipe.from_json + replay) and the CLI's
layer lists (parse_layers).

Whatever the input, the only exceptions allowed are ExplorerError subclasses (one-line messages);
anything else (TypeError, RecursionError, OverflowError, MemoryError ...) is a bug. When a recipe
is accepted, replaying it on a real tiny model gives a valid Variant: applying it runs a forward
pass and leaves the model exactly as it was.
"""

from __future__ import annotations

import json
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer import Variant
from explorer.cli import parse_layers
from explorer.errors import ExplorerError, LayerError
from explorer.recipe import FORMAT, Recipe, replay

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25)


def _is_one_line(exc: Exception) -> bool:
    return "\n" not in str(exc) and len(str(exc)) > 0


@FUZZ
@given(st.binary(max_size=600))
def test_from_json_on_arbitrary_bytes(data):
    try:
        r = Recipe.from_json(data)
    except LayerError as exc:
        assert _is_one_line(exc)
    else:
        assert isinstance(r, Recipe)


@FUZZ
@given(json_values)
def test_from_json_on_arbitrary_json(value):
    text = json.dumps(value)
    try:
        Recipe.from_json(text)
    except LayerError as exc:
        assert _is_one_line(exc)


layer_ints = st.integers(-3, 9)
weights = st.one_of(
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=4),
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-10**400, 10**400), st.booleans()), max_size=4),
    json_values)
ops = st.fixed_dictionaries(
    {"op": st.sampled_from(["drop", "merge", "merge", "explode", ""])},
    optional={"layers": st.one_of(st.lists(layer_ints, max_size=5), json_values),
              "weights": weights,
              "summary": json_values,
              "alpha": json_values})


def recipe_text(op_list, num_layers, extra) -> str:
    data = {"format": FORMAT, "model": "tiny", "num_layers": num_layers, "ops": op_list, **extra}
    return json.dumps(data)


@FUZZ
@given(op_list=st.lists(ops, max_size=5),
       num_layers=st.one_of(st.just(6), st.integers(-2, 40), json_values),
       extra=st.dictionaries(st.sampled_from(["params", "results", "method", "format"]),
                             json_values, max_size=2))
def test_recipe_replay_on_a_tiny_model(tiny_lm, op_list, num_layers, extra):
    lm = tiny_lm
    layers_before = lm.original_layers
    try:
        v = Recipe.from_json(recipe_text(op_list, num_layers, extra)).build(lm)
    except ExplorerError as exc:
        assert _is_one_line(exc)
        return
    assert isinstance(v, Variant) and 1 <= v.num_layers <= lm.num_layers
    # the steps it recorded replay to the same variant
    assert replay(lm, [dict(s) for s in v.steps]).layer_labels() == v.layer_labels()
    v.describe()
    with torch.no_grad(), v.applied() as model:
        assert len(lm.arch.layer_list(model)) == v.num_layers
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert lm.arch.layer_list(lm.model) is layers_before
    assert lm.config.num_hidden_layers == lm.num_layers == 6


well_formed_ops = st.one_of(
    st.builds(lambda ls: {"op": "drop", "layers": ls}, st.lists(st.integers(-1, 7), min_size=1,
                                                                 max_size=6)),
    st.builds(lambda ls, ws: {"op": "merge", "layers": ls, "weights": ws},
              st.lists(st.integers(-1, 7), min_size=1, max_size=3),
              st.lists(st.one_of(st.floats(-2, 2), st.sampled_from([0.0, 1e30, -1e30])),
                       min_size=1, max_size=3)))


@FUZZ
@given(st.lists(well_formed_ops, min_size=1, max_size=6))
def test_well_formed_random_ops_give_a_variant_or_a_layer_error(tiny_lm, op_list):
    """Shaped like real recipes, so that many are accepted and the variants are exercised."""
    lm = tiny_lm
    try:
        v = replay(lm, op_list)
    except LayerError as exc:
        assert _is_one_line(exc)
        return
    expected = 6
    for op in op_list:
        expected -= len(op["layers"]) if op["op"] == "drop" else len(op["layers"]) - 1
    assert v.num_layers == expected >= 1
    with torch.no_grad(), v.applied() as model:
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert lm.config.num_hidden_layers == 6 and len(lm.arch.layer_list(lm.model)) == 6


@FUZZ
@given(st.text(max_size=40))
def test_parse_layers_on_arbitrary_text(spec):
    try:
        out = parse_layers(spec)
    except LayerError as exc:
        assert _is_one_line(exc)
    else:
        assert all(isinstance(i, int) for i in out)


@FUZZ
@given(st.text(alphabet="0123456789-, ", max_size=30))
def test_parse_layers_on_number_like_text(spec):
    try:
        out = parse_layers(spec)
    except LayerError as exc:
        assert _is_one_line(exc)
    else:
        assert len(out) <= 10_000 * (spec.count(",") + 1)


@FUZZ
@given(st.lists(st.integers(0, 10**6), max_size=20))
def test_parse_layers_round_trip(xs):
    assert parse_layers(",".join(map(str, xs))) == xs


def test_known_nasty_recipes(tiny_lm):
    """Cases the fuzzers found or that must never regress."""
    nasty = [
        b"[" * 50_000 + b"]" * 50_000,                                 # RecursionError in json
        recipe_text([{"op": "merge", "layers": [1, 2], "weights": [10**400, 1]}], 6, {}),
        recipe_text([{"op": "merge", "layers": [1, 2], "weights": [1, 1],
                      "summary": {"not": "text"}}], 6, {}),
        recipe_text([{"op": "drop", "layers": [True]}], 6, {}),
        recipe_text([{"op": "drop", "layers": [0, 1, 2, 3, 4, 5]}], 6, {}),
        '{"format": "%s", "model": "m", "num_layers": 6, "ops": [{"op": "merge", '
        '"layers": [1, 2], "weights": [Infinity, 0.5]}]}' % FORMAT,
    ]
    for text in nasty:
        try:
            v = Recipe.from_json(text).build(tiny_lm)
        except ExplorerError as exc:
            assert _is_one_line(exc)
        else:
            assert all(math.isfinite(w) for s in v.steps for w in s.get("weights", []))
            v.describe()
