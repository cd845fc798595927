"""Request parsing and answering, shared by the KServe predictor (v1 and v2) and the MLflow pyfunc.

A request asks for one of: top-K for a known customer (optionally with a current basket), top-K for
an anonymous basket, or the items nearest a free-text query. Each mistake raises `RequestError`
with the HTTP status to answer and a message that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plmrec.config import ServingParams
from plmrec.errors import RequestError, UnknownCustomer
from plmrec.serving.bundle import Recommender


@dataclass
class Query:
    """One recommendation request: a customer (optionally with a basket), a basket, or a text query."""

    kind: str  # customer | basket | query
    k: int
    customer_id: int | None = None
    basket: list[str] = field(default_factory=list)
    text: str = ""
    exclude_seen: bool = False


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise RequestError(f"{where} must be an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise RequestError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, str):
        if not value.strip().lstrip("-").isdigit():
            raise RequestError(f"{where} must be an integer, got the string {value!r}")
        return int(value.strip())
    return value


def _k(value: Any, where: str, limits: ServingParams) -> int:
    k = limits.default_k if value is None else _int(value, where)
    if not 1 <= k <= limits.max_k:
        raise RequestError(f"{where} = {k} is out of range: 1 <= k <= {limits.max_k}")
    return k


def _basket(value: Any, where: str, limits: ServingParams) -> list[str]:
    if not isinstance(value, list):
        raise RequestError(f"{where} must be a list of stock codes, got {type(value).__name__}")
    if len(value) > limits.max_basket:
        raise RequestError(f"{where} has {len(value)} stock codes; at most {limits.max_basket}", 413)
    out = []
    for i, code in enumerate(value):
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise RequestError(f"{where}[{i}] must be a stock code string, got {type(code).__name__} {code!r}")
        out.append(str(code).strip())
    return out


def _text(value: Any, where: str, limits: ServingParams) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{where} must be a non-empty string, got {type(value).__name__} {value!r}")
    if len(value) > limits.max_query_chars:
        raise RequestError(f"{where} has {len(value)} characters; at most {limits.max_query_chars}", 413)
    return value.strip()


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{where} must be true or false, got {type(value).__name__} {value!r}")
    return value


_INSTANCE_KEYS = {"customer_id", "basket", "query", "k", "exclude_seen"}


def parse_instance(inst: Any, where: str, limits: ServingParams) -> Query:
    if not isinstance(inst, dict):
        raise RequestError(
            f'{where} must be an object such as {{"customer_id": 12347, "k": 10}}, got {type(inst).__name__}'
        )
    extra = sorted(set(inst) - _INSTANCE_KEYS)
    if extra:
        raise RequestError(
            f"{where} has unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(_INSTANCE_KEYS))}"
        )
    k = _k(inst.get("k"), f"{where}.k", limits)
    exclude = _flag(inst.get("exclude_seen"), f"{where}.exclude_seen")
    if "query" in inst:
        if "customer_id" in inst or "basket" in inst:
            raise RequestError(f"{where}: a query instance takes no customer_id or basket")
        return Query("query", k, text=_text(inst["query"], f"{where}.query", limits))
    basket = _basket(inst["basket"], f"{where}.basket", limits) if "basket" in inst else []
    if "customer_id" in inst:
        return Query(
            "customer",
            k,
            customer_id=_int(inst["customer_id"], f"{where}.customer_id"),
            basket=basket,
            exclude_seen=exclude,
        )
    if "basket" in inst:
        if not basket:
            raise RequestError(f"{where}.basket is empty")
        return Query("basket", k, basket=basket, exclude_seen=exclude)
    raise RequestError(f"{where} needs one of customer_id, basket or query")


def parse_v1(payload: Any, limits: ServingParams) -> list[Query]:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise RequestError(
            'the body must be a JSON object with "instances": [...] '
            '(e.g. {"instances": [{"customer_id": 12347, "k": 10}]})'
        )
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError('"instances" must be a non-empty list')
    if len(instances) > limits.max_instances:
        raise RequestError(f'"instances" has {len(instances)} entries; at most {limits.max_instances} per request', 413)
    return [parse_instance(inst, f"instances[{i}]", limits) for i, inst in enumerate(instances)]


def _tensor_values(inp) -> list:
    data = inp.data
    if hasattr(data, "tolist"):
        data = data.tolist()
    if not isinstance(data, list):
        raise RequestError(f"input '{inp.name}': data must be a list")
    flat = []
    for v in data:
        flat.extend(v if isinstance(v, list) else [v])
    return [v.decode() if isinstance(v, bytes) else v for v in flat]


def parse_v2(request, limits: ServingParams) -> list[Query]:
    """Inputs (one kind per request): `customer_id` [B] (INT64 or BYTES), optionally with `basket` [n]
    when B = 1; `basket` [n] BYTES alone; or `query` [B] BYTES. Parameters: `k`, `exclude_seen`."""
    inputs = {inp.name: inp for inp in request.inputs}
    unknown = sorted(set(inputs) - {"customer_id", "basket", "query"})
    if unknown:
        raise RequestError(f"unknown input(s) {', '.join(unknown)}; expected customer_id, basket or query")
    params = request.parameters or {}
    params = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in params.items()}
    extra = sorted(set(params) - {"k", "exclude_seen"})
    if extra:
        raise RequestError(f"unknown parameter(s) {', '.join(extra)}; allowed: k, exclude_seen")
    k = _k(params.get("k"), "parameters.k", limits)
    exclude = _flag(params.get("exclude_seen"), "parameters.exclude_seen")
    values = {name: _tensor_values(inp) for name, inp in inputs.items()}
    for name, vals in values.items():
        if name != "basket" and len(vals) > limits.max_instances:
            raise RequestError(f"input '{name}' has {len(vals)} rows; at most {limits.max_instances}", 413)
    if "query" in values:
        if len(values) > 1:
            raise RequestError("a query request takes no customer_id or basket input")
        return [Query("query", k, text=_text(v, f"query[{i}]", limits)) for i, v in enumerate(values["query"])]
    basket = _basket(values["basket"], "basket", limits) if "basket" in values else []
    if "customer_id" in values:
        ids = values["customer_id"]
        if basket and len(ids) != 1:
            raise RequestError(f"a basket goes with one customer_id, got {len(ids)}")
        if not ids:
            raise RequestError("input 'customer_id' is empty")
        return [
            Query("customer", k, customer_id=_int(v, f"customer_id[{i}]"), basket=basket, exclude_seen=exclude)
            for i, v in enumerate(ids)
        ]
    if basket:
        return [Query("basket", k, basket=basket, exclude_seen=exclude)]
    raise RequestError("the request needs an input named customer_id, basket or query")


def answer(recommender: Recommender, queries: list[Query]) -> list[dict]:
    texts = [q for q in queries if q.kind == "query"]
    found = {}
    if texts:
        k = max(q.k for q in texts)
        for q, rec in zip(texts, recommender.search([q.text for q in texts], k)):
            rec.stock_codes, rec.descriptions, rec.scores = (
                rec.stock_codes[: q.k],
                rec.descriptions[: q.k],
                rec.scores[: q.k],
            )
            found[id(q)] = rec
    out = []
    for q in queries:
        try:
            if q.kind == "query":
                rec = found[id(q)]
            elif q.kind == "customer":
                rec = recommender.recommend_customer(q.customer_id, q.k, q.basket, exclude_seen=q.exclude_seen)
            else:
                rec = recommender.recommend_basket(q.basket, q.k, q.exclude_seen)
        except UnknownCustomer as exc:
            raise RequestError(str(exc), 404) from None
        out.append(
            {"kind": q.kind, **({"customer_id": q.customer_id} if q.customer_id is not None else {}), **rec.to_dict()}
        )
    return out
