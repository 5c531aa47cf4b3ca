"""Launching data-parallel ranks from a test: `python -m torch.distributed.run` (torchrun) on this
machine, gloo, one thread a rank, with the repository and tests/ on PYTHONPATH (so a rank imports
this checkout and the tests' worker scripts).

    done = torchrun(2, "-m", "explorer", "similarity", "--model", folder, "--json")
    done = torchrun(2, str(WORKER), folder, out)          # a worker script of tests/
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def torchrun(n: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `args` as `n` ranks; the finished process (stdout and stderr captured as text)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
