"""Declared parameters (explorer.core.params) and layer-list text (explorer.core.layer_lists)."""

import pytest

from explorer.core.errors import ExplorerError, LayerError, ParamError
from explorer.core.layer_lists import format_groups, format_layers, parse_groups, parse_layers
from explorer.core.params import Param, describe, resolve

T = Param("T", float, 0.45, "threshold", min=0, max=1)
C = Param("C", int, 7, "layers per merge", min=2)
H = Param("H", int, None, "highest layer", min=0, optional=True)
RULE = Param("rule", str, "paper", "merge rule", choices=("paper", "code"))
FLAG = Param("skip_first", bool, True, "leave out position 0")
LAYERS = Param("layers", list, [], "layers to delete")
EXTRA = Param("measure_params", dict, {}, "measure options")


def test_parse_converts_text_and_values():
    assert T.parse("0.3", "laco") == 0.3 and T.parse(1, "laco") == 1.0
    assert C.parse("4", "laco") == 4 and isinstance(C.parse(4.0, "laco"), int)
    assert H.parse("none", "laco") is None and H.parse(None, "laco") is None
    assert RULE.parse(" code ", "laco") == "code"
    assert FLAG.parse("false", "x") is False and FLAG.parse(1, "x") is True
    assert LAYERS.parse("3,7,10-12", "drop") == [3, 7, 10, 11, 12]
    assert LAYERS.parse("[[1, 2], [5, 9]]", "mka") == [[1, 2], [5, 9]]
    assert EXTRA.parse('{"k": 5}', "mka") == {"k": 5}


@pytest.mark.parametrize("param,value,message", [
    (T, "abc", "laco: T must be a number in [0, 1] (got 'abc')"),
    (T, 1.5, "laco: T must be a number in [0, 1] (got 1.5)"),
    (T, "nan", "laco: T must be a number in [0, 1] (got 'nan')"),
    (T, True, "laco: T must be a number in [0, 1] (got True)"),
    (T, None, "laco: T must be a number in [0, 1] (got None)"),
    (C, 2.5, "laco: C must be an integer >= 2 (got 2.5)"),
    (C, 1, "laco: C must be an integer >= 2 (got 1)"),
    (H, -1, "laco: H must be an integer >= 0 or none (got -1)"),
    (RULE, "other", "laco: rule must be one of 'paper', 'code' (got 'other')"),
    (FLAG, "maybe", "laco: skip_first must be true or false (got 'maybe')"),
    (LAYERS, "3,x", "laco: layers must be a list such as [3, 7] (got '3,x')"),
    (EXTRA, "[1]", "laco: measure_params must be a JSON object such as {\"k\": 5} (got '[1]')"),
])
def test_parse_refuses_with_one_line(param, value, message):
    with pytest.raises(ParamError) as info:
        param.parse(value, "laco")
    assert str(info.value) == message
    assert isinstance(info.value, ExplorerError)


def test_resolve_fills_defaults_and_refuses_unknown_names():
    params = (T, C, H, LAYERS)
    out = resolve(params, {"T": "0.5"}, "laco")
    assert out == {"T": 0.5, "C": 7, "H": None, "layers": []}
    assert list(out) == ["T", "C", "H", "layers"]
    out["layers"].append(3)                               # a copy: the declaration is unchanged
    assert LAYERS.default == []
    with pytest.raises(ParamError, match="laco has no parameter bogus; its parameters: T, C, H"):
        resolve(params, {"bogus": 1}, "laco")


def test_bad_default_fails_at_declaration():
    with pytest.raises(ParamError):
        Param("x", int, 0, "x", min=1)
    with pytest.raises(TypeError):
        Param("x", tuple, (), "x")


def test_describe_rows():
    rows = describe((T, RULE))
    assert rows[0]["allowed"] == "a number in [0, 1]" and rows[0]["type"] == "float"
    assert rows[1]["choices"] == ("paper", "code") and rows[1]["default"] == "paper"


def test_layer_lists_round_trip():
    assert parse_layers("3,7,10-12") == [3, 7, 10, 11, 12]
    assert format_layers([12, 3, 10, 11, 7]) == "3,7,10-12"
    assert parse_groups("10-12; 20,21") == [[10, 11, 12], [20, 21]]
    assert format_groups([[10, 11, 12], [20, 22]]) == "10-12; 20,22"
    with pytest.raises(LayerError, match="use numbers like 3,7,10-12"):
        parse_layers("3-")
    with pytest.raises(LayerError, match="too long"):
        parse_layers("0-99999999")
