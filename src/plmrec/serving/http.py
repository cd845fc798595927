"""The predictor's HTTP front: the routes it answers, how a body is read, what a client mistake costs.

`Gate` is ASGI middleware in front of KServe's application:
- only the routes plmrec implements exist (`ROUTES`): inference, health, metadata and /metrics; any other
  path is a 404 and another method a 405, answered here without reaching KServe (so its model-repository
  routes, which would let any client unload the model, are never reached);
- `/v2/health/ready` is true only while every model is loaded and answers (`RecommenderModel.healthy`);
- a predict body is read here whatever its content type, within `serving.max_body_bytes` (413) and
  `serving.body_timeout_s` (408), parsed by `requests.read_json` (strict JSON) and, for v2, held to
  `requests.V2Body`; what reaches KServe is that JSON re-written, with a JSON content type. KServe's binary
  tensor extension is refused (415).

`ClientMistakes` counts every refusal by reason (Prometheus `plmrec_client_errors_total`, on /metrics) and
logs the first of each reason, then at most one line per reason every `serving.mistake_log_every_s`.
`GuardedHttpTools` closes a connection whose request headers take longer than `serving.header_timeout_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from plmrec.errors import RequestError
from plmrec.serving.requests import check_v2_body, read_json

log = logging.getLogger("plmrec.serving")

_NAME = r"[^/:]+"


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern
    methods: tuple[str, ...]
    body: str | None = None  # v1 | v2: a predict route, whose body the gate reads and checks


def _route(path: str, *methods: str, body: str | None = None) -> Route:
    return Route(re.compile("^" + path.replace("{name}", _NAME) + "$"), methods, body)


ROUTES = (
    _route("/", "GET"),
    _route("/metrics", "GET"),
    _route("/v1/models", "GET"),
    _route("/v1/models/{name}", "GET"),
    _route("/v1/models/{name}:predict", "POST", body="v1"),
    _route("/v2", "GET"),
    _route("/v2/health/live", "GET"),
    _route("/v2/health/ready", "GET"),
    _route("/v2/models", "GET"),
    _route("/v2/models/{name}", "GET"),
    _route("/v2/models/{name}/ready", "GET"),
    _route("/v2/models/{name}/infer", "POST", body="v2"),
)
_KNOWN = "/v1/models/<name>:predict, /v2/models/<name>/infer, /v2/health/live|ready, /v1|v2/models/<name>"
_READY = "/v2/health/ready"
BINARY_HEADER = b"inference-header-content-length"  # KServe's binary tensor extension


def find_route(path: str) -> Route | None:
    return next((r for r in ROUTES if r.pattern.match(path)), None)


class ClientMistakes:
    """Every client mistake counted by reason and status; logged sampled so that a flood of them cannot
    flood the log: a reason's first mistake is one line, later ones at most one line per `every_s`
    seconds, saying how many went unwritten since."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._unwritten: dict[str, int] = {}

    def record(self, status: int, reason: str, message: str, *, level: int = logging.WARNING) -> None:
        CLIENT_ERRORS.labels(reason=reason, status=str(status)).inc()
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.every_s:
            self._unwritten[reason] = self._unwritten.get(reason, 0) + 1
            return
        self._last[reason] = now
        skipped = self._unwritten.pop(reason, 0)
        more = f" (+{skipped} more {reason} since the last line)" if skipped else ""
        log.log(level, "%d %s: %s%s", status, reason, message, more)


CLIENT_ERRORS = Counter("plmrec_client_errors", "client mistakes and cut-off clients, by reason", ["reason", "status"])
MISTAKES = ClientMistakes()


class Gate:
    """ASGI middleware: the routes, readiness and predict bodies described in the module docstring."""

    def __init__(self, app, *, models, max_bytes: int, timeout_s: float):
        self.app, self.models, self.max_bytes, self.timeout_s = app, models, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        route = find_route(path)
        if route is None:
            return await reply(
                send, 404, f"no route {path[:200]!r}; this predictor answers {_KNOWN}", reason="unknown_route"
            )
        if method not in route.methods:
            allowed = ", ".join(route.methods)
            return await reply(
                send,
                405,
                f"{method[:20]} is not allowed on {path[:200]}; use {allowed}",
                reason="method_not_allowed",
                headers=[(b"allow", allowed.encode())],
            )
        if path == _READY:
            return await self._ready(scope, receive, send)
        if route.body is None:
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        if any(name == BINARY_HEADER for name, _ in headers):
            return await reply(
                send,
                415,
                "the binary tensor extension (inference-header-content-length) is not supported; send the "
                "inputs as JSON data",
                reason="binary_tensor",
            )
        raw = await self._body(scope, receive, send)
        if raw is None:
            return None
        try:
            payload = read_json(raw)
            if route.body == "v2":
                check_v2_body(payload)
        except RequestError as exc:
            return await reply(send, exc.http_status, str(exc), reason=exc.kind)
        body = json.dumps(payload, separators=(",", ":")).encode()  # what KServe parses: JSON, nothing else
        kept = [
            (k, v)
            for k, v in headers
            if k not in (b"content-type", b"content-length", b"transfer-encoding") and not k.startswith(b"ce-")
        ]
        kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: the client's disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app({**scope, "headers": kept}, replay, send)

    async def _ready(self, scope, receive, send):
        """Ready only while every model is loaded and answers (KServe's own check says true regardless)."""
        for model in self.models:
            if not await model.healthy():
                body = json.dumps({"ready": False, "error": f"model {model.name} is not loaded"}).encode()
                await _respond(send, 503, body, headers=[])
                return None
        return await self.app(scope, receive, send)

    async def _body(self, scope, receive, send) -> bytes | None:
        """The whole body, or None once the client has been answered (413, 408) or has gone."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send, int(declared))
            return None
        chunks, seen = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:  # a chunked body has no length header: count it as it arrives
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                await reply(
                    send,
                    408,
                    f"the request body did not arrive within {self.timeout_s:g} s ({seen} bytes came; "
                    f"serving.body_timeout_s)",
                    reason="body_timeout",
                )
                return None
            if message["type"] == "http.disconnect":
                MISTAKES.record(499, "client_disconnect", f"the client left after {seen} bytes", level=logging.INFO)
                return None
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._too_large(send, seen)
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, send, size: int):
        await reply(
            send,
            413,
            f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes (serving.max_body_bytes)",
            reason="too_large",
        )


async def reply(send, status: int, message: str, *, reason: str, headers: list | None = None) -> None:
    """Answer a client mistake from the gate, before the application sees the request."""
    MISTAKES.record(status, reason, message)
    extra = list(headers or [])
    if status in (408, 413, 415):
        extra.append((b"connection", b"close"))  # the rest of the body is not read
    await _respond(send, status, json.dumps({"error": message}).encode(), headers=extra)


async def _respond(send, status: int, body: bytes, *, headers: list) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-read timeout: a request's headers must all arrive within
    `header_timeout_s` of the connection opening or of the request's first byte, else a 408 and the
    connection is closed (uvicorn times out idle keep-alive connections, not slow headers)."""

    header_timeout_s = 10.0

    def connection_made(self, transport):
        super().connection_made(transport)
        self._in_headers = True
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._in_headers and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._in_headers = True  # the next request's headers: timed from their first byte
        super().on_response_complete()

    def connection_lost(self, exc):
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        MISTAKES.record(400, "invalid_http", msg)
        super().send_400_response(msg)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
        self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        message = f"the request headers did not arrive within {self.header_timeout_s:g} s (serving.header_timeout_s)"
        MISTAKES.record(408, "header_timeout", message, level=logging.INFO)
        body = json.dumps({"error": message}).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[GuardedHttpTools]:
    """The protocol class uvicorn builds each connection with, carrying the configured timeout."""
    return type("GuardedHttp", (GuardedHttpTools,), {"header_timeout_s": header_timeout_s})
