"""Where a model's decoder-layer weights live when they are not all on the compute device
(`LoadedModel.weights`, chosen by `load_model`'s offload): in CPU RAM, copied to the device one
layer at a time (`RamWeights`), or in the model folder's safetensors shards, read one layer at a
time (`ShardWeights`). The layer-major executor (explorer/core/stream.py) fetches a slot's layer, runs
every window through it and drops it.

Nothing here imports the stages that run layers (`load` builds these; `stream` uses them).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from explorer.core.errors import ModelLoadError, one_line

if TYPE_CHECKING:
    from explorer.core.model import LoadedModel


class LayerWeights:
    """Where a `LoadedModel`'s decoder-layer weights live when they are not all on the compute
    device (`LoadedModel.weights`). `fetch` gives a module whose weights are on `device`; the
    executor drops it after running every window through it."""

    kind = "resident"
    where = "the compute device"
    state_folder: str | None = None     # where boundary states beyond the RAM budget go

    @property
    def runs_whole(self) -> bool:
        """Whether the model can still run whole (generation, lm-eval, GGUF export through
        `Variant.applied()`): its layers' weights are on the compute device already."""
        return True

    def fetch(self, lm: LoadedModel, module: nn.Module, origin: int) -> nn.Module:
        return module

    def fingerprint(self) -> str:
        return self.kind


class RamWeights(LayerWeights):
    """Layers kept in CPU RAM and copied to the compute device one at a time (offload="cpu")."""

    kind = "cpu"
    where = "CPU RAM"

    def __init__(self, device: torch.device, state_folder: str | None = None) -> None:
        self.device = torch.device(device)
        self.state_folder = state_folder

    @property
    def runs_whole(self) -> bool:
        return self.device.type == "cpu"      # the RAM is the compute device's memory

    def fetch(self, lm: LoadedModel, module: nn.Module, origin: int) -> nn.Module:
        p = next(module.parameters(), None)
        if p is None or p.device == self.device:
            return module
        return copy.deepcopy(module).to(self.device)


class ShardWeights(LayerWeights):
    """Layers read from the model folder's safetensors shards when a pass needs them
    (offload="disk"): the loaded model holds them on the meta device, so the weights never sit in
    RAM all together. safetensors' `safe_open` maps a shard and reads only the tensors asked for.
    """

    kind = "disk"
    runs_whole = False

    def __init__(self, folder: str | Path, dtype: torch.dtype, device: torch.device,
                 state_folder: str | None = None) -> None:
        self.state_folder = state_folder
        self.folder = Path(folder)
        self.dtype = dtype
        self.device = torch.device(device)
        self.where = f"the safetensors shards in {self.folder}"
        self.index = shard_index(self.folder)

    def tensor(self, name: str) -> torch.Tensor:
        """One checkpoint tensor, cast to the model's dtype (floating tensors only), on the
        compute device."""
        return self.tensors([name])[name]

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Checkpoint tensors by name, each shard opened once (`safe_open` maps the file and
        copies out only the tensors asked for)."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            file = self.index.get(name)
            if file is None:
                raise ModelLoadError(f"the checkpoint in {self.folder} has no tensor '{name}'")
            by_file.setdefault(file, []).append(name)
        out: dict[str, torch.Tensor] = {}
        for file, group in by_file.items():
            with safe_open(str(self.folder / file), framework="pt", device="cpu") as f:
                for name in group:
                    t = f.get_tensor(name)
                    if t.is_floating_point():
                        t = t.to(self.dtype)
                    out[name] = t.to(self.device)
        return out

    def fill(self, module: nn.Module, prefix: str) -> nn.Module:
        """Give every meta parameter of `module` its checkpoint tensor (`prefix` + its name)."""
        empty = [name for name, p in module.named_parameters() if p.is_meta]
        loaded = self.tensors([prefix + name for name in empty])
        for name in empty:
            parent_path, _, leaf = name.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            parent._parameters[leaf] = nn.Parameter(loaded[prefix + name], requires_grad=False)
        return module

    def fetch(self, lm: LoadedModel, module: nn.Module, origin: int) -> nn.Module:
        if not any(p.is_meta for p in module.parameters()):
            return module
        # A copy whose meta parameters are then filled: the loaded model's layer stays empty.
        # (A sub-block drop shares the original layer's parameter names, so `origin` names them.)
        return self.fill(copy.deepcopy(module), f"{lm.arch.layers}.{origin}.")

    def fingerprint(self) -> str:
        files = sorted(set(self.index.values()))
        return json.dumps([(f, (self.folder / f).stat().st_size,
                            int((self.folder / f).stat().st_mtime)) for f in files])


def shard_index(folder: Path) -> dict[str, str]:
    """Tensor name -> safetensors file name, from model.safetensors.index.json or the headers."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"'{index.name}' in '{folder}' is not a valid shard index: "
                                 f"{exc}") from None
    out: dict[str, str] = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as handle:
                out.update({k: f.name for k in handle.keys()})
        except Exception as exc:
            raise ModelLoadError(f"weights file '{f.name}' is corrupt or truncated "
                                 f"({one_line(exc)})") from None
    if not out:
        raise ModelLoadError(f"'{folder}' has no .safetensors weights: streaming layers from disk "
                             "needs them (load it once and export it, or use --offload cpu)")
    return out
