"""Variants: applying / reverting a layer edit against reloading the model, and their memory.

Ours: `Variant.merge` / `Variant.drop` build an edited layer list once; `with v.applied():` swaps
the model's `nn.ModuleList` for it (renumbering `layer_idx`, fixing the config) and the exit puts
the original back. No weight is copied or written, so both directions take milliseconds at most,
whatever the model size (targets: apply or revert < 100 ms).

Baseline: the naive way to get the original model back after an in-place edit, reloading it
(`load_model` of the converted safetensors folder already in the cache, the fastest reload there
is), and the naive way to keep an edited model next to the original, a full `copy.deepcopy`.

Memory target: a variant costs at most the bytes of the layers it changes. A merge of two layers
holds one new layer (the merged weights); a drop holds nothing.
"""

from __future__ import annotations

import copy
import time

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "variant"


def _apply_revert_seconds(v, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of entering and of leaving `v.applied()`, `reps` times each."""
    enter, leave = [], []
    for _ in range(reps + 1):                      # the first round is the warm-up
        ctx = v.applied()
        t0 = time.perf_counter()
        ctx.__enter__()
        t1 = time.perf_counter()
        ctx.__exit__(None, None, None)
        t2 = time.perf_counter()
        enter.append(t1 - t0)
        leave.append(t2 - t1)
    return enter[1:], leave[1:]


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None) -> list[dict]:
    """Apply / revert / memory rows for `model` (or a ready `lm`, as the smoke test passes)."""
    from explorer import Variant, load_model

    if lm is None:
        lm = load_model(model)
    L = lm.num_layers
    a, b = L // 2 - 1, L // 2                      # two middle layers (14, 15 of SmolLM2's 30)
    t0 = time.perf_counter()
    merged = Variant.identity(lm).merge([a, b], [0.5, 0.5])
    build_s = time.perf_counter() - t0
    dropped = Variant.identity(lm).drop([a])
    reps = 20 if quick else 100

    # Baseline: reload from the cached folder (what an app without variants does to undo an edit).
    reloads = []
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter()
        again = load_model(lm.source, device=str(lm.device), dtype=lm.dtype)
        reloads.append(time.perf_counter() - t0)
        del again
    reload_s = common.median(reloads)

    rows = []
    for label, v in (("merge(%d,%d)" % (a, b), merged), ("drop %d" % a, dropped)):
        enter, leave = _apply_revert_seconds(v, reps)
        for what, xs in (("apply", enter), ("revert", leave)):
            ms = common.median(xs) * 1e3
            rows.append(common.row(
                BENCH, f"{what} {label}", ms, reload_s * 1e3, "ms", higher_is_better=False,
                note=f"median of {reps}, max {max(xs) * 1e3:.2f} ms; baseline: load_model of the "
                     f"cached folder ({len(reloads)} run(s)); target < 100 ms: "
                     f"{'met' if ms < 100 else 'NOT met'}"))
    rows.append(common.row(BENCH, f"build merge({a},{b})", build_s * 1e3, reload_s * 1e3, "ms",
                           higher_is_better=False,
                           note="Variant.merge: deep copy of one layer + weighted sum, once"))

    # Memory: extra bytes of the variant against a full copy of the model.
    t0 = time.perf_counter()
    clone = copy.deepcopy(lm.model)
    copy_s = time.perf_counter() - t0
    full = common.tensor_bytes(clone)
    del clone
    layers = lm.original_layers if hasattr(lm, "original_layers") else \
        lm.arch.layer_list(lm.model)
    changed = common.tensor_bytes(layers[a]) + common.tensor_bytes(layers[b])
    for label, v, changed_bytes in (("merge(%d,%d)" % (a, b), merged, changed),
                                    ("drop %d" % a, dropped, common.tensor_bytes(layers[a]))):
        extra = v.extra_bytes()
        rows.append(common.row(
            BENCH, f"memory {label}", extra / 2**20, full / 2**20, "MiB", higher_is_better=False,
            note=f"Variant.extra_bytes vs deepcopy of the model ({copy_s:.2f} s); layers changed "
                 f"hold {changed_bytes / 2**20:.2f} MiB; target extra <= changed: "
                 f"{'met' if extra <= changed_bytes else 'NOT met'}"))
    return rows


if __name__ == "__main__":
    common.main(run)
