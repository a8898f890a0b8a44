"""tca.app.limits: request bodies bounded before they are read, whom a request counts against, and
the upload budget. The middlewares are tested on a real FastAPI app served by uvicorn on
loopback (tests/limits_app.py, in a subprocess whose memory is measured), with 500 MB posts
sent over raw sockets both with a Content-Length and chunked (no length)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tca.app.limits import MAX_BODY_BYTES, BodyLimit, UploadBudget, client_key

from .conftest import ROOT

MiB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.limits_app", str(port)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
    yield port, proc
    proc.terminate()
    proc.wait(30)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(l for l in f if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def _post(
    port: int,
    path: str,
    size: int,
    chunked: bool = False,
    headers: dict | None = None,
    content: bytes | None = None,
) -> tuple[int, dict, bytes]:
    """POST ``size`` bytes (``content``, or b"a"s) over a raw socket, 1 MiB at a time (stops
    when the server hangs up), and read the answer: (status, headers, body)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    content = content if content is not None else b"a" * size
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head.encode())
        try:
            sent = 0
            while sent < size:
                data = content[sent : sent + MiB]
                s.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent += len(data)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the answer is already in our buffer
        raw = b""
        try:
            while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < _length(raw):
                part = s.recv(65536)
                if not part:
                    break
                raw += part
        except ConnectionResetError:
            pass
    head_part, _, body = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, hdrs, body


def _length(raw: bytes) -> int:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _stats(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30).read())


TOO_LARGE = {
    "detail": "request body too large: at most 16 MB (16777216 bytes); images are "
    "accepted up to 10 MB"
}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_three_500_mb_posts_are_refused_and_memory_stays_flat(server, chunked):
    port, proc = server
    before, rss0 = _stats(port), _rss_mb(proc.pid)
    peak = rss0
    for _ in range(3):
        status, headers, body = _post(port, "/echo", 500 * MiB, chunked=chunked)
        assert status == 413 and json.loads(body) == TOO_LARGE
        assert headers["content-type"] == "application/json"
        peak = max(peak, _rss_mb(proc.pid))
    assert _stats(port) == before  # the app never got a refused body
    assert peak - rss0 < 100 and abs(_rss_mb(proc.pid) - rss0) < 100


def test_bodies_up_to_the_cap_pass_on_every_route_and_larger_ones_do_not(server):
    port, _ = server
    status, _, body = _post(port, "/echo", MAX_BODY_BYTES)
    assert status == 200 and json.loads(body) == {"n": MAX_BODY_BYTES}
    status, _, body = _post(port, "/echo", MAX_BODY_BYTES, chunked=True)
    assert status == 200 and json.loads(body) == {"n": MAX_BODY_BYTES}
    for chunked in (False, True):
        assert _post(port, "/echo", MAX_BODY_BYTES + 1, chunked=chunked)[0] == 413
    # a 10 MB image as a data: URL inside a JSON body (FastAPI parses it whole) fits under the cap
    payload = json.dumps({"data": "data:image/png;base64," + "A" * (10 * MiB * 4 // 3)}).encode()
    status, _, body = _post(
        port, "/json", len(payload), content=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 200 and json.loads(body) == {"keys": ["data"]}
    for path in ("/json", "/no/such/route", "/stats"):  # every route, even unknown ones
        status, _, body = _post(port, path, 17 * MiB)
        assert status == 413 and json.loads(body) == TOO_LARGE
    # without a length, a route that never reads its body answers at once (nothing is held)
    assert _post(port, "/no/such/route", 17 * MiB, chunked=True)[0] == 404
    assert _post(port, "/stats", 17 * MiB, chunked=True)[0] == 405


def test_every_refusal_logs_one_line_and_no_traceback():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.limits_app", str(port), str(MiB)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        assert _post(port, "/echo", 2 * MiB)[0] == 413
        assert _post(port, "/json", 2 * MiB, chunked=True)[0] == 413
        assert _post(port, "/echo", MiB)[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err
    assert lines == [
        "WARNING tca.app.limits: 413 POST /echo from 127.0.0.1: Content-Length 2097152 over 1048576",
        "WARNING tca.app.limits: 413 POST /json from 127.0.0.1: streamed body over 1048576",
    ]


def test_uploads_are_rate_limited_per_client_and_in_total(server):
    """The test app's budget: 8 MB burst per client, 1 byte/s refill, 20 MB kept in total."""
    port, _ = server
    ip = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    assert _post(port, "/gradio_api/upload", 3 * MiB, headers=ip)[0] == 200
    assert _post(port, "/gradio_api/upload", 3 * MiB, headers=ip)[0] == 200
    status, headers, body = _post(port, "/gradio_api/upload", 3 * MiB, headers=ip)
    assert status == 429  # 1 MiB short, at 1 B/s: about a MiB seconds (less what refilled)
    assert MiB - 120 <= int(headers["retry-after"]) <= MiB
    assert json.loads(body)["detail"].startswith("too many uploads from your address")
    other = {"X-Forwarded-For": "198.51.100.1"}  # another visitor is not held up
    assert _post(port, "/gradio_api/upload", 3 * MiB, headers=other)[0] == 200
    # the disk budget of everyone together: 9 MB kept, 11 MB left
    for i in range(2, 5):
        assert (
            _post(
                port, "/gradio_api/upload", 3 * MiB, headers={"X-Forwarded-For": f"198.51.100.{i}"}
            )[0]
            == 200
        )
    status, _, body = _post(
        port, "/gradio_api/upload", 3 * MiB, headers={"X-Forwarded-For": "198.51.100.9"}
    )
    assert status == 507 and "upload space is full" in json.loads(body)["detail"]
    assert _post(port, "/gradio_api/upload", MiB, chunked=True)[0] == 411  # no length, no charge
    assert _post(port, "/echo", 3 * MiB, headers=ip)[0] == 200  # other routes are not uploads


# --------------------------------------------------------------------------- plain functions


@pytest.mark.parametrize(
    "headers, host, proxy, want",
    [
        ({"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}, "10.0.0.2", True, "203.0.113.7"),
        ({"x-forwarded-for": " 2001:DB8::1 ,10.0.0.1"}, "10.0.0.2", True, "2001:db8::1"),
        ({"X-Forwarded-For": "[2001:db8::2]:4711"}, "10.0.0.2", True, "2001:db8::2"),
        ({"X-Forwarded-For": "203.0.113.9:4711"}, "10.0.0.2", True, "203.0.113.9"),
        ({"X-Forwarded-For": "203.0.113.7"}, "10.0.0.2", False, "10.0.0.2"),  # not behind a proxy
        ({"X-Forwarded-For": "not-an-address, 1.2.3.4"}, "10.0.0.2", True, "10.0.0.2"),
        ({"X-Forwarded-For": "x" * 10_000}, "127.0.0.1", True, "127.0.0.1"),
        ({}, "127.0.0.1", True, "127.0.0.1"),
        ({}, None, False, "unknown"),
        ({"X-Forwarded-For": ""}, "garbage", True, "unknown"),
    ],
)
def test_client_key(headers, host, proxy, want):
    assert client_key(headers, host, behind_proxy=proxy) == want


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_upload_budget_bucket_refills_and_kept_bytes_expire():
    clock = Clock()
    budget = UploadBudget(
        burst_bytes=10 * MiB,
        rate_bytes_per_s=MiB,
        total_bytes=12 * MiB,
        retention_s=100,
        min_charge=MiB,
        clock=clock,
    )
    assert budget.admit("a", 6 * MiB) is None
    refusal = budget.admit("a", 6 * MiB)
    assert refusal is not None and refusal.status == 429 and refusal.retry_after_s == 2.0
    assert refusal.message == "too many uploads from your address: try again in 2 s"
    clock.t += 2
    assert budget.admit("a", 6 * MiB) is None  # refilled 2 MiB: 4 + 2 = 6
    assert budget.kept_bytes() == 12 * MiB
    refusal = budget.admit("b", 1)
    assert refusal is not None and refusal.status == 507 and refusal.retry_after_s == 98.0
    assert refusal.message == "the server's upload space is full: try again in 2 min"
    clock.t += 98  # the first upload is deleted: 6 MiB free again
    assert budget.kept_bytes() == 6 * MiB and budget.admit("b", 1) is None
    # tiny files cost min_charge each: 10 of them empty a fresh bucket
    for _ in range(10):
        assert budget.admit("c", 10) is None
    assert budget.admit("c", 10).status == 429
    assert budget.admit("d", 11 * MiB).status == 413  # larger than any bucket can hold
    with pytest.raises(ValueError, match="must be positive"):
        UploadBudget(total_bytes=0)


def test_upload_budget_forgets_idle_clients():
    clock = Clock()
    budget = UploadBudget(
        burst_bytes=MiB, rate_bytes_per_s=MiB, total_bytes=10**12, min_charge=1, clock=clock
    )
    for i in range(5000):
        assert budget.admit(f"10.0.{i // 256}.{i % 256}", 10) is None
    clock.t += 1  # every bucket is full again
    assert budget.admit("10.1.0.0", 10) is None
    assert len(budget._buckets) == 1


def test_body_limit_refuses_a_negative_cap():
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        BodyLimit(lambda s, r, se: None, -1)
