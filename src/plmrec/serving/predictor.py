"""The KServe predictor: a `kserve.Model` over a serving bundle, run by `kserve.ModelServer`.

v1  POST /v1/models/<name>:predict   {"instances": [{"customer_id": 12347, "k": 10}, ...]}
v2  POST /v2/models/<name>/infer      Open Inference Protocol tensors (see `parse_v2`)
Health: GET /v2/health/live, /v2/health/ready, /v1/models/<name> (readiness), /v2/models/<name>/ready.

Every client mistake is a 4xx with a message naming the field or the byte: bad JSON, wrong types,
unknown fields and a v2 datatype or shape that does not match its data 400; an unknown route 404; a
method a route does not take 405; a body that does not arrive within `serving.body_timeout_s` 408;
too many instances or too large a body 413; KServe's binary tensor extension 415. The HTTP front
(routes, body parsing, timeouts, counted and sampled logging) is `serving.http`. An unknown customer
without a basket is no mistake: the popular list, flagged (`fallback`, with the reason).
"""

from __future__ import annotations

import logging
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np

from plmrec.config import ServingParams
from plmrec.errors import RequestError
from plmrec.serving.bundle import Recommender, find_bundle
from plmrec.serving.http import MISTAKES, Gate, guarded_protocol
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
        if self.limits.precompute_lists:
            limits = self.limits
            if not self.recommender.precompute(
                limits.max_k, max_customers=limits.precompute_max_customers, progress=log.info
            ):
                log.info(
                    "%s customers > serving.precompute_max_customers (%s): lists are ranked per request",
                    f"{len(self.recommender.customer_row):,}",
                    f"{limits.precompute_max_customers:,}",
                )
        self.recommender.search(["warm up"], 1)  # first encoder call allocates; keep it off the first request
        self.ready = True
        return self.ready

    async def healthy(self) -> bool:
        """Loaded and answering: a one-item popular list comes back (readiness, /v2/health/ready)."""
        if not self.ready or self.recommender is None:
            return False
        try:
            return len(self.recommender.popular(1, reason="readiness").stock_codes) == 1
        except Exception:  # noqa: BLE001 - any failure means not ready; the probe says so, not a 500
            log.exception("readiness check failed")
            return False

    def predict(self, payload, headers: dict | None = None):
        # the gate (serving.http.Gate) has read the body as strict JSON: a dict (v1) or an InferRequest (v2)
        if isinstance(payload, InferRequest):
            results = answer(self.recommender, parse_v2(payload, self.limits))
            if results[0]["kind"] == "embed":
                return self._v2_embed_response(payload, results)
            return self._v2_response(payload, results)
        return {"predictions": answer(self.recommender, parse_v1(payload, self.limits)), "model_version": self.version}

    def get_input_types(self) -> list[dict]:
        """The Open Inference Protocol inputs a request may carry (one kind per request; `customer_id` also
        takes INT32, UINT64 and UINT32): one dimension, any length."""
        return [{"name": name, "datatype": types[0], "shape": [-1]} for name, types in V2_INPUTS.items()]

    def get_output_types(self) -> list[dict]:
        """The outputs of every recommendation answer: [requests, k] each, and which requests got the
        fallback list; then an embed request's, instead of those: [requests, width] (the user model's
        [requests, C, width])."""
        lists = [{"name": name, "datatype": datatype, "shape": [-1, -1]} for name, datatype in V2_OUTPUTS]
        flags = [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in (FALLBACK_OUTPUT, LIST_OUTPUT)]
        vectors = ["text_vector", "text_profile", "mf"]
        embed = [{"name": name, "datatype": "FP32", "shape": [-1, -1]} for name in vectors]
        if self.recommender is not None and self.recommender.user_vectors is not None:
            embed.append({"name": "user_model", "datatype": "FP32", "shape": [-1, -1, -1]})
        return [*lists, *flags, *embed]

    def _v2_embed_response(self, request: InferRequest, results: list[dict]) -> InferResponse:
        """One FP32 output per vector the answers hold (text_vector; or text_profile, mf, user_model),
        shaped [B, w] (the user model's [B, C, w])."""
        outputs = []
        for name in results[0]["vectors"]:
            stacked = np.asarray([r["vectors"][name] for r in results], dtype=np.float32)
            outputs.append(InferOutput(name, list(stacked.shape), "FP32", stacked.reshape(-1).tolist()))
        return self._infer_response(request, outputs)

    def _infer_response(self, request: InferRequest, outputs: list[InferOutput]) -> InferResponse:
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            model_version=self.version,
        )

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
        return self._infer_response(request, outputs)


def _client_mistake(status: int | None = None, *, reason: str | None = None):
    """An exception handler for a 4xx (`status`, else the exception's own `http_status`): counted and
    logged sampled (`http.MISTAKES`), no traceback (those are for 5xx)."""
    from fastapi.responses import JSONResponse

    async def handler(request, exc):
        code = status or exc.http_status
        MISTAKES.record(code, reason or getattr(exc, "kind", "invalid_request"), f"{request.url.path}: {exc}")
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
        MISTAKES.record(400, "invalid_request", f"{request.url.path}: {message}")
        return JSONResponse(status_code=400, content={"error": message})

    app.add_exception_handler(RequestError, _client_mistake())
    app.add_exception_handler(RequestValidationError, invalid_v2_body)
    app.add_exception_handler(InvalidInput, _client_mistake(400, reason="invalid_request"))
    app.add_exception_handler(ModelNotFound, _client_mistake(404, reason="unknown_model"))


class LocalModelServer(kserve.ModelServer):
    """kserve.ModelServer, REST only, with plmrec's error handlers, bound to a chosen host."""

    def __init__(self, host: str, http_port: int, limits: ServingParams):
        super().__init__(http_port=http_port, enable_grpc=False, workers=1, enable_latency_logging=False)
        self.host, self.limits = host, limits
        # kserve configures logging above; its timing lines (three per request) are not wanted
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)

    def start(self, models) -> None:
        from kserve.model_server import app

        limits = self.limits
        app.add_middleware(Gate, models=models, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
        MISTAKES.every_s = limits.mistake_log_every_s
        super().start(models)

    async def _serve(self):
        # The one override, of a private hook: kserve's RESTServer always binds 0.0.0.0 and offers no
        # host, timeout or connection-limit setting, so the REST server built by start() gets
        # serving.host, its timeouts and limit just before it runs; and it registers kserve's exception
        # handlers as it starts, so plmrec's go in after them.
        rest = self._rest_server
        rest.config.host = self.host
        rest.config.http = guarded_protocol(self.limits.header_timeout_s)
        rest.config.timeout_keep_alive = self.limits.keep_alive_s
        rest.config.limit_concurrency = self.limits.max_connections
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
    if not log.handlers:  # one line per client mistake, in the model server's own layout
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    # KServe answers v2 with FastAPI's deprecated ORJSONResponse; something resets Python's warning registry
    # per request, so the same two-line warning would be written for every v2 answer (thousands per soak)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
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
