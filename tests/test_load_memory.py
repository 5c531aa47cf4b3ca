"""Memory: estimates before loading, refusal when a model cannot fit, one resident model,
variants that share the unchanged layers, and small session state.

The "cannot fit" cases are real: a 200 GiB model written as a sparse safetensors file (its header
is real, its data takes no disk) is refused against this machine's real free memory, quickly and
without reading any weight; the operator's budget (LAYER_EXPLORER_MAX_MEMORY_MB) is exercised on
a real tiny model.
"""

from __future__ import annotations

import gc
import json
import struct
import weakref
from pathlib import Path

import pytest
import torch

from explorer import Recipe, Variant, load_model
from explorer.core.errors import ModelLoadError
from explorer.core.settings import SettingError
from explorer.load.memory import available_bytes, config_numel, estimate_model_bytes
from explorer.apply.recipe import merge_pairs
from explorer.core import session

pytestmark = pytest.mark.usefixtures("clean_registry")   # no other module's model stays resident


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_estimate_from_safetensors_headers_is_exact(tiny_factory):
    from transformers import AutoConfig

    folder = tiny_factory("llama", num_layers=4)
    config = AutoConfig.from_pretrained(folder)
    lm = load_model(str(folder))
    assert estimate_model_bytes(folder, config, torch.float32) == param_bytes(lm.model)
    assert estimate_model_bytes(folder, config, torch.bfloat16) == param_bytes(lm.model) // 2


def test_estimate_from_a_sharded_index(tiny_factory, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_factory("llama", num_layers=4))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    config = AutoConfig.from_pretrained(tmp_path)
    assert estimate_model_bytes(tmp_path, config, torch.float32) == param_bytes(model)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "phi3"])
def test_config_only_estimate_is_close(tiny_factory, family):
    """For hub ids (no local files yet) the count comes from the model the config builds on the
    meta device: exact, for every family."""
    from transformers import AutoConfig

    folder = tiny_factory(family, num_layers=4)
    lm = load_model(str(folder))
    real = lm.num_parameters
    est = config_numel(AutoConfig.from_pretrained(folder))
    assert est == real, (family, est, real)


def _fake_huge_model(folder: Path, tiny: Path, gib: int) -> None:
    """A model folder whose one safetensors file claims `gib` GiB of fp32 weights (sparse file)."""
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    rows = gib * 2**30 // (4 * 4096)
    header = json.dumps({"model.embed_tokens.weight": {
        "dtype": "F32", "shape": [rows, 4096], "data_offsets": [0, rows * 4096 * 4]}}).encode()
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + rows * 4096 * 4)


def test_a_model_larger_than_free_memory_is_refused_before_reading(tiny_factory, tmp_path):
    folder = tmp_path / "huge"
    _fake_huge_model(folder, tiny_factory("llama", num_layers=4), gib=200)
    free = available_bytes(torch.device("cpu"))
    assert free < 200 * 2**30          # this test needs a machine with less than 200 GiB free
    import safetensors.torch
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were opened: the refusal came too late")

    with pytest.MonkeyPatch.context() as mp:       # refused before any weight is read
        mp.setattr(safetensors.torch, "load_file", no_weights)
        mp.setattr(safetensors, "safe_open", no_weights)
        mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
        with pytest.raises(ModelLoadError) as info:
            load_model(str(folder), device="cpu", offload="none")
    msg = str(info.value)
    assert "needs about 240.00 GiB in float32 but only" in msg and "is free on cpu" in msg
    # bf16 halves the estimate, still far too big
    with pytest.raises(ModelLoadError, match="needs about 120.00 GiB in bfloat16"):
        load_model(str(folder), device="cpu", dtype="bfloat16", offload="none")


def test_operator_budget_and_dtype(tiny_factory, monkeypatch):
    folder = tiny_factory("llama", num_layers=4)
    fp32 = estimate_model_bytes(folder, load_model(str(folder)).config, torch.float32)
    # a budget between the bf16 and the fp32 needs: fp32 refused, bf16 loads
    monkeypatch.setenv("LAYER_EXPLORER_MAX_MEMORY_MB", str(fp32 * 0.9 / 2**20))
    with pytest.raises(ModelLoadError, match=r"needs about .* in float32 but only .* is free on cpu"):
        load_model(str(folder), offload="none")
    lm = load_model(str(folder), dtype="bfloat16", offload="none")
    assert lm.dtype == torch.bfloat16
    monkeypatch.setenv("LAYER_EXPLORER_MAX_MEMORY_MB", "lots")
    with pytest.raises(SettingError, match="LAYER_EXPLORER_MAX_MEMORY_MB must be a number of MiB"):
        load_model(str(folder))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_free_memory_is_read_from_the_device():
    free, total = torch.cuda.mem_get_info()
    got = available_bytes(torch.device("cuda"))
    assert 0 < got <= total and abs(got - free) < 2**30


# -- one resident model ---------------------------------------------------------------------------
def test_get_model_keeps_one_model_resident(tiny_factory):
    a_path, b_path = tiny_factory("llama", num_layers=4), tiny_factory("qwen2", num_layers=4)
    assert session.current_model() is None          # clean_registry: nothing left by other modules
    try:
        a = session.get_model(str(a_path))
        assert session.get_model(str(a_path)) is a and session.current_model() is a
        gone = weakref.ref(a.model)
        del a
        b = session.get_model(str(b_path))
        gc.collect()
        assert gone() is None                      # the first model was freed, not kept
        assert session.current_model() is b
        # inputs refused before any weight is read do not unload the working model
        released = []
        for bad, fragment in (("/nonexistent/model", "does not exist"),
                              ("no-such-org/no-such-model-4259", "from the Hugging Face hub"),
                              (str(tiny_factory("gpt2", num_layers=2).parent), "no config.json")):
            with pytest.raises(ModelLoadError, match=fragment):
                session.get_model(bad, on_release=lambda: released.append(1))
            assert session.current_model() is b and released == []
        # another dtype is another model: it replaces the resident one, telling the caller first
        c = session.get_model(str(b_path), dtype="bfloat16", on_release=lambda: released.append(1))
        assert c is not b and c.dtype == torch.bfloat16 and session.current_model() is c
        assert released == [1]
    finally:
        session.release_model()
    assert session.current_model() is None


# -- variants share memory ------------------------------------------------------------------------
def test_variants_share_unchanged_layers(tiny_lm):
    lm = tiny_lm
    orig = lm.original_layers
    layer_bytes = param_bytes(orig[0])
    dropped = Variant.identity(lm).drop([1, 4])
    assert dropped.extra_bytes() == 0
    merged = merge_pairs(Variant.identity(lm), [(0, 1), (3, 4)])
    assert merged.extra_bytes() == 2 * layer_bytes     # exactly the two new layers
    with merged.applied() as model:
        live = lm.arch.layer_list(model)
        assert len(live) == 4
        # slots: new(0,1), 2, new(3,4), 5 -> layers 2 and 5 are the originals, same storage
        for slot, original in ((1, 2), (3, 5)):
            for p_live, p_orig in zip(live[slot].parameters(), orig[original].parameters()):
                assert p_live.data_ptr() == p_orig.data_ptr()
        for slot in (0, 2):
            assert all(p.data_ptr() not in {q.data_ptr() for q in orig.parameters()}
                       for p in live[slot].parameters())


def test_session_state_is_small(tiny_lm):
    """What a session keeps (a recipe) is a few hundred bytes, whatever the model's size."""
    v = merge_pairs(Variant.identity(tiny_lm).drop([5]), [(0, 1)])
    text = Recipe.of(v, results={"ppl_before": 1.0, "ppl_after": 2.0}).to_json()
    assert len(text.encode()) < 2048
    again = Recipe.from_json(text).build(tiny_lm)
    assert again.layer_labels() == v.layer_labels()


def test_gguf_conversion_is_refused_when_it_cannot_fit(tmp_path, monkeypatch):
    """Converting a GGUF dequantizes it to fp32 on CPU (up to ~8x the file): checked first."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64 * 1024))
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LAYER_EXPLORER_MAX_MEMORY_MB", "0.25")
    with pytest.raises(ModelLoadError, match=r"'model.gguf' needs about 614 KiB in float32 but "
                                             r"only 256 KiB is free on cpu"):
        load_model(str(gguf))
