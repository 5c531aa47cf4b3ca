"""The app's method controls are generated from the declared parameters: a new method's parameters
appear as controls with their defaults, help and allowed values, with no UI code written for it,
and a bad value is refused with its one-line message before any work starts."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from explorer.core.errors import ParamError
from explorer.plan import METHODS, Method, register
from explorer.core.params import Param
from explorer.ui import build_app, controls
from explorer.ui.plan_tab import ask_method
from explorer.ui.settings import UISettings
from explorer.ui.state import Session

PARAMS = (
    Param("alpha", float, 0.5, "mixing weight", min=0, max=1),
    Param("measure", str, "cosine", "what to rank by", choices=("cosine", "bi")),
    Param("keep_first", bool, True, "never remove layer 0"),
    Param("layers", list, [], "layers to protect"),
    Param("budget", int, None, "steps, or none", min=1, optional=True),
)


@pytest.fixture
def example_method():
    @register
    class Example(Method):
        name = "example-ui"
        title = "Example (test only)"
        description = "A method that exists only in this test."
        params = PARAMS

        def run(self, ctx, remove, params):   # never reached: validation comes first
            raise AssertionError("the method ran although its parameters were refused")

    try:
        yield Example
    finally:
        METHODS.pop("example-ui", None)


def test_a_new_methods_parameters_become_controls(example_method, tmp_path):
    demo = build_app(UISettings(output_dir=Path(tmp_path)), warm_up=False)
    found = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    get = {p.name: found[f"lx-param-example-ui-{p.name}"] for p in PARAMS}
    assert isinstance(get["alpha"], gr.Number) and get["alpha"].value == 0.5
    assert "mixing weight" in get["alpha"].info and "[0, 1]" in get["alpha"].info
    assert isinstance(get["measure"], gr.Dropdown) and get["measure"].value == "cosine"
    assert [c[1] for c in get["measure"].choices] == ["cosine", "bi"]
    assert isinstance(get["keep_first"], gr.Checkbox) and get["keep_first"].value is True
    assert isinstance(get["layers"], gr.Textbox) and get["layers"].value == ""
    # a number that may be none: a text box, empty (a number box would show 0)
    assert isinstance(get["budget"], gr.Textbox) and get["budget"].value == ""
    # the method is offered in the dropdown, from the registry
    method = found["lx-method"]
    assert ("Example (test only)", "example-ui") in [tuple(c) for c in method.choices]


def test_controls_read_back_through_the_declaration():
    got = controls.read(PARAMS, [0.25, "bi", False, "3,7,10-12", ""], "example")
    assert got == {"alpha": 0.25, "measure": "bi", "keep_first": False,
                   "layers": [3, 7, 10, 11, 12], "budget": None}
    # empty boxes: the defaults
    assert controls.read(PARAMS, [None, "cosine", True, "", " 7 "], "example")["budget"] == 7
    assert controls.read(PARAMS, [None, "cosine", True, "", ""], "example")["alpha"] == 0.5
    with pytest.raises(ParamError, match=r"example: Alpha must be a number in \[0, 1\] \(got 2\)"):
        controls.read(PARAMS, [2, "bi", True, "", None], "example")


def test_a_bad_value_is_refused_before_any_work(example_method):
    """Issue 14 point 13: a bad measure name fails at once, not after the probe."""
    state = Session(model="not-loaded-either", num_layers=30)
    with pytest.raises(ParamError,
                       match=r"example-ui: Measure must be one of cosine, bi \(got 'cka'\)$"):
        ask_method(UISettings(), state, "example-ui", 4, 0, [0.5, "cka", True, "", None])
