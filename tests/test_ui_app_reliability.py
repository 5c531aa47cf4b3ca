"""The web app under bad input, concurrent clients and a client that goes away, through
gradio_client against the real launched app (explorer.ui.launch) serving a tiny model.

- bad inputs (paths, hub ids, texts, uploads, layer plans) come back as errors with our one-line
  message, and the app keeps serving correct results afterwards;
- 8 concurrent clients, each applying a different plan, get exactly the perplexities that the
  same plans give one by one, and the shared model's weights are bit-identical afterwards;
- a client that disconnects while its request is running leaves the server clean: lock free,
  original layers in place, weights unchanged, the next client's result exact.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from explorer import perplexity  # noqa: E402
from explorer.core import session as session_registry  # noqa: E402
from explorer.apply.recipe import replay  # noqa: E402
from explorer.probe.text import MAX_TEXT_BYTES, user_texts  # noqa: E402
from explorer.ui.caches import APP_CACHES  # noqa: E402
from explorer.core.layer_lists import parse_groups, parse_layers  # noqa: E402
from explorer.ui.state import manual_plan  # noqa: E402
from tiny import SAMPLE_TEXT, state_checksum as checksum  # noqa: E402

# (drops, merges, rule): eight different plans on a 6-layer model
PLANS = [("1", "", "average"), ("2", "", "average"), ("0,5", "", "average"),
         ("3-4", "", "average"), ("", "1-2", "average"), ("", "3-5", "average"),
         ("0", "2-3", "average"), ("", "4-5", "laco")]

pytestmark = pytest.mark.usefixtures("clean_registry")    # no model resident at the start


@pytest.fixture(scope="module")
def app(live_app, tiny_factory):
    """The app of the session (conftest's `live_app`, launched as `python app.py` launches it,
    with small sizes) and the tiny model this module loads into it: (url, model path, exports)."""
    return live_app.url, str(tiny_factory("llama", num_layers=6)), live_app.exports


@pytest.fixture(scope="module")
def sizes(live_app) -> tuple[int, int]:
    """(seqlen, max_tokens) of the app's perplexity runs."""
    return live_app.settings.ppl_seqlen, live_app.settings.ppl_max_tokens


def session(url: str, model: str) -> Client:
    """A client with the tiny model loaded and the sample text chosen (a fresh browser tab)."""
    c = Client(url, verbose=False)
    c.predict("smollm2-135m", model, api_name="/load_model")
    c.predict("own", SAMPLE_TEXT, None, api_name="/set_text")
    return c


def apply(c: Client, drops: str, merges: str, rule: str) -> dict:
    c.predict(drops, merges, rule, api_name="/update_plan")
    return c.predict(api_name="/apply")[1]      # (summary, details, history, plot)


def expected_ppl(lm, sizes: tuple[int, int], drops: str, merges: str, rule: str) -> float:
    """The same plan computed directly with the library (no app, no threads)."""
    plan = manual_plan(lm.num_layers, sorted(set(parse_layers(drops))), parse_groups(merges), rule)
    texts = user_texts(SAMPLE_TEXT, name="pasted text")
    seqlen, max_tokens = sizes
    return perplexity(lm, texts.evaluation, variant=replay(lm, plan.ops), seqlen=seqlen,
                      max_tokens=max_tokens, source=texts.source).ppl


def error_of(c: Client, *args, api_name: str) -> str:
    """The message of the error the app answers (a gr.Error: AppError on the client side)."""
    with pytest.raises(AppError) as info:
        c.predict(*args, api_name=api_name)
    return str(info.value)


def test_bad_inputs_give_errors_and_the_app_keeps_serving(app, sizes, tmp_path):
    url, model, exports = app
    c = session(url, model)
    lm = APP_CACHES.lm
    assert "does not exist" in error_of(c, "smollm2-135m", "/nonexistent/model",
                                        api_name="/load_model")
    assert "from the Hugging Face hub" in error_of(c, "smollm2-135m", "no-such-org/no-such-model",
                                                   api_name="/load_model")
    # a refused load keeps the resident model, in the library and in the app's registry
    assert session_registry.current_model() is lm and APP_CACHES.lm is lm
    assert "paste some text" in error_of(c, "own", "", None, api_name="/set_text")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 na\xefve. ".encode("latin-1") * 50)
    assert "is not UTF-8 text" in error_of(c, "own", "", handle_file(str(latin1)),
                                           api_name="/set_text")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1024)
    # the app declares its upload limit, so the client refuses the file before sending it
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {MAX_TEXT_BYTES} "
                                         "bytes"):
        c.predict("own", "", handle_file(str(huge)), api_name="/set_text")
    assert "out of range" in error_of(c, "99", "", "average", api_name="/update_plan")
    assert "named twice" in error_of(c, "", "1-2; 2-3", "average", api_name="/update_plan")
    assert "would leave no layer" in error_of(c, "0-5", "", "average", api_name="/update_plan")
    assert "cannot read layer list" in error_of(c, "x", "", "average", api_name="/update_plan")
    c.predict("", "", "average", api_name="/update_plan")
    assert "the plan is empty" in error_of(c, api_name="/apply")
    # exports stay inside the output folder
    c.predict("1", "", "average", api_name="/update_plan")
    for name in ("../escape", "/tmp/absolute-escape-4259", "a/../../escape"):
        said = error_of(c, name, True, api_name="/save_folder")
        assert said.endswith(f"export path '{name}' must be a sub-folder of the export folder"), \
            said                                    # issue 32 [5]: said once, not garbled
    assert not (exports.parent / "escape").exists()
    assert not Path("/tmp/absolute-escape-4259").exists()
    assert "Saved" in c.predict("mine/drop1", False, api_name="/save_folder")
    config = exports / "mine" / "drop1" / "config.json"
    assert config.is_file()
    # another visitor cannot overwrite it, even with the box ticked; its owner can
    other = session(url, model)
    other.predict("1-2", "", "average", api_name="/update_plan")
    assert "already exists" in error_of(other, "mine/drop1", False, api_name="/save_folder")
    assert "not saved in this session" in error_of(other, "mine/drop1", True,
                                                   api_name="/save_folder")
    assert json.loads(config.read_text())["num_hidden_layers"] == 5
    c.predict("1-2", "", "average", api_name="/update_plan")
    saved = c.predict("mine/drop1", True, api_name="/save_folder")
    assert "Saved the unhealed variant of plan v" in saved and "(**4 layers**) as `mine/drop1`" \
        in saved and "/" + "tmp" not in saved
    assert json.loads(config.read_text())["num_hidden_layers"] == 4
    c.predict("1", "", "average", api_name="/update_plan")
    # still serving, and right
    got = apply(c, "1", "", "average")
    assert got["ppl_after"] == expected_ppl(APP_CACHES.lm, sizes, "1", "", "average")
    assert got["layers_after"] == 5
    assert APP_CACHES.lm is lm                        # the same model object: nothing was reloaded


def test_eight_concurrent_clients_match_one_by_one(app, sizes):
    url, model, _ = app
    first = session(url, model)
    lm = APP_CACHES.lm
    before = checksum(lm.model)
    serial = [apply(first, *plan)["ppl_after"] for plan in PLANS]
    assert serial == [expected_ppl(lm, sizes, *plan) for plan in PLANS]
    assert len(set(serial)) == len(PLANS)
    clients = [session(url, model) for _ in PLANS]
    barrier = threading.Barrier(len(PLANS))

    def run(k: int) -> float:
        barrier.wait()
        return apply(clients[k], *PLANS[k])["ppl_after"]

    with ThreadPoolExecutor(len(PLANS)) as pool:
        parallel = list(pool.map(run, range(len(PLANS))))     # any failed request raises here
    assert parallel == serial
    assert APP_CACHES.lm is lm and checksum(lm.model) == before
    assert lm.arch.layer_list(lm.model) is lm.original_layers
    assert lm.config.num_hidden_layers == 6


@contextlib.contextmanager
def apply_with_hook(c: Client, lm, hook_fn):
    """Submit an Apply of 'drop 2' (layer 3 still runs) with `hook_fn` as a forward pre-hook on
    layer 3; yields the job, removes the hook on the way out."""
    hook = lm.original_layers[3].register_forward_pre_hook(hook_fn)
    try:
        c.predict("2", "", "average", api_name="/update_plan")
        yield c.submit(api_name="/apply")
    finally:
        hook.remove()


def assert_model_clean(lm, before: str) -> None:
    """The shared model after an interrupted job: lock free, original layers, indices, config and
    weights as before."""
    assert lm.lock.acquire(timeout=5)
    lm.lock.release()
    assert lm.arch.layer_list(lm.model) is lm.original_layers
    assert [layer.self_attn.layer_idx for layer in lm.original_layers] == list(range(6))
    assert lm.config.num_hidden_layers == 6
    assert checksum(lm.model) == before


def wait_until_idle(lm, calls: list, quiet: float = 1.0, limit: float = 120) -> None:
    """Until the model's lock is free and no forward pass ran for `quiet` seconds: a request whose
    client went away is finished or abandoned by the server, and neither is signalled."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if lm.lock.acquire(timeout=1):
            lm.lock.release()
            n = len(calls)
            time.sleep(quiet)
            if len(calls) == n:
                return
    raise AssertionError(f"the server was still busy after {limit} s")


def test_client_disconnecting_mid_run_leaves_the_server_clean(app, sizes):
    url, model, _ = app
    c = session(url, model)
    lm = APP_CACHES.lm
    before = checksum(lm.model)
    inside, release, calls = threading.Event(), threading.Event(), []

    def hold(module, args):          # the first forward waits here until the client has gone
        calls.append(1)
        inside.set()
        release.wait(60)

    try:
        with apply_with_hook(c, lm, hold) as job:
            assert inside.wait(60)
            job.cancel()
            c.close()                # the client goes away while its request is mid-run
            release.set()
            wait_until_idle(lm, calls)
    finally:
        release.set()
    assert_model_clean(lm, before)
    other = session(url, model)
    expected = expected_ppl(lm, sizes, "2", "", "average")
    assert apply(other, "2", "", "average")["ppl_after"] == expected


def test_stop_button_ends_the_running_job_and_frees_the_model(app):
    """Stop (the /stop endpoint the button calls) makes the session's running Apply raise at its
    next progress report: the 'after' perplexity never runs, and the model comes back clean."""
    url, model, _ = app
    c = session(url, model)
    c.predict("own", SAMPLE_TEXT.upper(), None, api_name="/set_text")   # no cached baseline
    lm = APP_CACHES.lm
    before = checksum(lm.model)
    inside, release, calls = threading.Event(), threading.Event(), []

    def hold(module, args):          # the first forward waits here until Stop was pressed
        calls.append(1)
        inside.set()
        release.wait(60)

    try:
        with apply_with_hook(c, lm, hold) as job:
            assert inside.wait(60)
            other = session(url, model)        # another visitor's Stop must not stop this job
            other.predict(api_name="/stop")
            c.predict(api_name="/stop")
            release.set()
            with pytest.raises(AppError, match=r"^stopped: you pressed Stop \(the model is back "
                                               r"as it was\)$"):
                job.result(timeout=120)
    finally:
        release.set()
    assert len(calls) == 1      # the baseline's forward ran; the variant's never started
    assert_model_clean(lm, before)
    # the next job of the same session runs to the end (an old Stop does not linger)
    assert apply(c, "2", "", "average")["layers_after"] == 5


def _call(url: str, api_name: str, data: list) -> str:
    """One call through the raw REST protocol (what any script can send): the SSE answer."""
    import httpx

    r = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    r.raise_for_status()
    return httpx.get(f"{url}gradio_api/call/{api_name}/{r.json()['event_id']}", timeout=120).text


def test_uploads_are_size_limited_and_server_files_unreachable(app, tmp_path):
    """The server itself (not only the client) refuses an upload over 20 MiB, and a request that
    names a file on the server instead of an uploaded one cannot make the app read it."""
    import httpx

    url, _, _ = app
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1024)
    with open(huge, "rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", timeout=120,
                       files={"files": ("huge.txt", f, "text/plain")})
    assert r.status_code == 413
    secret = tmp_path / "server-secret.txt"
    secret.write_text("The server's private notes. " * 20)
    for ref in ({"path": str(secret), "meta": {"_type": "gradio.FileData"}}, str(secret)):
        answer = _call(url, "set_text", ["own", "", ref])
        assert answer.startswith("event: error") and "private notes" not in answer
    assert not any("private notes" in t.evaluation + t.calibration
                   for t in APP_CACHES.user_texts.values())
    # the control: the same file, uploaded first, is accepted
    with open(secret, "rb") as f:
        uploaded = httpx.post(f"{url}gradio_api/upload", timeout=60,
                              files={"files": ("notes.txt", f, "text/plain")}).json()[0]
    answer = _call(url, "set_text", ["own", "", {"path": uploaded,
                                                 "meta": {"_type": "gradio.FileData"}}])
    assert answer.startswith("event: complete") and "notes.txt" in answer


def test_app_errors_never_show_the_server_token(app, monkeypatch):
    url, model, _ = app
    token = "hf_" + "ZyXwVuT9876543210aBcDeFgHiJkLmN"
    monkeypatch.setenv("HF_TOKEN", token)
    c = Client(url, verbose=False)
    msg = error_of(c, "smollm2-135m", f"/nonexistent/{token}/model", api_name="/load_model")
    assert token not in msg and "path '/nonexistent/***/model' does not exist" in msg
