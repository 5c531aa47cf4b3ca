"""Write a variant as an ordinary transformers folder, plus its recipe.

The folder holds safetensors weights, config.json (with the new `num_hidden_layers` and
`layer_types`), the tokenizer and `layer_explorer_recipe.json`; `AutoModelForCausalLM.from_pretrained`
loads it with nothing from Layer Explorer installed.

Writes are atomic: everything goes to a temporary folder beside the target, which is renamed into
place only when complete. An existing folder of the same name is kept until the new one is in place,
so a failed export never destroys an earlier result.

Example:
    >>> export(variant, "out/smollm2-drop14", recipe=Recipe.of(variant))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from explorer.core.errors import ExplorerError, LayerError, named_line, one_line
from explorer.apply.recipe import Recipe
from explorer.core.settings import get
from explorer.core.variant import Variant

RECIPE_FILE = "layer_explorer_recipe.json"


def output_root(root: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """The folder exports are confined to: `root`, else $LAYER_EXPLORER_OUTPUT_DIR, else None."""
    return root if root is not None else get("LAYER_EXPLORER_OUTPUT_DIR")


def safe_output_path(name: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """`name` resolved inside `root` (when given); refuses paths that escape it ("../x", "/etc",
    a symlink pointing outside), the root itself, and names that are not valid paths."""
    if not str(name).strip() or "\x00" in str(name):
        raise ExplorerError(f"export path {str(name)!r} is not a valid folder name")
    if root is None:
        return Path(name).expanduser().resolve()
    base = Path(root).expanduser().resolve()
    target = (base / Path(name)).resolve()   # resolves "..", and symlinks to where they point
    if target == base or base not in target.parents:
        raise ExplorerError(f"export path '{name}' must be a sub-folder of the output folder "
                            f"({base})")
    return target


def check_exportable(variant: Variant) -> None:
    """Raise a one-line LayerError when a layer of `variant` is not of the model's own decoder
    layer class (a replacement map, say): transformers could not load such a folder."""
    originals = variant.lm.original_layers
    layer_type = type(originals[0])
    for s in variant.new_layers():
        if type(s.module) is not layer_type:
            raise LayerError(f"layer '{s.label}' is a {type(s.module).__name__}, not a "
                             f"{layer_type.__name__}: transformers could not load it. Choose a "
                             "method variant that yields a standard decoder layer to export.")
        shapes = {n: p.shape for n, p in originals[s.like].named_parameters()}
        for n, p in s.module.named_parameters():
            if shapes.get(n) != p.shape:
                raise LayerError(f"layer '{s.label}' has parameter {n} of shape {tuple(p.shape)}, "
                                 f"unlike the model's {tuple(shapes.get(n, ()))}: it cannot be saved "
                                 "in this architecture's config")


def export(variant: Variant, out: str | os.PathLike, *, recipe: Recipe | None = None,
           root: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Save `variant` as a transformers model folder at `out` (inside `root` when given).

    Every failure to write (a folder that cannot be created or written, a full disk) is an
    ExplorerError whose one line names the folder and the system's reason.
    """
    target = safe_output_path(out, output_root(root))
    try:
        exists = target.exists()
    except OSError as exc:
        raise ExplorerError(f"cannot use the export path '{target}': {_reason(exc)}") from None
    if exists and not overwrite:
        raise ExplorerError(f"'{target}' already exists; choose another name or allow overwrite")
    check_exportable(variant)
    recipe = recipe or Recipe.of(variant)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise ExplorerError(f"cannot write into the folder '{target.parent}' ({_reason(exc)}): "
                            "choose a writable output folder") from None
    try:
        _write(variant, recipe, tmp, target)
    except OSError as exc:  # disk full, permissions: the user's problem, said in one line
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExplorerError(f"could not write '{target}': {_reason(exc)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _reason(exc: OSError) -> str:
    """The system's reason without the temporary file names: "Permission denied"."""
    return exc.strerror or one_line(exc)


def _usual_modes(folder: Path) -> None:
    """Give the folder and its files the modes a plain `mkdir` and `open` would (0755 and 0644
    under the usual umask 022): the temporary folder is made private (0700) and some writers
    (safetensors) make private files (0600), which would leave the export half unreadable to
    the other users of the machine or to a web server."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask sets it, for every thread at
    once); 0o022 where /proc does not say."""
    try:
        for row in Path("/proc/self/status").read_text().splitlines():
            if row.startswith("Umask:"):
                return int(row.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _write(variant: Variant, recipe: Recipe, tmp: Path, target: Path) -> None:
    """Write the model into `tmp`, check it (the layers its config builds are the variant's;
    reloaded, it gives the variant's logits: `selfcheck.check_export`, written beside it as
    layer_explorer_check.json), then move it to `target`, keeping an earlier `target` until the
    new one is in place."""
    from transformers import AutoConfig

    from explorer.apply.layer_config import check_structure
    from explorer.load.selfcheck import check_export

    if variant.lm.weights is not None:     # offloaded layers: written one at a time, sharded
        from explorer.core.stream import save_streamed

        save_streamed(variant, tmp)
    else:
        with variant.applied() as model:
            try:
                model.save_pretrained(tmp)
            except (ValueError, KeyError, TypeError) as exc:   # transformers' checks of the config
                raise LayerError(f"transformers cannot save this {variant.lm.arch.family} "
                                 f"variant ({named_line(exc)}): its config cannot describe "
                                 "these layers") from None
    try:
        saved = AutoConfig.from_pretrained(tmp)
    except Exception as exc:
        raise LayerError(f"the saved {variant.lm.arch.family} config does not load back "
                         f"({named_line(exc)})") from None
    check_structure(variant.lm, variant, saved)
    check_export(variant, tmp)        # reloaded with plain transformers: the variant's logits
    variant.lm.tokenizer.save_pretrained(tmp)
    recipe.save(tmp / RECIPE_FILE, variant.lm)     # + the fitted ops' tensors, if any
    _usual_modes(tmp)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:  # put the previous result back where it was
            (old / target.name).rename(target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
