"""Adding a method or a measure is one declaration: it then shows in the CLI help, the generated
docs tables and the parameter declarations the app reads, without edits elsewhere."""

import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from explorer import cli
from explorer.cli import doc_tables
from explorer.core.errors import ExplorerError, ParamError
from explorer.measure.measures import (MEASURES, Measure, get_measure, measures_table,
                                       register_measure, similarity, unregister_measure)
from explorer.plan import (METHODS, Method, PlanContext, get_method, methods_table, register,
                           unregister)
from explorer.core.params import Param, describe
from explorer.probe.probe import ProbeResult


def _mean_abs_diff(pr: ProbeResult, scale: float = 1.0) -> torch.Tensor:
    """(L+1, L+1): scale * mean |x_a - x_b| over tokens and features."""
    s = pr.states.float()
    return scale * (s[:, None] - s[None, :]).abs().mean(dim=(2, 3))


@pytest.fixture
def example_measure():
    m = register_measure(Measure(
        "exdiff", "Example: mean absolute difference", False, "test only",
        "Mean absolute difference of the residual streams; an example measure for the tests.",
        _mean_abs_diff, (Param("scale", float, 1.0, "multiplies the result", min=0),)))
    yield m
    unregister_measure("exdiff")


@pytest.fixture
def example_method():
    @register
    class EveryOther(Method):
        name = "exeveryother"
        title = "Example: drop every other layer from the top"
        paper = "test only"
        description = "Drops layers L-2, L-4, ...; an example method for the tests."
        params = (Param("offset", int, 2, "distance of the first dropped layer from the top",
                        min=1),)

        def run(self, ctx, remove, params):
            L = ctx.lm.num_layers
            layers = [L - params["offset"] - 2 * k for k in range(remove)]
            return self.drop_plan(ctx, params, layers, {}, f"dropped {sorted(layers)}")

    yield METHODS["exeveryother"]
    unregister("exeveryother")


def _help(argv) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(argv)
    return out.getvalue()


def test_example_method_and_measure_appear_everywhere(example_method, example_measure, tiny_lm):
    # CLI help lists both with their parameters
    text = _help(["compress", "--help"])
    assert "exeveryother: Example: drop every other layer" in text and "offset=2" in text
    assert "'exdiff'" in text                      # a valid value of every method's `measure`
    text = _help(["similarity", "--help"])
    assert "exdiff: Example: mean absolute difference" in text and "scale=1.0" in text
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["compress", "--method", "exeveryother", "--help-params", "--json"]) == 0
    rows = json.loads(out.getvalue())["methods"]["exeveryother"]
    assert rows[0]["name"] == "offset" and rows[0]["allowed"] == "an integer >= 1"
    # the docs tables generated from the registries
    assert "| exeveryother | Offset (`offset`) | `2` | an integer >= 1 |" in methods_table()
    assert "| exdiff | Scale (`scale`) | `1.0` | a number >= 0 |" in measures_table()
    # the declarations the app reads
    assert [r["name"] for r in describe(get_method("exeveryother").params)] == ["offset"]
    assert get_measure("exdiff").param_names == ("scale",)
    assert "exdiff" in get_method("shortgpt").params[0].choices
    # and both work: validated centrally, computed as declared
    ctx = PlanContext(tiny_lm, "unused")
    assert get_method("exeveryother").plan(ctx, 2, offset="1").removed == [3, 5]
    with pytest.raises(ParamError, match=r"exeveryother: offset must be an integer >= 1 \(got 0\)"):
        get_method("exeveryother").plan(ctx, 2, offset=0)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(7, 10, 3, generator=g)                     # tiny_lm: 6 layers
    pr = ProbeResult(states=states, last=states[:, -2:].clone(), sample_of=torch.zeros(10).long(),
                     input_ids=torch.zeros(1, 11, dtype=torch.long), skip_first=True, seconds=0.0)
    m = similarity(pr, "exdiff", scale=2.0)
    assert m[0, 3] == pytest.approx(2 * float((states[0] - states[3]).abs().mean()))
    plan = get_method("shortgpt").plan(_ctx_with(tiny_lm, pr), 1, measure="exdiff")
    adj = [float((states[i] - states[i + 1]).abs().mean()) for i in range(6)]
    assert plan.scores["exdiff"] == pytest.approx(adj, rel=1e-5)   # a distance: lowest dropped
    assert plan.removed == [min(range(6), key=lambda i: adj[i])]


def _ctx_with(lm, pr):
    ctx = PlanContext(lm, "unused")
    ctx._probe = pr
    return ctx


def test_registries_are_clean_after_the_examples():
    assert "exeveryother" not in METHODS and "exdiff" not in MEASURES
    with pytest.raises(ExplorerError, match="unknown measure 'exdiff'"):
        get_measure("exdiff")


def test_docs_tables_match_the_registries():
    assert doc_tables.stale() == []


def test_bad_parameter_on_the_cli_is_one_line(capsys):
    err = io.StringIO()
    code = cli.main(["compress", "--method", "laco", "--remove", "3", "--param", "T=abc"],
                    stderr=err)
    assert code == 2
    assert err.getvalue() == "error: laco: T must be a number in [-1, 1] (got 'abc')\n"
    err = io.StringIO()
    assert cli.main(["similarity", "--measure", "npib", "--param", "k=0"], stderr=err) == 2
    assert err.getvalue() == "error: npib: k must be an integer >= 1 (got '0')\n"


def test_come_with_an_unknown_measure_is_refused_before_probing(tiny_lm):
    ctx = PlanContext(tiny_lm, "unused: never probed")
    with pytest.raises(ParamError, match=r"come: measure must be one of 'cosine', .* \(got 'nope'\)"):
        get_method("come").plan(ctx, 1, measure="nope")
    assert ctx._probe is None and ctx._ids is None


def test_a_method_that_removes_fewer_layers_than_asked_is_an_error(tiny_lm):
    @register
    class Short(Method):
        name = "exshort"
        title = paper = description = "example"

        def run(self, ctx, remove, params):
            return self.drop_plan(ctx, params, [0], {}, "only layer 0 could go")

    try:
        with pytest.raises(ExplorerError, match="exshort removed 1 layers instead of the 2 asked "
                                                "for: only layer 0 could go"):
            get_method("exshort").plan(PlanContext(tiny_lm, "unused"), 2)
    finally:
        unregister("exshort")
