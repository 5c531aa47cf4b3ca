"""What the checks of issue 29 cost at load: the self-check (the explorer's pass and the model's
own forward on a 2 x 16 probe batch, compared) and finding the adapter on an empty (meta) model
before any weight is read, each against the whole load of the default model, measured in the
same run. Target: the self-check at most 5% of the load.

The baseline is the load itself (`load_model`, everything included); "ours" is the added part.
"""

from __future__ import annotations

import time

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "selfcheck"


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None) -> list[dict]:
    from explorer import load_model
    from explorer.load.arch import adapter_for
    from explorer.load.place import _empty_model
    from explorer.load.selfcheck import self_check

    reps = 3 if quick else 5
    loads, checks, finds = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        lm = load_model(model)
        loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        self_check(lm)                               # again, timed alone
        checks.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        adapter_for(_empty_model(lm.config, lm.dtype, False))
        finds.append(time.perf_counter() - t0)
    load, check, find = (common.median(x) for x in (loads, checks, finds))
    return [
        common.row(BENCH, "self-check at load", check, load, "s", higher_is_better=False,
                   note=f"{100 * check / load:.2f}% of the load (target <= 5%: "
                        f"{'met' if check <= 0.05 * load else 'NOT met'}); checks "
                        f"{common.spread(checks)}, loads {common.spread(loads)}; {lm.spec}, "
                        f"{lm.self_check.describe()}"),
        common.row(BENCH, "adapter found on the meta model", find, load, "s",
                   higher_is_better=False,
                   note=f"{100 * find / load:.2f}% of the load; {common.spread(finds)}"),
    ]


if __name__ == "__main__":
    common.main(run)
