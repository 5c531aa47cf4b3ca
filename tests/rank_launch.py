"""Launching data-parallel ranks from a test: `python -m torch.distributed.run` (torchrun) on this
machine, gloo, one thread a rank, with the repository and tests/ on PYTHONPATH (so a rank imports
this checkout and the tests' worker scripts).

    done = torchrun(2, "-m", "explorer", "similarity", "--model", folder, "--json")
    done = torchrun(2, str(WORKER), folder, out)          # a worker script of tests/
    r0, r1 = plain_ranks(2, ["-m", "explorer", ...], {1: {"LAYER_EXPLORER_TEST_...": "3"}})

`plain_ranks` starts the ranks as plain processes with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set, without torchrun's agent: a rank that dies does not get the others killed, so a
test sees what the survivors do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra,
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS),
                                           os.environ.get("PYTHONPATH", "")])}


def torchrun(n: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `args` as `n` ranks; the finished process (stdout and stderr captured as text)."""
    env = _env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_ranks(n: int, args: list[str], env: dict[int, dict[str, str]] | None = None,
                timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """`python ARGS` as `n` ranks of one gloo group, each a plain process (no torchrun agent);
    env: extra variables of some ranks. Every rank's finished process, in rank order."""
    base = dict(WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(**base, RANK=str(r), LOCAL_RANK=str(r),
                                       **(env or {}).get(r, {})))
             for r in range(n)]
    done = []
    try:
        for r, p in enumerate(procs):
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done
