"""`tail-finetune`: train the last k layers, the baseline of "Reassessing Layer Pruning in LLMs"
(Lu et al., arXiv 2411.15558): after removing the last 25% of the layers, fine-tuning only
`lm_head` and the last three layers beat LoRA and the elaborate selection metrics on Llama-3.

Here the last `k` slots of the variant are trained as whole layers, and with `head` (the
default, as the paper) the vocabulary head too, after any plan (it pairs with the tail plan, whose
cut is the last slot, and with every other), by the distillation loop (`distill.Distill.distill`):
`objective` "kl" matches the dense model's next-token distribution (its top-k, as `distill`), "ce"
is the paper's plain next-token cross-entropy on the healing text. `init="closed-form"` folds
ReplaceMe's map at the cuts first. The final norm is not trained.

The head is trained as the variant's head slot (`Variant.head`): a copy owning its weight
(`core.new_layers.head_copy`), so the loaded model's head, which SmolLM2 and Gemma tie to the input
embedding, stays bit-identical; the export writes it as an untied `lm_head.weight`.

Memory: the head is V x H values (SmolLM2: 49152 x 576 = 28M, 113 MB in float32; Gemma 3 270M:
262144 x 640 = 168M, 671 MB). Training it with Adam holds about six tensors of that size: the
copy, its gradient (summed over chunks of positions, plus one chunk's), Adam's two moments and
keep-best's saved copy (0.7 GB on SmolLM2, 4 GB on Gemma 3 in float32), beside the layers' own.
`head=False` trains the layers only and shares the loaded head.

Learning rate: the head gets its own, `head_lr` (default 1e-5, a tenth of the layers' 1e-4).
Adam moves every entry of the head by about the learning rate per step whatever its gradient's
size, also the rows of tokens the healing text hardly contains; a small rate keeps those rows,
the input embeddings' twins, near where pretraining left them.

Example:
    >>> r = heal(compress(lm, "tail", remove=6).variant, "tail-finetune", k=3, seconds=240)
"""

from __future__ import annotations

from explorer.core.errors import ParamError
from explorer.core.params import Param
from explorer.heal.closed_form import CLOSED_FORM_DEFAULTS, apply_closed_form, fit_notes
from explorer.heal.distill import Distill
from explorer.heal.registry import (COMMON_PARAMS, HealContext, HealMode, HealOutcome,
                                    register_mode, with_defaults)
from explorer.heal.train import KEEP_BEST_PARAMS



@register_mode
class TailFinetune(HealMode):
    name = "tail-finetune"
    title = "Fine-tune the last k layers (Reassessing Layer Pruning)"
    paper = "Reassessing Layer Pruning in LLMs: New Insights and Methods, arXiv 2411.15558"
    description = ("Trains only the last k layers of the compressed model (whole layers) and "
                   "its vocabulary head (lm_head) so that its next-token distribution matches "
                   "the dense model's (or by plain next-token cross-entropy): the cheap, strong "
                   "baseline of the paper, for the tail plan and any other. The trained head "
                   "is the variant's own (the loaded model is never written).")
    trains = True
    default_steps = 200
    params = with_defaults(COMMON_PARAMS, windows=256) + (
        Param("k", int, 3, "last layers trained (the paper: 3)", min=1, max=1000),
        Param("head", bool, True, "train the vocabulary head (lm_head) with the last k layers, "
              "as the paper (Adam on it holds ~6 copies of the head: 0.7 GB on SmolLM2); off: "
              "the layers only, the loaded head shared",
              label="Train the head (lm_head)"),
        Param("objective", str, "kl", "kl: KL to the dense model's next-token distribution; ce: "
              "next-token cross-entropy on the healing text (the paper's fine-tune)",
              choices=("kl", "ce")),
        Param("init", str, "none", "closed-form: fold ReplaceMe's map at the cuts first",
              choices=("none", "closed-form")),
        Param("top_k", int, 64, "dense next-token log-probabilities kept per position "
              "(objective kl)", min=1, max=4096),
        Param("lr", float, 1e-4, "Adam learning rate of the layers (cosine-decayed)", min=0,
              max=1),
        Param("head_lr", float, 1e-5, "Adam learning rate of the head (same schedule)", min=0,
              max=1, label="Learning rate of the head"),
        Param("batch", int, 4, "windows per step", min=1, max=4096),
        Param("schedule_steps", int, None, "length of the learning-rate schedule (default: the "
              "step budget, or estimated from the first steps under a time budget)", min=1,
              max=10_000_000, optional=True),
    ) + KEEP_BEST_PARAMS
    examples = ({}, {"head": False, "objective": "ce"})

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        n = ctx.variant.num_layers
        if params["k"] > n:
            raise ParamError(f"heal mode 'tail-finetune': k={params['k']} layers to train, but "
                             f"the variant has only {n}: use k <= {n}")
        v, notes, details = ctx.variant, "", {}
        if params["init"] == "closed-form":
            v, details["fits"] = apply_closed_form(ctx, v, CLOSED_FORM_DEFAULTS, "cf")
            notes = fit_notes(details["fits"]) + ". "
        dp = {**params, "span": "tail", "train": "layers", "rank": 1}
        what = f"last {params['k']}" + (" + head" if params["head"] else "")
        v, done, total, history = Distill().distill(
            ctx, v, dp, ctx.steps, ctx.seconds,
            label=f"tail-finetune ({what}, {params['objective']})")
        notes += f"trained the last {params['k']} layers" + \
            (" and the vocabulary head" if params["head"] else "") + f", kept {done} steps" + (
            f", final loss {history[-1]['loss']:.4g}" if history else "")
        return HealOutcome(v, steps=done, seconds=history[-1]["seconds"] if history else 0.0,
                           history=history, details=details, notes=notes,
                           replay={"schedule_steps": total})
