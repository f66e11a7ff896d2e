"""Fuzzing the router's HTTP API: schemathesis from its own OpenAPI document, then hand-made bad input.

Whatever arrives, the answer is a documented status and never a 5xx; an error is an OpenAI-shaped
JSON body (``{"error": {"message", "type", "param", "code"}}``) with no stack trace in it; every
answer arrives within the client's timeout (a hang fails the request); and once the requests are
answered, the router's accounting (requests resident on backends, their tokens, the queues, the
waiting handlers) is back at zero: bad input leaks nothing. Runs are derandomized and bounded.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.router.auth import TIER_HEADER, TPOT_HEADER, TTFT_HEADER, KeyEntry, KeyRing
from polyserve.router.openapi import openapi_document
from polyserve.router.spec import FleetSpec
from polyserve.router.testing import RouterThread
from polyserve.wire import openai as proto
from tests.mockengine.conftest import raw, wait_until
from tests.router.conftest import MODEL, PROFILE, TIERS, backend

KEY = "fuzz-key-0001"
ADMIN = "fuzz-admin-token-0001"
MAX_BODY = 16 * 1024
MAX_MODEL_LEN = 256  # the engines' context: any valid request ends quickly
CLIENT_TIMEOUT_S = 10.0  # raw() and schemathesis' calls fail on a longer silence
AUTH = {"Authorization": f"Bearer {KEY}"}
TRACE_MARKERS = (b"Traceback", b'File "')

FUZZ = settings(
    max_examples=60,
    derandomize=True,  # the same examples every run
    database=None,
    deadline=None,  # a request's time is bounded by the client timeout instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def fast_engines() -> Iterator[MockEngineThread]:
    """Two engines 100x faster than their profile with a short context: a valid request of any
    length ends in well under a second."""
    engine = MockEngineSettings(
        port=0, replicas=2, profile=PROFILE, slowdown=0.01, max_model_len=MAX_MODEL_LEN
    )
    with MockEngineThread(engine) as fleet:
        yield fleet


def fuzz_fleet(engines: MockEngineThread) -> FleetSpec:
    return FleetSpec(
        tiers=TIERS,
        backends=[backend("e0", engines.urls[0], "t20"), backend("e1", engines.urls[1])],
    )


@pytest.fixture
def router(
    fast_engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> Iterator[RouterThread]:
    """A router with API keys, the admin API and a small body limit. No health or metrics
    rounds after the first: a fuzzed fleet's backend URLs are never contacted (loopback only)."""
    r = start_router(
        fuzz_fleet(fast_engines),
        KeyRing([KeyEntry(name="fuzz", key=KEY)]),
        admin_token=ADMIN,
        max_body_bytes=MAX_BODY,
        health_interval_s=3600.0,
        scrape_interval_s=3600.0,
    )
    yield r
    assert_settled(r)


# ------------------------------------------------------------------------------- what every answer obeys


def assert_clean(status: int, body: bytes, what: object = "") -> None:
    """No 5xx, no stack trace; an error is OpenAI-shaped with its status as code."""
    assert status < 500, (status, body[:500], what)
    assert not any(m in body for m in TRACE_MARKERS), (body[:500], what)
    if status >= 400:
        err = json.loads(body)["error"]
        assert isinstance(err["message"], str) and err["message"], (body, what)
        assert isinstance(err["type"], str) and err["type"].endswith("Error"), (body, what)
        assert err["code"] == status and (err["param"] is None or isinstance(err["param"], str))


def assert_error(status: int, body: bytes, want: int, what: object = "") -> dict[str, Any]:
    assert status == want, (status, body[:500], what)
    assert_clean(status, body, what)
    err: dict[str, Any] = json.loads(body)["error"]
    return err


def accounting(r: RouterThread) -> dict[str, float]:
    """What the router holds for requests: zero everywhere once every request is answered."""

    def read(router: Any) -> dict[str, float]:
        views = [b.view for p in router.all_pools() for b in p.backends.values()]
        return {
            "resident": sum(v.n_requests for v in views),
            "prefilling": sum(v.n_prefill for v in views),
            "kv_tokens": sum(v.prompt_tokens + v.generated_tokens for v in views),
            "backlog": sum(v.prefill_backlog for v in views),
            "tpot_counts": sum(sum(v.tpot_counts.values()) for v in views),
            "expected": round(sum(v.expected_tokens for v in views), 6),
            "queued": sum(len(p.queues) for p in router.all_pools()),
            "waiting": router.dispatcher.waiting,
        }

    return r.call(read)


def assert_settled(r: RouterThread) -> None:
    wait_until(
        lambda: not any(accounting(r).values()),
        what=f"the accounting back at zero: {accounting(r)}",
    )


def post(
    r: RouterThread, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    status, _, data = raw(r.url, "POST", path, body, {**AUTH, **(headers or {})})
    return status, data


def body_of(kind: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 3}
    if kind == "chat":
        base["messages"] = [{"role": "user", "content": "hello"}]
    else:
        base["prompt"] = "the quick brown fox"
    return base | fields


PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
MODELS: dict[str, type[BaseModel]] = {
    "chat": proto.ChatCompletionRequest,
    "completion": proto.CompletionRequest,
}
kinds = st.sampled_from(sorted(PATHS))


def coerces(kind: str | None, body: object) -> bool:
    """Whether the router's request model reads ``body`` (coercing as vLLM does)."""
    try:
        MODELS[kind or ""].model_validate(body)
    except (ValidationError, KeyError):
        return False
    return True


# ------------------------------------------------------------------------------- schemathesis

OPERATIONS = [
    (method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
]


#: the credentials of the document's two security schemes; 413 (a body over the limit) counts as
#: the rejection of invalid data that it is
SCHEMATHESIS = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"apiKey": {"bearer": KEY}, "adminToken": {"bearer": ADMIN}}},
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            }
        },
    }
)


POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
#: schema-violating input exists only where there is input: a body or parameters
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (POSITIVE, NEGATIVE)
    if mode == POSITIVE
    or set(openapi_document()["paths"][path][method.lower()]) & {"requestBody", "parameters"}
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_operation_of_the_served_document_under_schemathesis(
    router: RouterThread,
    fast_engines: MockEngineThread,
    method: str,
    path: str,
    mode: schemathesis.GenerationMode,
) -> None:
    """Cases generated from the document the router serves (valid ones, then schema-violating
    ones), sent with valid credentials, checked by schemathesis' checks (status documented, no
    5xx, content type and body as documented, invalid data rejected, auth not ignored) and ours."""
    schema = schemathesis.openapi.from_url(
        router.url + "/openapi.json", config=SCHEMATHESIS, timeout=CLIENT_TIMEOUT_S
    )
    operation = schema[path][method]
    admin = path.endswith("/fleet")
    # A valid body may still be refused for what a schema cannot say (a tier that does not
    # exist, a context too long, two tiers of one name, a profile that is not shipped): those are
    # 4xx errors that the checks here and below still hold to the OpenAI shape.
    excluded = [positive_data_acceptance] if method != "GET" else []
    # A generation body is coerced as vLLM coerces it ("max_tokens": "5" is 5): schema-violating
    # bodies that coerce are served, so the rejection of invalid data is checked against the
    # coercing models here instead.
    kind = next((k for k, p in PATHS.items() if p == path), None)
    if kind is not None and mode == NEGATIVE:
        excluded.append(negative_data_rejection)
    fleet = fuzz_fleet(fast_engines)

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        resp = case.call(base_url=router.url, timeout=CLIENT_TIMEOUT_S)
        try:
            case.validate_response(resp, excluded_checks=excluded)
            assert_clean(resp.status_code, resp.content, case.as_curl_command())
            if negative_data_rejection in excluded and not coerces(kind, case.body):
                assert 400 <= resp.status_code < 500, case.as_curl_command()
            if admin and resp.status_code == 200:  # an accepted fleet leaves the router answering
                for p in ("/v1/models", "/polyserve/v1/state", "/health"):
                    status, _, data = raw(router.url, "GET", p)
                    assert status == 200, (p, data[:500], case.as_curl_command())
        finally:
            if admin:
                router.apply(fleet)

    check()


# ------------------------------------------------------------------------------- hand-made bad input

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def strict_json_object(data: bytes) -> bool:
    """Whether a strict JSON decoder reads the bytes as one object (no NaN, no lone surrogate)."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        obj = json.loads(data, parse_constant=refuse)
        json.dumps(obj, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict)


@st.composite
def corrupted_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid request's bytes, cut short, spliced with random bytes or with bytes that are not
    UTF-8; or random bytes; or JSON that is not an object."""
    kind = draw(kinds)
    good = json.dumps(body_of(kind)).encode()
    at = draw(st.integers(min_value=0, max_value=len(good)))
    how = draw(st.sampled_from(["cut", "splice", "not-utf8", "random", "not-object"]))
    if how == "cut":
        data = good[:at]
    elif how == "splice":
        data = good[:at] + draw(st.binary(min_size=1, max_size=8)) + good[at:]
    elif how == "not-utf8":
        quote = good.index(b'"', good.index(b"hello" if kind == "chat" else b"quick") - 1)
        data = good[: quote + 1] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
        data += good[quote + 1 :]
    elif how == "random":
        data = draw(st.binary(max_size=64))
    else:
        data = json.dumps(draw(st.one_of(json_scalars, st.lists(json_values, max_size=3)))).encode()
    return kind, data


def test_malformed_and_non_utf8_bytes_get_400(router: RouterThread) -> None:
    @FUZZ
    @given(corrupted_bodies())
    def check(case: tuple[str, bytes]) -> None:
        kind, data = case
        status, body = post(router, PATHS[kind], data)
        if strict_json_object(data):  # the splice may have landed somewhere harmless
            assert_clean(status, body, data)
        else:
            assert_error(status, body, 400, data)

    check()


def test_json_that_python_reads_but_json_does_not_allow_gets_400(router: RouterThread) -> None:
    """NaN and Infinity (Python's extensions), lone UTF-16 surrogates (which no UTF-8 answer or
    forward can carry), UTF-16 and deep nesting: each was a 500 or was forwarded."""
    deep = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"  # within the body limit
    cases = [
        b'{"model":"\\ud800","prompt":"x"}',  # in a name the error message repeats
        b'{"prompt":"\\udfff","max_tokens":2}',  # in a prompt that is forwarded
        b'{"prompt":"x","max_tokens":2,"stream":true,"\\udc00":1}',
        b'{"prompt":"x","max_tokens":2,"temperature":NaN}',
        b'{"prompt":"x","max_tokens":Infinity}',
        b'{"prompt":"x","top_p":-Infinity}',
        b'{"prompt":"\xed\xa0\x80","max_tokens":2}',  # a surrogate in UTF-8 bytes (CESU-8)
        json.dumps({"prompt": "x", "max_tokens": 2}).encode("utf-16"),  # JSON is UTF-8
        deep,
    ]
    for data in cases:
        err = assert_error(*post(router, "/v1/completions", data), 400, data[:60])
        assert "JSON" in err["message"] or "nested" in err["message"]
    # a surrogate pair is one character, not an error
    status, body = post(router, "/v1/completions", b'{"prompt":"\\ud83d\\ude00","max_tokens":2}')
    assert status == 200, body


def _wrong_types_for(model: type[BaseModel]) -> st.SearchStrategy[tuple[str, Any]]:
    fields = sorted(model.model_fields)
    return st.tuples(st.sampled_from(fields), json_values)


@st.composite
def wrong_typed_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid request with one to three fields replaced by a value of any JSON type."""
    kind = draw(kinds)
    body = body_of(kind, stream=draw(st.booleans()))
    for name, value in draw(st.lists(_wrong_types_for(MODELS[kind]), min_size=1, max_size=3)):
        body[name] = value
    return kind, body


def test_wrong_types_for_every_field_get_400_or_are_served(router: RouterThread) -> None:
    """The request models are the rule: what they refuse is a 400 naming the field; what they
    accept is served or refused with a 4xx (a sampling check of the engine, a context too
    long), streamed or not."""

    @settings(FUZZ, max_examples=100)
    @given(wrong_typed_bodies())
    def check(case: tuple[str, dict[str, Any]]) -> None:
        kind, body = case
        status, data = post(router, PATHS[kind], body)
        try:
            MODELS[kind].model_validate(body)  # coercing as the router (and vLLM) do
        except ValidationError as e:
            err = assert_error(status, data, 400, body)
            first = ".".join(str(p) for p in e.errors()[0]["loc"])
            assert first in err["message"], (err, body)
            return
        assert_clean(status, data, body)

    check()


def test_bodies_over_the_limit_get_413(router: RouterThread) -> None:
    @settings(FUZZ, max_examples=20)
    @given(st.integers(min_value=MAX_BODY + 1, max_value=4 * MAX_BODY), kinds, st.booleans())
    def check(size: int, kind: str, valid_json: bool) -> None:
        if valid_json:
            data = json.dumps(body_of(kind, prompt="x" * size, stream=True)).encode()
        else:
            data = b"\xff" * size
        err = assert_error(*post(router, PATHS[kind], data), 413, size)
        assert str(MAX_BODY) in err["message"]

    check()
    # the same limit for a body of unannounced length (chunked transfer encoding)
    parts = urlsplit(router.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=CLIENT_TIMEOUT_S)
    try:
        chunks = (b'{"prompt":"' if i == 0 else b"x" * 1024 for i in range(4 * MAX_BODY // 1024))
        conn.request("POST", "/v1/completions", chunks, AUTH, encode_chunked=True)
        resp = conn.getresponse()
        assert_error(resp.status, resp.read(), 413, "chunked")
    finally:
        conn.close()


def test_max_tokens_negative_zero_and_huge(router: RouterThread) -> None:
    @FUZZ
    @given(
        kinds,
        st.sampled_from(["max_tokens", "max_completion_tokens"]),
        st.one_of(
            st.integers(max_value=0),
            st.integers(min_value=1, max_value=8),
            st.integers(min_value=MAX_MODEL_LEN, max_value=2**80),
        ),
        st.booleans(),
    )
    def check(kind: str, field: str, value: int, stream: bool) -> None:
        body = body_of(kind, stream=stream)
        body[field] = value
        status, data = post(router, PATHS[kind], body)
        if field == "max_completion_tokens" and kind == "completion":
            assert status == 200, data  # not a completion field: passed through, ignored
        elif field == "max_completion_tokens" and value == 0:
            assert status == 200, data  # vLLM's rule: a 0 here defers to max_tokens (3)
        elif value < 1:
            err = assert_error(status, data, 400, body)
            assert err["param"] == "max_tokens" and str(value) in err["message"]
        elif value > MAX_MODEL_LEN:
            # the engine's check: a limit above the whole context (vLLM renderers/params.py:272);
            # one that only overflows with the prompt is clamped (serve/utils/api_utils.py:253)
            err = assert_error(status, data, 400, body)
            assert f"cannot be greater than max_model_len={MAX_MODEL_LEN}" in err["message"]
            assert err["param"] == field
        else:
            assert status == 200, data
            assert_clean(status, data)

    check()


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_values_vllm_coerces_are_served_and_the_routers_rules_still_hold(
    router: RouterThread, kind: str
) -> None:
    """What vLLM's lax validation reads works through the router too: numeric strings and whole
    floats for integers, 1 for true; the router's own rules judge the coerced values."""
    status, data = post(router, PATHS[kind], body_of(kind, max_tokens="2", seed=1.0, top_k="5"))
    assert status == 200, data
    assert json.loads(data)["usage"]["completion_tokens"] == 2
    status, _, data = raw(
        router.url, "POST", PATHS[kind], body_of(kind, max_tokens=2.0, stream=1), AUTH
    )
    assert status == 200 and data.rstrip().endswith(b"data: [DONE]"), data
    for fields, param in (({"max_tokens": "0"}, "max_tokens"), ({"n": "2"}, "n")):
        err = assert_error(*post(router, PATHS[kind], body_of(kind, **fields)), 400, fields)
        assert err["param"] == param, err
    for fields in ({"max_tokens": 2.5}, {"max_tokens": "two"}, {"stream": "sometimes"}):
        err = assert_error(*post(router, PATHS[kind], body_of(kind, **fields)), 400, fields)
        assert next(iter(fields)) in err["message"], err


def test_unknown_models_get_404(router: RouterThread) -> None:
    @FUZZ
    @given(kinds, st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
    def check(kind: str, model: str) -> None:
        status, data = post(router, PATHS[kind], body_of(kind, model=model))
        if model == MODEL:
            assert status == 200
            return
        err = assert_error(status, data, 404, model)
        assert err["param"] == "model"

    check()


#: printable ASCII mostly, sometimes a Latin-1 byte (http.client sends header values as Latin-1)
header_values = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0xA0, max_codepoint=0xFF),
    ),
    max_size=24,
)


def _positive_finite(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False


def test_invalid_tier_headers_get_400(router: RouterThread) -> None:
    tiers = {t.name for t in TIERS}

    @FUZZ
    @given(kinds, st.sampled_from([TIER_HEADER, TPOT_HEADER, TTFT_HEADER]), header_values)
    def check(kind: str, header: str, value: str) -> None:
        status, data = post(router, PATHS[kind], body_of(kind), {header: value})
        if header == TIER_HEADER:
            valid = value.strip(" \t") in tiers
        else:  # a non-ASCII value may read as a number in some script: either answer is fine
            valid = _positive_finite(value.strip(" \t")) or not value.isascii()
        if not valid:
            err = assert_error(status, data, 400, (header, value))
            assert header in err["message"] or "tier" in err["message"].lower()
        else:
            assert_clean(status, data, (header, value))  # served, or no tier meets the SLO

    check()


def test_content_types_do_not_matter_but_the_body_must_be_json(router: RouterThread) -> None:
    """The body is read as JSON whatever its declared type (``curl -d`` declares a form), so a
    JSON body is served under any content type and anything else is a 400."""
    content_types = st.one_of(
        st.sampled_from(
            ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "*/*"]
        ),
        header_values,
    )

    @settings(FUZZ, max_examples=30)
    @given(kinds, content_types, st.booleans())
    def check(kind: str, content_type: str, json_body: bool) -> None:
        data = json.dumps(body_of(kind)).encode() if json_body else b"model=x&prompt=y"
        status, body = post(router, PATHS[kind], data, {"Content-Type": content_type})
        if json_body:
            assert status == 200, body
        else:
            assert_error(status, body, 400, content_type)

    check()


def test_wrong_methods_get_405_with_allow(router: RouterThread) -> None:
    served = {(m, p) for m, p in OPERATIONS} | {("GET", "/openapi.json")}
    paths = sorted({p for _, p in served})

    @settings(FUZZ, max_examples=40)
    @given(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        st.sampled_from(paths),
    )
    def check(method: str, path: str) -> None:
        if (method, path) in served:
            return
        status, headers, data = raw(router.url, method, path, b"{}", AUTH)
        assert_error(status, data, 405, (method, path))
        allowed = {m for m, p in served if p == path}
        assert allowed <= set(headers["Allow"].split(",")), (method, path, headers)

    check()


def test_streaming_requests_with_bad_fields_get_a_json_400_not_a_stream(
    router: RouterThread,
) -> None:
    bad_fields = st.sampled_from(
        [
            {"max_tokens": 0},
            {"max_tokens": "many"},
            {"n": 2},
            {"temperature": -1.0},
            {"top_p": 7},
            {"stream_options": [1]},
            {"stream_options": {"include_usage": "sometimes"}},
            {"min_tokens": 9},  # more than max_tokens (3)
            {"model": 42},
            {"prompt": []},
            {"messages": []},
        ]
    )

    @settings(FUZZ, max_examples=40)
    @given(kinds, bad_fields)
    def check(kind: str, fields: dict[str, Any]) -> None:
        if ("prompt" in fields and kind == "chat") or ("messages" in fields and kind != "chat"):
            return
        status, headers, data = raw(
            router.url, "POST", PATHS[kind], body_of(kind, stream=True, **fields), AUTH
        )
        assert headers["Content-Type"].startswith("application/json"), (headers, fields)
        assert_error(status, data, 400, fields)

    check()
