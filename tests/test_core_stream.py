"""Layer-major execution (explorer/core/stream.py): the same figures as the batch-major pass, for every
family, from RAM and streamed from the safetensors shards; the loaded weights untouched and no
layer swapped into the model; offload chosen when a model does not fit; bad input in one line."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from explorer import Variant, load_model
from explorer.core.backbone import run_backbone
from explorer.core.errors import ExplorerError, ModelLoadError
from explorer.evaluate.perplexity import perplexity
from explorer.measure.measures import similarity
from explorer.probe.probe import probe
from explorer.core.stream import BoundaryStore, run_layer_major
from tiny import SAMPLE_TEXT, state_checksum

FAMILIES = ["llama", "qwen2", "gemma3_text", "gpt2"]
PPL = dict(seqlen=64, max_tokens=1536, batch_size=4)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _similar(a, b) -> float:
    return float((similarity(a, "cosine") - similarity(b, "cosine")).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_figures_equal_the_in_memory_ones(tiny_factory, family):
    folder = tiny_factory(family, num_layers=5)
    lm = load_model(str(folder))
    before = state_checksum(lm.model)
    own_layers = lm.arch.layer_list(lm.model)
    disk = load_model(str(folder), offload="disk")
    assert disk.weights.kind == "disk"
    # no decoder-layer weight was loaded: they stay on the meta device
    assert all(p.is_meta for p in disk.arch.layer_list(disk.model).parameters())

    drop = Variant.identity(lm).drop([1, 3])
    merge = Variant.identity(lm).merge([2, 3], [0.5, 0.5])
    for v in (None, drop, merge):
        ref = perplexity(lm, SAMPLE_TEXT, variant=v, cache=False, **PPL)
        got = perplexity(lm, SAMPLE_TEXT, variant=v, cache=False, layer_major=True, **PPL)
        assert _rel(got.ppl, ref.ppl) <= 1e-6
        assert got.window_nll == pytest.approx(ref.window_nll, rel=1e-6)
    for v_mem, v_disk in ((None, None), (drop, Variant.identity(disk).drop([1, 3]))):
        ref = perplexity(lm, SAMPLE_TEXT, variant=v_mem, cache=False, **PPL)
        got = perplexity(disk, SAMPLE_TEXT, variant=v_disk, cache=False, **PPL)
        assert _rel(got.ppl, ref.ppl) <= 1e-6

    pr = probe(lm, SAMPLE_TEXT, seqlen=32, num_samples=6, batch_size=4)
    assert _similar(probe(lm, SAMPLE_TEXT, seqlen=32, num_samples=6, batch_size=4,
                          layer_major=True), pr) <= 1e-5
    pd = probe(disk, SAMPLE_TEXT, seqlen=32, num_samples=6, batch_size=4)
    assert _similar(pd, pr) <= 1e-5
    torch.testing.assert_close(pd.states, pr.states, rtol=0, atol=0)

    # the loaded weights are bit-identical and the model still holds its own layer list
    assert state_checksum(lm.model) == before
    assert lm.arch.layer_list(lm.model) is own_layers
    assert all(p.is_meta for p in disk.arch.layer_list(disk.model).parameters())


def test_start_stop_record_and_capture_match_run_backbone(tiny_factory):
    lm = load_model(str(tiny_factory("gemma3_text", num_layers=5)))
    v = Variant.identity(lm).drop([0])
    ids = torch.randint(3, 200, (5, 24), generator=torch.Generator().manual_seed(1))

    def collect(**kw):
        out = list(run_backbone(lm, ids, variant=v, batch_size=2, **kw))
        hidden = torch.cat([b.hidden for b in out])
        states = {k: torch.cat([b.states[k] for b in out]) for k in out[0].states}
        return hidden, states, out

    h0, s0, _ = collect(record=range(5), final_norm=True)
    h1, s1, _ = collect(record=range(5), final_norm=True, layer_major=True)
    assert torch.equal(h0, h1) and all(torch.equal(s0[k], s1[k]) for k in s0)
    # from boundary 2 to 3, with the call captured
    a = collect(start=2, start_states=s0[2], stop=3, capture_call=True)
    b = collect(start=2, start_states=s0[2], stop=3, capture_call=True, layer_major=True)
    assert torch.equal(a[0], b[0]) and torch.equal(b[0], s0[3])
    x = s0[2][:2]
    assert torch.equal(b[2][0].call.run(v.layer(2), x), a[2][0].call.run(v.layer(2), x))


def test_states_spill_to_disk_within_the_budget(tiny_factory, tmp_path):
    lm = load_model(str(tiny_factory("llama", num_layers=4)))
    ids = torch.randint(3, 200, (6, 16), generator=torch.Generator().manual_seed(2))
    ref = torch.cat([b.hidden for b in run_backbone(lm, ids, batch_size=2)])
    store = BoundaryStore(budget=2 * 16 * 32 * 4, folder=tmp_path)   # one batch in RAM
    got = torch.cat([b.hidden for b in run_layer_major(lm, ids, batch_size=2, record=[1, 3],
                                                       store=store)])
    assert torch.equal(got, ref)
    assert store.peak_ram_bytes <= store.budget and list(tmp_path.iterdir())
    store.close()
    assert not list(tmp_path.iterdir())           # the temporary folder is gone


def test_layer_major_needs_no_lock(tiny_factory):
    """A layer-major pass swaps nothing into the model, so it runs while another thread holds
    the model's lock (as a running Apply would)."""
    lm = load_model(str(tiny_factory("llama", num_layers=4)))
    ids = torch.randint(3, 200, (3, 16), generator=torch.Generator().manual_seed(3))
    v = Variant.identity(lm).drop([2])
    ref = torch.cat([b.hidden for b in run_backbone(lm, ids, variant=v)])
    out: list = []
    with lm.lock:
        t = threading.Thread(target=lambda: out.append(torch.cat(
            [b.hidden for b in run_backbone(lm, ids, variant=v, layer_major=True)])))
        t.start()
        t.join(timeout=60)
    assert out and torch.equal(out[0], ref)


@pytest.mark.slow
def test_default_model_streamed(smol, wiki):
    """SmolLM2-135M-Instruct (Q4_1): perplexity (dense and a drop variant) and the probe's similarity, layer-major
    from RAM and streamed from its safetensors folder, against the batch-major pass."""
    before = state_checksum(smol.model)
    kw = dict(seqlen=256, max_tokens=1024)
    v = Variant.identity(smol).drop([14, 20])
    dense = perplexity(smol, wiki.evaluation, cache=False, **kw)
    drop = perplexity(smol, wiki.evaluation, variant=v, cache=False, **kw)
    assert _rel(perplexity(smol, wiki.evaluation, cache=False, layer_major=True, **kw).ppl,
                dense.ppl) <= 1e-6
    disk = load_model(smol.source, offload="disk")
    assert _rel(perplexity(disk, wiki.evaluation, cache=False, **kw).ppl, dense.ppl) <= 1e-6
    vd = Variant.identity(disk).drop([14, 20])
    assert _rel(perplexity(disk, wiki.evaluation, variant=vd, cache=False, **kw).ppl,
                drop.ppl) <= 1e-6
    pk = dict(seqlen=64, num_samples=4)
    assert _similar(probe(disk, wiki.calibration, **pk), probe(smol, wiki.calibration, **pk)) \
        <= 1e-5
    assert state_checksum(smol.model) == before


def test_dense_cache_on_a_streamed_model(tiny_factory):
    """The dense figure and a variant started from the cached dense states: the same figures as
    the in-memory model's full passes."""
    folder = tiny_factory("qwen2", num_layers=5)
    lm = load_model(str(folder))
    disk = load_model(str(folder), offload="disk")
    for mem, streamed in ((Variant.identity(lm), Variant.identity(disk)),
                          (Variant.identity(lm).drop([3]), Variant.identity(disk).drop([3]))):
        ref = perplexity(lm, SAMPLE_TEXT, variant=mem, cache=False, **PPL)
        got = perplexity(disk, SAMPLE_TEXT, variant=streamed, **PPL)
        assert _rel(got.ppl, ref.ppl) <= 1e-6
    assert got.start > 0                      # the variant ran from a stored dense boundary


def test_auto_offload_when_the_model_does_not_fit(tiny_factory, monkeypatch):
    folder = tiny_factory("llama", num_layers=4)
    lm = load_model(str(folder))
    monkeypatch.setenv("LAYER_EXPLORER_MAX_MEMORY_MB", str(lm._parameter_bytes * 0.8 / 2**20))
    lines: list[str] = []
    streamed = load_model(str(folder), progress=lambda e: lines.append(e.describe()))
    assert streamed.weights is not None and streamed.weights.kind == "disk"
    assert any("does not fit" in m and "read one at a time" in m for m in lines)
    ref = perplexity(lm, SAMPLE_TEXT, cache=False, **PPL)
    assert _rel(perplexity(streamed, SAMPLE_TEXT, cache=False, **PPL).ppl, ref.ppl) <= 1e-6
    with pytest.raises(ModelLoadError, match="needs about"):
        load_model(str(folder), offload="none")
    # offload="cpu": layers in RAM, layer-major (here the compute device is the CPU too)
    ram = load_model(str(folder), offload="cpu")
    assert ram.weights.kind == "cpu"
    assert _rel(perplexity(ram, SAMPLE_TEXT, cache=False, **PPL).ppl, ref.ppl) <= 1e-6


def test_cpu_and_disk_device_map(tiny_factory, tmp_path):
    """accelerate's device map on a CPU-only machine: some layers in RAM, the rest offloaded to a
    folder on disk; probe and perplexity equal the in-memory model's, batch- and layer-major."""
    folder = tiny_factory("llama", num_layers=5)
    lm = load_model(str(folder))
    mapped = load_model(str(folder), device_map="auto", max_memory="cpu=150KB",
                        offload_folder=str(tmp_path / "offload"))
    placed = set(mapped.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}
    ref = perplexity(lm, SAMPLE_TEXT, cache=False, **PPL)
    for major in (False, True):
        got = perplexity(mapped, SAMPLE_TEXT, cache=False, layer_major=major, **PPL)
        assert _rel(got.ppl, ref.ppl) <= 1e-6
    pk = dict(seqlen=32, num_samples=4)
    assert _similar(probe(mapped, SAMPLE_TEXT, **pk), probe(lm, SAMPLE_TEXT, **pk)) <= 1e-5


@pytest.mark.parametrize("kw, match", [
    (dict(max_memory="cpu=lots"), "is not a memory size"),
    (dict(max_memory="cpu=1GiB,2GiB"), "device=size"),
    (dict(max_memory="gpu7=1GiB"), "unknown device"),
    (dict(offload="tape"), "unknown offload"),
    # a tiny llama layer: q, o 32x32, k, v 16x32, MLP 3 x 32x64, two norms of 32 = 9280 fp32
    (dict(offload="disk", max_memory="cpu=20KB"), r"smallest decoder layer takes 36 KiB \(fp32"),
])
def test_bad_offload_input_is_one_line(tiny_factory, kw, match):
    with pytest.raises(ExplorerError, match=match) as info:
        load_model(str(tiny_factory("llama", num_layers=4)), **kw)
    assert "\n" not in str(info.value)


def test_unwritable_offload_folder(tiny_factory, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExplorerError, match="cannot be written") as info:
        load_model(str(tiny_factory("llama", num_layers=4)), offload="disk",
                   offload_folder=str(blocker / "sub"))
    assert "\n" not in str(info.value)


def test_cli_offload_flags(tiny_factory, tmp_path, capsys):
    """`eval --offload disk` gives the in-memory figure; a malformed --max-memory and an
    unwritable --offload-folder exit 2 with one line."""
    import io
    import json

    from explorer.cli import main

    folder = tiny_factory("llama", num_layers=4)
    text = tmp_path / "t.txt"
    text.write_text(SAMPLE_TEXT)
    base = ["eval", "--model", str(folder), "--text", str(text), "--seqlen", "64",
            "--max-tokens", "1024", "--json"]
    assert main(base + ["--offload", "disk", "--drop", "1"]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    assert "its layers stay on disk and are read one at a time" in cap.err
    lm = load_model(str(folder))
    drop = perplexity(lm, SAMPLE_TEXT, variant=Variant.identity(lm).drop([1]), seqlen=64,
                      max_tokens=1024, cache=False)
    assert _rel(got["ppl"], drop.ppl) <= 1e-6
    for extra, match in ((["--max-memory", "cpu=much"], "is not a memory size"),
                         (["--offload-folder", str(text / "x")], "cannot be written")):
        err = io.StringIO()
        assert main(base + extra, stderr=err) == 2
        line = err.getvalue()
        assert match in line and line.count("\n") == 1


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_streamed_export_reloads_to_the_same_figure(tiny_factory, tmp_path, family):
    """A variant (a drop and a sub-block drop) of a model whose layers stay on disk is written
    shard by shard with an index; plain transformers loads it, and its perplexity is the
    in-memory variant's."""
    from transformers import AutoModelForCausalLM

    from explorer.core import stream
    from explorer.export.folder import export

    folder = tiny_factory(family, num_layers=5)
    lm = load_model(str(folder))
    disk = load_model(str(folder), offload="disk")
    v = Variant.identity(lm).drop([1]).drop_part(2, "mlp")
    vd = Variant.identity(disk).drop([1]).drop_part(2, "mlp")
    ref = perplexity(lm, SAMPLE_TEXT, variant=v, cache=False, **PPL)
    assert _rel(perplexity(disk, SAMPLE_TEXT, variant=vd, cache=False, **PPL).ppl,
                ref.ppl) <= 1e-6
    out = tmp_path / "out"
    old = stream.save_streamed.__defaults__
    stream.save_streamed.__defaults__ = (60_000,)        # small shards: several files
    try:
        export(vd, out)
    finally:
        stream.save_streamed.__defaults__ = old
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    plain = AutoModelForCausalLM.from_pretrained(str(out))
    assert plain.config.num_hidden_layers == 4
    again = load_model(str(out))
    assert _rel(perplexity(again, SAMPLE_TEXT, cache=False, **PPL).ppl, ref.ppl) <= 1e-6


@pytest.mark.parametrize("method", ["sleb", "blockpruner"])
def test_perplexity_searches_on_a_streamed_model(tiny_factory, method):
    """SLEB and BlockPruner (perplexity-guided, through run_windows and the dense cache) pick the
    same layers with the same scores when the model streams its layers from disk."""
    from explorer.plan import compress

    folder = tiny_factory("llama", num_layers=5)
    kw = dict(remove=2, calibration=SAMPLE_TEXT, seqlen=32, num_samples=8)
    a = compress(load_model(str(folder)), method, **kw)
    b = compress(load_model(str(folder), offload="disk"), method, **kw)
    assert b.variant.layer_labels() == a.variant.layer_labels()
    assert a.scores.keys() == b.scores.keys() and a.scores
    for key, values in a.scores.items():
        for x, y in zip(values, b.scores[key], strict=True):
            assert (x is None and y is None) or _rel(y, x) <= 1e-6


def test_a_full_disk_while_spilling_states_leaves_nothing(tiny_factory, tmp_path, monkeypatch):
    """The disk filling up while boundary states spill to files: one line, and the temporary
    folder is gone."""
    import errno

    import numpy as np

    folder = tmp_path / "offload"
    lm = load_model(str(tiny_factory("llama", num_layers=4)), offload="cpu",
                    offload_folder=str(folder))
    monkeypatch.setenv("LAYER_EXPLORER_STREAM_STATE_MB", "0")      # every state to a file
    writes = {"n": 0}

    def full(raw: np.ndarray, path) -> None:        # two files fit, then the disk is full
        writes["n"] += 1
        if writes["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        raw.tofile(path)

    monkeypatch.setattr("explorer.core.stream._write_raw", full)
    with pytest.raises(ExplorerError, match="No space left on device") as info:
        perplexity(lm, SAMPLE_TEXT, cache=False, **PPL)
    assert "\n" not in str(info.value)
    assert writes["n"] == 3 and not list(folder.iterdir())     # its temporary folder is gone


@pytest.mark.parametrize("method", ["mka", "laco", "come", "streamline"])
def test_merging_and_fitted_methods_on_layers_left_on_disk(tiny_factory, method):
    """Merges and the fitted methods read the weights of layers that stay on disk (fetched, one
    layer at a time): the same plan and the same perplexity as with the model in memory."""
    from explorer.plan import compress

    folder = tiny_factory("llama", num_layers=5)
    kw = dict(remove=2, calibration=SAMPLE_TEXT, seqlen=32, num_samples=8)
    if method in ("come", "streamline"):
        kw.update({"come": {"recover_steps": 3}, "streamline": {"steps": 5}}[method])
    mem = load_model(str(folder))
    disk = load_model(str(folder), offload="disk")
    before = state_checksum(mem.model)
    a, b = compress(mem, method, **kw), compress(disk, method, **kw)
    assert b.variant.layer_labels() == a.variant.layer_labels()
    pa = perplexity(mem, SAMPLE_TEXT, variant=a.variant, cache=False, **PPL).ppl
    pb = perplexity(disk, SAMPLE_TEXT, variant=b.variant, cache=False, **PPL).ppl
    assert _rel(pb, pa) <= 1e-6
    assert state_checksum(mem.model) == before
    assert all(p.is_meta for p in disk.original_layers.parameters())    # nothing kept loaded


@pytest.mark.parametrize("mode,params", [("closed-form", {}), ("prunecomp", {}),
                                         ("linearpatch", {}),
                                         ("layerwise", {"steps": 4}),
                                         ("distill", {"steps": 2,
                                                      "init": "closed-form"})])
def test_healing_on_layers_left_on_disk_equals_in_memory(tiny_factory, mode, params):
    """Healing fitted slot by slot on a model whose layers stay on disk: the same healed
    perplexity as in memory (closed forms and training alike)."""
    from explorer.heal import heal

    folder = tiny_factory("llama", num_layers=6)
    kw = dict(calibration=SAMPLE_TEXT, seqlen=32, held_out=2, **params)
    kw.setdefault("windows", 12)
    out = []
    for lm in (load_model(str(folder)), load_model(str(folder), offload="disk")):
        r = heal(Variant.identity(lm).drop([2, 3]), mode, **kw)
        out.append(perplexity(lm, SAMPLE_TEXT, variant=r.variant, cache=False, **PPL).ppl)
    assert _rel(out[1], out[0]) <= 1e-5, out


def test_generation_runs_with_layers_on_disk_and_gives_the_same_text(tiny_factory):
    """Generation has one path (explorer.evaluate.generate): with the layers left on disk it runs without a
    KV cache, one layer-major pass per new token, and writes what the model in memory writes."""
    from explorer import generate

    folder = tiny_factory("llama", num_layers=4)
    mem = load_model(str(folder))
    want = generate(mem, ["Hello", "The"], max_new_tokens=5)
    assert want == generate(load_model(str(folder), offload="disk"), ["Hello", "The"],
                            max_new_tokens=5)
    assert want == generate(load_model(str(folder), offload="cpu"), ["Hello", "The"],
                            max_new_tokens=5)


def test_capability_check_on_layers_left_on_disk(tiny_factory):
    """The capability check (next-token and cloze accuracy, and the generative agreement, whose
    greedy continuations run without a KV cache when the layers stay on disk) gives the
    in-memory model's figures."""
    from explorer.evaluate.capability import capability, generation_prompts
    from explorer.evaluate.generate import greedy_continuations

    folder = tiny_factory("llama", num_layers=5)
    mem, disk = load_model(str(folder)), load_model(str(folder), offload="disk")
    prompts = generation_prompts(mem, SAMPLE_TEXT, num_prompts=3, prompt_tokens=8)
    va, vb = Variant.identity(mem).drop([2]), Variant.identity(disk).drop([2])
    assert torch.equal(greedy_continuations(disk, prompts, vb, new_tokens=6),
                       greedy_continuations(mem, prompts, va, new_tokens=6))
    kw = dict(seqlen=32, num_prompts=3, prompt_tokens=8, new_tokens=6)
    a = capability(mem, SAMPLE_TEXT, variant=va, **kw)
    b = capability(disk, SAMPLE_TEXT, variant=vb, **kw)
    assert a.generation is not None

    def figures(report) -> dict:
        return {key: {k: v for k, v in run.items() if "second" not in k}
                for key, run in report.to_dict().items() if isinstance(run, dict)}

    assert figures(b) == figures(a)
