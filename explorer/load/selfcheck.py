"""The self-check at load: the explorer's own pass must give the model's own logits.

Every figure the explorer shows comes from its own pass over the decoder stack (the base
model's embedding and mask code, then each slot called directly, then the final norm and the
head with the family's logit rule: `explorer.core.backbone`, `evaluate.nll.final_logits`). A family
whose base model does something that pass does not reproduce (work between layers, a scale
after the last norm that the config does not name) would give a silently wrong perplexity, so
at load both run on a short probe batch and must agree within `tolerance`; otherwise loading is
refused in one line that names the family and the difference.

The same run finds what can only be seen while the model runs (`observe`): which of the base
model's modules its forward calls after the last layer (the final norm, OPT's output projection)
and whether a layer returns a tuple.

Example:
    >>> lm = load_model("smollm2-135m")
    >>> lm.self_check.describe()
    'logits equal to the model's own: max |difference| 0 (tolerance 0.0034), 1 x 12 tokens'
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from explorer.load.arch import Architecture
from explorer.core.errors import ModelLoadError, named_line

PROBE_SHAPE = (1, 12)          # windows x tokens of the probe batch (two forwards of it: ~0.1 s
#                                 on 2 CPU cores for the 135M default, bench/bench_selfcheck.py)
# Allowed max |difference| of the logits, relative to max(1, max |logit|): float32 agrees to
# rounding; half precision (bf16 rounds to 1 part in 256) leaves more room.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 3e-2


@dataclass(frozen=True)
class SelfCheck:
    """What the self-check found: the largest logit difference and the bound it had to meet."""

    ran: bool
    max_diff: float = 0.0
    bound: float = 0.0
    tokens: tuple[int, int] = PROBE_SHAPE
    seconds: float = 0.0
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.ran and self.max_diff <= self.bound

    def describe(self) -> str:
        if not self.ran:
            return f"self-check not run: {self.note}"
        b, t = self.tokens
        return (f"logits {'equal to' if self.passed else 'DIFFER from'} the model's own: max "
                f"|difference| {self.max_diff:.3g} (tolerance {self.bound:.3g}), {b} x {t} "
                "tokens")

    def to_dict(self) -> dict:
        return {"ran": self.ran, "passed": self.passed, "max_diff": self.max_diff,
                "tolerance": self.bound, "tokens": list(self.tokens),
                "seconds": round(self.seconds, 4), "note": self.note}


def probe_ids(lm, shape: tuple[int, int] = PROBE_SHAPE) -> torch.Tensor:
    """A fixed batch of token ids (b, T) on the model's device: seeded, within the head's
    vocabulary, away from the first ids (specials)."""
    vocab = int(lm.arch.lm_head(lm.model).weight.shape[0])
    g = torch.Generator().manual_seed(1234)
    low = min(4, max(vocab - 1, 0))
    return torch.randint(low, vocab, shape, generator=g).to(lm.device)


def _forward(module: nn.Module, ids: torch.Tensor):
    try:
        return module(input_ids=ids, use_cache=False)
    except TypeError:               # a forward without use_cache
        return module(input_ids=ids)


@torch.no_grad()
def observe(model: nn.Module, arch: Architecture, ids: torch.Tensor
            ) -> tuple[Architecture, torch.Tensor]:
    """Run the whole model on `ids` (b, T) with hooks: returns the adapter with the tail the
    base model really applies after its last layer and whether layers return tuples, and the
    model's own logits (b, T, V) float32."""
    base = arch.base_model(model)
    layers = arch.layer_list(model)
    layers_name = arch.layers.rpartition(".")[2]
    n = len(layers)
    state = {"after_last": 0, "tuple": False}
    order: list[str] = []

    def on_layer(i: int):
        def hook(module, args, out):
            if i == 0:
                state["tuple"] = isinstance(out, tuple)
            if i == n - 1:
                state["after_last"] += 1
        return hook

    def on_child(name: str):
        def hook(module, args, out):
            if state["after_last"] == 1 and name != layers_name:
                order.append(name)
        return hook

    handles = [layers[i].register_forward_hook(on_layer(i)) for i in (0, n - 1)]
    handles += [m.register_forward_hook(on_child(name)) for name, m in base.named_children()]
    try:
        logits = _forward(model, ids).logits.float()
    finally:
        for h in handles:
            h.remove()
    prefix = arch.base + "." if arch.base else ""
    found = replace(arch, final_norm=tuple(prefix + name for name in order),
                    layer_returns_tuple=state["tuple"])
    return found, logits


def tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    rel = TOLERANCE.get(dtype, HALF_TOLERANCE)
    finite = reference[torch.isfinite(reference)]
    return rel * max(1.0, float(finite.abs().max()) if finite.numel() else 1.0)


def runs_whole(lm) -> bool:
    """Whether the whole model can run its own forward here (not with layers streamed)."""
    return lm.weights is None or lm.weights.runs_whole


def self_check(lm) -> "tuple[Architecture, SelfCheck]":
    """Compare the explorer's logits with the model's own on the probe batch; returns the
    adapter as observed and the check. Raises only when the model's own forward fails;
    `require` turns a failed comparison into the refusal."""
    from explorer.core.variant import Variant

    if not runs_whole(lm):
        return lm.arch, SelfCheck(ran=False, note=f"its layers stay in {lm.weights.where}; the "
                                                  "model's own forward cannot run here")
    t0 = time.perf_counter()
    ids = probe_ids(lm)
    try:
        arch, want = observe(lm.model, lm.arch, ids)
    except Exception as exc:
        raise ModelLoadError(
            f"the {lm.arch.family} model's own forward fails on a probe batch of "
            f"{ids.shape[0]} x {ids.shape[1]} tokens ({named_line(exc)}): check its config; "
            "nothing was measured") from None
    lm.arch = arch
    got = variant_logits(Variant.identity(lm), ids)
    diff, finite = difference(got, want)
    note = "" if finite else ("the model's own logits hold NaN or inf on the probe batch "
                              "(the explorer's too, at the same places)")
    return arch, SelfCheck(ran=True, max_diff=diff, bound=tolerance(lm.dtype, want),
                           tokens=tuple(ids.shape), seconds=time.perf_counter() - t0,
                           note=note)


def difference(got: torch.Tensor, want: torch.Tensor) -> tuple[float, bool]:
    """(max |got - want| over the finite logits, whether all of `want` is finite); inf when the
    shapes or the places of NaN and inf differ (a broken model is said so later, by the
    measurement that meets its NaN: evaluate.NonFiniteError)."""
    if got.shape != want.shape:
        return float("inf"), True
    ok = torch.isfinite(want)
    if not torch.equal(ok, torch.isfinite(got)):
        return float("inf"), bool(ok.all())
    if not ok.any():
        return 0.0, False
    return float((got - want)[ok].abs().max()), bool(ok.all())


def require(lm) -> None:
    """Run the self-check and refuse the model in one line when it fails."""
    try:
        arch, check = self_check(lm)
    except ModelLoadError:
        raise
    except Exception as exc:        # the explorer's pass cannot even run this family
        raise ModelLoadError(
            f"the {lm.arch.family} family fails the self-check at load: the explorer's pass "
            f"over its layers stops with {named_line(exc)}; it cannot be measured here "
            "(please report the model id)") from None
    lm.arch, lm.self_check = arch, check
    if check.ran and not check.passed:
        raise ModelLoadError(
            f"the {lm.arch.family} family fails the self-check at load: the explorer's logits "
            f"differ from the model's own by up to {check.max_diff:.3g} (tolerance "
            f"{check.bound:.3g}), so every figure would be wrong; it cannot be measured here "
            "(please report the model id)")


# -- the self-check at export --------------------------------------------------------------------

EXPORT_CHECK_FILE = "layer_explorer_check.json"


def variant_logits(variant, ids: torch.Tensor) -> torch.Tensor:
    """The explorer's logits for `variant` on ids (b, T): (b, T, V) float32."""
    from explorer.core.backbone import run_backbone
    from explorer.evaluate.nll import final_logits

    (batch,) = list(run_backbone(variant.lm, ids, variant=variant, final_norm=True,
                                 batch_size=ids.shape[0]))
    b, T, H = batch.hidden.shape
    return final_logits(variant.lm, batch.hidden.reshape(b * T, H),
                        head=variant.head_module()).view(b, T, -1)


def fits_twice(lm) -> bool:
    """Whether a second copy of the model fits in free memory (the reload of an export)."""
    import psutil

    if lm.device.type != "cpu":
        free = torch.cuda.mem_get_info(lm.device)[0] if lm.device.type == "cuda" else 0
    else:
        free = psutil.virtual_memory().available
    return free > 1.5 * lm._parameter_bytes


@torch.no_grad()
def check_export(variant, folder) -> dict:
    """Reload the transformers folder written for `variant` with plain transformers and compare
    its logits with the variant's on the probe batch. Raises a one-line LayerError when the
    reload reports missing or unexpected weights or its logits differ; returns what was checked
    (also for a check that could not run: a model that does not fit twice, layers streamed)."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from explorer.core.errors import LayerError

    lm = variant.lm
    folder = Path(folder)
    if not runs_whole(lm) or not fits_twice(lm):
        out = {"checked": False, "why": "the model does not fit in memory twice, so its "
               "reload was not compared"}
    else:
        t0 = time.perf_counter()
        try:
            back, info = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=lm.dtype, output_loading_info=True)
        except Exception as exc:
            raise LayerError(f"the exported folder does not reload with transformers "
                             f"({named_line(exc)}): the {lm.arch.family} config cannot "
                             "describe these layers, so it was not saved") from None
        bad = {k: sorted(v)[:3] for k, v in info.items()
               if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            key, names = next(iter(bad.items()))
            raise LayerError(f"the exported folder does not reload as this variant: transformers "
                             f"reports {key.replace('_', ' ')} ({', '.join(map(str, names))}); "
                             f"the {lm.arch.family} config cannot describe these layers")
        back.to(lm.device).eval()
        ids = probe_ids(lm)
        try:
            want = variant_logits(variant, ids)
        except Exception as exc:
            raise LayerError(f"this {lm.arch.family} variant does not run "
                             f"({named_line(exc)}): its layers cannot be used without the "
                             "ones it drops, so it was not saved") from None
        try:
            got = _forward(back, ids).logits.float()
        except Exception as exc:
            raise LayerError(f"the exported folder reloads but does not run "
                             f"({named_line(exc)}): the {lm.arch.family} config cannot "
                             "describe these layers, so it was not saved") from None
        diff, _ = difference(got, want)
        bound = tolerance(lm.dtype, want)
        del back
        if not diff <= bound:
            raise LayerError(f"the exported folder reloads with logits that differ from this "
                             f"variant's by up to {diff:.3g} (tolerance {bound:.3g}): the "
                             f"{lm.arch.family} config cannot describe these layers, so it was "
                             "not saved")
        out = {"checked": True, "max_diff": diff, "tolerance": bound,
               "tokens": list(ids.shape), "seconds": round(time.perf_counter() - t0, 3)}
    (folder / EXPORT_CHECK_FILE).write_text(json.dumps(out, indent=1) + "\n")
    return out
