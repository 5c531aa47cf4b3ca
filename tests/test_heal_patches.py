"""The training-free healing modes beyond the closed form, on tiny models: LinearPatch's matrix and
its fold against the rotation and scaling computed separately from the plain forward, the
Hadamard matrices, and Prune&Comp's folded weights against the runtime compensation."""

from __future__ import annotations

import pytest
import torch

from explorer import Variant, load_model
from explorer.core.backbone import hooks
from explorer.heal.linear_patch import PatchedLayer, hadamard
from test_heal import _plain_states
from tiny import SAMPLE_TEXT

SMALL = dict(calibration=SAMPLE_TEXT, seqlen=32, windows=24, held_out=4)


def _windows(lm, n=24, T=32, offset=0):
    ids = lm.tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[offset * T:(offset + n) * T]).view(n, T)


def _run(lm, v, mode, **kw):
    """The mode's own outcome (what `heal` would keep only if it helps), as (variant, details)."""
    from explorer.heal import get_mode
    from explorer.heal.data import HealData
    from explorer.heal.registry import HealContext
    from explorer.core.params import resolve

    m = get_mode(mode)
    p = resolve(m.params, {"seqlen": 32, "windows": 24, "held_out": 4, **kw}, mode)
    data = HealData.build(lm, SAMPLE_TEXT, seqlen=32, windows=24, held_out=4, owner="test")
    out = m.run(HealContext(lm, v, data, p), p)
    return out.variant, out.details


def _outputs(lm, v, ids, grab=None):
    """Each slot's output from the plain transformers forward (test_heal's independent states,
    without the embeddings), and what a hook on module `grab` saw."""
    states, seen = _plain_states(lm, v, ids, grab)
    return states[1:], seen


@pytest.mark.parametrize("n", [12, 20, 32, 36, 576, 640])
def test_hadamard_matrices_are_hadamard(n):
    h, is_hadamard = hadamard(n)
    assert is_hadamard and h.shape == (n, n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5))      # every entry +-1/sqrt(n)


def test_hadamard_falls_back_to_an_orthogonal_matrix():
    h, is_hadamard = hadamard(22)                      # no construction here for 22
    assert not is_hadamard and torch.allclose(h @ h.T, torch.eye(22, dtype=h.dtype), atol=1e-12)


def test_linearpatch_matrix_equals_separate_rotation_and_scaling(tiny_lm):
    lm = tiny_lm
    v = Variant.identity(lm).drop([2, 3])              # cut after slot 1: dense x_2 -> x_4
    healed, details = _run(lm, v, "linearpatch", fold="module")
    patched = healed.layer(1)
    assert isinstance(patched, PatchedLayer)
    ids = _windows(lm)
    dense, _ = _outputs(lm, Variant.identity(lm), ids)
    H = lm.config.hidden_size
    O = dense[1][:, 1:].reshape(-1, H).double()        # slot 1's output (dense layer 1)
    D = dense[3][:, 1:].reshape(-1, H).double()        # dense state after layer 3
    Hn, _ = hadamard(H)
    d = (D @ Hn).abs().mean(0) / (O @ Hn).abs().mean(0)            # the paper's scale
    # the fused matrix is the rotation, scaling and rotation back
    assert torch.allclose(patched.patch.double(), Hn @ torch.diag(d) @ Hn.T, atol=1e-5)
    # and the patched layer's output is the separate computation on every token
    got, _ = _outputs(lm, healed, ids)
    sep = ((dense[1].double() @ Hn) * d) @ Hn.T
    assert torch.allclose(got[1].double(), sep, rtol=1e-4, atol=1e-4 * float(sep.abs().max()))
    fit = details["fits"][0]
    assert fit["mse_before"] == pytest.approx(float((O - D).pow(2).sum(-1).mean()), rel=1e-4)


def test_linearpatch_fold_is_the_least_squares_map_to_the_patch_target(tiny_lm):
    from explorer.heal.linear_patch import patch_matrix

    lm = tiny_lm
    v = Variant.identity(lm).drop([2, 3])
    healed, details = _run(lm, v, "linearpatch", ridge=0.0)    # fold="mlp": a plain layer
    assert type(healed.layer(1)) is type(lm.original_layers[1])
    ids = _windows(lm)
    down = lm.original_layers[1].mlp.down_proj
    dense, M = _outputs(lm, Variant.identity(lm), ids, grab=down)
    H = lm.config.hidden_size
    O = dense[1][:, 1:].reshape(-1, H).double()
    D = dense[3][:, 1:].reshape(-1, H).double()
    M = M[:, 1:].reshape(-1, H).double()
    Hn, _ = hadamard(H)
    P = patch_matrix(Hn, (D @ Hn).abs().mean(0) / (O @ Hn).abs().mean(0))
    Y = O - M
    T = torch.linalg.lstsq(M, O @ P - Y).solution
    got, _ = _outputs(lm, healed, ids)
    expect = Y + M @ T
    assert torch.allclose(got[1][:, 1:].reshape(-1, H).double(), expect, rtol=1e-3,
                          atol=1e-4 * float(expect.abs().max()))
    fit = details["fits"][0]
    assert fit["mse_folded"] == pytest.approx(float((expect - D).pow(2).sum(-1).mean()),
                                              rel=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_prunecomp_folded_weights_equal_the_runtime_compensation(tiny_factory, family):
    from explorer.heal.data import HealData
    from explorer.heal.prune_comp import apply_compensation
    from explorer.heal.registry import HealContext

    lm = load_model(str(tiny_factory(family, num_layers=6)))
    v = Variant.identity(lm).drop([1, 4])              # two cuts: after slots 0 and 2
    data = HealData.build(lm, SAMPLE_TEXT, seqlen=32, windows=24, held_out=4, owner="test")
    folded, alphas = apply_compensation(HealContext(lm, v, data, {"skip_first": True}), v)
    assert [a["slot"] for a in alphas] == [0, 2]
    # the first gap, independently: mean norm of dense x_2 over mean norm of dense x_1
    ids = data.ids
    dense, _ = _outputs(lm, Variant.identity(lm), ids)
    gap = dense[1][:, 1:].norm(dim=-1).mean() / dense[0][:, 1:].norm(dim=-1).mean()
    assert alphas[0]["alpha"] == pytest.approx(float(gap), rel=1e-4)

    def times(a):
        return lambda m, args, out: (out[0] * a, *out[1:]) if isinstance(out, tuple) else out * a

    probe = _windows(lm, n=4, T=32, offset=30)
    with v.applied() as model, torch.no_grad(), hooks(
            *[(v.layer(x["slot"]), times(x["alpha"])) for x in alphas]):
        runtime = model(input_ids=probe).logits
    with folded.applied() as model, torch.no_grad():
        got = model(input_ids=probe).logits
    with v.applied() as model, torch.no_grad():
        plain = model(input_ids=probe).logits
    assert not torch.allclose(runtime, plain, atol=1e-3)       # the compensation does something
    assert torch.allclose(got, runtime, rtol=1e-4, atol=1e-4)


def test_prunecomp_and_linearpatch_export_plain(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    from explorer import export
    from explorer.core.errors import LayerError

    lm = tiny_lm
    v = Variant.identity(lm).drop([2, 3])
    ids = _windows(lm, n=2, T=32, offset=30)
    for mode, kw in (("prunecomp", {"then": "linearpatch"}), ("linearpatch", {})):
        healed, _ = _run(lm, v, mode, **kw)
        out = export(healed, tmp_path / mode)
        with healed.applied() as m, torch.no_grad():
            ours = m(input_ids=ids).logits
        with torch.no_grad():
            theirs = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    healed, _ = _run(lm, v, "linearpatch", fold="module")
    with pytest.raises(LayerError, match="is a PatchedLayer, not a LlamaDecoderLayer"):
        export(healed, tmp_path / "module")


def test_closed_form_follow_fits_a_map_at_the_slots_after_the_cut(tiny_lm):
    lm = tiny_lm
    v = Variant.identity(lm).drop([2, 3])              # slots 0 1 | 4 5: cut after slot 1
    healed, details = _run(lm, v, "closed-form", follow=1, ridge=0.0)
    assert [f["slot"] for f in details["fits"]] == [1, 2]
    assert all(f["mse_after"] < f["mse_before"] for f in details["fits"])
    # slot 2 (original layer 4) was fitted toward the dense x_5, from the healed slot 1's output
    ids = _windows(lm)
    down = lm.original_layers[4].mlp.down_proj
    once, _ = _run(lm, v, "closed-form", ridge=0.0)
    outs, M = _outputs(lm, once, ids, grab=down)
    dense, _ = _outputs(lm, Variant.identity(lm), ids)
    H = lm.config.hidden_size
    O = outs[2][:, 1:].reshape(-1, H).double()
    M = M[:, 1:].reshape(-1, H).double()
    D = dense[4][:, 1:].reshape(-1, H).double()
    T = torch.linalg.lstsq(M, D - O + M).solution
    got, _ = _outputs(lm, healed, ids)
    expect = O - M + M @ T
    assert torch.allclose(got[2][:, 1:].reshape(-1, H).double(), expect, rtol=1e-3,
                          atol=1e-4 * float(expect.abs().max()))
