"""The request limits mounted in the real app: ``python app.py`` (tiny random model) in a
subprocess on loopback, its log captured. 500 MB posts to the queue refused with memory flat;
each event's inputs bounded and inline images turned into upload files; one visitor's flood
under invented session hashes does not hold up another visitor's Run; uploads limited per
visitor and in total; and a fuzz over every event of the page (NaN, empty, wrong types,
out-of-range values in every input) answered with a refusal or a silent no-op, never a
traceback, each refusal one log line. Figures are printed (``pytest -s``), never asserted
beyond the issue's bounds."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import ROOT
from .test_request_limits import TOO_LARGE, _post, _rss_mb

MiB = 2**20
TINY = "tca-tiny-ViT"
TOTAL_UPLOAD_MB = 120  # the server's disk budget for uploads (TCA_UPLOAD_TOTAL_MB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Server:
    """``python app.py`` on a free port, its stderr in a file."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.log = tmp / "server.log"
        env = dict(
            os.environ,
            TCA_MODEL_CONFIGS=str(ROOT / "tests" / "model_configs"),
            TCA_MODEL=TINY,
            TCA_PRETRAINED="none",
            GRADIO_SERVER_PORT=str(self.port),
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_TEMP_DIR=str(tmp / "gradio"),
            TCA_BEHIND_PROXY="1",
            TCA_UPLOAD_TOTAL_MB=str(TOTAL_UPLOAD_MB),
            OMP_NUM_THREADS="1",
        )
        self._err = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=self._err, stderr=self._err
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 300
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "config", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the app did not start:\n" + self.log.read_text())

    def log_text(self, start: int = 0) -> str:
        return self.log.read_text()[start:]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._err.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("app-limits"))
    yield s
    s.close()


class Raw:
    """The queue protocol by hand, as any client (from any claimed address) can speak it."""

    def __init__(self, url: str, address: str | None = None) -> None:
        headers = {"X-Forwarded-For": address} if address else {}
        self.http = httpx.Client(base_url=url, timeout=300, headers=headers)
        config = self.http.get("config").json()
        self.deps = config["dependencies"]
        self.components = {c["id"]: c for c in config["components"]}
        self.defaults = {i: c.get("props", {}).get("value") for i, c in self.components.items()}

    def fn(self, name: str) -> int:
        return next(i for i, d in enumerate(self.deps) if d.get("api_name") == name)

    def upload(self, data: bytes, name: str = "x.png") -> httpx.Response:
        return self.http.post("gradio_api/upload", files={"files": (name, data, "image/png")})

    def join(self, fn: int, data: list, session: str, event_data=None) -> httpx.Response:
        targets = self.deps[fn]["targets"]
        body = {
            "data": data,
            "fn_index": fn,
            "session_hash": session,
            "event_data": event_data,
            "trigger_id": targets[0][0] if targets else None,
        }
        # NaN as JSON's NaN token, as a hand-made client may send it
        return self.http.post(
            "gradio_api/queue/join",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )

    def result(self, session: str) -> dict:
        """The final message of the session's event: {"ok", "error", "data"}."""
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

    def call(self, fn: int, data: list, event_data=None) -> dict:
        session = uuid.uuid4().hex[:12]
        r = self.join(fn, data, session, event_data)
        r.raise_for_status()
        return self.result(session)


def _file(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}


def _classify_inputs(image, labels: str, templates: str = "single") -> list:
    return [image, labels, TINY, "tca", 0.7, "3,6,9", 2, "mean", templates, False, None]


# --------------------------------------------------------------------------- body and inputs


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_three_500_mb_posts_to_the_queue_are_refused_and_memory_stays_flat(server, chunked):
    start = len(server.log_text())
    rss0 = _rss_mb(server.proc.pid)
    peak = rss0
    for _ in range(3):
        status, headers, body = _post(
            server.port,
            "/gradio_api/queue/join",
            500 * MiB,
            chunked=chunked,
            headers={"Content-Type": "application/json"},
        )
        assert status == 413 and json.loads(body) == TOO_LARGE
        peak = max(peak, _rss_mb(server.proc.pid))
    rss1 = _rss_mb(server.proc.pid)
    print(
        f"\nRSS {'chunked' if chunked else 'with length'}: before {rss0:.0f} MB, peak "
        f"{peak:.0f} MB, after {rss1:.0f} MB"
    )
    assert peak - rss0 < 100 and abs(rss1 - rss0) < 100
    why = "streamed body over" if chunked else "Content-Length 524288000 over"
    # (the app's own lines: the model's background load may log beside them)
    lines = [l for l in server.log_text(start).splitlines() if l.startswith("WARNING tca.app")]
    line = f"WARNING tca.app.limits: 413 POST /gradio_api/queue/join from 127.0.0.1: {why} 16777216"
    assert lines == [line] * 3 and "Traceback" not in server.log_text(start)


def test_each_input_is_bounded_and_inline_images_become_uploads(server):
    raw = Raw(server.url, "198.51.100.20")
    fn = raw.fn("classify")
    image = _file(raw.upload(_png(1)).json()[0])
    # a labels value over 64 kB never reaches the session: refused at the door, by position
    r = raw.join(fn, _classify_inputs(image, "cat, " + "x" * 70_000), "s-big")
    assert r.status_code == 413
    assert r.json() == {
        "detail": "input 2 of this event is 68 kB; each input may be at most 64 kB (send "
        "images as uploads)"
    }
    # an inline image is decoded into the upload folder and the event gets that file
    url = "data:image/png;base64," + base64.b64encode(_png(2)).decode()
    ans = raw.call(fn, _classify_inputs({"url": url, "path": None, "orig_name": "a.png"}, "a, b"))
    assert ans["ok"], ans
    assert ans["data"][0]["labels"] == ["a", "b"]
    folder = server.log.parent / "gradio"
    written = sorted(folder.glob("data-url-*/a.png"))
    assert len(written) == 1 and written[0].read_bytes() == _png(2)
    # over 10 MB decoded: refused before decoding, with the image's own message
    big = "data:image/png;base64," + "A" * (15 * MiB)
    r = raw.join(fn, _classify_inputs({"url": big, "path": None}, "a, b"), "s-huge")
    assert r.status_code == 413
    assert r.json()["detail"] == (
        "image: the file is 11.2 MB; the limit is 10 MB (downscale or compress it first)"
    )
    r = raw.join(
        fn, _classify_inputs({"url": "data:image/png;base64,%%%", "path": None}, "a, b"), "s-bad"
    )
    assert r.status_code == 400 and r.json()["detail"] == "image: the data: URL is not valid base64"


# --------------------------------------------------------------------------- fair queue


def _timed_run(raw: Raw, image: dict, labels: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    ans = raw.call(raw.fn("classify"), _classify_inputs(image, labels))
    return time.perf_counter() - t0, ans


def test_a_flood_under_invented_sessions_does_not_hold_up_another_visitors_run(server):
    """One address sends 100 Runs at the 1,200-prompt cap (15 labels x 80 prompts), each under
    a new session hash; another address's Run then finishes within 8x its time alone, and all
    but the flood's running request are refused as the visitor's second request."""
    visitor = Raw(server.url, "198.51.100.7")
    flood = Raw(server.url, "203.0.113.66")
    image = _file(visitor.upload(_png(3)).json()[0])
    flood_image = _file(flood.upload(_png(4)).json()[0])
    _timed_run(visitor, image, "warm, up")  # the first Run of a process loads and traces more
    solo, ans = _timed_run(visitor, image, "cat, dog")
    assert ans["ok"], ans
    start = len(server.log_text())
    fn = flood.fn("classify")
    refused_at_join = 0
    for i in range(100):  # new labels each time: no text embedding is cached for the next one
        labels = ", ".join(f"thing {i} {j}" for j in range(15))
        r = flood.join(fn, _classify_inputs(flood_image, labels, "imagenet80"), uuid.uuid4().hex)
        assert r.status_code in (200, 429)  # refused at the door: one request at a time
        refused_at_join += r.status_code == 429
    flooded, ans = _timed_run(visitor, image, "car, tree")
    assert ans["ok"], ans
    time.sleep(0.5)
    print(f"\nRun alone {solo:.2f} s, during the flood {flooded:.2f} s ({flooded / solo:.1f}x)")
    assert flooded < 8 * solo
    log = server.log_text(start)
    at_join = log.count(
        "WARNING tca.app.limits: 429 POST /gradio_api/queue/join from 203.0.113.66: Cannot run: "
        "one request at a time per visitor"
    )
    in_handler = log.count("refused classify: one request at a time per visitor")
    print(f"flood: {at_join} refused at the door, {in_handler} in the queue")
    assert at_join == refused_at_join and at_join + in_handler >= 90, log[-3000:]
    assert "Traceback" not in log


# --------------------------------------------------------------------------- fuzz


NAN, INF = math.nan, math.inf
# what a hand-made client may put in any input: NaN, infinities, nothing, empty text and lists,
# the wrong type, out-of-range numbers
BAD_VALUES = [NAN, INF, None, "", [], {}, "abc", -1, 10**9, True, [1, "a"], {"a": [NAN]}]
BAD_IMAGES = [NAN, "", [], "abc", 5, {}, {"path": 5}, {"url": 5, "path": None}, {"path": None}]
BAD_EVENT_DATA = [
    None,
    {},
    {"index": NAN, "value": None},
    {"index": [NAN, 3], "value": None},
    {"index": [INF, -INF], "value": None},
    {"index": "a", "value": None},
    {"index": [1], "value": None},
    {"index": -5, "value": None},
    {"index": 10**9, "value": None},
    {"index": [10**9, -(10**9)], "value": None},
]
REFUSAL = (
    "WARNING tca.app.events: refused ",
    "WARNING tca.app.limits: ",
)


def _cases(raw: Raw):
    """(fn index, inputs, event data, what) for every event of the page and every bad value in
    every one of its inputs (the others at the page's values); the select events also with bad
    event data."""
    for fn, dep in enumerate(raw.deps):
        if not dep.get("backend_fn"):
            continue
        ids = dep["inputs"]
        base = [raw.defaults.get(i) for i in ids]
        for slot, cid in enumerate(ids):
            kind = raw.components[cid].get("type")
            if kind == "state":
                continue  # the server's own per-session value; what a client sends is ignored
            for bad in BAD_IMAGES if kind == "image" else BAD_VALUES:
                data = list(base)
                data[slot] = bad
                yield fn, data, None, f"{dep.get('api_name')}[{slot}:{kind}]={bad!r}"
        if any(t[1] == "select" for t in dep["targets"]):
            for evt in BAD_EVENT_DATA:
                yield fn, base, evt, f"{dep.get('api_name')} event_data={evt!r}"


def test_fuzz_every_event_refuses_cleanly_or_does_nothing(server):
    """Every event, every input, every bad value: an answer, never a traceback; a refusal says
    "Cannot run: ..." and logs exactly one line; anything else logs nothing (the upload check's
    warning aside), and the server keeps serving."""
    raw = Raw(server.url, "192.0.2.44")
    start = len(server.log_text())
    counts = {"refused": 0, "no-op or ran": 0}
    cases = list(_cases(raw))
    events = {c[0] for c in cases}
    for fn, data, evt, what in cases:
        before = len(server.log_text())
        session = uuid.uuid4().hex[:12]
        r = raw.join(fn, data, session, evt)
        if r.status_code != 200:  # refused at the door (the event's size limits)
            ans = {"ok": False, "error": r.json()["detail"]}
        else:
            ans = raw.result(session)
        assert "Traceback" not in server.log_text(before), (what, server.log_text(before))
        lines = [l for l in server.log_text(before).splitlines() if l.startswith("WARNING tca.app")]
        if ans["ok"]:
            counts["no-op or ran"] += 1
            name = raw.deps[fn].get("api_name")
            assert len(lines) <= (1 if name == "check_image" else 0), (what, lines)
        else:
            counts["refused"] += 1
            assert (ans["error"] or "").startswith("Cannot run: "), (what, ans)
            assert len(lines) == 1 and lines[0].startswith(REFUSAL), (what, lines)
    print(f"\nfuzz: {len(cases)} cases over {len(events)} events: {counts}")
    assert "Traceback" not in server.log_text(start)
    # still serving: a real Run answers
    image = _file(raw.upload(_png(9)).json()[0])
    ans = raw.call(raw.fn("classify"), _classify_inputs(image, "cat, dog"))
    assert ans["ok"] and ans["data"][0]["labels"] == ["cat", "dog"]


# --------------------------------------------------------------------------- uploads (last:
# they spend the server's disk budget)


def test_uploads_are_limited_per_visitor_and_in_total(server):
    """50 MB per visitor (then 429 with Retry-After), TCA_UPLOAD_TOTAL_MB for everyone together
    (then 507, for a fresh visitor too); 9.9 MB non-image files, as a disk-filling client sends
    them."""
    blob = os.urandom(9_900_000)
    start = len(server.log_text())
    first = Raw(server.url, "203.0.113.10")
    statuses = [first.upload(blob, "junk.bin").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    r = first.upload(blob, "junk.bin")
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 600
    assert r.json()["detail"].startswith("too many uploads from your address: try again in ")
    second = Raw(server.url, "203.0.113.11")  # another visitor is not held up by the first
    assert [second.upload(blob, "junk.bin").status_code for _ in range(5)] == [200] * 5
    # about 99 MB of the 120 MB kept: the third visitor fills the rest, then everyone waits
    third = Raw(server.url, "203.0.113.12")
    statuses = [third.upload(blob, "junk.bin").status_code for _ in range(3)]
    assert statuses[-1] == 507 and statuses[0] == 200, statuses
    fourth = Raw(server.url, "203.0.113.13")
    r = fourth.upload(blob, "junk.bin")
    assert r.status_code == 507
    assert r.json()["detail"].startswith("the server's upload space is full: try again in ")
    lines = server.log_text(start).splitlines()
    refused = [l for l in lines if " 429 " in l or " 507 " in l]
    assert len(refused) == 2 + statuses.count(507) + 1 and "Traceback" not in server.log_text(start)
    assert all(l.startswith("WARNING tca.app.limits: ") for l in refused)


def test_the_gate_keys_on_session_and_address():
    from tca.app import serving
    from tca.errors import InputError

    gate = serving.SessionGate()
    a = serving.visitor_keys("s1", "203.0.113.5")
    assert a == ("session s1", "address 203.0.113.5")
    with gate.hold(*a):
        assert gate.busy(*serving.visitor_keys("s2", "203.0.113.5"))  # a new session hash
        assert gate.busy(*serving.visitor_keys("s1", "198.51.100.1"))  # the same session
        assert not gate.busy(*serving.visitor_keys("s3", "198.51.100.1"))
        with pytest.raises(InputError, match="one request at a time per visitor"):
            with gate.hold(*serving.visitor_keys("s9", "203.0.113.5")):
                pass
        with gate.hold(*serving.visitor_keys("s3", "198.51.100.1")):
            assert len(gate) == 4
    assert len(gate) == 0 and serving.visitor_keys(None, None) == ()
