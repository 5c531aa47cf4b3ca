"""What a model spec names and where it comes from: an embedded name, a hub id, a folder or a GGUF
file (converted once into a cached safetensors folder); whether the hub can be reached and remote
code is allowed; and the one-line message a failed load gets."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from explorer.load.embedded import DEFAULT_MODEL, EMBEDDED, cache_root, file_digest
from explorer.core.errors import ModelLoadError, one_line
from explorer.load.memory import check_fits
from explorer.core.progress import Event, Progress
from explorer.core.settings import get



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


def gguf_to_folder(gguf: Path, progress: Progress | None) -> Path:
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


def explain_load_failure(spec: str, kind: str, exc: Exception, offline_host: str | None = None
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
