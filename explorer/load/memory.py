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

from explorer.core.errors import ModelLoadError
from explorer.core.settings import get

OVERHEAD = 1.2            # weights x 1.2: buffers, allocator slack, the forward pass of a window
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


def config_numel(config: Any, trust_remote_code: bool = False) -> int:
    """The parameter count the config builds (for hub ids, whose files are not local yet): the
    model made on the meta device, which costs no memory and knows every family's shapes."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()                         # a tied head counts once, as when loaded
    return sum(p.numel() for p in model.parameters())


def estimate_model_bytes(where: str | Path, config: Any, dtype: torch.dtype,
                         trust_remote_code: bool = False) -> int:
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
        numel = config_numel(config, trust_remote_code)
    return numel * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device) -> int:
    """Free memory on `device` (RAM for CPU), lowered to LAYER_EXPLORER_MAX_MEMORY_MB when set."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    budget = get("LAYER_EXPLORER_MAX_MEMORY_MB")
    if budget is not None:
        free = min(free, budget)
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


# -- offload: what to do when a model does not fit ---------------------------------------------

OFFLOAD_CHOICES = ("auto", "cpu", "disk", "none")
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10,
          "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30,
          "t": 2**40}


class MemorySpecError(ModelLoadError):
    """A --max-memory / --offload value that cannot be used."""


def parse_size(text: str | int | float) -> int:
    """Bytes from '4GiB', '500MB', '1.5G' (binary for a bare K/M/G/T) or a number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise MemorySpecError(f"a memory size must be positive (got {text})")
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):] or "b"
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value > 0:
        raise MemorySpecError(f"'{text}' is not a memory size; write it like 4GiB, 500MB or 1.5G")
    return int(value * _UNITS[unit])


def parse_max_memory(value: str | dict | None, device: torch.device) -> dict[str, int]:
    """{device name: bytes} from 'cpu=4GiB,cuda:0=20GiB' (or a dict, as accelerate takes it); a
    bare size ('6GiB') is the compute device's. Device names: cpu, cuda, cuda:N (or N), disk."""
    if value in (None, "", {}):
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        items = []
        for part in parts:
            if "=" in part:
                name, _, size = part.partition("=")
            elif len(parts) == 1:
                name, size = str(device), part
            else:
                raise MemorySpecError(f"--max-memory '{value}': give each size as device=size, "
                                      "e.g. cpu=8GiB,cuda:0=20GiB")
            items.append((name.strip(), size))
    out: dict[str, int] = {}
    for name, size in items:
        key = str(name).strip().lower()
        if key.isdigit():
            key = f"cuda:{key}"
        if key not in ("cpu", "disk", "cuda", "mps") and not key.startswith("cuda:"):
            raise MemorySpecError(f"--max-memory: unknown device '{name}'; use cpu, cuda, "
                                  "cuda:N or disk")
        out[key] = parse_size(size)
    return out


def device_budget(device: torch.device, max_memory: dict[str, int]) -> int:
    """Free memory on `device`, capped by its --max-memory entry (cuda:0 also matches 'cuda')."""
    free = available_bytes(device)
    names = [str(device)] + (["cuda", "cuda:0"] if device.type == "cuda" else [])
    caps = [max_memory[n] for n in names if n in max_memory]
    return min([free] + caps)


def choose_offload(offload: str | None, need_bytes: int, device: torch.device,
                   max_memory: dict[str, int], spec: str, dtype: torch.dtype) -> str | None:
    """Where the layers go: None (the whole model on `device`), "cpu" (layers in RAM, one at a
    time on the device) or "disk" (layers read from the weight files, one at a time).

    offload: "auto" keeps the model whole when it fits and offloads otherwise (to RAM when the
    device is a GPU and RAM holds it, else to disk); "none" refuses a model that does not fit;
    "cpu" and "disk" force that placement.
    """
    mode = (offload or "none").strip().lower()
    if mode not in OFFLOAD_CHOICES:
        raise MemorySpecError(f"unknown offload '{offload}'; use one of: "
                              + ", ".join(OFFLOAD_CHOICES))
    if mode in ("cpu", "disk"):
        return mode
    budget = device_budget(device, max_memory)
    fits = int(need_bytes * OVERHEAD) <= budget
    if mode == "none":
        if not fits and budget < available_bytes(device):    # the cap refuses, not the device
            raise ModelLoadError(f"'{spec}' needs about {_fmt(int(need_bytes * OVERHEAD))} but "
                                 f"--max-memory allows {_fmt(budget)} on {device}; allow offload "
                                 "(--offload auto)")
        check_fits(need_bytes, device, spec, dtype)
        return None
    if fits:
        return None
    if device.type != "cpu" and int(need_bytes * OVERHEAD) <= device_budget(
            torch.device("cpu"), max_memory):
        return "cpu"
    return "disk"


def check_layer_fits(budget: int, resident_bytes: int, layer_sizes: list[int], spec: str,
                     device: torch.device, dtype: torch.dtype) -> None:
    """Refuse (one line) a budget that cannot hold the weights kept resident (embeddings, final
    norm, head) plus the largest decoder layer: layer-major execution needs that much."""
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, str(dtype))
    need = resident_bytes + max(layer_sizes)
    if need > budget:
        largest = f", the largest {_fmt(max(layer_sizes))}" \
            if max(layer_sizes) != min(layer_sizes) else ""
        raise MemorySpecError(
            f"the memory allowed on {device} ({_fmt(budget)}) is too small for '{spec}' even one "
            f"layer at a time: its smallest decoder layer takes {_fmt(min(layer_sizes))} "
            f"({dtype_name}{largest}) on top of {_fmt(resident_bytes)} of embeddings and head "
            "that stay loaded; raise --max-memory or choose a smaller dtype")


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse (one line) an offload folder that cannot be created or written."""
    import tempfile

    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise MemorySpecError(f"offload folder '{folder}' cannot be written: "
                              f"{exc.strerror or exc}") from None
