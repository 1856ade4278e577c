"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for failure tests against real servers.

    with FaultProxy("http://127.0.0.1:5000", flavor="s3", seed=1, rate=0.15) as proxy:
        store = Store("s3://bucket/p", storage_options={"endpoint_url": proxy.url, ...})
        ...
        assert sum(proxy.injected.values()) > 0

Every request is parsed (Content-Length or chunked bodies, keep-alive, `Expect:
100-continue`); a seeded share `rate` of the requests that `match` selects gets a fault, the
modes taken in turn from `modes` (so every listed mode is injected once there are that many
faults). Everything else goes to the upstream byte-for-byte, and its reply comes back
byte-for-byte. `injected` counts faults by mode; `requests` counts requests seen; `log` lists
(method, path, mode or "forward", time); with `keep_bodies`, `delivered` holds the body of
every upstream reply that reached the client whole.

Modes (`S3_MODES`, `OPENAI_MODES`):

- `reset_before`: the whole request is read, never forwarded; the connection is reset (RST).
- `reset_mid_request`: the connection is reset after the headers and part of the body.
- `reset_after_forward`: the upstream handles the request (a PUT is stored, a reply is
  generated), then the client's connection is reset before any byte of the response.
- `http_500`, `http_503`: an error reply without forwarding; S3 XML (`InternalError`,
  `SlowDown`) or an OpenAI-style JSON error by `flavor`.
- `http_429`: 429 with `Retry-After: retry_after_s` and a JSON (or XML) error.
- `slow`: forwarded, and the reply held for `slow_s` seconds (longer than the client's
  timeout), then sent if the client is still there (for S3: the write happened anyway).
- `stall`: a hung server: the request is held `slow_s` seconds, never forwarded, and the
  connection closed without a reply (for an LLM: no abandoned generation queues up).
- `truncated`: the upstream's reply with its real headers (Content-Length unchanged) and
  only the first half of its body (a reply without a body: half its headers), then the
  connection is closed.
- `malformed_json`: 200 with a JSON body cut off mid-string (with a correct Content-Length).
- `missing_fields`: 200 with valid JSON that lacks what a chat completion must have (no
  `choices`, or a message without `content`), in turn.
- `down`: the proxy shuts down for good: listening socket closed, open connections reset.

`after`: the first `after` matching requests are never faulted (a run gets going, then it
breaks). The proxy is a test tool: it holds each reply in memory and streams nothing.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

S3_MODES = ("reset_before", "reset_mid_request", "reset_after_forward", "http_500", "http_503", "slow", "truncated")
OPENAI_MODES = ("reset_before", "reset_after_forward", "http_500", "http_503", "http_429", "stall", "truncated",
                "malformed_json", "missing_fields")
ALL_MODES = frozenset(S3_MODES) | frozenset(OPENAI_MODES) | {"slow", "stall", "down"}

_READ_TIMEOUT_S = 60.0  # an idle client connection is closed after this


class _Closed(Exception):
    """The peer closed the connection (cleanly, between requests, or mid-message)."""


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    head: bytes  # request line + headers + blank line, as received
    body: bytes  # as received (chunked framing kept)


class _Reader:
    """Buffered reads from a socket: lines, exact byte counts, or until close."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.buf += data

    def until(self, marker: bytes, *, limit: int = 1 << 20) -> bytes:
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise _Closed()
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        try:
            while True:
                self._fill()
        except (_Closed, OSError):
            pass
        out, self.buf = self.buf, b""
        return out

    def chunked(self) -> bytes:
        """A chunked body with its framing, through the last chunk and trailers."""
        out = b""
        while True:
            line = self.until(b"\r\n")
            out += line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = self.until(b"\r\n")
                    out += trailer
                    if trailer == b"\r\n":
                        return out
            out += self.exactly(size + 2)


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    """See the module docstring. Settings (`rate`, `modes`, `after`, `match`) may be changed while it runs."""

    def __init__(self, upstream: str, *, flavor: str = "s3", seed: int = 0, rate: float = 0.0,
                 modes: Sequence[str] | None = None, after: int = 0,
                 match: Callable[[str, str], bool] | None = None, slow_s: float = 3.0,
                 retry_after_s: float = 1.0, keep_bodies: bool = False) -> None:
        if flavor not in ("s3", "openai"):
            raise ValueError(f"flavor must be 's3' or 'openai', got {flavor!r}")
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.flavor = flavor
        self.slow_s = slow_s
        self.retry_after_s = retry_after_s
        self.injected: Counter[str] = Counter()
        self.requests = 0  # every request seen
        self.matched = 0  # requests `match` selected
        self.forwarded = 0
        self.log: list[tuple[str, str, str, float]] = []  # (method, path, mode or "forward", monotonic time)
        self.keep_bodies = keep_bodies
        self.delivered: list[bytes] = []  # with keep_bodies: bodies of upstream replies passed on whole
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._serial = itertools.count(1)
        self.configure(rate=rate, modes=modes, after=after, match=match)
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._clients: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    # settings ----------------------------------------------------------------------------
    def configure(self, *, rate: float | None = None, modes: Sequence[str] | None = None, after: int | None = None,
                  match: Callable[[str, str], bool] | None = None) -> None:
        """Change what is injected from the next request on (counters are kept)."""
        with self._lock:
            if rate is not None:
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"rate must be within [0, 1], got {rate}")
                self.rate = rate
            if modes is not None or not hasattr(self, "modes"):
                chosen = tuple(modes or (S3_MODES if self.flavor == "s3" else OPENAI_MODES))
                unknown = set(chosen) - ALL_MODES
                if unknown:
                    raise ValueError(f"unknown fault modes {sorted(unknown)}")
                self.modes = chosen
                self._cycle = itertools.cycle(chosen)
            if after is not None:
                self.after = after
                self.matched = 0
            if match is not None or not hasattr(self, "match"):
                self.match = match

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def __enter__(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting and reset every open connection (also what mode `down` does)."""
        self._stop.set()
        try:  # shutdown wakes the thread blocked in accept(); close alone would leave it listening
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            _reset(sock)

    # serving -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._stop.is_set():
                _reset(client)
                return
            with self._lock:
                self._clients.add(client)
            thread = threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True)
            thread.start()

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.match is not None and not self.match(method, path):
                return None
            self.matched += 1
            if self.matched <= self.after:
                return None
            if self.rate <= 0 or self._rng.random() >= self.rate:
                return None
            mode = next(self._cycle)
            self.injected[mode] += 1
            return mode

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_READ_TIMEOUT_S)
        reader = _Reader(client)
        upstream: socket.socket | None = None
        try:
            while not self._stop.is_set():
                head = reader.until(b"\r\n\r\n")
                line, headers = _parse_head(head)
                method, path = (line.split(" ") + ["", ""])[:2]
                mode = self._decide(method, path)
                length = int(headers.get("content-length", "0") or 0)
                chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                if mode == "down":
                    self._log(method, path, mode)
                    self.stop()
                    return
                expects = headers.get("expect", "").lower() == "100-continue"
                if (length or chunked) and expects and not reader.buf:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it to send the body
                if mode == "reset_mid_request":
                    if length > 1 and len(reader.buf) < length:
                        reader.exactly(min(len(reader.buf) + 1, length // 2))
                    self._log(method, path, mode)
                    _reset(client)
                    return
                body = reader.chunked() if chunked else reader.exactly(length)
                request = Request(method, path, headers, head, body)
                self._log(method, path, mode or "forward")
                if mode == "reset_before":
                    _reset(client)
                    return
                if mode == "stall":
                    self._stop.wait(self.slow_s)
                    return
                if mode in ("http_500", "http_503", "http_429", "malformed_json", "missing_fields"):
                    client.sendall(self._synthetic(mode, request))
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=_READ_TIMEOUT_S)
                try:
                    response, keep = self._forward(upstream, request)
                except (OSError, _Closed):  # a stale keep-alive connection: one fresh try
                    upstream.close()
                    upstream = socket.create_connection(self.upstream, timeout=_READ_TIMEOUT_S)
                    response, keep = self._forward(upstream, request)
                with self._lock:
                    self.forwarded += 1
                if not keep:
                    upstream.close()
                    upstream = None
                if mode == "reset_after_forward":
                    _reset(client)
                    return
                if mode == "slow":
                    self._stop.wait(self.slow_s)
                    try:
                        client.sendall(response[0] + response[1])
                    except OSError:
                        pass
                    return
                if mode == "truncated":  # half the body; a reply without one loses half its headers
                    head_bytes, body_bytes = response
                    client.sendall(head_bytes + body_bytes[: len(body_bytes) // 2] if body_bytes
                                   else head_bytes[: len(head_bytes) // 2])
                    client.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(response[0] + response[1])
                if self.keep_bodies:
                    with self._lock:
                        self.delivered.append(response[1])
                if not keep:
                    return
        except (_Closed, OSError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            with self._lock:
                self._clients.discard(client)
            try:
                client.close()
            except OSError:
                pass

    def _log(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.log.append((method, path, what, time.monotonic()))

    def _forward(self, upstream: socket.socket, request: Request) -> tuple[tuple[bytes, bytes], bool]:
        """Send the request as received; return (head, body) of the final reply and whether
        the upstream connection stays open. Interim 1xx replies are dropped (the proxy already
        answered `Expect: 100-continue` itself, or the client never asked)."""
        upstream.sendall(request.head + request.body)
        reader = _Reader(upstream)
        while True:
            head = reader.until(b"\r\n\r\n")
            status_line, headers = _parse_head(head)
            status = int(status_line.split(" ")[1])
            if status >= 200:
                break
        if request.method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = reader.chunked()
        elif "content-length" in headers:
            body = reader.exactly(int(headers["content-length"]))
        else:
            body = reader.rest()
            return (head, body), False
        keep = headers.get("connection", "").lower() != "close" and not status_line.startswith("HTTP/1.0")
        return (head, body), keep

    def _synthetic(self, mode: str, request: Request) -> bytes:
        """An error or broken reply made here (never forwarded)."""
        n = next(self._serial)
        extra: list[str] = []
        status, reason = {"http_500": (500, "Internal Server Error"), "http_503": (503, "Service Unavailable"),
                          "http_429": (429, "Too Many Requests")}.get(mode, (200, "OK"))
        if mode == "http_429":
            extra.append(f"Retry-After: {self.retry_after_s:g}")
        if self.flavor == "s3" and status != 200:
            code, message = {500: ("InternalError", "We encountered an internal error. Please try again."),
                             503: ("SlowDown", "Please reduce your request rate."),
                             429: ("SlowDown", "Please reduce your request rate.")}[status]
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                    f"<RequestId>fault-{n}</RequestId><HostId>fault-proxy</HostId></Error>").encode()
            ctype = "application/xml"
        elif status != 200:
            kind = {500: "server_error", 503: "overloaded", 429: "rate_limit_exceeded"}[status]
            body = json.dumps({"error": {"message": f"injected {mode} #{n}", "type": kind, "code": status}}).encode()
            ctype = "application/json"
        elif mode == "malformed_json":
            body = b'{"id": "chatcmpl-fault", "object": "chat.completion", "choices": [{"index": 0, "message": ' \
                   b'{"role": "assistant", "content": "The bakery on Mill Str'
            ctype = "application/json"
        else:  # missing_fields: valid JSON, not a usable completion
            variants = [{"id": f"chatcmpl-fault-{n}", "object": "chat.completion", "model": "x"},
                        {"id": f"chatcmpl-fault-{n}", "object": "chat.completion",
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant"}}]},
                        {"id": f"chatcmpl-fault-{n}", "object": "chat.completion", "choices": []}]
            body = json.dumps(variants[n % len(variants)]).encode()
            ctype = "application/json"
        if request.method == "HEAD":
            body_out, length = b"", 0
        else:
            body_out, length = body, len(body)
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {length}",
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}", *extra, "", ""]
        return "\r\n".join(head).encode() + body_out
