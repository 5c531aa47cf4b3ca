"""The methods registry: names, parameters, validation, ratio -> layers, and the prune methods that
only rank (drop, tail, shortgpt, angular) checked on a probe built by hand."""

import math

import pytest
import torch

from explorer import ExplorerError, LayerError, Variant
from explorer.plan import METHODS, PlanContext, compress, get_method, layers_for_ratio, list_methods
from explorer.probe.probe import ProbeResult



def declared_methods() -> set[str]:
    """The names of the `@register`ed classes in explorer/plan/*.py, read from the source (not
    from the registry, which only holds what `explorer/plan/__init__.py` imports)."""
    import ast
    from pathlib import Path

    import explorer.plan

    names = set()
    for path in Path(explorer.plan.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", None) == "register" for d in node.decorator_list):
                names |= {st.value.value for st in node.body if isinstance(st, ast.Assign)
                          and [getattr(t, "id", None) for t in st.targets] == ["name"]
                          and isinstance(st.value, ast.Constant)}
    return names


def test_registry_lists_every_method_with_its_documentation():
    # every method module is imported (registered), in the order of methods/__init__.py
    assert {m.name for m in list_methods()} == declared_methods()
    assert len(declared_methods()) >= 10              # the scan works
    assert [m.name for m in list_methods()][:2] == ["drop", "tail"]
    for m in list_methods():
        assert m.title and m.paper and len(m.description) > 100
        for p in m.params:                            # each parameter declared with its help
            assert p.help and p.type in (int, float, str, bool, list, dict), (m.name, p.name)
            assert m.resolve({})[p.name] == p.default
    with pytest.raises(ExplorerError, match="known methods: drop, tail"):
        get_method("nope")
    assert get_method("laco") is METHODS["laco"]


def test_parameters_and_remove_are_validated(tiny_lm, sample_text):
    kw = dict(calibration=sample_text, seqlen=32, num_samples=2)
    with pytest.raises(ExplorerError, match="no parameter bogus"):
        compress(tiny_lm, "tail", remove=1, bogus=3, **kw)
    for bad in (0, 6, -1, 2.5, True):
        with pytest.raises(LayerError, match="from 1 to 5"):
            compress(tiny_lm, "tail", remove=bad, **kw)
    with pytest.raises(LayerError, match="not both"):
        compress(tiny_lm, "tail", remove=1, ratio=0.1, **kw)
    with pytest.raises(LayerError, match="needs remove"):
        compress(tiny_lm, "tail", **kw)
    with pytest.raises(LayerError, match="3 layers named but remove=2"):
        compress(tiny_lm, "drop", remove=2, layers=[1, 2, 3], **kw)


def test_layers_for_ratio_counts_parameters(tiny_lm):
    layers = tiny_lm.arch.layer_list(tiny_lm.model)
    per = sum(p.numel() for p in layers.parameters()) / len(layers)
    total = tiny_lm.num_parameters
    for ratio in (0.05, 0.2, 0.4):
        assert layers_for_ratio(tiny_lm, ratio) == max(1, min(5, round(ratio * total / per)))
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(LayerError):
            layers_for_ratio(tiny_lm, bad)


def rotation_probe(lm, angles: list[float], tokens: int = 12, samples: int = 3) -> ProbeResult:
    """A probe whose tokens live in one plane and layer i turns every token by angles[i] radians,
    so cos(x_a, x_b) = cos(sum of angles a..b-1) exactly, for every token and the last one."""
    H = lm.config.hidden_size
    g = torch.Generator().manual_seed(0)
    phase = torch.rand(samples * tokens, generator=g) * 6.28
    radius = 1 + torch.rand(samples * tokens, generator=g)
    cum = [0.0]
    for a in angles:
        cum.append(cum[-1] + a)
    states = torch.zeros(len(cum), samples * tokens, H)
    for k, c in enumerate(cum):
        states[k, :, 0] = radius * torch.cos(phase + c)
        states[k, :, 1] = radius * torch.sin(phase + c)
    last = states[:, tokens - 1::tokens].clone()                      # (L+1, B, H)
    return ProbeResult(states=states, last=last,
                       sample_of=torch.arange(samples).repeat_interleave(tokens),
                       input_ids=torch.zeros(samples, tokens + 1, dtype=torch.long),
                       skip_first=True, seconds=0.0)


ANGLES = [0.5, 0.1, 0.25, 0.3, 0.12, 0.5]     # tiny_lm has 6 layers


def ctx_with(lm, pr) -> PlanContext:
    ctx = PlanContext(lm, "unused calibration text")
    ctx._probe = pr
    return ctx


def test_shortgpt_drops_the_lowest_block_influence_layers(tiny_lm):
    plan = get_method("shortgpt").plan(ctx_with(tiny_lm, rotation_probe(tiny_lm, ANGLES)), 2)
    assert plan.removed == [1, 4] and plan.merged == []                # BI = 1 - cos(angle)
    assert plan.scores["bi"] == pytest.approx([1 - math.cos(a) for a in ANGLES], abs=1e-5)
    assert plan.variant.slots == (0, 2, 3, 5)


def test_angular_drops_the_closest_contiguous_block(tiny_lm):
    plan = get_method("angular").plan(ctx_with(tiny_lm, rotation_probe(tiny_lm, ANGLES)), 2)
    # d(i, i+2) = (angle_i + angle_{i+1}) / pi: 0.6, 0.35, 0.55, 0.42, 0.62 -> block [1, 3)
    assert plan.removed == [1, 2]
    expected = [(ANGLES[i] + ANGLES[i + 1]) / math.pi for i in range(5)]
    assert plan.scores["angular"] == pytest.approx(expected, abs=1e-4)
    plan3 = get_method("angular").plan(ctx_with(tiny_lm, rotation_probe(tiny_lm, ANGLES)), 3)
    assert plan3.removed == [1, 2, 3]                                  # 0.85, 0.65, 0.67, 0.92


def test_tail_and_drop_need_no_data(tiny_lm):
    ctx = PlanContext(tiny_lm, "unused")
    assert get_method("tail").plan(ctx, 2).removed == [3, 4]            # final layer 5 kept
    assert get_method("tail").plan(ctx, 5).removed == [0, 1, 2, 3, 4]
    plan = get_method("drop").plan(ctx, 2, layers=[4, 0])
    assert plan.removed == [0, 4] and plan.variant.slots == (1, 2, 3, 5)
    assert Variant.identity(tiny_lm).is_identity()
