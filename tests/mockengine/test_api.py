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
        assert headers["X-Request-Id"]


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
    assert headers["X-Request-Id"] == "my-id-7"
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    payloads = protocol.SSEDecoder().feed(body)
    events = [protocol.parse_sse_payload(p) for p in payloads]
    assert events[-1] is None
    chunks = [e for e in events if e is not None]
    assert [c["id"] for c in chunks] == ["cmpl-my-id-7"] * 5
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "length"]
    # vLLM writes completion chunks with every field: stop_reason is null until the end
    assert all(c["choices"][0]["stop_reason"] is None for c in chunks[:4])
    assert all(c["usage"] is None for c in chunks[:4])
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 4


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


def test_default_max_tokens_is_the_rest_of_the_context(mock: MockEngineThread) -> None:
    # with ignore_eos and no max_tokens the request runs to max_model_len
    long_prompt = " ".join(["word"] * 2000)  # 2001 tokens of 2048
    res = client(mock.urls[0]).completions.create(
        model=MODEL, prompt=long_prompt, extra_body={"ignore_eos": True}
    )
    assert res.usage is not None and res.usage.total_tokens == 2048


def test_request_id_generated_when_absent(mock: MockEngineThread) -> None:
    status, headers, body = raw(
        mock.urls[0], "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}
    )
    assert status == 200
    assert json.loads(body)["id"] == "cmpl-" + headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "JSON decode error"),
        (b"[1, 2]", 400, "JSON object"),
        ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": 5}, 400, "prompt"),
        ({"max_tokens": 3}, 400, "prompt: Field required"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens must be at least 1"),
        ({"prompt": "x", "max_tokens": 3, "min_tokens": 5}, 400, "min_tokens must be less"),
        ({"prompt": "x", "model": "gpt-9"}, 404, "The model `gpt-9` does not exist."),
        (
            {"prompt": "x", "max_tokens": 2048},
            400,
            "'max_tokens' or 'max_completion_tokens' is too large: 2048",
        ),
        ({"prompt": "word " * 3000}, 400, "However, your request has 3001 input tokens"),
        (
            {"prompt": "x", "priority": -1},
            400,
            "Got priority -1 but Priority scheduling is not enabled.",
        ),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream=True"),
    ],
)
def test_error_shapes(mock: MockEngineThread, body: object, status: int, needle: str) -> None:
    got, headers, data = raw(mock.urls[0], "POST", "/v1/completions", body)  # type: ignore[arg-type]
    assert got == status
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status and err["type"] == protocol.ERROR_TYPES[status]
    assert needle in err["message"]
    assert "Traceback" not in err["message"]
    assert headers["X-Request-Id"]


def test_openai_client_sees_typed_errors(mock: MockEngineThread) -> None:
    c = client(mock.urls[0])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    assert "maximum context length is 2048 tokens" in str(info.value)


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
