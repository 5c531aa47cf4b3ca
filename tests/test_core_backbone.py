"""run_backbone: the one forward loop. Starting from a recorded boundary, stopping early and
recording states must reproduce the plain forward pass exactly, for every family's masks/rotary."""

from __future__ import annotations

import pytest
import torch

from explorer import Variant, load_model
from explorer.core.backbone import hooks, run_backbone
from explorer.core.errors import LayerError


def _ids(lm, B=3, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, lm.tokenizer.vocab_size if hasattr(lm.tokenizer, "vocab_size") else 200,
                         (B, T), generator=g).clamp(max=lm.config.vocab_size - 1)


def _reference_states(lm, variant, ids):
    """Independent computation: output_hidden_states of the plain model (entries 0..L-1 are the
    inputs of each layer; the final entry is after the norm), plus the model's final hidden."""
    with variant.applied() as model, torch.no_grad():
        out = lm.arch.base_model(model)(input_ids=ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states, out.last_hidden_state


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_record_start_and_stop_match_the_plain_pass(tiny_factory, family):
    lm = load_model(str(tiny_factory(family, num_layers=5)))
    v = Variant.identity(lm).drop([1])          # 4 slots, renumbered
    ids = _ids(lm)
    ref, final = _reference_states(lm, v, ids)
    L = v.num_layers
    got = {b: [] for b in range(L + 1)}
    hidden = []
    for batch in run_backbone(lm, ids, variant=v, record=range(L + 1), final_norm=True,
                              batch_size=2):
        for b, h in batch.states.items():
            got[b].append(h.clone())
        hidden.append(batch.hidden.clone())
    states = {b: torch.cat(x) for b, x in got.items()}
    for b in range(L):                         # hidden_states[b] = input of layer b
        torch.testing.assert_close(states[b], ref[b], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(hidden), final, rtol=0, atol=0)

    # From boundary 2, given its states, to the end: the same final states (to float tolerance).
    from_2 = torch.cat([b.hidden for b in run_backbone(lm, ids, variant=v, start=2,
                                                        start_states=states[2],
                                                        final_norm=True)])
    torch.testing.assert_close(from_2, final, rtol=1e-5, atol=1e-5)

    # Stop early at boundary 3: equals the recorded boundary 3; start == stop returns the input.
    to_3 = torch.cat([b.hidden for b in run_backbone(lm, ids, variant=v, stop=3)])
    torch.testing.assert_close(to_3, states[3], rtol=0, atol=0)
    same = torch.cat([b.hidden for b in run_backbone(lm, ids, variant=v, start=2, stop=2,
                                                      start_states=states[2])])
    torch.testing.assert_close(same, states[2])
    # The model is back to its own layers afterwards.
    assert all(not type(m).__name__.startswith("_Pass") for m in lm.arch.layer_list(lm.model))


def test_captured_call_runs_a_layer_standalone(tiny_factory):
    lm = load_model(str(tiny_factory("gemma3_text", num_layers=4)))
    ids = _ids(lm)
    v = Variant.identity(lm)
    batches = list(run_backbone(lm, ids, stop=2, record=(2,)))
    states2 = torch.cat([x.states[2] for x in batches])
    for b in run_backbone(lm, ids, start=2, start_states=lambda r: states2[r], stop=3,
                          record=(3,), capture_call=True):
        y = b.call.run(v.layer(2), states2[b.rows])
        torch.testing.assert_close(y, b.states[3], rtol=0, atol=0)


def test_hooks_are_removed_and_errors_are_clear(tiny_lm):
    ids = _ids(tiny_lm, B=2, T=8)
    seen = []
    layer = tiny_lm.original_layers[0]
    before = dict(layer._forward_hooks), dict(layer._forward_pre_hooks)
    with hooks((layer, lambda m, a, o: seen.append(1))):
        list(run_backbone(tiny_lm, ids))
    list(run_backbone(tiny_lm, ids))
    assert len(seen) == 1     # transformers may keep hooks of its own: ours must all be gone
    assert (dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) == before
    with pytest.raises(LayerError, match="start_states"):
        list(run_backbone(tiny_lm, ids, start=2))
    with pytest.raises(LayerError, match="final_norm"):
        list(run_backbone(tiny_lm, ids, stop=2, final_norm=True))
    with pytest.raises(LayerError, match="0 <= start"):
        list(run_backbone(tiny_lm, ids, stop=99))


def test_grad_flows_into_a_trained_layer(tiny_lm):
    import copy

    ids = _ids(tiny_lm, B=2, T=8)
    new = copy.deepcopy(tiny_lm.original_layers[3])
    v = Variant.identity(tiny_lm).replace([3], new, "copy")
    for p in new.parameters():
        p.requires_grad_(True)
    for b in run_backbone(tiny_lm, ids, variant=v, final_norm=True, grad=True):
        b.hidden.pow(2).mean().backward()
    assert all(p.grad is not None for p in new.parameters())
    assert all(p.grad is None for p in tiny_lm.original_layers[0].parameters())
