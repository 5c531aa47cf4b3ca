"""The quality gate's target: `compress --method angular --max-ppl-ratio 1.5 --heal layerwise`
returns a plan on the default model, and its exported model, reloaded as a plain folder, gives the
reported figure again.

Runs the command line in a subprocess (as a user would), then loads the exported folder with
`explorer.load_model` (transformers' AutoModelForCausalLM underneath, no recipe replay) and
measures perplexity under the same protocol. Prints one JSON object: the gate's tries, the chosen
size, the reported and the reloaded figure, and the seconds of each part.

    python bench/gate_target.py [--steps 40] [--max-tokens 4096] [--method angular]
        [--heal-param windows=32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="angular")
    p.add_argument("--gate", default="1.5")
    p.add_argument("--heal", default="layerwise")
    p.add_argument("--steps", type=int, default=40, help="healing steps per tried size")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--heal-param", action="append", default=[], metavar="NAME=VALUE",
                   help="healing parameters, e.g. windows=32 (a smaller calibration set)")
    p.add_argument("--out", default=None, help="export folder (default: a temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="gate-")) / "model"
    cmd = [sys.executable, "-m", "explorer", "compress", "--method", args.method,
           "--max-ppl-ratio", args.gate, "--heal", args.heal, "--heal-steps", str(args.steps),
           "--max-tokens", str(args.max_tokens), "--out", str(out), "--json"]
    for item in args.heal_param:
        cmd += ["--heal-param", item]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    gate_s = time.perf_counter() - t0
    if done.returncode != 0:
        print(json.dumps({"command": " ".join(cmd[1:]), "exit": done.returncode,
                          "stderr": done.stderr.strip()[-2000:], "seconds": round(gate_s, 1)}))
        return
    result = json.loads(done.stdout)

    from explorer import load_model, load_texts, perplexity

    t1 = time.perf_counter()
    lm = load_model(str(out))
    texts = load_texts("wiki")
    again = perplexity(lm, texts.evaluation, seqlen=512, max_tokens=args.max_tokens,
                       source="wiki", cache=False)
    reload_s = time.perf_counter() - t1
    reported = result.get("ppl_healed", result["ppl_after"])
    print(json.dumps({"command": " ".join(cmd[1:]), "gate": result["gate"],
                      "removed": result["removed"], "num_layers": result["num_layers"],
                      "ppl_dense": result["ppl_before"], "ppl_reported": reported,
                      "ppl_reloaded": again.ppl, "reloaded_layers": lm.num_layers,
                      "relative_difference": abs(again.ppl - reported) / reported,
                      "gate_seconds": round(gate_s, 1), "reload_seconds": round(reload_s, 1)},
                     indent=1))


if __name__ == "__main__":
    main()
