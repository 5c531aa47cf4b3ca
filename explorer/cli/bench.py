"""`bench`: the speed benchmarks of bench/ (in the source tree) as one table."""

from __future__ import annotations

import argparse
import sys

from explorer.core.errors import ExplorerError
from explorer.cli.common import load

BENCHES = ("perplexity", "probe", "variant", "measures", "damage", "speed", "selfcheck", "gpu",
           "distributed")  # bench/bench_NAME.py



def add(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks against the naive way (bench/), as a table")
    p.add_argument("--model", default="smollm2-135m", help="model the CPU benchmarks use")
    p.add_argument("--only", default="", help="comma list of: " + ", ".join(BENCHES))
    p.add_argument("--full", action="store_true", help="more tokens and repetitions (slower)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> dict:
    """Run bench/bench_NAME.run(quick) for each benchmark; one model load shared where possible."""
    import importlib
    import inspect
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]    # the source tree: explorer/cli/bench.py
    if not (root / "bench" / "common.py").is_file():
        raise ExplorerError(f"the benchmarks live in the source tree ({root / 'bench'} is "
                            "missing): run from a git checkout of Layer Explorer")
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        raise ExplorerError(f"unknown benchmark(s) {', '.join(unknown)}; known: "
                            + ", ".join(BENCHES))
    _bench_package(root)
    common = importlib.import_module("bench.common")
    start = time.perf_counter()
    lm = None
    rows: list[dict] = []
    for name in names:
        if not (root / "bench" / f"bench_{name}.py").is_file():
            rows.append(common.row(name, "not benched", None, None, "-", higher_is_better=True,
                                   note=f"bench/bench_{name}.py is not there yet"))
            continue
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)  # stdout keeps the result
        module = importlib.import_module(f"bench.bench_{name}")
        kwargs = {}
        if name != "gpu" and "lm" in inspect.signature(module.run).parameters:
            if lm is None:
                lm = load(argparse.Namespace(model=args.model, device="cpu", dtype="auto",
                                              trust_remote_code=False))
            kwargs["lm"] = lm
        for r in module.run(not args.full, **kwargs):
            common.check_row(r)
            rows.append(r)
    m = common.machine()
    machine = (f"{m['cpu']}, {m['nproc']} cores ({m['torch_threads']} torch threads), "
               f"{m.get('gpu') or 'no GPU'}, torch {m['torch']}, transformers {m['transformers']}"
               f", {m['date']}")
    return {"machine": machine, "seconds": round(time.perf_counter() - start, 1),
            "table": "\n" + common.format_table(rows), "rows": rows}


def _bench_package(root) -> None:
    """Make `bench` (the source tree's folder, not part of the installed package) importable as a
    package by its path, without putting the source root on sys.path."""
    import importlib.util

    if "bench" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "bench", root / "bench" / "__init__.py", submodule_search_locations=[str(root / "bench")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)

