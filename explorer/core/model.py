"""The loaded model: a causal LM with its tokenizer and what the explorer found in it (layers,
head, logit rule), the record every stage receives. Loading it is the load stage's job
(`explorer.load.loader.load_model`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from explorer.load.arch import Architecture
from explorer.apply.layer_config import snapshot



# Names users may give for a dtype (CLI --dtype, load_model, perplexity's compute_dtype).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A loaded model with everything the later stages need. Never modified in place by a stage:
    measuring a variant calls its slots' modules directly (explorer/core/backbone.py), without a lock;
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
    # (`explorer.core.weights.LayerWeights`: CPU RAM, or the folder's safetensors shards, the layers
    # then empty on the meta device); None: the whole model is on `device`. Non-None makes every
    # pass layer-major (explorer/core/stream.py).
    weights: Any = field(default=None, repr=False)
    # The model's own layer list and sizes, captured at load. While a variant is applied (by any
    # thread, under `lock`) the model holds the variant's layers; readers outside the lock must
    # use these, or they would see another request's edit.
    original_layers: nn.ModuleList = field(init=False, repr=False)
    # every per-layer field of the config at load (explorer/apply/layer_config.py): a variant's
    # config is rewritten from these
    layer_fields: dict[str, Any] = field(init=False, repr=False)
    # the self-check at load (explorer/load/selfcheck.py); None: not run (a model built by hand)
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
