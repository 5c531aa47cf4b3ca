"""Security: remote code, export paths, uploads, secrets.

- A model folder that ships its own Python code (config.json `auto_map`) runs it only when the
  caller passes trust_remote_code=True, and never when the operator set
  LAYER_EXPLORER_ALLOW_REMOTE_CODE=0 (public Spaces). The code here writes a marker file when
  imported, so "it did not run" is checked on disk.
- Exports stay inside the configured output folder: "../x", absolute paths, and symlinks that
  point outside are refused and nothing is written outside.
- Uploaded texts and recipes are read as data with a size limit, never executed.
- A Hugging Face token in the environment never appears in an error or in CLI output.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from explorer import Variant, export, load_model
from explorer.cli import main
from explorer.core.errors import ExplorerError, LayerError, ModelLoadError, TextError, one_line
from explorer.export.folder import safe_output_path
from explorer.apply.recipe import Recipe
from explorer.probe.text import read_text_file

FAKE_TOKEN = "hf_" + "QwErTy0123456789AbCdEfGhIjKlMnOpQ"

# transformers copies the module into its modules cache before importing it: use an absolute path.
EVIL_CODE = '''
from pathlib import Path
Path(MARKER).write_text("yes")
from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "evil_llama"
'''


@pytest.fixture()
def remote_code_folder(tmp_path, tiny_factory) -> Path:
    """A model folder whose config asks for the folder's own Python code."""
    folder = tmp_path / "custom-code-model"
    folder.mkdir()
    good = tiny_factory("llama", num_layers=2)
    for f in good.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil_llama", auto_map={"AutoConfig": "evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    marker = folder / "REMOTE_CODE_RAN"
    (folder / "evil.py").write_text(EVIL_CODE.replace("MARKER", repr(str(marker))))
    return folder


def test_remote_code_does_not_run_unless_allowed(remote_code_folder, monkeypatch, capsys):
    marker = remote_code_folder / "REMOTE_CODE_RAN"
    monkeypatch.delenv("LAYER_EXPLORER_ALLOW_REMOTE_CODE", raising=False)
    with pytest.raises(ModelLoadError, match="needs its own Python code to load; allow it"):
        load_model(str(remote_code_folder))
    assert not marker.exists()
    errors = io.StringIO()
    assert main(["eval", "--model", str(remote_code_folder)], stderr=errors) == 2
    assert "needs its own Python code" in errors.getvalue()
    assert not marker.exists()


def test_operator_switch_refuses_remote_code(remote_code_folder, monkeypatch, capsys):
    marker = remote_code_folder / "REMOTE_CODE_RAN"
    monkeypatch.setenv("LAYER_EXPLORER_ALLOW_REMOTE_CODE", "0")
    with pytest.raises(ModelLoadError, match=r"remote code is disabled here "
                                             r"\(LAYER_EXPLORER_ALLOW_REMOTE_CODE=0\)"):
        load_model(str(remote_code_folder), trust_remote_code=True)
    errors = io.StringIO()
    assert main(["eval", "--model", str(remote_code_folder), "--trust-remote-code"],
                stderr=errors) == 2
    err = errors.getvalue().strip().splitlines()
    assert len(err) == 1 and "remote code is disabled here" in err[0]
    assert not marker.exists()


def test_remote_code_runs_only_when_explicitly_allowed(remote_code_folder, monkeypatch):
    """The control: with the switch on and trust_remote_code=True the folder's code does run
    (then the unknown family is refused), which shows the two tests above are meaningful."""
    monkeypatch.setenv("LAYER_EXPLORER_ALLOW_REMOTE_CODE", "1")
    with pytest.raises(ModelLoadError):
        load_model(str(remote_code_folder), trust_remote_code=True)
    assert (remote_code_folder / "REMOTE_CODE_RAN").exists()


# -- export paths ---------------------------------------------------------------------------------
@pytest.fixture()
def out_root(tmp_path) -> Path:
    root = tmp_path / "exports"
    root.mkdir()
    return root


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/tmp/absolute-escape", "", ".",
                                  "sub/..", "bad\x00name"])
def test_export_path_cannot_escape_the_output_folder(out_root, name):
    with pytest.raises(ExplorerError):
        safe_output_path(name, out_root)


def test_symlink_pointing_outside_is_refused(out_root, tmp_path, tiny_lm):
    outside = tmp_path / "outside"
    outside.mkdir()
    (out_root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ExplorerError, match="must be a sub-folder of the output folder"):
        export(Variant.identity(tiny_lm), "link/model", root=out_root)
    with pytest.raises(ExplorerError, match="must be a sub-folder of the output folder"):
        export(Variant.identity(tiny_lm), "link", root=out_root, overwrite=True)
    assert list(outside.iterdir()) == []
    assert outside.is_dir() and (out_root / "link").is_symlink()   # nothing replaced either


def test_output_folder_from_environment_confines_the_cli(out_root, tmp_path, monkeypatch, capsys,
                                                         tiny_factory):
    monkeypatch.setenv("LAYER_EXPLORER_OUTPUT_DIR", str(out_root))
    model = tiny_factory("llama", num_layers=4)
    errors = io.StringIO()
    assert main(["export", "--model", str(model), "--drop", "1", "--out", "../escaped"],
                stderr=errors) == 2
    err = errors.getvalue()
    assert "must be a sub-folder of the output folder" in err
    assert not (tmp_path / "escaped").exists()
    assert main(["export", "--model", str(model), "--drop", "1", "--out", "ok/model",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str((out_root / "ok" / "model").resolve())
    assert (out_root / "ok" / "model" / "config.json").is_file()
    assert [p.name for p in (out_root / "ok").iterdir()] == ["model"]   # no temporary left


# -- uploads --------------------------------------------------------------------------------------
def test_uploaded_files_are_data_never_code(tmp_path):
    marker = tmp_path / "UPLOAD_RAN"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')\n"
    upload = tmp_path / "upload.py"
    upload.write_text(payload * 3)
    assert read_text_file(upload) == payload * 3           # read as text, as is
    with pytest.raises(LayerError, match="not valid JSON"):
        Recipe.from_json(upload.read_bytes())
    pickle_like = tmp_path / "recipe.json"
    pickle_like.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)   # a pickle header, not JSON
    with pytest.raises(LayerError, match="not valid JSON"):
        Recipe.from_json(pickle_like.read_bytes())
    assert not marker.exists()


def test_upload_size_limit_follows_symlinks(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(30 * 2**20)
    link = tmp_path / "innocent.txt"
    link.symlink_to(big)
    with pytest.raises(TextError, match="is 30.0 MiB; the limit is 20 MiB"):
        read_text_file(link)
    with pytest.raises(LayerError, match="larger than"):
        Recipe.from_json(b" " * (2**20 + 1))


# -- secrets --------------------------------------------------------------------------------------
def test_token_is_redacted_from_errors(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert FAKE_TOKEN not in one_line(RuntimeError(f"401 for header Bearer {FAKE_TOKEN}"))
    assert "hf_***" in one_line(RuntimeError("token hf_abcdefghijklmnop leaked"))
    # A spec that carries the token (pasted by mistake) is not echoed back.
    assert main(["eval", "--model", f"/nonexistent/{FAKE_TOKEN}/model"]) == 2
    out, err = capsys.readouterr()
    assert FAKE_TOKEN not in out + err and "error: path '/nonexistent/***/model'" in err


def _online_env(tmp_path: Path) -> dict:
    """The environment of a user's shell: no offline switch, a token, fresh caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE",
                                                                    "TRANSFORMERS_OFFLINE"))}
    env.update(HF_TOKEN=FAKE_TOKEN, HF_HOME=str(tmp_path / "hf"),
               LAYER_EXPLORER_CACHE=str(tmp_path / "cache"))
    return env


def test_unknown_hub_id_online_path_prints_one_line_and_no_token(tmp_path, monkeypatch):
    """The real CLI, with no offline switch set: the user sees only our line, and the token in
    the environment appears nowhere. Without network (CI) the hub's host does not resolve, so
    the local cache alone is asked and the answer comes at once, saying why; with network,
    huggingface_hub answers (its retry lines must not leak either)."""
    from explorer.load.spec import unreachable_hub_host

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)      # as in the child's environment
    proc = subprocess.run([sys.executable, "-m", "explorer", "eval", "--model",
                           "no-such-org/no-such-model-4259", "--json"],
                          capture_output=True, text=True, env=_online_env(tmp_path), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: could not load 'no-such-org/no-such-model-4259' from the "
                               "Hugging Face hub")
    if unreachable_hub_host():
        assert "cannot be reached from this machine" in lines[0]
        assert "not in the local Hugging Face cache" in lines[0]
    assert FAKE_TOKEN not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_hub_model_in_the_local_cache_loads_without_network(tmp_path, tiny_factory,
                                                            monkeypatch):
    """A hub id downloaded earlier (here: written into the hub cache's layout by hand) loads
    on a machine whose hub host does not resolve, with no offline switch set."""
    import shutil

    from explorer.load.spec import unreachable_hub_host

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)      # as in the child's environment
    if not unreachable_hub_host():
        pytest.skip("the hub is reachable here: the offline path is not taken")
    repo = tmp_path / "hf" / "hub" / "models--some-org--tiny-cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_factory("llama", num_layers=4), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    proc = subprocess.run([sys.executable, "-m", "explorer", "eval", "--model",
                           "some-org/tiny-cached", "--text", "news", "--seqlen", "32",
                           "--max-tokens", "128", "--json"],
                          capture_output=True, text=True, env=_online_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["num_layers"] == 4 and result["ppl"] > 1
