"""Export: atomic writes, earlier results survive failures, and the result reloads with plain
transformers and gives the same perplexity.

Failures are injected (monkeypatching `save_pretrained` or the final rename to raise, after part of
the files were written): the thing under test, `explorer.export.folder.export`, runs for real.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from explorer import Variant, export, load_model, perplexity
from explorer.core.errors import ExplorerError
from explorer.export.folder import RECIPE_FILE
from explorer.apply.recipe import Recipe, merge_pairs
from tiny import SAMPLE_TEXT


def tree_digest(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary or backup folders that an export could leave beside its target."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture()
def first_export(tmp_path, tiny_lm) -> tuple[Path, dict[str, str]]:
    out = export(Variant.identity(tiny_lm).drop([1]), tmp_path / "result")
    return out, tree_digest(out)


class Crash(RuntimeError):
    pass


def test_failure_while_saving_weights_keeps_the_previous_result(first_export, tiny_lm,
                                                                monkeypatch):
    out, before = first_export
    model_cls = type(tiny_lm.model)
    real_save = model_cls.save_pretrained

    def save_half_then_crash(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)           # files really written...
        for f in Path(folder).glob("*.safetensors"):        # ...one of them cut short...
            f.write_bytes(f.read_bytes()[:100])
        raise Crash("disk pulled out mid-write")            # ...and the write fails

    monkeypatch.setattr(model_cls, "save_pretrained", save_half_then_crash)
    with pytest.raises(Crash):
        export(Variant.identity(tiny_lm).drop([2, 3]), out, overwrite=True)
    assert tree_digest(out) == before
    assert leftovers(out.parent, out.name) == []
    assert json_ops(out) == [{"op": "drop", "layers": [1], "summary": "drop 1"}]


def test_failure_while_saving_tokenizer_keeps_the_previous_result(first_export, tiny_lm,
                                                                  monkeypatch):
    out, before = first_export

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tiny_lm.tokenizer), "save_pretrained", crash)
    with pytest.raises(ExplorerError, match="No space left on device"):
        export(Variant.identity(tiny_lm).drop([0]), out, overwrite=True)
    assert tree_digest(out) == before and leftovers(out.parent, out.name) == []


def test_interrupt_keeps_the_previous_result(first_export, tiny_lm, monkeypatch):
    out, before = first_export

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tiny_lm.model), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(Variant.identity(tiny_lm).drop([0]), out, overwrite=True)
    assert tree_digest(out) == before and leftovers(out.parent, out.name) == []


def test_failure_of_the_final_rename_restores_the_previous_result(first_export, tiny_lm,
                                                                  monkeypatch):
    out, before = first_export
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == out and ".tmp-" in self.name:    # the new folder moving into place
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ExplorerError, match="could not write .* Input/output error"):
        export(Variant.identity(tiny_lm).drop([0]), out, overwrite=True)
    assert tree_digest(out) == before and leftovers(out.parent, out.name) == []


def test_existing_name_is_kept_without_overwrite(first_export, tiny_lm):
    out, before = first_export
    with pytest.raises(ExplorerError, match="already exists"):
        export(Variant.identity(tiny_lm).drop([0]), out)
    assert tree_digest(out) == before


def test_successful_overwrite_replaces_cleanly(first_export, tiny_lm):
    out, before = first_export
    export(Variant.identity(tiny_lm).drop([0, 5]), out, overwrite=True)
    assert tree_digest(out) != before and leftovers(out.parent, out.name) == []
    assert json_ops(out)[0]["layers"] == [0, 5]


def json_ops(folder: Path) -> list[dict]:
    return Recipe.from_json((folder / RECIPE_FILE).read_bytes()).ops


@pytest.mark.parametrize("edit", ["drop", "merge"])
def test_export_reloads_with_plain_transformers_and_same_perplexity(tmp_path, tiny_lm, edit):
    from transformers import AutoModelForCausalLM

    v = Variant.identity(tiny_lm)
    v = v.drop([1, 4]) if edit == "drop" else merge_pairs(v, [(2, 3)])
    out = export(v, tmp_path / f"exported-{edit}")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.num_hidden_layers == v.num_layers
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad(), v.applied() as model:
        want = model(input_ids=ids).logits
    with torch.no_grad():
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ppl_variant = perplexity(tiny_lm, SAMPLE_TEXT, variant=v, seqlen=32, max_tokens=256).ppl
    ppl_export = perplexity(load_model(str(out)), SAMPLE_TEXT, seqlen=32, max_tokens=256).ppl
    assert ppl_export == pytest.approx(ppl_variant, rel=1e-5)
    # and the recipe stored beside it rebuilds the same variant on the original model
    again = Recipe.from_json((out / RECIPE_FILE).read_bytes()).build(tiny_lm)
    assert again.layer_labels() == v.layer_labels()


def test_unwritable_output_folder_is_one_line(tmp_path, tiny_factory):
    """/proc cannot hold a folder; the CLI says so in one line, naming the folder and the reason."""
    import io

    from explorer.cli import main

    folder = str(tiny_factory("llama", num_layers=4))
    err = io.StringIO()
    assert main(["export", "--model", folder, "--drop", "3", "--out", "/proc/x"], stderr=err) == 2
    line = err.getvalue()
    assert line.count("\n") == 1 and ".tmp-" not in line
    assert line.startswith("error: cannot write into the folder '/proc' (")
    assert line.rstrip().endswith("choose a writable output folder")
    # a file where a parent folder should be: the same kind of line
    (tmp_path / "file").write_text("not a folder")
    err = io.StringIO()
    assert main(["export", "--model", folder, "--drop", "3", "--out",
                 str(tmp_path / "file" / "out")], stderr=err) == 2
    assert err.getvalue().startswith(f"error: cannot write into the folder '{tmp_path / 'file'}'")
    assert err.getvalue().count("\n") == 1
