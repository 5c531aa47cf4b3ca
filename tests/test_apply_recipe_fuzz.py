"""Fuzzing the parsers users feed directly: recipe files (Recipe.from_json + replay) and layer
lists (parse_layers, the syntax of the CLI and the app).

Whatever the input, the only exceptions allowed are ExplorerError subclasses (one-line messages);
anything else (TypeError, RecursionError, OverflowError, MemoryError ...) is a bug. What is
accepted is checked too: a parsed recipe holds exactly what its JSON said, typed as promised, and
survives a round trip through to_json; replaying it on a real tiny model gives a valid Variant
(applying it runs a forward pass and leaves the model exactly as it was); a parsed layer list is
what an independent reading of the text gives, and survives a round trip through format_layers.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer import Variant
from explorer.core.errors import ExplorerError, LayerError
from explorer.core.layer_lists import MAX_LAYER_RANGE, format_layers, parse_layers
from explorer.apply.recipe import FORMAT, Recipe, replay

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25)


def _is_one_line(exc: Exception) -> bool:
    return "\n" not in str(exc) and len(str(exc)) > 0


def _same(a, b) -> bool:
    """Equal as JSON (NaN equals NaN here, unlike ==)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _assert_faithful(r: Recipe, text: str | bytes) -> None:
    """An accepted recipe holds what its JSON said, with the promised types, and a round trip
    through to_json gives it back unchanged."""
    raw = json.loads(text)
    assert isinstance(r, Recipe) and r.format == raw["format"] == FORMAT
    assert isinstance(r.model, str) and r.model and r.model == raw["model"]
    assert type(r.num_layers) is int and r.num_layers >= 1 and r.num_layers == raw["num_layers"]
    assert all(type(o) is dict and isinstance(o["op"], str) for o in r.ops)
    assert _same(r.ops, raw.get("ops", []))
    assert r.method == str(raw.get("method", "manual"))
    assert type(r.params) is dict and _same(r.params, raw.get("params", {}))
    assert type(r.results) is dict and _same(r.results, raw.get("results", {}))
    again = Recipe.from_json(r.to_json())
    assert again.to_json() == r.to_json()


def _parse_and_check(text: str | bytes) -> None:
    """Refused with one line, or accepted faithfully."""
    try:
        r = Recipe.from_json(text)
    except LayerError as exc:
        assert _is_one_line(exc)
    else:
        _assert_faithful(r, text)


@FUZZ
@given(st.binary(max_size=600))
def test_from_json_on_arbitrary_bytes(data):
    _parse_and_check(data)


def right_or_wrong(right: st.SearchStrategy) -> st.SearchStrategy:
    """Half the time a valid field, half the time any JSON value."""
    return st.booleans().flatmap(lambda ok: right if ok else json_values)


# Objects shaped like recipes, each field right or wrong: about one in fifteen is accepted.
recipe_like = st.fixed_dictionaries(
    {"format": right_or_wrong(st.just(FORMAT)),
     "model": right_or_wrong(st.text(min_size=1, max_size=8)),
     "num_layers": right_or_wrong(st.integers(-2, 40))},
    optional={"ops": right_or_wrong(st.lists(st.fixed_dictionaries(
                  {"op": st.text(max_size=6)}, optional={"layers": json_values}), max_size=3)),
              "method": json_values,
              "params": right_or_wrong(st.dictionaries(st.text(max_size=6), json_values,
                                                       max_size=3)),
              "results": right_or_wrong(st.dictionaries(st.text(max_size=6), json_values,
                                                        max_size=3))})


@FUZZ
@given(json_values)
def test_from_json_on_arbitrary_json(value):
    _parse_and_check(json.dumps(value))


@FUZZ
@given(recipe_like)
def test_from_json_on_recipe_like_json(value):
    _parse_and_check(json.dumps(value))


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
@given(st.one_of(st.text(max_size=40),
                 # what int() reads besides ASCII digits: signs, '_', tabs, other scripts' digits
                 st.text(alphabet="0123456789-,+_ \t\u0663\u00b2", max_size=20)))
def test_parse_layers_on_arbitrary_text(spec):
    try:
        out = parse_layers(spec)
    except LayerError as exc:
        assert _is_one_line(exc)
        return
    assert all(type(i) is int for i in out)
    if not spec:
        assert out == []
        return
    # comma by comma: each part is one layer or an ascending run of at most MAX_LAYER_RANGE
    pieces = [parse_layers(part) for part in spec.split(",")]
    assert out == [i for piece in pieces for i in piece]
    for piece in pieces:
        assert 1 <= len(piece) <= MAX_LAYER_RANGE
        assert piece == list(range(piece[0], piece[0] + len(piece)))
    if min(out, default=0) >= 0:            # format_layers writes runs of layers (never negative)
        assert parse_layers(format_layers(out)) == sorted(set(out))


SINGLE = re.compile(r"-?[0-9]+")
RANGE = re.compile(r"([0-9]+) *- *(-?[0-9]+)")


def read_layers(spec: str) -> list[int] | None:
    """An independent reading of a layer list made of digits, '-', ',' and spaces: the layers,
    or None where the text is not a layer list."""
    if not spec:
        return []
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip(" ")
        if SINGLE.fullmatch(part):
            out.append(int(part))
        elif m := RANGE.fullmatch(part):
            lo, hi = int(m[1]), int(m[2])
            if hi < lo or hi - lo >= MAX_LAYER_RANGE:
                return None
            out.extend(range(lo, hi + 1))
        else:
            return None
    return out


@FUZZ
@given(st.text(alphabet="0123456789-, ", max_size=30))
def test_parse_layers_on_number_like_text(spec):
    expected = read_layers(spec)
    if expected is None:
        with pytest.raises(LayerError) as info:
            parse_layers(spec)
        assert _is_one_line(info.value)
    else:
        assert parse_layers(spec) == expected


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
