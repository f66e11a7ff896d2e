"""The HTTP API through the official openai client and plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from polyserve.mockengine import MockEngineThread, textgen
from polyserve.wire import openai as protocol
from polyserve.wire import tokenizer
from tests.mockengine.conftest import MODEL, client, raw

PROMPT = "The quick brown fox jumps over the lazy dog."


def test_models_and_health(mock: MockEngineThread) -> None:
    url = mock.urls[0]
    models = client(url).models.list()
    assert [m.id for m in models.data] == [MODEL]
    status, _, body = raw(url, "GET", "/v1/models")
    card = json.loads(body)["data"][0]
    assert card["owned_by"] == "vllm" and card["max_model_len"] == 2048
    for method, path in (("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")):
        status, headers, body = raw(url, method, path)
        assert (status, body) == (200, b"")
        assert "X-Request-Id" not in headers  # only with --enable-request-id-headers


def test_completion_non_streaming(mock: MockEngineThread) -> None:
    res = client(mock.urls[0]).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, extra_body={"ignore_eos": True}
    )
    assert res.object == "text_completion" and res.id.startswith("cmpl-")
    choice = res.choices[0]
    assert choice.finish_reason == "length"
    assert tokenizer.count(choice.text) == 12
    assert res.usage is not None
    assert res.usage.prompt_tokens == tokenizer.completion_prompt_tokens(PROMPT)
    assert res.usage.completion_tokens == 12
    assert res.usage.total_tokens == res.usage.prompt_tokens + 12


def test_chat_streaming_with_usage(mock: MockEngineThread) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    chunks = list(
        client(mock.urls[0]).chat.completions.create(
            model=MODEL,
            messages=msgs,  # type: ignore[arg-type]
            max_completion_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [c for c in chunks[1:] if c.choices]
    assert len(content) == 6
    assert [c.choices[0].finish_reason for c in content] == [None] * 5 + ["length"]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    texts = [(m["role"], m["content"]) for m in msgs]
    assert usage_chunk.usage.prompt_tokens == tokenizer.chat_prompt_tokens(texts)
    assert usage_chunk.usage.completion_tokens == 6
    # /tokenize agrees with the prompt count
    _, _, body = raw(mock.urls[0], "POST", "/tokenize", {"messages": msgs})
    assert json.loads(body)["count"] == usage_chunk.usage.prompt_tokens


def test_completion_stream_raw_framing(mock: MockEngineThread) -> None:
    """Exact SSE framing: one event per token, finish + stop_reason last, usage, [DONE]."""
    status, headers, body = raw(
        mock.urls[0],
        "POST",
        "/v1/completions",
        {
            "prompt": PROMPT,
            "max_tokens": 4,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"X-Request-Id": "my-id-7"},
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert "X-Request-Id" not in headers  # not echoed without --enable-request-id-headers
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    payloads = protocol.SSEDecoder().feed(body)
    events = [protocol.parse_sse_payload(p) for p in payloads]
    assert events[-1] is None
    chunks = [e for e in events if e is not None]
    assert [c["id"] for c in chunks] == ["cmpl-my-id-7"] * 5
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "length"]
    # vLLM sets every choice field of a completion chunk, and no usage until the usage chunk
    assert all(c["choices"][0]["stop_reason"] is None for c in chunks[:4])
    assert all("usage" not in c and c["kv_transfer_params"] is None for c in chunks[:4])
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 4
    assert set(chunks[4]) == {"id", "object", "created", "model", "choices", "usage"}


def test_stop_and_length_from_the_eos_point(mock: MockEngineThread) -> None:
    prompt = next(
        f"question {i}"
        for i in range(1000)
        if textgen.eos_position(textgen.seed_of(f"question {i}")) <= 20
    )
    eos = textgen.eos_position(textgen.seed_of(prompt))
    c = client(mock.urls[0])
    stopped = c.completions.create(model=MODEL, prompt=prompt, max_tokens=20)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage is not None and stopped.usage.completion_tokens == eos
    assert tokenizer.count(stopped.choices[0].text) == eos - 1  # EOS carries no text
    if eos > 1:
        cut = c.completions.create(model=MODEL, prompt=prompt, max_tokens=eos - 1)
        assert cut.choices[0].finish_reason == "length"
    forced = c.completions.create(
        model=MODEL, prompt=prompt, max_tokens=20, extra_body={"ignore_eos": True}
    )
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == 20


def test_default_max_tokens(mock: MockEngineThread) -> None:
    """Completions default to 16 tokens (vllm/entrypoints/openai/completion/protocol.py:64, a
    null too: :446-451); chat to the rest of the context (chat_completion/protocol.py:244-249
    default None, then serve/utils/api_utils.py:253-268 takes max_model_len - prompt)."""
    c = client(mock.urls[0])
    res = c.completions.create(model=MODEL, prompt="hello", extra_body={"ignore_eos": True})
    assert res.usage is not None and res.usage.completion_tokens == 16
    status, _, body = raw(
        mock.urls[0],
        "POST",
        "/v1/completions",
        {"prompt": "x", "max_tokens": None, "ignore_eos": True},
    )
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 16
    words = " ".join(["word"] * 2000)
    chat = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": words}], extra_body={"ignore_eos": True}
    )
    assert chat.usage is not None and chat.usage.total_tokens == 2048


def test_prompt_plus_max_tokens_over_the_context_is_clamped(mock: MockEngineThread) -> None:
    """vLLM clamps max_tokens to max_model_len - prompt (serve/utils/api_utils.py:253-268) and
    refuses only a limit above the whole context (renderers/params.py:272-284)."""
    prompt = " ".join(["word"] * 2000)  # 2001 tokens of 2048
    res = client(mock.urls[0]).completions.create(
        model=MODEL, prompt=prompt, max_tokens=2048, extra_body={"ignore_eos": True}
    )
    assert res.choices[0].finish_reason == "length"
    assert res.usage is not None and res.usage.completion_tokens == 2048 - 2001


def test_request_id_headers_only_when_enabled(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    """--enable-request-id-headers adds vLLM's XRequestIdMiddleware: the client's id echoed, else
    a fresh uuid4 that is not the response's id (serve/middleware/x_request_id.py:28-33); the
    client's id names the response either way (serve/engine/serving.py:133-142)."""
    url = start_mock(enable_request_id_headers=True).urls[0]
    status, headers, body = raw(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 200 and len(headers["X-Request-Id"]) == 32
    assert json.loads(body)["id"].startswith("cmpl-")
    status, headers, body = raw(
        url,
        "POST",
        "/v1/completions",
        {"prompt": "x", "max_tokens": 1, "stream": True},
        headers={"X-Request-Id": "mine"},
    )
    assert headers["X-Request-Id"] == "mine" and b'"id":"cmpl-mine"' in body
    assert raw(url, "GET", "/health")[1]["X-Request-Id"]
    assert raw(url, "GET", "/v2/nothing")[1]["X-Request-Id"]


def test_include_usage_defaults_to_false(mock: MockEngineThread) -> None:
    """StreamOptions.include_usage defaults to False (generate/base/protocol.py:294)."""
    _, _, body = raw(
        mock.urls[0],
        "POST",
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"continuous_usage_stats": True},
        },
    )
    chunks = [protocol.parse_sse_payload(p) for p in protocol.SSEDecoder().feed(body)]
    assert all(c is None or ("usage" not in c and c["choices"]) for c in chunks)


def test_priority_is_ignored_on_fcfs_and_the_header_overrides_the_body(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    """vLLM 0.33.0 checks no priority against the policy (v1/engine/input_processor.py:375-550
    passes it on; the FCFS queue ignores it) and reads X-Vllm-Priority first
    (entrypoints/generate/base/serving.py:42, :254-265; a non-integer header is ignored)."""
    for policy in ("fcfs", "priority"):
        fleet = start_mock(scheduling_policy=policy)
        runner = fleet.servers[0].runner
        seen: list[int] = []
        submit = runner.submit

        def spy(
            prompt: int,
            plan: textgen.OutputPlan,
            priority: int = 0,
            mt: int = 0,
            seen: list[int] = seen,
            submit: Callable[..., object] = submit,
        ) -> object:
            seen.append(priority)
            return submit(prompt, plan, priority, mt)

        runner.submit = spy  # type: ignore[method-assign,assignment]
        url = fleet.urls[0]
        body = {"prompt": "x", "max_tokens": 2, "priority": -1}
        assert raw(url, "POST", "/v1/completions", body)[0] == 200
        assert raw(url, "POST", "/v1/completions", body, {"X-Vllm-Priority": "7"})[0] == 200
        assert raw(url, "POST", "/v1/completions", body, {"X-Vllm-Priority": "x"})[0] == 200
        assert seen == ([0, 0, 0] if policy == "fcfs" else [-1, 7, -1])


def test_content_type_must_be_json(mock: MockEngineThread) -> None:
    """validate_json_request (serve/utils/api_utils.py:309-315) raises a RequestValidationError."""
    for content_type in ("text/plain", ""):
        status, _, data = raw(
            mock.urls[0], "POST", "/v1/completions", {"prompt": "x"}, {"Content-Type": content_type}
        )
        err = json.loads(data)["error"]
        assert (status, err["type"], err["param"]) == (400, "Bad Request", None)
        assert err["message"] == (
            "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
        )
    status, _, _ = raw(
        mock.urls[0],
        "POST",
        "/v1/completions",
        {"prompt": "x", "max_tokens": 1},
        {"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert status == 200


BAD = "Bad Request"  # FastAPI's validation: the status phrase (handlers/validation.py:186-192)
BRE = "BadRequestError"  # vLLM's own checks (exception_handling/error_response.py:43-46)


@pytest.mark.parametrize(
    ("body", "status", "err_type", "param", "needle"),
    [
        (b"{not json", 400, BAD, "body.1", "'msg': 'JSON decode error'"),
        (b"[1, 2]", 400, BAD, "body", "1 validation error:"),
        ({"prompt": "x", "max_tokens": "many"}, 400, BAD, "body.max_tokens", "valid integer"),
        ({"prompt": 5}, 400, BAD, "body.prompt", "validation errors:"),
        ({"max_tokens": 3}, 400, BAD, "body.prompt", "'msg': 'Field required'"),
        (
            {"prompt": "x", "max_tokens": 0},
            400,
            BRE,
            "max_tokens",
            "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
        ),
        (
            {"prompt": "x", "max_tokens": 3, "min_tokens": 5},
            400,
            BRE,
            None,
            "min_tokens must be less than or equal to max_tokens=3, got 5.",
        ),
        (
            {"prompt": "x", "model": "gpt-9"},
            404,
            "NotFoundError",
            "model",
            f"The model `gpt-9` does not exist. Valid aliases: {MODEL}.",
        ),
        (
            {"prompt": "x", "max_tokens": 2049},
            400,
            BRE,
            "max_tokens",
            "max_tokens=2049 cannot be greater than max_model_len=2048. Please request fewer "
            "output tokens. (parameter=max_tokens, value=2049)",
        ),
        (
            {"prompt": "word " * 3000},
            400,
            BRE,
            "input_tokens",
            "your prompt contains at least 2049 input tokens, which exceeds this limit",
        ),
        (
            {"prompt": list(range(3000))},
            400,
            BRE,
            "input_tokens",
            "your prompt contains 3000 input tokens",
        ),
        (
            {"prompt": list(range(2048))},  # fills the context: nothing left to generate
            400,
            BRE,
            "max_tokens",
            "max_tokens must be at least 1, got 0.",
        ),
        (
            {"prompt": "x", "stream_options": {"include_usage": True}},
            400,
            BRE,
            "stream_options",
            "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
        ),
    ],
)
def test_error_shapes(
    mock: MockEngineThread,
    body: object,
    status: int,
    err_type: str,
    param: str | None,
    needle: str,
) -> None:
    got, _, data = raw(mock.urls[0], "POST", "/v1/completions", body)  # type: ignore[arg-type]
    assert got == status
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["type"], err["param"]) == (status, err_type, param)
    assert needle in err["message"]
    assert "Traceback" not in err["message"]


def test_openai_client_sees_typed_errors(mock: MockEngineThread) -> None:
    c = client(mock.urls[0])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    assert "max_tokens=5000 cannot be greater than max_model_len=2048" in str(info.value)


def test_unknown_route_and_internal_error(
    mock: MockEngineThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, body = raw(mock.urls[0], "GET", "/v2/nothing")
    assert status == 404 and json.loads(body) == {"detail": "Not Found"}

    def boom(strs: object) -> list[int]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(tokenizer, "encode", boom)
    status, _, body = raw(mock.urls[0], "POST", "/tokenize", {"prompt": "hello"})
    assert status == 500
    err = json.loads(body)["error"]
    assert err["code"] == 500 and "secret" not in err["message"]
    assert "Traceback" not in body.decode()


def test_priority_accepted_with_priority_policy(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    fleet = start_mock(scheduling_policy="priority")
    res = client(fleet.urls[0]).completions.create(
        model=MODEL, prompt="x", max_tokens=2, extra_body={"priority": 5}
    )
    assert res.usage is not None and res.usage.completion_tokens >= 1


def test_chat_non_streaming_and_continuous_usage(mock: MockEngineThread) -> None:
    c = client(mock.urls[0])
    res = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=3,
        extra_body={"ignore_eos": True},
    )
    assert res.object == "chat.completion" and res.choices[0].message.role == "assistant"
    assert res.choices[0].finish_reason == "length"
    assert tokenizer.count(res.choices[0].message.content or "") == 3
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
            extra_body={"ignore_eos": True},
        )
    )
    # every chunk carries usage so far; the last one has no choices
    assert [ch.usage.completion_tokens for ch in chunks if ch.usage] == [0, 1, 2, 3, 3]
    assert chunks[-1].choices == []
