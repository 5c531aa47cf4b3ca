"""Runs that resume: a layer-major pass (`stream.run_layer_major`) saves, after each layer, the
boundary it reached, the boundaries it records and its accumulators' sums (`gather.Sums`), under a
fingerprint of the model, the windows, the variant's slots before that boundary and the pass's
protocol. A pass killed at layer k and started again with `resume=True` loads boundary k and goes
on from slot k: at most the layer that was running is computed again.

A changed input never resumes silently: a checkpoint whose fingerprint differs from the pass's is
refused in one line (`--resume` asked) or replaced (not asked).

Files (one folder per pass): `manifest.json` ({"fingerprint", "boundary", "prefix"}, replaced
atomically after the states it names are written), `b{boundary}-{batch}.pt` (the states, (b, T, H)),
`sums.pt` (the gathers' sums). Under ranks (`explorer.core.ranks`) each rank checkpoints its own
shard of the windows in a folder of its own, `rank-{r}-of-{N}/`.

A rank that dies leaves its folder usable (the manifest names only states already written); the
test hook LAYER_EXPLORER_TEST_EXIT_AFTER_LAYER=k makes a process exit right after saving layer k.

Example:
    >>> cp = LayerCheckpoint("runs/probe-70b", resume=True)
    >>> for b in run_backbone(lm, ids, record=range(L + 1), layer_major=True, checkpoint=cp): ...
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from explorer.core.errors import LayerError, one_line
from explorer.core.settings import get


def tensor_digest(t: torch.Tensor) -> str:
    """16 hex digits of SHA-256 over a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def slot_digest(variant, i: int) -> str:
    """What slot i of `variant` is: its original layer, or the digest of a new layer's weights."""
    slot = variant.slots[i]
    if isinstance(slot, int):
        return f"layer {slot}"
    h = hashlib.sha256()
    for name, t in sorted(slot.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return "new " + h.hexdigest()[:16]


class LayerCheckpoint:
    """The checkpoint folder of one layer-major pass (see the module docstring)."""

    def __init__(self, folder: str | Path, resume: bool = False) -> None:
        self.folder = Path(folder)
        self.resume = resume
        self.fingerprint: dict | None = None
        self.prefix: list[str] = []
        self.saves = 0                     # layers checkpointed by this pass (for the tests)
        self.resumed_at: int | None = None  # the boundary this pass went on from, if it resumed

    # -- starting ----------------------------------------------------------------------------
    def start(self, fingerprint: dict, prefix: list[str]) -> int:
        """The boundary this pass starts from: the checkpoint's (resume asked and it matches),
        else none (-1: start as asked). prefix: each slot's digest, in order."""
        from explorer.core.ranks import world

        rank, size = world()
        if size > 1:
            self.folder = self.folder / f"rank-{rank}-of-{size}"
        self.fingerprint, self.prefix = fingerprint, prefix
        manifest = self._manifest() if self.resume else None
        if manifest is None:               # start afresh: nothing of an earlier pass is kept
            self._clear()
            return -1
        if manifest["fingerprint"] != fingerprint:
            changed = [k for k in fingerprint if manifest["fingerprint"].get(k) != fingerprint[k]]
            raise LayerError(f"the checkpoint in {self.folder} was made for another input "
                             f"({', '.join(changed) or 'fingerprint'} changed): not resuming; "
                             "start without --resume to compute it again")
        k = manifest["boundary"]
        if manifest["prefix"] != prefix[:k]:
            raise LayerError(f"the checkpoint in {self.folder} was made with other layers before "
                             f"boundary {k}: not resuming; start without --resume")
        self.resumed_at = k
        return k

    def _clear(self) -> None:
        for pattern in ("b*-*.pt", "manifest.json", "sums.pt"):
            for f in self.folder.glob(pattern):
                f.unlink(missing_ok=True)

    def _manifest(self) -> dict | None:
        path = self.folder / "manifest.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LayerError(f"cannot read the checkpoint {path}: {one_line(exc)}") from None

    # -- reading and writing -----------------------------------------------------------------
    def states(self, boundary: int, batch: int) -> torch.Tensor:
        return torch.load(self.folder / f"b{boundary}-{batch}.pt", weights_only=True)

    def sums(self) -> list:
        path = self.folder / "sums.pt"
        return torch.load(path, weights_only=False) if path.exists() else []

    def save(self, boundary: int, states: dict[tuple[int, int], torch.Tensor],
             sums: Sequence, keep: set[int]) -> None:
        """After a layer: the states {(boundary, batch): (b, T, H)} of the new frontier and of
        the recorded boundaries not saved yet, the gathers' sums; then the manifest. Files of
        boundaries neither at the frontier nor in `keep` are removed."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for (b, k), t in states.items():
                path = self.folder / f"b{b}-{k}.pt"
                if b == boundary or not path.exists():
                    torch.save(t.detach().cpu().clone(), path)
            torch.save([s for s in sums], self.folder / "sums.tmp")
            os.replace(self.folder / "sums.tmp", self.folder / "sums.pt")
            tmp = self.folder / "manifest.tmp"
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "boundary": boundary,
                                       "prefix": self.prefix[:boundary]}))
            os.replace(tmp, self.folder / "manifest.json")
            for f in self.folder.glob("b*-*.pt"):
                b = int(f.name[1:].split("-")[0])
                if b != boundary and b not in keep:
                    f.unlink(missing_ok=True)
        except OSError as exc:
            raise LayerError(f"could not write the checkpoint in {self.folder}: "
                             f"{one_line(exc)}") from None
        self.saves += 1
        if get("LAYER_EXPLORER_TEST_EXIT_AFTER_LAYER") == boundary:
            os._exit(3)                    # test hook: a process that dies after this layer
