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

Nothing here imports a web framework: the middlewares speak ASGI, so they wrap Gradio's FastAPI
app or any other.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 2**20
# A 10 MB image as a base64 data: URL is 13.4 MiB; the rest is room for the JSON around it.
MAX_BODY_BYTES = 16 * MiB
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


__all__ = [
    "MAX_BODY_BYTES",
    "BodyLimit",
    "BodyTooLarge",
    "Refusal",
    "UploadBudget",
    "UploadLimit",
    "client_key",
    "declared_length",
    "scope_client_key",
    "send_json",
]
