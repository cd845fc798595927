"""Request parsing and answering, shared by the KServe predictor (v1 and v2) and the MLflow pyfunc.

A request asks for one of: top-K for a known customer (optionally with a current basket), top-K for
an anonymous basket, the items nearest a free-text query, or the vectors of a known customer or of a
text (`embed`: the served model's own, in the spaces `plmrec export embeddings` writes). Each mistake
raises `RequestError` with the HTTP status to answer and a message that names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plmrec.config import ServingParams
from plmrec.errors import RequestError
from plmrec.search import SEARCH_MODES
from plmrec.serving.bundle import DEFAULT_LIST, LISTS, Recommender


@dataclass
class Query:
    """One recommendation request: a customer (optionally with a basket), a basket, or a text query."""

    kind: str  # customer | basket | query | embed_customer | embed_text
    k: int
    customer_id: int | str | None = None  # the id type the shop's data has
    basket: list[str] = field(default_factory=list)
    text: str = ""
    search_mode: str | None = None  # a query's ranker: dense | lexical | hybrid; None: the bundle's default
    field: str = "customer_id"  # where the customer id was in the request, for errors
    list_kind: str = DEFAULT_LIST  # which list a customer or basket gets: mixed | discover | buy_again


INT64_MAX = 2**63 - 1
MAX_ID_CHARS = 256
# A customer id as the shop's data writes it: a number (Online Retail's 12347) or text (Amazon's
# 'A2SUAM1J3GNN3B'); the bundle matches either to the type its data has.
CustomerId = Annotated[int, Field(ge=0, le=INT64_MAX)] | Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
_STRICT = ConfigDict(strict=True, extra="forbid")


class Embed(BaseModel):
    """What an `embed` instance asks the vectors of: a known customer or a text, one of them."""

    model_config = _STRICT
    customer_id: CustomerId | None = None
    text: str | None = None


class Instance(BaseModel):
    """One v1 instance (and one pyfunc row): a customer (optionally with a basket), a basket, a query,
    or `embed`. Strict: JSON integers, strings and booleans only, no field beyond these."""

    model_config = _STRICT
    embed: Embed | None = None
    customer_id: CustomerId | None = None
    basket: list[str] | None = None
    query: str | None = None
    k: int | None = None
    exclude_seen: bool = False
    search_mode: str | None = None
    list_kind: str | None = Field(None, alias="list")  # mixed | discover | buy_again (bundle.LISTS)


class V1Request(BaseModel):
    """The v1 body: `{"instances": [...]}` and nothing else."""

    model_config = _STRICT
    instances: list[Instance] = Field(min_length=1)


class V2Parameters(BaseModel):
    model_config = _STRICT
    k: int | None = None
    exclude_seen: bool = False
    search_mode: str | None = None
    list_kind: str | None = Field(None, alias="list")


# The Open Inference Protocol's tensor datatypes, spelt as it spells them (no other case)
V2_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
V2_DATATYPES += ("FP16", "FP32", "FP64", "BYTES")


class V2Input(BaseModel):
    """One v2 input tensor as the README writes it: these fields, nothing else."""

    model_config = _STRICT
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Literal[V2_DATATYPES]
    data: list
    parameters: dict | None = None


class V2Body(BaseModel):
    """The v2 body: `inputs` (one or more), optionally `id` and `parameters`; no `outputs` (every answer
    holds all of them) and no other field."""

    model_config = _STRICT
    id: str | None = None
    parameters: dict | None = None
    inputs: list[V2Input] = Field(min_length=1)


MAX_JSON_DEPTH = 8  # a v1 basket sits 4 deep, a v2 tensor's data 4 (5 for a shape of two dimensions)
_INT_RANGE = (-(2**63), 2**64 - 1)  # what INT64 and UINT64 hold; a number beyond is no id and no k


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(
                f"the body gives the key {key!r} twice in one object; give each key once", kind="bad_json"
            )
        out[key] = value
    return out


def _no_constant(name: str):
    raise RequestError(f"the body holds {name}, which JSON does not have; send a finite number", kind="bad_json")


def read_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The one parser of request bodies, whatever their content type: UTF-8, strict JSON (no duplicate keys,
    no NaN or Infinity, no lone surrogate, numbers within 64 bits), nested at most `max_depth` deep.
    Every refusal is a 400 naming the byte offset or the place in the body."""
    if not raw.strip():
        raise RequestError('the body is empty; send a JSON object such as {"instances": [...]}', kind="bad_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"the body is not UTF-8: byte {exc.start} is 0x{raw[exc.start]:02x}; send JSON in UTF-8", kind="bad_json"
        ) from None
    try:
        payload = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        at = len(text[: exc.pos].encode())
        raise RequestError(
            f"the body is not valid JSON: {exc.msg} at byte {at} (line {exc.lineno}, column {exc.colno})",
            kind="bad_json",
        ) from None
    except RecursionError:
        raise RequestError(f"the body nests deeper than {max_depth} levels", kind="bad_json") from None
    _check_values(payload, max_depth)
    return payload


def _check_values(payload: Any, max_depth: int) -> None:
    """Depth, strings that UTF-8 can hold, numbers in range: walked without recursion."""
    stack = [(payload, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise RequestError(
                    f"the body nests deeper than {max_depth} levels (at {where or 'the top'})", kind="bad_json"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _utf8(key, f"a key in {where.lstrip('.') or 'the body'}")
                stack.append((item, depth + 1, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"))
            continue
        place = where.lstrip(".") or "the body"
        if isinstance(value, str):
            _utf8(value, place)
        elif isinstance(value, int) and not isinstance(value, bool):
            if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
                raise RequestError(f"{place} = {value} is beyond 64 bits", kind="bad_json")
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            raise RequestError(f"{place} is a number too large for a float", kind="bad_json")


def _utf8(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"{where} holds a lone surrogate (\\u{ord(text[exc.start]):04x} at character {exc.start}), which is no "
            f"character; send valid Unicode",
            kind="bad_json",
        ) from None


def check_v2_body(payload: Any) -> None:
    """A v2 body held to the README's fields (`V2Body`); a 400 naming each field that is not."""
    if not isinstance(payload, dict):
        raise RequestError(f'the body must be a JSON object with "inputs": [...], got {type(payload).__name__}')
    try:
        V2Body.model_validate(payload)
    except ValidationError as err:
        raise request_error(err, allowed=_keys(V2Body) + tuple(f"inputs[].{k}" for k in _keys(V2Input))) from None


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    """A request model's field names as a request writes them (aliases)."""
    return tuple(f.alias or name for name, f in model.model_fields.items())


_KIND = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "dict_type": "must be an object",
    "missing": "is required",
    "too_short": "must be a non-empty list",
}


def _where(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, str) and part.startswith("constrained-"):
            continue  # a member of a union (customer_id: an integer or a string): named by the field alone
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def request_error(err: ValidationError, prefix: str = "", *, allowed: tuple[str, ...] = ()) -> RequestError:
    """One 400 naming each wrong field (at most five), what it must be and what was sent."""
    problems, seen = [], set()
    for e in err.errors(include_url=False):
        where = _where(prefix, e["loc"])
        if where in seen or len(seen) == 5:  # a union's members fail alike: the first one says it
            continue
        seen.add(where)
        if e["type"] == "extra_forbidden":
            known = f"; allowed: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{where} is an unknown field{known}")
            continue
        ctx = e.get("ctx") or {}
        if e["type"] == "literal_error":
            what = f"must be one of {ctx['expected']} (exactly)"
        elif e["type"] in ("greater_than_equal", "less_than_equal"):
            what = f"must be >= {ctx['ge']}" if "ge" in ctx else f"must be <= {ctx['le']}"
        else:
            what = _KIND.get(e["type"], e["msg"][0].lower() + e["msg"][1:])
        got = e.get("input")
        shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
        problems.append(f"{where} {what}, got {type(got).__name__} {shown}")
    return RequestError("; ".join(problems))


def _k(value: int | None, where: str, limits: ServingParams) -> int:
    k = limits.default_k if value is None else value
    if not 1 <= k <= limits.max_k:
        raise RequestError(f"{where} = {k} is out of range: 1 <= k <= {limits.max_k}")
    return k


def _basket(codes: list[str], where: str, limits: ServingParams) -> list[str]:
    if len(codes) > limits.max_basket:
        raise RequestError(f"{where} has {len(codes)} stock codes; at most {limits.max_basket}", 413)
    return [c.strip() for c in codes]


def _text(value: str, where: str, limits: ServingParams) -> str:
    if not value.strip():
        raise RequestError(f"{where} must be a non-empty string, got {value!r}")
    if len(value) > limits.max_query_chars:
        raise RequestError(f"{where} has {len(value)} characters; at most {limits.max_query_chars}", 413)
    return value.strip()


_INSTANCE_KEYS = _keys(Instance)


def _list(value: str | None, where: str, *, is_query: bool, exclude_seen: bool) -> str:
    """The list asked for (mixed when none is named; exclude_seen asks for discover)."""
    if value is None:
        return "discover" if exclude_seen else DEFAULT_LIST
    if is_query:
        raise RequestError(f"{where} goes with a customer or basket; a query takes no list")
    if value not in LISTS:
        raise RequestError(f"{where} = {value!r}; expected one of {', '.join(LISTS)}")
    if exclude_seen and value != "discover":
        raise RequestError(f"{where} = {value!r} contradicts exclude_seen: true (which asks for the discover list)")
    return value


def _search_mode(value: str | None, where: str, *, is_query: bool) -> str | None:
    if value is None:
        return None
    if not is_query:
        raise RequestError(f"{where} goes with a query; a customer or basket request takes no search_mode")
    if value not in SEARCH_MODES:
        raise RequestError(f"{where} = {value!r}; expected one of {', '.join(SEARCH_MODES)}")
    return value


def _embed(inst: Instance, where: str, limits: ServingParams) -> Query:
    """An `embed` instance: {"embed": {"customer_id": 12347}} or {"embed": {"text": "..."}}, nothing beside."""
    beside = [
        info.alias or name
        for name, info in Instance.model_fields.items()
        if name not in ("embed", "exclude_seen") and getattr(inst, name) is not None
    ]
    if beside or inst.exclude_seen:
        raise RequestError(
            f"{where}: an embed instance takes no other field, got {', '.join(beside or ['exclude_seen'])}"
        )
    asked = inst.embed
    if (asked.customer_id is None) == (asked.text is None):
        raise RequestError(
            f'{where}.embed needs one of customer_id or text, e.g. {{"embed": {{"customer_id": 12347}}}}'
        )
    if asked.text is not None:
        return Query("embed_text", 0, text=_text(asked.text, f"{where}.embed.text", limits))
    return Query("embed_customer", 0, customer_id=asked.customer_id, field=f"{where}.embed.customer_id")


def _query(inst: Instance, where: str, limits: ServingParams) -> Query:
    if inst.embed is not None:
        return _embed(inst, where, limits)
    k = _k(inst.k, f"{where}.k", limits)
    if inst.query is not None:
        if inst.customer_id is not None or inst.basket is not None:
            raise RequestError(f"{where}: a query instance takes no customer_id or basket")
        mode = _search_mode(inst.search_mode, f"{where}.search_mode", is_query=True)
        _list(inst.list_kind, f"{where}.list", is_query=True, exclude_seen=False)
        return Query("query", k, text=_text(inst.query, f"{where}.query", limits), search_mode=mode)
    _search_mode(inst.search_mode, f"{where}.search_mode", is_query=False)
    kind = _list(inst.list_kind, f"{where}.list", is_query=False, exclude_seen=inst.exclude_seen)
    basket = _basket(inst.basket, f"{where}.basket", limits) if inst.basket is not None else []
    if inst.customer_id is not None:
        return Query(
            "customer",
            k,
            customer_id=inst.customer_id,
            basket=basket,
            field=f"{where}.customer_id",
            list_kind=kind,
        )
    if inst.basket is not None:
        if not basket:
            raise RequestError(f"{where}.basket is empty")
        return Query("basket", k, basket=basket, list_kind=kind)
    raise RequestError(f"{where} needs one of customer_id, basket or query")


def parse_instance(inst: Any, where: str, limits: ServingParams) -> Query:
    """One instance, e.g. {"customer_id": 12347, "k": 10}; `where` names it in errors."""
    if not isinstance(inst, dict):
        raise RequestError(
            f'{where} must be an object such as {{"customer_id": 12347, "k": 10}}, got {type(inst).__name__}'
        )
    try:
        parsed = Instance.model_validate(inst)
    except ValidationError as err:
        raise request_error(err, where, allowed=_INSTANCE_KEYS) from None
    return _query(parsed, where, limits)


def parse_v1(payload: Any, limits: ServingParams) -> list[Query]:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise RequestError(
            'the body must be a JSON object with "instances": [...] '
            '(e.g. {"instances": [{"customer_id": 12347, "k": 10}]})'
        )
    extra = sorted(set(payload) - {"instances"})
    if extra:
        raise RequestError(f'unknown top-level field(s) {", ".join(map(str, extra))}; the body takes only "instances"')
    instances = payload["instances"]
    if isinstance(instances, list) and len(instances) > limits.max_instances:
        raise RequestError(f'"instances" has {len(instances)} entries; at most {limits.max_instances} per request', 413)
    try:
        parsed = V1Request.model_validate(payload)
    except ValidationError as err:
        raise request_error(err, allowed=_INSTANCE_KEYS) from None
    return [_query(inst, f"instances[{i}]", limits) for i, inst in enumerate(parsed.instances)]


# v2: the datatypes each input accepts (the Open Inference Protocol's names)
V2_INPUTS = {
    "customer_id": ("INT64", "INT32", "UINT64", "UINT32", "BYTES"),  # BYTES: text ids
    "basket": ("BYTES",),
    "query": ("BYTES",),
    "embed_customer_id": ("INT64", "INT32", "UINT64", "UINT32", "BYTES"),  # the vectors of customers
    "embed_text": ("BYTES",),  # the vectors of texts
}
EMBED_INPUTS = {"embed_customer_id": "embed_customer", "embed_text": "embed_text"}


def _flat(data: Any) -> list:
    if hasattr(data, "tolist"):
        data = data.tolist()
    if not isinstance(data, list):
        return [data]
    out = []
    for v in data:
        out.extend(_flat(v) if isinstance(v, list) else [v])
    return out


def _tensor_values(inp) -> list:
    """An input's values, after checking its datatype and that its shape holds exactly its data."""
    name = inp.name
    if inp.datatype not in V2_INPUTS[name]:
        raise RequestError(f"input '{name}': datatype {inp.datatype!r}; expected {' or '.join(V2_INPUTS[name])}")
    shape = list(inp.shape)
    if len(shape) != 1 or shape[0] < 0:
        raise RequestError(f"input '{name}': shape {shape}; expected one dimension, [n]")
    data = inp.data.tolist() if hasattr(inp.data, "tolist") else inp.data
    if isinstance(data, list) and any(isinstance(v, list) for v in data):
        raise RequestError(f"input '{name}': data must be a flat list of {shape[0]} values for shape {shape}")
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in _flat(data)]
    if len(values) != shape[0]:
        raise RequestError(f"input '{name}': shape {shape} declares {shape[0]} values, the data holds {len(values)}")
    expected, check = (str, "a string") if inp.datatype == "BYTES" else (int, "an integer")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, expected):
            raise RequestError(f"{name}[{i}] must be {check} ({inp.datatype}), got {type(v).__name__} {v!r}")
        if expected is int and not 0 <= v <= INT64_MAX:
            raise RequestError(f"{name}[{i}] = {v} is out of range: 0 <= customer_id <= {INT64_MAX}")
        if name.endswith("customer_id") and expected is str and not 0 < len(v) <= MAX_ID_CHARS:
            raise RequestError(f"{name}[{i}] must be 1 to {MAX_ID_CHARS} characters, got {len(v)}")
    return values


def parse_v2(request, limits: ServingParams) -> list[Query]:
    """Inputs (one kind per request), each one-dimensional with its datatype: `customer_id` [B] INT64,
    optionally with `basket` [n] BYTES when B = 1; `basket` [n] BYTES alone; or `query` [B] BYTES.
    Parameters: `k`, `exclude_seen`, `list` (mixed | discover | buy_again) for a customer or basket, and
    `search_mode` (dense | lexical | hybrid) for queries."""
    names = [inp.name for inp in request.inputs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RequestError(f"input(s) {', '.join(repeated)} given more than once")
    unknown = sorted(set(names) - set(V2_INPUTS))
    if unknown:
        raise RequestError(f"unknown input(s) {', '.join(unknown)}; expected one of {', '.join(V2_INPUTS)}")
    if set(names) & set(EMBED_INPUTS):
        return _parse_v2_embed(request, limits)
    params = request.parameters or {}
    params = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in params.items()}
    try:
        parameters = V2Parameters.model_validate(params)
    except ValidationError as err:
        raise request_error(err, "parameters", allowed=_keys(V2Parameters)) from None
    k = _k(parameters.k, "parameters.k", limits)
    inputs = {inp.name: inp for inp in request.inputs}
    for name, inp in inputs.items():
        rows = inp.shape[0] if len(inp.shape) == 1 else 0
        if name != "basket" and rows > limits.max_instances:
            raise RequestError(f"input '{name}' has {rows} rows; at most {limits.max_instances}", 413)
    values = {name: _tensor_values(inp) for name, inp in inputs.items()}
    mode = _search_mode(parameters.search_mode, "parameters.search_mode", is_query="query" in values)
    kind = _list(
        parameters.list_kind, "parameters.list", is_query="query" in values, exclude_seen=parameters.exclude_seen
    )
    if "query" in values:
        if len(values) > 1:
            raise RequestError("a query request takes no customer_id or basket input")
        return [
            Query("query", k, text=_text(v, f"query[{i}]", limits), search_mode=mode)
            for i, v in enumerate(values["query"])
        ]
    basket = _basket(values["basket"], "basket", limits) if "basket" in values else []
    if "customer_id" in values:
        ids = values["customer_id"]
        if basket and len(ids) != 1:
            raise RequestError(f"a basket goes with one customer_id, got {len(ids)}")
        if not ids:
            raise RequestError("input 'customer_id' is empty")
        return [
            Query(
                "customer",
                k,
                customer_id=v,
                basket=basket,
                field=f"customer_id[{i}]",
                list_kind=kind,
            )
            for i, v in enumerate(ids)
        ]
    if basket:
        return [Query("basket", k, basket=basket, list_kind=kind)]
    raise RequestError("the request needs an input named customer_id, basket or query")


def _parse_v2_embed(request, limits: ServingParams) -> list[Query]:
    """`embed_customer_id` [B] or `embed_text` [B], alone, with no parameters."""
    if len(request.inputs) > 1:
        raise RequestError("an embed request has one input: embed_customer_id or embed_text, alone")
    if request.parameters:
        raise RequestError(f"an embed request takes no parameters, got {', '.join(map(str, request.parameters))}")
    inp = request.inputs[0]
    rows = inp.shape[0] if len(inp.shape) == 1 else 0
    if rows > limits.max_instances:
        raise RequestError(f"input '{inp.name}' has {rows} rows; at most {limits.max_instances}", 413)
    values = _tensor_values(inp)
    if not values:
        raise RequestError(f"input '{inp.name}' is empty")
    if inp.name == "embed_text":
        return [Query("embed_text", 0, text=_text(v, f"embed_text[{i}]", limits)) for i, v in enumerate(values)]
    return [Query("embed_customer", 0, customer_id=v, field=f"embed_customer_id[{i}]") for i, v in enumerate(values)]


def check_id_type(recommender: Recommender, query: Query) -> None:
    """A customer id of the type the served model's data has (a number or text), else a 400 saying which."""
    if isinstance(query.customer_id, str) == recommender.text_ids:
        return
    want = (
        "a string (this model's customer ids are text; v2: BYTES)"
        if recommender.text_ids
        else "an integer (this model's customer ids are numbers; v2: INT64)"
    )
    got = type(query.customer_id).__name__
    raise RequestError(f"{query.field} must be {want}, got {got} {query.customer_id!r}")


def _embeddings(recommender: Recommender, queries: list[Query]) -> dict[int, dict]:
    """The answers of the embed queries (by id), every text encoded in one pass; an unknown customer is a 404."""
    out = {}
    texts = [q for q in queries if q.kind == "embed_text"]
    if texts:
        for q, vector in zip(texts, recommender.embed_texts([q.text for q in texts])):
            out[id(q)] = {"kind": "embed", "text": q.text, "vectors": {"text_vector": vector.tolist()}}
    for q in queries:
        if q.kind != "embed_customer":
            continue
        found = recommender.embed_customer(q.customer_id)
        if found is None:
            raise RequestError(
                f"{q.field}: customer {q.customer_id!r} is unknown to this model (no purchases in its data), so "
                f"it has no vectors; embed a text instead",
                404,
            )
        vectors = {name: np.asarray(v, dtype=np.float32).tolist() for name, v in found.items()}
        out[id(q)] = {"kind": "embed", "customer_id": q.customer_id, "model": recommender.model, "vectors": vectors}
    return out


def answer(recommender: Recommender, queries: list[Query]) -> list[dict]:
    for q in queries:
        if q.kind in ("customer", "embed_customer"):
            check_id_type(recommender, q)
    embedded = _embeddings(recommender, queries)
    found = {}
    for mode in dict.fromkeys(q.search_mode for q in queries if q.kind == "query"):  # one pass per mode
        texts = [q for q in queries if q.kind == "query" and q.search_mode == mode]
        k = max(q.k for q in texts)
        for q, rec in zip(texts, recommender.search([q.text for q in texts], k, mode)):
            rec.stock_codes, rec.descriptions, rec.scores = (
                rec.stock_codes[: q.k],
                rec.descriptions[: q.k],
                rec.scores[: q.k],
            )
            found[id(q)] = rec
    out = []
    for q in queries:
        if id(q) in embedded:
            out.append(embedded[id(q)])
            continue
        if q.kind == "query":
            rec = found[id(q)]
        elif q.kind == "customer":
            rec = recommender.recommend_customer(q.customer_id, q.k, q.basket, kind=q.list_kind)
        else:
            rec = recommender.recommend_basket(q.basket, q.k, kind=q.list_kind)
        out.append(
            {"kind": q.kind, **({"customer_id": q.customer_id} if q.customer_id is not None else {}), **rec.to_dict()}
        )
    return out
