"""`tail-finetune`: train the last k layers, the baseline of "Reassessing Layer Pruning in LLMs"
(Lu et al., arXiv 2411.15558): after removing the last 25% of the layers, fine-tuning only
`lm_head` and the last three layers beat LoRA and the elaborate selection metrics on Llama-3.

Here the last `k` slots of the variant are trained as whole layers, after any plan (it pairs with
the tail plan, whose cut is the last slot, and with every other), by the distillation loop
(`distill.Distill.distill`): `objective` "kl" matches the dense model's next-token distribution
(its top-k, as `distill`), "ce" is the paper's plain next-token cross-entropy on the healing text.
`init="closed-form"` folds ReplaceMe's map at the cuts first.

Not trained: `lm_head` (and the final norm). A variant holds decoder layers only (the head is
the loaded model's, shared by every variant), so a trained head would need a head slot in
`Variant`, its export and every evaluation path; docs/healing.md says so.

Example:
    >>> r = heal(compress(lm, "tail", remove=6).variant, "tail-finetune", k=3, seconds=240)
"""

from __future__ import annotations

from ..errors import ParamError
from ..params import Param
from .closed_form import ClosedForm, apply_closed_form, fit_notes
from .distill import Distill
from .registry import COMMON_PARAMS, HealContext, HealMode, HealOutcome, register_mode, \
    with_defaults
from .train import KEEP_BEST_PARAMS

CF = {p.name: p.default for p in ClosedForm.params}


@register_mode
class TailFinetune(HealMode):
    name = "tail-finetune"
    title = "Fine-tune the last k layers (Reassessing Layer Pruning)"
    paper = "Reassessing Layer Pruning in LLMs: New Insights and Methods, arXiv 2411.15558"
    description = ("Trains only the last k layers of the compressed model (whole layers) so "
                   "that its next-token distribution matches the dense model's (or by plain "
                   "next-token cross-entropy): the cheap, strong baseline of the paper, for the "
                   "tail plan and any other.")
    trains = True
    default_steps = 200
    params = with_defaults(COMMON_PARAMS, windows=256) + (
        Param("k", int, 3, "last layers trained (the paper: 3)", min=1, max=1000),
        Param("objective", str, "kl", "kl: KL to the dense model's next-token distribution; ce: "
              "next-token cross-entropy on the healing text (the paper's fine-tune)",
              choices=("kl", "ce")),
        Param("init", str, "none", "closed-form: fold ReplaceMe's map at the cuts first",
              choices=("none", "closed-form")),
        Param("top_k", int, 64, "dense next-token log-probabilities kept per position "
              "(objective kl)", min=1, max=4096),
        Param("lr", float, 1e-4, "Adam learning rate (cosine-decayed)", min=0, max=1),
        Param("batch", int, 4, "windows per step", min=1, max=4096),
        Param("schedule_steps", int, None, "length of the learning-rate schedule (default: the "
              "step budget, or estimated from the first steps under a time budget)", min=1,
              max=10_000_000, optional=True),
    ) + KEEP_BEST_PARAMS

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        n = ctx.variant.num_layers
        if params["k"] > n:
            raise ParamError(f"heal mode 'tail-finetune': k={params['k']} layers to train, but "
                             f"the variant has only {n}: use k <= {n}")
        v, notes, details = ctx.variant, "", {}
        if params["init"] == "closed-form":
            v, details["fits"] = apply_closed_form(ctx, v, CF, "cf")
            notes = fit_notes(details["fits"]) + ". "
        dp = {**params, "span": "tail", "train": "layers", "rank": 1}
        v, done, total, history = Distill().distill(
            ctx, v, dp, ctx.steps, ctx.seconds,
            label=f"tail-finetune (last {params['k']}, {params['objective']})")
        notes += f"trained the last {params['k']} layers, kept {done} steps" + (
            f", final loss {history[-1]['loss']:.4g}" if history else "")
        return HealOutcome(v, steps=done, seconds=history[-1]["seconds"] if history else 0.0,
                           history=history, details=details, notes=notes,
                           replay={"schedule_steps": total})
