"""Memory guard: estimate what a model will take before reading its weights, and refuse early.

A model that does not fit kills the process (CPU) or fails late with a CUDA out-of-memory error
after minutes of reading; on a shared machine or a public Space that takes other users down too.
`check_fits` compares an estimate made from metadata only (safetensors headers, the shard index,
file sizes, or the config) with the free memory of the target device and raises `ModelLoadError`
with one line when it does not fit.

Free memory: `psutil.virtual_memory().available` on CPU, `torch.cuda.mem_get_info` on a GPU. An
operator can lower the budget with LAYER_EXPLORER_MAX_MEMORY_MB (e.g. a Space that must keep room
for the web server); the smaller of the two wins.

Example:
    >>> need = estimate_model_bytes("/models/tiny", config, torch.bfloat16)
    >>> check_fits(need, torch.device("cpu"), "tiny")      # raises ModelLoadError if too big
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

OVERHEAD = 1.2            # weights x 1.2: buffers, allocator slack, the forward pass of a window
BUDGET_ENV = "LAYER_EXPLORER_MAX_MEMORY_MB"
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                      "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_numel(path: Path) -> int:
    """Number of tensor elements in a .safetensors file, read from its header only (no weights).

    Raises ModelLoadError when the header is unreadable (a corrupt or truncated file).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("it is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 2**20 or n > path.stat().st_size - 8:
                raise ValueError("its header length is larger than the file")
            header = json.loads(f.read(n))
        total, end = 0, 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            total += count
            end = max(end, int(info["data_offsets"][1]))
        if 8 + n + end > path.stat().st_size:
            raise ValueError(f"the data ends at byte {8 + n + end} but the file has "
                             f"{path.stat().st_size}")
        return total
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ModelLoadError(f"weights file '{path.name}' is corrupt or truncated ({exc})") from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ModelLoadError(f"'{index.name}' in '{folder}' is not a valid shard index: "
                                 f"{exc}") from None
        return [folder / s for s in shards]
    return sorted(folder.glob("*.safetensors"))


def config_numel(config: Any) -> int:
    """A rough parameter count from the config alone (for hub ids, whose files are not local yet)."""
    def get(*names: str, default: int = 0) -> int:
        for name in names:
            val = getattr(config, name, None)
            if isinstance(val, int) and val > 0:
                return val
        return default

    h = get("hidden_size", "n_embd", "d_model")
    layers = get("num_hidden_layers", "n_layer", "num_layers")
    vocab = get("vocab_size")
    inter = get("intermediate_size", "n_inner", "ffn_dim", default=4 * h)
    heads = get("num_attention_heads", "n_head", default=1)
    kv = get("num_key_value_heads", default=heads)
    head_dim = get("head_dim", default=h // max(heads, 1))
    attn = 2 * h * head_dim * heads + 2 * h * head_dim * kv
    gated = getattr(config, "model_type", "") not in ("gpt2", "gpt_neox", "opt", "bloom", "falcon")
    mlp = (3 if gated else 2) * h * inter
    tied = getattr(config, "tie_word_embeddings", True)
    return vocab * h * (1 if tied else 2) + layers * (attn + mlp)


def estimate_model_bytes(where: str | Path, config: Any, dtype: torch.dtype) -> int:
    """Bytes the model's parameters will take in `dtype`, from metadata only.

    where: a local model folder (safetensors headers / shard index) or a hub id (config estimate).
    """
    folder = Path(where)
    numel = 0
    if folder.is_dir():
        files = _weight_files(folder)
        if files:
            numel = sum(safetensors_numel(f) for f in files if f.is_file())
        else:  # pytorch_model*.bin: size on disk divided by the stored element size
            stored = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
            elem = 2 if str(stored).replace("torch.", "") in ("float16", "bfloat16") else 4
            numel = sum(p.stat().st_size for p in folder.glob("*.bin")) // elem
    if numel == 0:
        numel = config_numel(config)
    return numel * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device) -> int:
    """Free memory on `device` (RAM for CPU), lowered to LAYER_EXPLORER_MAX_MEMORY_MB when set."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    budget = os.environ.get(BUDGET_ENV, "").strip()
    if budget:
        try:
            free = min(free, int(float(budget) * 2**20))
        except ValueError:
            raise ModelLoadError(f"{BUDGET_ENV} must be a number of MiB (got '{budget}')") from None
    return int(free)


def check_fits(need_bytes: int, device: torch.device, spec: str, dtype: torch.dtype | None = None) -> None:
    """Raise ModelLoadError (one line) when `need_bytes` x OVERHEAD exceeds the free memory."""
    free = available_bytes(device)
    need = int(need_bytes * OVERHEAD)
    if need > free:
        in_dtype = f" in {str(dtype).replace('torch.', '')}" if dtype is not None else ""
        raise ModelLoadError(
            f"'{spec}' needs about {_fmt(need)}{in_dtype} but only {_fmt(free)} is free on "
            f"{device.type}; choose a smaller model or dtype (e.g. --dtype bfloat16), or free memory")


def _fmt(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
