"""Self-contained recipes (issue 24): a recipe with a heal op replayed in a new process, from the
fitted tensors saved next to it, against the same replay without them (which trains again).

Setup (once, in this process): SmolLM2-135M-Instruct (Q4_1), the angular plan removing 6 layers, healed layer-wise
(`--steps`, default 40, on 48 windows of 128 wiki calibration tokens), the recipe saved with
`Recipe.save` (recipe.json + recipe.fitted.safetensors).

Each side is a fresh `python` process that imports explorer, loads the model and replays the
recipe (`Recipe.load(path).build(lm)`); it prints the replay's own seconds, its whole wall time
and a SHA-256 of every tensor of the rebuilt layer stack. Ours reads the tensors file; the baseline
is the same recipe without it (the replay fits the heal op again, as every replay did before).
Target: ours under 5 s, the same bits as the healed variant made in this process (the note says
whether the digests agree).

Rows: seconds of the replay alone and of the whole process (ratio > 1: ours is faster).

Usage:
    python bench/bench_recipe.py [--steps 40]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "recipe"

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from explorer import Recipe, load_model
lm = load_model(sys.argv[1])
t1 = time.perf_counter()
said = []
v = Recipe.load(sys.argv[2]).build(lm, report=said.append)
t2 = time.perf_counter()
from bench.bench_recipe import digest
print(json.dumps({"replay_s": t2 - t1, "process_s": time.perf_counter() - t0, "sha": digest(v),
                  "refitted": said}))
"""


def digest(v) -> str:
    """SHA-256 of every tensor of a variant's layer stack (as the child computes it)."""
    import torch

    h = hashlib.sha256()
    for k in range(v.num_layers):
        m = v.layer(k)
        for n, t in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items():
            h.update(f"{k}.{n}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _child(model: str, recipe: Path) -> dict:
    # run from the checkout: `python -c` puts it first on the path (this checkout's explorer)
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(recipe)], capture_output=True,
                         text=True, timeout=3600, cwd=common.ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = True, steps: int = 40, model: str = common.DEFAULT_MODEL) -> list[dict]:
    from explorer import Recipe, load_model, load_texts
    from explorer.apply.fitted import fitted_path
    from explorer.heal import heal
    from explorer.plan import compress

    lm = load_model(model)
    wiki = load_texts("wiki").calibration
    plan = compress(lm, "angular", remove=6, calibration=wiki, calibration_source="wiki")
    healed = heal(plan.variant, "layerwise", calibration=wiki, calibration_source="wiki",
                  steps=steps, windows=48).variant
    want = digest(healed)
    folder = Path(tempfile.mkdtemp(prefix="bench-recipe-"))
    try:
        ours_path = folder / "with" / "recipe.json"
        base_path = folder / "without" / "recipe.json"
        ours_path.parent.mkdir()
        base_path.parent.mkdir()
        recipe = Recipe.of(healed, "angular", plan.params)
        recipe.save(ours_path, lm)
        recipe.save(base_path)                      # the JSON alone
        size = fitted_path(ours_path).stat().st_size
        ours, base = [], []
        for _ in range(1 if quick else 2):          # interleaved: ours, baseline, ours, ...
            ours.append(_child(model, ours_path))
            base.append(_child(model, base_path))
        ours.append(_child(model, ours_path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    med = common.median
    same = all(r["sha"] == want for r in ours)
    same_base = all(r["sha"] == want for r in base)
    note = (f"SmolLM2 angular -6 healed layer-wise {steps} steps; tensors file {size / 2**20:.1f} "
            f"MB; ours bit-identical to the healed variant: {same} (retrained: {same_base}); "
            f"ours refitted {sum(len(r['refitted']) for r in ours)} op(s), the baseline "
            f"{sum(len(r['refitted']) for r in base)}; target < 5 s")
    return [
        common.row(BENCH, "replay a heal recipe in a new process (replay only)",
                   med([r["replay_s"] for r in ours]), med([r["replay_s"] for r in base]), "s",
                   higher_is_better=False, note=note),
        common.row(BENCH, "the same, whole process (import, load, replay)",
                   med([r["process_s"] for r in ours]), med([r["process_s"] for r in base]), "s",
                   higher_is_better=False, note="fresh python process each"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--full", action="store_true", help="two repetitions of the baseline")
    args = ap.parse_args()
    sys.path.insert(0, str(common.ROOT))     # this checkout's explorer, as in the children
    for r in run(not args.full, steps=args.steps):
        print(json.dumps(r))


if __name__ == "__main__":
    main()
