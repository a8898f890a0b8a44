"""A Space strangers can use (issue 8), against the real app on loopback: only uploads are read,
through every event; one refusal that says nothing about a path; the size cap for every way an
image arrives; no server path in any answer; every visitor served in turn; bounded temp folder
and session count. Raw HTTP where gradio_client would not send the request. Tiny random model."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app as app_module
from tca.app import export, limits, panels, request, serving, uploads

TINY = "tca-tiny-ViT"
ROOT = Path(__file__).resolve().parent.parent


def _png_bytes(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Raw:
    """The queue protocol spoken by hand: a request exactly as a stranger can send it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)
        config = self.http.get("config").json()
        self.deps = config["dependencies"]
        self.defaults = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
        self.image_id = next(
            c["id"]
            for c in config["components"]
            if c.get("props", {}).get("elem_id") == "image-input"
        )

    def fn(self, name: str) -> int:
        return next(i for i, d in enumerate(self.deps) if d.get("api_name") == name)

    def upload(self, data: bytes, name: str = "x.png") -> str:
        r = self.http.post("gradio_api/upload", files={"files": (name, data, "image/png")})
        r.raise_for_status()
        return r.json()[0]

    def call(self, fn: int, data: list, session: str | None = None) -> dict:
        """The final message of one event: {"ok": bool, "error": str | None, "data": ...}."""
        session = session or uuid.uuid4().hex[:12]
        targets = self.deps[fn]["targets"]
        body = {
            "data": data,
            "fn_index": fn,
            "session_hash": session,
            "event_data": None,
            "trigger_id": targets[0][0] if targets else None,
        }
        self.http.post("gradio_api/queue/join", json=body).raise_for_status()
        with self.http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    return {
                        "ok": bool(msg.get("success")),
                        "error": out.get("error"),
                        "data": out.get("data"),
                    }
        raise AssertionError("no process_completed message")


@pytest.fixture(scope="module")
def served():
    demo = app_module.build_demo(TINY, "none")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_options())
    try:
        yield demo, url, Raw(url)
    finally:
        demo.close()


SETTINGS = [TINY, "tca", 0.7, "3,6,9", 2, "mean", "single"]


def _inputs(raw: Raw, fn: int, image) -> list:
    """A full input list for event ``fn`` with ``image`` in the image slot."""
    name = raw.deps[fn].get("api_name")
    if name == "classify":
        return [image, "cat, dog", *SETTINGS, False, None]
    if name == "compare":
        return [image, "cat, dog", *SETTINGS, "tca", None, "tca", "evit"]
    # any other (UI-only) event that takes the image: the page's own values elsewhere
    return [image if i == raw.image_id else raw.defaults.get(i) for i in raw.deps[fn]["inputs"]]


def _image_events(raw: Raw, demo) -> list[int]:
    image_id = next(
        b._id for b in demo.blocks.values() if getattr(b, "elem_id", None) == "image-input"
    )
    assert image_id == raw.image_id  # the page's config names the same component
    return [i for i, d in enumerate(raw.deps) if image_id in d["inputs"]]


def _server_paths(outside: Path, upload_dir: str) -> dict[str, str]:
    """Every spelling of a server path, for a file that exists and one that does not."""
    rel_up = os.path.relpath(outside, upload_dir)
    out = {}
    for kind, target in (("existing", outside), ("missing", outside.with_name("nope.png"))):
        out[f"{kind}-absolute"] = str(target)
        out[f"{kind}-dotdot"] = os.path.join(upload_dir, os.path.relpath(target, upload_dir))
        out[f"{kind}-relative"] = os.path.relpath(target, os.getcwd())
    assert ".." in rel_up
    out["system-file"] = "/etc/hostname"
    out["app-source"] = str(ROOT / "app.py")
    return out


def test_server_paths_are_refused_by_every_image_event(served, tmp_path):
    demo, url, raw = served
    events = _image_events(raw, demo)
    names = {raw.deps[i].get("api_name") for i in events}
    # the API's Run and every UI-only event that reads the image (Compare, the sweep, the
    # outdated-results check, the upload check)
    assert {"classify", "compare", "sweep", "check_image"} <= names and len(events) >= 5, names
    outside = tmp_path / "secret.png"  # a real, readable image outside the upload folder
    outside.write_bytes(_png_bytes(1))
    paths = _server_paths(outside, gr.utils.get_upload_folder())
    answers = {}
    for fn in events:
        for form, path in paths.items():
            for meta in (False, True):
                payload = {"path": path, "orig_name": "x.png"}
                if meta:
                    payload["meta"] = {"_type": "gradio.FileData"}
                answers[(fn, form, meta)] = raw.call(fn, _inputs(raw, fn, payload))
    for (_fn, form, meta), ans in answers.items():
        assert not ans["ok"], (form, meta)
        # without file metadata the app's check answers; with it Gradio's own rule refuses
        # first, and the app answers that refusal with the same message
        refused = f"Cannot run: {uploads.REFUSED}"  # every user error's message (app/events.py)
        assert ans["error"] == refused, (form, meta, ans)
    # nothing was copied into Gradio's folder from outside it
    secret = outside.read_bytes()
    for f in Path(gr.utils.get_upload_folder()).rglob("secret.png"):
        assert f.read_bytes() != secret
    # ... while a real upload (and a curated example) works on every event
    uploaded = raw.upload(_png_bytes(2))
    for fn in events:
        for payload in (
            {"path": uploaded, "meta": {"_type": "gradio.FileData"}},
            {"path": str(ROOT / "assets" / "coffee.jpg")},
        ):
            ans = raw.call(fn, _inputs(raw, fn, payload))
            assert ans["ok"], ans


def test_data_url_size_cap_and_a_small_one_works(served):
    demo, url, raw = served
    fn = raw.fn("classify")
    big = "data:image/png;base64," + "A" * (15 * 1024 * 1024)  # ~11 MB decoded
    with pytest.raises(httpx.HTTPStatusError) as refused:  # at the door (tca.app.limits)
        raw.call(fn, _inputs(raw, fn, {"url": big, "path": None}))
    assert refused.value.response.status_code == 413
    assert "the limit is 10 MB" in refused.value.response.json()["detail"]
    small = "data:image/png;base64," + base64.b64encode(_png_bytes(3)).decode()
    ans = raw.call(fn, _inputs(raw, fn, {"url": small, "path": None, "orig_name": "s.png"}))
    assert ans["ok"], ans
    assert ans["data"][0]["labels"] == ["cat", "dog"]
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image" * 50).decode()
    ans = raw.call(fn, _inputs(raw, fn, {"url": garbage, "path": None, "orig_name": "g.png"}))
    assert not ans["ok"] and ans["error"].startswith("Cannot run: g.png is not a readable image")


def test_private_events_are_not_in_the_api(served):
    demo, url, raw = served
    client = Client(url, verbose=False)
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == [
        "/classify",
        "/flops",  # no image: the token schedule and GMACs (tests/test_mcp.py)
    ]
    for name in ("/compare", "/sweep", "/show_run", "/export"):
        with pytest.raises(ValueError, match=f"Cannot find a function with `api_name`: {name}."):
            client.predict(
                handle_file(str(ROOT / "assets" / "coffee.jpg")), "cat, dog", api_name=name
            )


def test_no_server_path_in_weights_note(tmp_path):
    """A missing checkpoint: the note (banner, API's weights_note) names the file only."""
    secret_dir = tmp_path / "very-secret-dir"
    cache = serving.ModelCache(
        "openai", checkpoint=str(secret_dir / "w.safetensors"), checkpoint_model=TINY
    )
    entry = cache.get(TINY)
    assert entry.is_random and "w.safetensors" in entry.note
    assert str(tmp_path) not in entry.note and "very-secret-dir" not in entry.note
    assert "very-secret-dir" not in (entry.requested or "")
    banner = panels.banner_html(entry, TINY)
    assert "very-secret-dir" not in banner


def test_prompt_cap_message(served, example_image):
    demo, url, raw = served
    with pytest.raises(tca_errors().LabelError, match="at most 1200"):
        request.check_prompt_count(16, "imagenet80")
    request.check_prompt_count(15, "imagenet80")  # 1200: allowed
    client = Client(url, verbose=False)
    labels = ", ".join(f"thing{i}" for i in range(16))
    with pytest.raises(
        AppError,
        match=r"16 labels x 80 prompt templates = 1280; one request "
        r"may encode at most 1200",
    ):
        client.predict(
            handle_file(str(example_image)), labels, templates="imagenet80", api_name="/classify"
        )


def tca_errors():
    import tca.errors

    return tca.errors


def test_one_request_per_session_at_a_time():
    gate = serving.SessionGate()
    with gate.hold("a"):
        with pytest.raises(tca_errors().InputError, match="one request at a time"):
            with gate.hold("a"):
                pass
        with gate.hold("b"):  # another visitor is not held up
            assert len(gate) == 2
    with gate.hold("a"):  # released
        pass
    assert len(gate) == 0


def test_32_visitors_x_5_runs_all_served_with_their_own_state(served, example_image):
    """A bounded load test on loopback: 32 gradio_client visitors send 5 runs each at once
    (stream mode, each with its own labels); none is refused, none sees another's state."""
    demo, url, raw = served
    results: dict[int, list] = {}
    errors: list = []
    image = handle_file(str(example_image))

    def visitor(i: int) -> None:
        try:
            # each visitor from its own address: one model request per address at a time
            c = Client(url, verbose=False, headers={"X-Forwarded-For": f"198.18.0.{i + 1}"})
            labels = f"cat{i}, dog{i}"
            results[i] = [
                c.predict(image, labels, stream=True, api_name="/classify") for _ in range(5)
            ]
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert errors == []
    assert sorted(results) == list(range(32))
    for i, runs in results.items():
        for k, out in enumerate(runs):
            assert out["labels"] == [f"cat{i}", f"dog{i}"]
            assert set(out["reservoir"]["buckets"]) == {f"cat{i}", f"dog{i}"}
            assert out["reservoir"]["images_seen"] == k + 1


def test_temp_folder_and_sessions_stay_bounded(tmp_path, monkeypatch):
    """200 runs, each a new visitor with a new upload: Gradio's folder holds only the last
    few seconds' files (delete_cache) and only the newest sessions keep state."""
    folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    # no first screen: its one-time pictures (~1 MB, made at build time) would hide the growth
    # every second, uploads older than 3 s go; 3 s leaves room for a slow Run under load
    every, age = 1, 3
    demo = app_module.build_demo(TINY, "none", delete_cache=(every, age), first_screen=None)
    # 200 uploads from one address cost 200 x 256 kB, more than one visitor's 50 MB burst
    budget = limits.UploadBudget(burst_bytes=200 * 2**20)
    options = dict(app_module.launch_options(budget), state_session_capacity=10)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
    try:
        raw = Raw(url)
        fn = raw.fn("classify")
        left, recent, uploaded = [], [], []
        for i in range(200):
            uploaded.append(time.monotonic())
            path = raw.upload(_png_bytes(100 + i, size=64), f"v{i}.png")
            assert path.startswith(str(folder))
            ans = raw.call(
                fn,
                _inputs(
                    raw,
                    fn,
                    {"path": path, "orig_name": f"v{i}.png", "meta": {"_type": "gradio.FileData"}},
                ),
            )
            assert ans["ok"], ans
            assert len(demo.state_holder.session_data) <= 10
            if i % 20 == 19:
                # the visitors' uploads still on disk (the examples' kept copies aside), against
                # the uploads of the last age + period + 1 s that may still be there
                now = time.monotonic()
                left.append(sum(1 for f in folder.rglob("v*.png") if f.is_file()))
                recent.append(sum(1 for t in uploaded if now - t <= age + every + 1))
        # 200 uploads were made; only those of the last few seconds are left at any time
        assert all(n <= r for n, r in zip(left[2:], recent[2:])), (left, recent)
        assert left[-1] < 200 - 20, left
    finally:
        demo.close()


def test_export_folder_is_capped_in_number(tmp_path):
    exports = export.ExportDir(tmp_path / "exports", max_files=5)
    paths = [exports.write_json({"i": i}) for i in range(12)]
    left = sorted((tmp_path / "exports").iterdir())
    assert len(left) <= 5 and paths[-1] in left


def test_the_cache_sweeper_survives_an_exception():
    """Gradio's own delete_cache task ends on its first exception (tca/app/cleanup.py says
    where); the app's sweeper logs nothing, keeps its schedule and ends with the app."""
    import gc
    import time

    from tca.app import cleanup

    class Blocks:  # stands in for gr.Blocks: only its lifetime matters here
        pass

    blocks = Blocks()
    calls: list[tuple[int, float]] = []

    def delete(target, age):
        calls.append((id(target), age))
        if len(calls) == 1:
            raise RuntimeError("Set changed size during iteration")

    t = cleanup.keep_deleting(blocks, 0.02, 7, delete)
    deadline = time.time() + 30
    while len(calls) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert calls[:3] == [(id(blocks), 7)] * 3 and t.is_alive()
    del blocks
    gc.collect()
    t.join(5)
    assert not t.is_alive()
