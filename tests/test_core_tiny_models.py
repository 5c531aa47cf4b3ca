import pytest
import torch

from tiny import CONFIGS


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_every_family_loads_probes_and_edits(tiny_factory, model_type, sample_text):
    """Each supported family: load from disk, probe all layers, drop one, perplexity is finite."""
    from explorer import Variant, load_model, perplexity, probe

    lm = load_model(str(tiny_factory(model_type, num_layers=4)))
    assert lm.num_layers == 4 and lm.arch.family == model_type and lm.self_check.passed
    pr = probe(lm, sample_text, seqlen=32, num_samples=3)
    T = 32 + int(lm.arch.needs_bos)  # Gemma puts BOS in front of each window
    assert pr.input_ids.shape == (3, T)
    assert pr.states.shape == (5, 3 * (T - 1), lm.config.hidden_size)
    before = {k: t.clone() for k, t in lm.model.state_dict().items()}
    v = Variant.identity(lm).drop([1])
    r = perplexity(lm, sample_text, variant=v, seqlen=32, max_tokens=256)
    assert torch.isfinite(torch.tensor(r.ppl)) and r.ppl > 1
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert lm.config.num_hidden_layers == 4
