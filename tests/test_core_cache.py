"""The one cache service (explorer.core.cache): bounds in entries and bytes, least recently used out,
computed once under concurrency, a result computed across a clear not kept, model-bound stores
emptied when the resident model goes, JSON values on disk, and one place to list, size and clear
every store of the package."""

from __future__ import annotations

import threading

from pathlib import Path

import pytest

from explorer.core import cache
from explorer.core.cache import Disk, Store
from explorer.core.errors import ExplorerError


def test_bounds_in_entries_and_bytes_drop_the_least_recently_used():
    s = Store("test entries", size=3)
    for k in "abc":
        s.put(k, k.upper())
    assert s.get("a") == "A"                 # a is now the most recently used
    s.put("d", "D")
    assert [k for k, _ in s.items()] == ["c", "a", "d"] and s.get("b") is None
    b = Store("test bytes", budget_bytes=10, weigh=len)
    b.put("x", "12345")
    b.put("y", "123456")                     # 11 bytes: x goes
    assert b.get("x") is None and b.nbytes == 6
    assert b.put("z", "x" * 11) is False and b.get("z") is None   # larger than the budget
    b.resize(budget_bytes=5)
    assert len(b) == 0
    with pytest.raises(ValueError):
        Store("test no weigh", budget_bytes=3)


def test_computed_once_and_not_kept_across_a_clear():
    s = Store("test once", size=4)
    calls, gate = [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(10)
        return len(calls)

    threads = [threading.Thread(target=s.get_or_compute, args=("k", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == [1] and s.get("k") == 1
    # a result computed while the store is cleared (the model went) is returned, not kept
    started, go = threading.Event(), threading.Event()

    def late():
        started.set()
        go.wait(10)
        return "late"
    out = []
    t = threading.Thread(target=lambda: out.append(s.get_or_compute("m", late)))
    t.start()
    started.wait(10)
    s.clear()
    go.set()
    t.join(10)
    assert out == ["late"] and s.get("m") is None


def test_model_bound_stores_go_with_the_resident_model():
    from explorer.core import session

    bound, kept = Store("test bound", size=2, model_bound=True), Store("test kept", size=2)
    bound.put(1, "x")
    kept.put(1, "y")
    session.release_model()
    assert bound.get(1) is None and kept.get(1) == "y"


def test_values_on_disk_survive_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path))
    on = {"v": True}
    s = Store("test disk", size=2, disk=Disk("test-disk", name=lambda k: f"k{k}",
                                            enabled=lambda: on["v"]))
    s.put(7, {"ppl": 12.5})
    assert (tmp_path / "test-disk" / "k7.json").is_file()
    s.clear()                                  # memory only: as a new process
    assert s.get(7) == {"ppl": 12.5} and 7 in s
    (tmp_path / "test-disk" / "k8.json").write_text('{"key": "k7", "value": 1}')
    assert s.get(8) is None                    # a file for another key is not believed
    on["v"] = False
    s.clear()
    assert s.get(7) is None                    # disk switched off
    on["v"] = True
    s.clear(disk=True)
    assert s.get(7) is None


def _declared_stores() -> dict[str, str]:
    """Every `Store("name", ...)` the package constructs, found in its source (not a hand-kept
    list): store name -> module."""
    import ast
    import explorer

    root = Path(explorer.__file__).parent
    out = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Store"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                mod = ".".join(path.relative_to(root.parent).with_suffix("").parts)
                out[node.args[0].value] = mod
    return out


def test_one_place_lists_sizes_and_clears_the_package_stores():
    import importlib

    declared = _declared_stores()
    assert len(declared) >= 10, declared               # the scan works
    for module in set(declared.values()):
        importlib.import_module(module)
    assert set(declared) <= set(cache.stats())        # each registered under its name
    assert all(f'"{name}"' in cache.__doc__ for name in declared)   # and listed in the docs
    from explorer.ui.caches import APP_CACHES

    assert cache.get_store("variants") is APP_CACHES.variants
    old = APP_CACHES.variants.size
    try:
        cache.configure("variants", size=2)
        assert APP_CACHES.variants.size == 2 and cache.stats()["variants"]["size"] == 2
    finally:
        cache.configure("variants", size=old)
    APP_CACHES.user_texts.put("user:x", "t")
    cache.clear()
    assert all(s["entries"] == 0 for s in cache.stats().values())
    with pytest.raises(ExplorerError, match="unknown cache 'nope'; known: "):
        cache.get_store("nope")
