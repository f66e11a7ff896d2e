"""The OpenAI/vLLM wire format: request models, responses, SSE chunks, errors.

Free of server code: the router, the mock engine and the load client share it.
:class:`SSEDecoder` splits a byte stream into ``data:`` payloads, :func:`parse_sse_payload` reads
one chunk, and the builders here write what vLLM's OpenAI server writes: compact JSON, one event per token; chat
chunks with only the fields vLLM sets (the role chunk first, ``finish_reason`` and
``stop_reason`` in the last content chunk), completion chunks with every field (vLLM dumps them
with ``exclude_unset=False``: ``stop_reason``, ``prompt_token_ids``, ``token_ids`` and ``usage``
are null until set); the optional usage chunk with ``"choices": []``; then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import uuid
from http import HTTPStatus
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)

SSE_DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"
REQUEST_ID_HEADER = "X-Request-Id"

# ------------------------------------------------------------------------------ errors

ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """An error answered to the client in the OpenAI shape."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param

    def payload(self) -> dict[str, Any]:
        return error_payload(self.message, self.status, self.param)


def error_payload(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as vLLM answers errors."""
    err_type = ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def validation_message(err: ValidationError) -> str:
    """One readable line per field error, without pydantic's URLs."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    n = len(parts)
    return f"{n} validation error{'s' if n > 1 else ''} for request: " + "; ".join(parts)


def context_length_message(max_model_len: int, prompt_tokens: int, max_tokens: int | None) -> str:
    """vLLM's 400 text for a request that does not fit the context."""
    if max_tokens is None or prompt_tokens >= max_model_len:
        return (
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_tokens} input tokens. Please reduce the length of the input "
            "messages."
        )
    return (
        f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
        f"maximum context length is {max_model_len} tokens and your request has {prompt_tokens} "
        f"input tokens ({max_tokens} > {max_model_len} - {prompt_tokens})."
    )


def priority_message(priority: int) -> str:
    return f"Got priority {priority} but Priority scheduling is not enabled."


def model_not_found_message(model: str) -> str:
    return f"The model `{model}` does not exist."


# ------------------------------------------------------------------------------ requests


class OpenAIBody(BaseModel):
    """Request bodies: typed fields, unknown fields allowed (as the OpenAI API allows)."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBody):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class SamplingFields(OpenAIBody):
    """The fields PolyServe acts on; the other sampling knobs are typed and accepted."""

    model: str | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    priority: int = 0
    n: int | None = 1
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    user: str | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def check_sampling(self) -> None:
        """vLLM's SamplingParams checks (ValueError -> 400)."""
        max_tokens = self.requested_max_tokens()
        if self.n is not None and self.n != 1:
            if self.n < 1:
                raise ApiError(f"n must be at least 1, got {self.n}.", param="n")
            raise ApiError("n > 1 is not supported (one choice per request).", param="n")
        if max_tokens is not None and max_tokens < 1:
            raise ApiError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
        if self.min_tokens < 0:
            raise ApiError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.",
                param="min_tokens",
            )
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise ApiError(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {self.min_tokens}.",
                param="min_tokens",
            )
        if self.temperature is not None and self.temperature < 0:
            raise ApiError(
                f"temperature must be non-negative, got {self.temperature}.", param="temperature"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ApiError(f"top_p must be in (0, 1], got {self.top_p}.", param="top_p")
        if self.stream_options is not None and not self.stream:
            raise ApiError(
                "Stream options can only be defined when `stream=True`.", param="stream_options"
            )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        opts = self.stream_options
        return bool(self.include_usage and opts and opts.continuous_usage_stats)


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = False
    logprobs: int | None = None
    add_special_tokens: bool = True

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (PolyServe serves one prompt per request)."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise ApiError("Prompt cannot be empty.", param="prompt")
        if all(isinstance(t, int) for t in p):
            return [int(t) for t in p]  # type: ignore[arg-type]
        if len(p) != 1:
            raise ApiError(
                "Batched prompts are not supported (one prompt per request).", param="prompt"
            )
        only = p[0]
        if isinstance(only, str):
            return only
        if not only:
            raise ApiError("Prompt cannot be empty.", param="prompt")
        return list(only)  # type: ignore[arg-type]


class ChatMessage(OpenAIBody):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        c = self.content
        if c is None:
            return ""
        if isinstance(c, str):
            return c
        return "".join(str(part.get("text", "")) for part in c if part.get("type") == "text")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True
    logprobs: bool | None = False

    def requested_max_tokens(self) -> int | None:
        # vLLM: max_completion_tokens wins over the deprecated max_tokens
        return self.max_completion_tokens or self.max_tokens

    def message_texts(self) -> list[tuple[str, str]]:
        return [(m.role, m.text()) for m in self.messages]


class TokenizeRequest(OpenAIBody):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False


# ------------------------------------------------------------------------------ ids


def random_request_id() -> str:
    return uuid.uuid4().hex


def response_id(kind: Literal["chat", "completion"], request_id: str) -> str:
    """vLLM: ``chatcmpl-<id>`` / ``cmpl-<id>`` over the X-Request-Id (or a random id)."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"


# ------------------------------------------------------------------------------ responses


def dumps(obj: Any) -> bytes:
    """Compact JSON, as pydantic's ``model_dump_json`` writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def completion_response(
    rid: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens) | {"prompt_tokens_details": None},
        "kv_transfer_params": None,
    }


def chat_response(
    rid: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage(prompt_tokens, completion_tokens) | {"prompt_tokens_details": None},
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def models_response(
    served_name: str, root: str, max_model_len: int, created: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": served_name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
        ],
    }


# ------------------------------------------------------------------------------ streaming


def sse_event(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


class StreamEncoder:
    """Builds the SSE events of one streamed choice.

    Content chunks are the hot path (one per token per stream): their JSON is a precomputed
    prefix and suffix around the token text, byte-identical to the dict-built form.
    """

    def __init__(
        self,
        kind: Literal["chat", "completion"],
        rid: str,
        model: str,
        created: int,
        prompt_tokens: int,
        continuous_usage: bool = False,
    ) -> None:
        self.kind = kind
        self.prompt_tokens = prompt_tokens
        self.continuous_usage = continuous_usage
        self._head = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": model,
        }
        head = dumps(self._head)[:-1]
        if kind == "chat":
            self._prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
            self._suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._prefix = b"data: " + head + b',"choices":[{"index":0,"text":'
            self._suffix = (
                b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":null}],"usage":null}\n\n'
            )

    def _choice(self, text: str, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = (
                {"role": "assistant", "content": text} if role else {"content": text}
            )
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        if self.kind == "completion":
            # vLLM dumps completion chunks with every field (exclude_unset=False)
            choice.update(stop_reason=None, prompt_token_ids=None, token_ids=None)
        elif finish_reason is not None:
            choice["stop_reason"] = None  # chat chunks carry only the fields that were set
        return choice

    def chunk(
        self, choices: list[dict[str, Any]], completion_tokens: int | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._head)
        out["choices"] = choices
        if completion_tokens is not None:
            out["usage"] = usage(self.prompt_tokens, completion_tokens)
        elif self.kind == "completion" and choices:
            out["usage"] = None
        return out

    def role(self) -> bytes:
        """The first chat chunk: the assistant role and empty content."""
        return sse_event(self.chunk([self._choice("", None, role=True)], self._cont(0)))

    def token(self, text: str, completion_tokens: int) -> bytes:
        """A content chunk (``completion_tokens`` counts this token)."""
        if self.continuous_usage:
            return sse_event(self.chunk([self._choice(text, None)], completion_tokens))
        return self._prefix + dumps(text) + self._suffix

    def final(self, text: str, finish_reason: str, completion_tokens: int) -> bytes:
        """The last content chunk, with ``finish_reason`` and ``stop_reason``."""
        return sse_event(
            self.chunk([self._choice(text, finish_reason)], self._cont(completion_tokens))
        )

    def usage(self, completion_tokens: int) -> bytes:
        """The usage chunk sent after the last content chunk when ``include_usage`` is set."""
        return sse_event(self.chunk([], completion_tokens))

    def _cont(self, completion_tokens: int) -> int | None:
        return completion_tokens if self.continuous_usage else None


class SSEDecoder:
    """Incremental SSE reader: feed bytes, get the ``data`` payload of each complete event."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        out: list[str] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return out
            event, self._buf = self._buf[:end], self._buf[end + 2 :]
            lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
            if lines:
                out.append(b"\n".join(lines).decode())


def parse_sse_payload(payload: str) -> dict[str, Any] | None:
    """One chunk as a dict, or None for ``[DONE]``."""
    if payload.strip() == "[DONE]":
        return None
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise ValueError(f"an SSE chunk must be a JSON object, got {type(obj).__name__}")
    return obj
