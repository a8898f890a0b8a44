"""Bounds on what one stranger's requests can cost the host: request body size, which client a
request comes from, and how fast one client (and all of them together) may fill the disk with
uploads.

- :class:`BodyLimit`: a pure ASGI middleware that refuses a request body over a cap (default
  :data:`MAX_BODY_BYTES`, 16 MB: room for a 10 MB image as a base64 ``data:`` URL inside a JSON
  body) on every route, before the body is in memory: at once by its ``Content-Length``, and by
  counting the streamed chunks of a body without one (or one that lies), so at most the cap plus
  one chunk is ever held. The answer is ``413`` with a JSON ``detail``; one log line per refusal.
- :func:`client_key`: whom a request counts against: the first ``X-Forwarded-For`` hop behind a
  proxy (Hugging Face Spaces), else the socket's peer address.
- :class:`UploadBudget`: per client a token bucket of upload bytes, and for everyone together a
  cap on the bytes kept on disk (uploads are deleted after ``retention_s``).
- :class:`UploadLimit`: the ASGI middleware that charges uploads (by route) to that budget.
- :class:`EventInputs`: the ASGI middleware that bounds what one event's JSON body may hand
  the app (Gradio keeps every input value in the session's copy of the page config, and the
  queue holds the whole event until it runs): each input at most :data:`MAX_INPUT_BYTES`, the
  event at most :data:`MAX_EVENT_BYTES`; an image sent as a ``data:`` URL is decoded into the
  upload folder (charged to the upload budget like an upload) and handed on as that file, so
  neither the session nor the queue holds its bytes.
- :func:`behind_proxy`: whether the first ``X-Forwarded-For`` hop is the visitor's address.

Nothing here imports a web framework: the middlewares speak ASGI, so they wrap Gradio's FastAPI
app or any other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping

from .uploads import MAX_UPLOAD_BYTES
from .uploads import too_large as image_too_large

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 2**20
# A 10 MB image as a base64 data: URL is 13.4 MiB; the rest is room for the JSON around it.
MAX_BODY_BYTES = 16 * MiB
# One input value of an event, JSON-encoded (UTF-8): the labels field's 20,000 characters fit.
# Gradio keeps each input's last value per session (about 15 inputs), so a session holds at
# most about 1 MB of them, and the 400 sessions kept (app.py) about 400 MB.
MAX_INPUT_BYTES = 64 * 1024
# One event's whole JSON body once images are files: what the queue holds per waiting event.
MAX_EVENT_BYTES = 1 * MiB
log = logging.getLogger("tca.app.limits")


# --------------------------------------------------------------------------- responses


async def send_json(send: Send, status: int, detail: str, headers: Iterable = ()) -> None:
    """A complete JSON response ``{"detail": ...}`` (FastAPI's error shape)."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in an ASGI scope, or None."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value
    return None


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` as an int, or None if absent or not a number."""
    raw = header(scope, b"content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def too_large(max_bytes: int) -> str:
    return (
        f"request body too large: at most {max_bytes / MiB:g} MB ({max_bytes} bytes); images "
        f"are accepted up to 10 MB"
    )


class BodyTooLarge(Exception):
    """Raised into the wrapped app by :class:`BodyLimit`'s ``receive`` once the streamed body
    passes the cap (the app's own error response is then replaced by the 413)."""


# --------------------------------------------------------------------------- body size


class BodyLimit:
    """ASGI middleware: HTTP request bodies over ``max_bytes`` are refused with 413.

    A declared ``Content-Length`` over the cap is refused before the app runs and before a byte
    of the body is read. Otherwise the body's chunks are counted as the app reads them; the
    chunk that passes the cap raises :class:`BodyTooLarge` into the app (which never sees it),
    whatever the app answers then is dropped, and the client gets the 413 instead (if the app
    had already started a response, the connection is just closed). WebSocket and lifespan
    scopes pass through untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.max_bytes:
            _log_refusal(scope, f"Content-Length {length} over {self.max_bytes}")
            await send_json(send, 413, too_large(self.max_bytes))
            return
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            if exceeded:  # an app that reads on after the refusal sees a disconnect
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(too_large(self.max_bytes))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to the refusal; the 413 goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            _log_refusal(scope, f"streamed body over {self.max_bytes}")
            if not started:
                await send_json(send, 413, too_large(self.max_bytes))


def _log_refusal(scope: Scope, why: str) -> None:
    client = scope.get("client") or ("?", 0)
    log.warning(
        "413 %s %s from %s: %s", scope.get("method", "?"), scope.get("path", "?"), client[0], why
    )


# --------------------------------------------------------------------------- whose request


def client_key(
    headers: Mapping[str, str], client_host: str | None, behind_proxy: bool = False
) -> str:
    """Whom a request counts against: behind a proxy, the first ``X-Forwarded-For`` hop (the
    address the visitor connected from, as Hugging Face Spaces' proxy reports it), else the
    socket's peer address. A hop that is not an IP address is ignored (the peer address is used),
    so a key is always a short, normalised address; "unknown" when there is none.

    headers: the request's headers (any case); client_host: the peer address or None.
    The first hop is what the client's side of the proxy chain wrote; where a proxy passes on a
    client-sent header, a client can choose it, so limits keyed on it are per claimed address.
    """
    if behind_proxy:
        forwarded = next((v for k, v in headers.items() if k.lower() == "x-forwarded-for"), None)
        if forwarded:
            first = _address(forwarded.split(",")[0])
            if first is not None:
                return first
    return _address(client_host or "") or "unknown"


def _address(text: str) -> str | None:
    """``text`` as a normalised IP address (IPv6 brackets and an IPv4 port dropped), or None."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def behind_proxy(env: Mapping[str, str] = os.environ) -> bool:
    """Whether requests arrive through a proxy that writes the visitor's address as the first
    ``X-Forwarded-For`` hop: ``TCA_BEHIND_PROXY`` (1/0) if set, else on Hugging Face Spaces
    (``SPACE_ID`` set), else not."""
    flag = env.get("TCA_BEHIND_PROXY", "").strip().lower()
    if flag:
        return flag not in ("0", "false", "no", "off")
    return bool(env.get("SPACE_ID"))


def scope_client_key(scope: Scope, behind_proxy: bool = False) -> str:
    """:func:`client_key` of an ASGI scope."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}
    client = scope.get("client")
    return client_key(headers, client[0] if client else None, behind_proxy)


# --------------------------------------------------------------------------- uploads


@dataclass(frozen=True)
class Refusal:
    """Why an upload is refused: HTTP status (429: this client too fast, 507: the disk budget
    of everyone together is spent), a message, and when to retry (seconds)."""

    status: int
    message: str
    retry_after_s: float


class UploadBudget:
    """Upload bytes allowed per client (a token bucket) and kept on disk by everyone together.

    Per client: a bucket of ``burst_bytes`` refilling at ``rate_bytes_per_s``; an upload of n
    bytes takes max(n, ``min_charge``) from it (so floods of tiny files are bounded too) or is
    refused with 429. In total: an admitted upload counts against ``total_bytes`` until
    ``retention_s`` after it (the app deletes uploads that old), else 507.
    ``clock`` (seconds, monotonic) is injectable for tests. Thread-safe.
    """

    def __init__(
        self,
        burst_bytes: int = 50 * MiB,
        rate_bytes_per_s: float = 50 * MiB / 600,
        total_bytes: int = 2048 * MiB,
        retention_s: float = 4500.0,
        min_charge: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst_bytes <= 0 or rate_bytes_per_s <= 0 or total_bytes <= 0 or retention_s <= 0:
            raise ValueError("upload budget sizes, rate and retention must be positive")
        self.burst_bytes = burst_bytes
        self.rate = rate_bytes_per_s
        self.total_bytes = total_bytes
        self.retention_s = retention_s
        self.min_charge = min_charge
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._kept: deque[tuple[float, int]] = deque()  # (expires at, bytes), in admission order
        self._kept_bytes = 0
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst_bytes), now))
        return min(float(self.burst_bytes), tokens + (now - at) * self.rate)

    def kept_bytes(self) -> int:
        """Bytes of uploads admitted and not yet past their retention."""
        with self._lock:
            self._expire(self.clock())
            return self._kept_bytes

    def _expire(self, now: float) -> None:
        while self._kept and self._kept[0][0] <= now:
            self._kept_bytes -= self._kept.popleft()[1]

    def admit(self, key: str, nbytes: int) -> Refusal | None:
        """Charge an upload of ``nbytes`` to client ``key``: None if admitted, else why not
        (nothing is charged then)."""
        now = self.clock()
        charge = max(int(nbytes), self.min_charge)
        with self._lock:
            self._expire(now)
            if charge > self.burst_bytes:
                return Refusal(
                    413, f"upload too large: at most {self.burst_bytes / MiB:g} MB", math.inf
                )
            tokens = self._tokens(key, now)
            if tokens < charge:
                wait = (charge - tokens) / self.rate
                return Refusal(
                    429,
                    f"too many uploads from your address: try again in {math.ceil(wait)} s",
                    wait,
                )
            if self._kept_bytes + nbytes > self.total_bytes:
                wait = self._kept[0][0] - now if self._kept else self.retention_s
                return Refusal(
                    507,
                    f"the server's upload space is full: try again in {math.ceil(wait / 60)} min",
                    wait,
                )
            self._buckets[key] = (tokens - charge, now)
            self._kept.append((now + self.retention_s, int(nbytes)))
            self._kept_bytes += int(nbytes)
            if len(self._buckets) > 4096:  # forget clients whose bucket is full again
                full = [k for k in self._buckets if self._tokens(k, now) >= self.burst_bytes]
                for k in full:
                    del self._buckets[k]
            return None


class UploadLimit:
    """ASGI middleware: POSTs to an upload route are charged to an :class:`UploadBudget` under
    the client's key (:func:`client_key`) before the app reads them, by their
    ``Content-Length``; without one, the request is refused (411), since its size could not be
    charged first. Refusals are JSON with ``Retry-After``; other requests pass untouched.

    is_upload: which paths are upload routes (default: paths ending in ``/upload``, Gradio's
    ``/gradio_api/upload``).
    """

    def __init__(
        self,
        app: ASGIApp,
        budget: UploadBudget,
        behind_proxy: bool = False,
        is_upload: Callable[[str], bool] = lambda path: path.rstrip("/").endswith("/upload"),
    ) -> None:
        self.app = app
        self.budget = budget
        self.behind_proxy = behind_proxy
        self.is_upload = is_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not self.is_upload(scope.get("path", ""))
        ):
            await self.app(scope, receive, send)
            return
        key = scope_client_key(scope, self.behind_proxy)
        length = declared_length(scope)
        if length is None:
            log.warning("411 %s from %s: upload without Content-Length", scope.get("path"), key)
            await send_json(send, 411, "uploads need a Content-Length header")
            return
        refusal = self.budget.admit(key, length)
        if refusal is not None:
            log.warning(
                "%d %s from %s: %s", refusal.status, scope.get("path"), key, refusal.message
            )
            retry = (
                []
                if math.isinf(refusal.retry_after_s)
                else [(b"retry-after", str(math.ceil(refusal.retry_after_s)).encode())]
            )
            await send_json(send, refusal.status, refusal.message, retry)
            return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- event inputs


class Refused(Exception):
    """An event body :class:`EventInputs` refuses: HTTP status and the message for the client."""

    def __init__(self, status: int, message: str, headers: Iterable = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


INLINE_PREFIX = "data-url-"  # the folders inline images are written to (cleanup deletes them)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_IMAGE_SUFFIX = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "gif": ".gif", "webp": ".webp"}


def is_json(scope: Scope) -> bool:
    """Whether a request's body is (or, without a Content-Type, may be) JSON: FastAPI parses a
    body without one as JSON too."""
    raw = header(scope, b"content-type")
    if raw is None:
        return True
    kind = raw.decode("latin-1").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def data_url_file(
    value: Mapping[str, Any], folder: Path, max_bytes: int = MAX_UPLOAD_BYTES
) -> tuple[dict[str, Any], bytes]:
    """A file payload ``{"url": "data:...;base64,...", ...}`` decoded: (the payload that names
    the file it will be written to, its bytes). Raises :class:`Refused` (413 over ``max_bytes``,
    400 not base64). The file name is the payload's ``orig_name`` when it is a plain one."""
    url = value["url"]
    head, _, payload = url.partition(",")
    if len(payload) * 3 // 4 > max_bytes:
        raise Refused(413, image_too_large(len(payload) * 3 // 4, max_bytes))
    if not head.endswith(";base64"):
        raise Refused(400, "image: a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "image: the data: URL is not valid base64") from None
    name = value.get("orig_name")
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        kind = head[len("data:") :].split(";")[0].split("/")[-1].lower()
        name = "image" + _IMAGE_SUFFIX.get(kind, ".png")
    path = folder / f"{INLINE_PREFIX}{uuid.uuid4().hex}" / name
    out = {
        "path": str(path),
        "orig_name": name,
        "size": len(data),
        "meta": {"_type": "gradio.FileData"},
    }
    return out, data


def _write(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


class EventInputs:
    """ASGI middleware: the JSON body of an event (a POST whose body is an object with a
    ``data`` list: Gradio's ``/queue/join``, ``/call/...``, ``/run/...``) is read (it is
    already under :class:`BodyLimit`'s cap), and

    - each image sent inline as a ``data:`` URL is decoded into ``folder`` (Gradio's upload
      folder) and replaced by a reference to that file, after its bytes are charged to
      ``budget`` under the client's key (so inline images count like uploads: 429 / 507);
    - then every input value must JSON-encode to at most ``max_input_bytes`` and the whole
      body to at most ``max_event_bytes``, else 413 naming the input by its position.

    - ``admit(event, client key)``, if given, may refuse the event before it is queued: it
      returns a message (answered with 429) or None (the app's per-visitor rule: a visitor's
      second model request is refused at the door, so a flood never waits in the queue).

    Anything else (other methods, non-JSON bodies, JSON without a ``data`` list) passes
    untouched; a body that is not valid JSON is handed on as it came (the app answers 422).
    One log line per refusal.
    """

    def __init__(
        self,
        app: ASGIApp,
        folder: str | os.PathLike,
        budget: UploadBudget | None = None,
        behind_proxy: bool = False,
        max_input_bytes: int = MAX_INPUT_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_image_bytes: int = MAX_UPLOAD_BYTES,
        admit: Callable[[Mapping[str, Any], str], str | None] | None = None,
    ) -> None:
        self.app = app
        self.admit = admit
        self.folder = Path(folder)
        self.budget = budget
        self.behind_proxy = behind_proxy
        self.max_input_bytes = max_input_bytes
        self.max_event_bytes = max_event_bytes
        self.max_image_bytes = max_image_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        key = scope_client_key(scope, self.behind_proxy)
        try:
            body, event = await asyncio.to_thread(self.checked, body, key)
            busy = self.admit(event, key) if (self.admit and event is not None) else None
            if busy is not None:
                raise Refused(429, busy)
        except Refused as refusal:
            log.warning(
                "%d %s %s from %s: %s",
                refusal.status,
                scope.get("method"),
                scope.get("path"),
                key,
                refusal.message,
            )
            await send_json(send, refusal.status, refusal.message, refusal.headers)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the client's disconnect, if any
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def checked(self, body: bytes, key: str) -> tuple[bytes, dict[str, Any] | None]:
        """The body to hand on (rewritten when it held inline images) and the event it holds
        (None if it is no event), or :class:`Refused`."""
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body, None
        if not isinstance(event, dict) or not isinstance(event.get("data"), list):
            return body, None
        files: list[tuple[str, bytes]] = []
        data = list(event["data"])
        for i, value in enumerate(data):
            if (
                isinstance(value, dict)
                and isinstance(value.get("url"), str)
                and value["url"].startswith("data:")
            ):
                data[i], raw = data_url_file(value, self.folder, self.max_image_bytes)
                files.append((data[i]["path"], raw))
        for i, value in enumerate(data):
            size = _size(value)
            if size > self.max_input_bytes:
                raise Refused(
                    413,
                    f"input {i + 1} of this event is {size / 1024:.0f} kB; each input may be at "
                    f"most {self.max_input_bytes // 1024} kB (send images as uploads)",
                )
        event["data"] = data
        size = _size(event)
        if size > self.max_event_bytes:
            raise Refused(
                413,
                f"this event's request is {size / MiB:.1f} MB without its images; at most "
                f"{self.max_event_bytes / MiB:g} MB",
            )
        for path, raw in files:
            if self.budget is not None:
                refusal = self.budget.admit(key, len(raw))
                if refusal is not None:
                    retry = (
                        []
                        if math.isinf(refusal.retry_after_s)
                        else [(b"retry-after", str(math.ceil(refusal.retry_after_s)).encode())]
                    )
                    raise Refused(refusal.status, refusal.message, retry)
            _write(path, raw)
        if not files:
            return body, event
        return json.dumps(event, ensure_ascii=False).encode(), event


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_INPUT_BYTES",
    "BodyLimit",
    "BodyTooLarge",
    "EventInputs",
    "INLINE_PREFIX",
    "Refused",
    "behind_proxy",
    "data_url_file",
    "is_json",
    "Refusal",
    "UploadBudget",
    "UploadLimit",
    "client_key",
    "declared_length",
    "scope_client_key",
    "send_json",
]
