"""The KServe predictor: a `kserve.Model` over a serving bundle, run by `kserve.ModelServer`.

v1  POST /v1/models/<name>:predict   {"instances": [{"customer_id": 12347, "k": 10}, ...]}
v2  POST /v2/models/<name>/infer      Open Inference Protocol tensors (see `parse_v2`)
Health: GET /v2/health/live, /v2/health/ready, /v1/models/<name> (readiness), /v2/models/<name>/ready.

Every client mistake is a 4xx with a message naming the field, logged as one WARNING line: bad JSON,
wrong types, unknown fields and a v2 datatype or shape that does not match its data 400; a predict URL
called without POST 405; a body that does not arrive within `serving.body_timeout_s` 408; too many
instances or too large a body 413. An unknown customer without a basket is no mistake: the popular
list, flagged (`fallback`, with the reason).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import uuid
from pathlib import Path

from plmrec.config import ServingParams
from plmrec.errors import RequestError
from plmrec.serving.bundle import Recommender, find_bundle
from plmrec.serving.requests import V2_INPUTS, answer, parse_v1, parse_v2

log = logging.getLogger("plmrec.serving")


def _import_kserve():
    """kserve parses sys.argv when imported; keep it from reading this process's own flags."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        import kserve.model_server  # noqa: F401
    finally:
        sys.argv = saved
    return kserve


kserve = _import_kserve()
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

V2_OUTPUTS = (("stock_code", "BYTES"), ("description", "BYTES"), ("score", "FP32"))  # [B, k] each; "" pads
FALLBACK_OUTPUT = "fallback"  # [B]: "popular" where the model had nothing to go on (an unknown customer), else ""
LIST_OUTPUT = "list"  # [B]: the list each request got (mixed | discover | buy_again); "" for a query or the fallback


class RecommenderModel(kserve.Model):
    """Loads the bundle in `load()`; answers v1 and v2 predict requests; describes its v2 inputs and
    outputs (GET /v2/models/<name>)."""

    def __init__(
        self, name: str, bundle_dir: str | Path, limits: ServingParams | None = None, *, version: str | None = None
    ):
        super().__init__(name)
        self.bundle_dir, self.version = Path(bundle_dir), version
        self.limits = limits or ServingParams()
        self.recommender: Recommender | None = None

    def load(self) -> bool:
        self.recommender = Recommender(find_bundle(self.bundle_dir))
        self.recommender.search(["warm up"], 1)  # first encoder call allocates; keep it off the first request
        self.ready = True
        return self.ready

    def predict(self, payload, headers: dict | None = None):
        if isinstance(payload, (bytes, str)):  # a JSON body sent without a JSON content type
            try:
                payload = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(f"the body is not valid JSON: {exc}") from None
        if isinstance(payload, InferRequest):
            results = answer(self.recommender, parse_v2(payload, self.limits))
            return self._v2_response(payload, results)
        return {"predictions": answer(self.recommender, parse_v1(payload, self.limits)), "model_version": self.version}

    def get_input_types(self) -> list[dict]:
        """The Open Inference Protocol inputs a request may carry (one kind per request; `customer_id` also
        takes INT32, UINT64 and UINT32): one dimension, any length."""
        return [{"name": name, "datatype": types[0], "shape": [-1]} for name, types in V2_INPUTS.items()]

    def get_output_types(self) -> list[dict]:
        """The outputs of every answer: [requests, k] each, and which requests got the fallback list."""
        lists = [{"name": name, "datatype": datatype, "shape": [-1, -1]} for name, datatype in V2_OUTPUTS]
        flags = [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in (FALLBACK_OUTPUT, LIST_OUTPUT)]
        return [*lists, *flags]

    def _v2_response(self, request: InferRequest, results: list[dict]) -> InferResponse:
        width = max(len(r["items"]) for r in results)
        codes, descriptions, scores = [], [], []
        for r in results:
            pad = width - len(r["items"])
            codes += [i["stock_code"] for i in r["items"]] + [""] * pad  # "" marks padding
            descriptions += [i["description"] for i in r["items"]] + [""] * pad
            scores += [i["score"] for i in r["items"]] + [0.0] * pad
        shape = [len(results), width]
        values = {"stock_code": codes, "description": descriptions, "score": scores}
        outputs = [InferOutput(name, shape, datatype, values[name]) for name, datatype in V2_OUTPUTS]
        fallbacks = [r.get("fallback") or "" for r in results]
        outputs.append(InferOutput(FALLBACK_OUTPUT, [len(results)], "BYTES", fallbacks))
        outputs.append(InferOutput(LIST_OUTPUT, [len(results)], "BYTES", [r.get("list") or "" for r in results]))
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            model_version=self.version,
        )


_PREDICT_PATH = re.compile(r"^/v1/models/[^/]+:(predict|explain)$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


class RequestGuard:
    """ASGI middleware in front of the model server: a predict URL takes POST only (405 otherwise); a body
    over `max_bytes` gets a 413 before it is read in full; a body that does not arrive within
    `timeout_s` gets a 408, so a client that declares more than it sends cannot hold a connection."""

    def __init__(self, app, *, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _PREDICT_PATH.match(scope.get("path", "")) and scope.get("method") != "POST":
            return await _reply(
                send, 405, f"{scope.get('method')} is not allowed on {scope.get('path')}; use POST", allow=b"POST"
            )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send, int(declared))
        seen = 0
        chunks = []
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:  # a chunked body has no length header: count it as it arrives
            try:
                message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0))
            except TimeoutError:
                return await _reply(
                    send,
                    408,
                    f"the request body did not arrive within {self.timeout_s:g} s ({seen} bytes came; "
                    f"serving.body_timeout_s)",
                )
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await self._too_large(send, seen)
            chunks.append(message)
            if not message.get("more_body"):
                break

        async def replay():
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        return await self.app(scope, replay, send)

    async def _too_large(self, send, size: int):
        await _reply(
            send,
            413,
            f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes (serving.max_body_bytes)",
        )


async def _reply(send, status: int, message: str, *, allow: bytes | None = None) -> None:
    """Answer from the middleware, before the application sees the request (logged as a client mistake)."""
    log.warning("%d %s", status, message)
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", allow))
    if status in (408, 413):
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _client_mistake(status: int | None = None):
    """An exception handler for a 4xx (`status`, else the exception's own `http_status`): one WARNING
    line with the reason, no traceback (those are for 5xx)."""
    from fastapi.responses import JSONResponse

    async def handler(request, exc):
        code = status or exc.http_status
        log.warning("%d %s %s: %s", code, request.method, request.url.path, exc)
        return JSONResponse(status_code=code, content={"error": str(exc)})

    return handler


def _install_handlers(app) -> None:
    """plmrec's handlers for client mistakes, over kserve's (which log each one with a traceback at ERROR)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput, ModelNotFound

    async def invalid_v2_body(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5])
        message = f"invalid request body: {problems}"
        log.warning("400 %s %s: %s", request.method, request.url.path, message)
        return JSONResponse(status_code=400, content={"error": message})

    app.add_exception_handler(RequestError, _client_mistake())
    app.add_exception_handler(RequestValidationError, invalid_v2_body)
    app.add_exception_handler(InvalidInput, _client_mistake(400))
    app.add_exception_handler(ModelNotFound, _client_mistake(404))


class LocalModelServer(kserve.ModelServer):
    """kserve.ModelServer, REST only, with plmrec's error handlers, bound to a chosen host."""

    def __init__(self, host: str, http_port: int, limits: ServingParams):
        super().__init__(http_port=http_port, enable_grpc=False, workers=1, enable_latency_logging=False)
        self.host, self.limits = host, limits

    def start(self, models) -> None:
        from kserve.model_server import app

        app.add_middleware(RequestGuard, max_bytes=self.limits.max_body_bytes, timeout_s=self.limits.body_timeout_s)
        super().start(models)

    async def _serve(self):
        # The one override, of a private hook: kserve's RESTServer always binds 0.0.0.0 and offers no
        # host setting, so the REST server built by start() is pointed at serving.host just before it
        # runs; and it registers kserve's exception handlers as it starts, so plmrec's go in after them.
        rest = self._rest_server
        rest.config.host = self.host
        create_application = rest.create_application

        def with_plmrec_handlers():
            create_application()
            from kserve.model_server import app

            _install_handlers(app)

        rest.create_application = with_plmrec_handlers
        await super()._serve()


def serve(
    bundle_dir: str | Path,
    limits: ServingParams,
    host: str | None = None,
    *,
    port: int | None = None,
    name: str | None = None,
    version: str | None = None,
) -> None:
    """Load the bundle and serve it until interrupted (blocks)."""
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # one line per request and timing otherwise
    if not log.handlers:  # one line per client mistake, in the model server's own layout
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    model = RecommenderModel(name or limits.model_name, bundle_dir, limits, version=version)
    model.load()
    meta = model.recommender.meta
    log.info(
        "serving %s (%s, %d items, %d customers) on http://%s:%d",
        model.name,
        meta["model"],
        meta["items"],
        meta["customers"],
        host or limits.host,
        port or limits.port,
    )
    LocalModelServer(host or limits.host, port or limits.port, limits).start([model])
