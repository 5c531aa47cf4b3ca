"""A seeded run draws from its own torch.Generator: it neither reseeds nor reads the global torch
RNG, so two sessions' seeded runs in worker threads cannot interleave (issue 33)."""

from __future__ import annotations

import torch

from explorer import Variant
from tiny import SAMPLE_TEXT


def test_seeded_runs_leave_the_global_rng_alone_and_do_not_depend_on_it(tiny_lm):
    from explorer.heal import heal
    from explorer.plan import compress

    def runs():
        h = heal(Variant.identity(tiny_lm).drop([2]), "layerwise", steps=3, seed=5,
                 calibration=SAMPLE_TEXT, seqlen=16, windows=40, held_out=2)
        c = heal(Variant.identity(tiny_lm).drop([2]), "closed-form", seed=5, objective="cosine",
                 cosine_steps=3, calibration=SAMPLE_TEXT, seqlen=16, windows=40, held_out=2)
        p = compress(tiny_lm, "come", remove=1, seed=5, calibration=SAMPLE_TEXT, seqlen=16,
                     num_samples=6, recover_steps=2)
        sd = lambda v: [t.clone() for k in range(v.num_layers)          # noqa: E731
                        for t in v.layer(k).state_dict().values()]
        return [sd(h.variant), sd(c.variant), sd(p.variant)]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = runs()
    assert torch.equal(torch.get_rng_state(), state)         # not reseeded, not drawn from
    torch.manual_seed(456)                                   # another session's seed meanwhile
    b = runs()
    for xa, xb in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(xa, xb))
