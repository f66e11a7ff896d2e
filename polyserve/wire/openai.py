"""The OpenAI/vLLM wire format: request models, responses, SSE chunks, errors.

Free of server code: the router, the mock engine and the load client share it.
:class:`SSEDecoder` splits a byte stream into ``data:`` payloads, :func:`parse_sse_payload` reads
one chunk, and the builders here write what vLLM's OpenAI server writes: compact JSON, one event
per token with the fields vLLM's constructors set (:class:`StreamEncoder`); the optional usage
chunk with ``"choices": []``; then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar, Literal, TypeVar

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
#: The ``type`` of a 400 for a body FastAPI refuses before vLLM's code runs (a JSON or schema
#: error, a wrong Content-Type): the status phrase, not an OpenAI error class
#: (vllm/entrypoints/serve/exception_handling/handlers/validation.py:186-192).
REQUEST_VALIDATION_TYPE = HTTPStatus.BAD_REQUEST.phrase


class ApiError(Exception):
    """An error answered to the client in the OpenAI shape."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        err_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.err_type = err_type

    def payload(self) -> dict[str, Any]:
        return error_payload(self.message, self.status, self.param, self.err_type)


def error_payload(
    message: str, status: int, param: str | None = None, err_type: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as vLLM answers errors."""
    if err_type is None:
        err_type = ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def vllm_error(
    message: str, parameter: str | None = None, value: Any = None, status: int = 400
) -> ApiError:
    """A ``VLLMValidationError`` as vLLM answers it: its ``str`` appends the parameter and value
    (vllm/exceptions.py:49-56) and ``param`` is the parameter
    (serve/exception_handling/error_response.py:43-46)."""
    extras = [f"parameter={parameter}"] if parameter is not None else []
    if value is not None:
        extras.append(f"value={value}")
    text = f"{message} ({', '.join(extras)})" if extras else message
    return ApiError(text, status, param=parameter)


def request_validation_error(errors: Sequence[Any]) -> ApiError:
    """FastAPI's ``RequestValidationError`` as vLLM answers it: ``type`` "Bad Request",
    ``param`` the first error's location, one line per error (at most 10)
    (serve/exception_handling/handlers/validation.py:149-195). ``errors`` are pydantic's
    ``errors(include_url=False)`` with FastAPI's ``"body"`` location prefix, or plain strings."""
    param = None
    first = errors[0] if errors else None
    if isinstance(first, dict) and first.get("loc"):
        param = _clean_loc(first["loc"])
    count = len(errors)
    lines = [f"{count} validation {'error' if count == 1 else 'errors'}:"]
    for err in errors[:10]:
        if isinstance(err, dict):
            err = {**err, "loc": _clean_loc(err.get("loc", ()))}
        lines.append(f"  {str(err)[:1000]}")
    if count > 10:
        lines.append(f"  ...and {count - 10} more errors")
    return ApiError("\n".join(lines), 400, param=param, err_type=REQUEST_VALIDATION_TYPE)


def body_validation_error(err: ValidationError) -> ApiError:
    """A request body that fails its schema, located under ``body`` as FastAPI locates it."""
    errors = [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
    return request_validation_error(errors)


def json_decode_error(err: json.JSONDecodeError) -> ApiError:
    """FastAPI's answer to a body that is no JSON (fastapi/routing.py: ``json_invalid``)."""
    return request_validation_error(
        [
            {
                "type": "json_invalid",
                "loc": ("body", err.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": err.msg},
            }
        ]
    )


#: vLLM's ``validate_json_request`` (serve/utils/api_utils.py:309-315) on generation routes
MEDIA_TYPE_MESSAGE = "Unsupported Media Type: Only 'application/json' is allowed"


def is_json_media_type(content_type: str | None) -> bool:
    return (content_type or "").lower().split(";", maxsplit=1)[0] == JSON_CONTENT_TYPE


_INTERNAL_LOC = re.compile(r"[\[\]{}()]")
_INTERNAL_LOC_MARKERS = frozenset(
    [
        "function-wrap",
        "function-after",
        "function-before",
        "function-plain",
        "json-or-python",
        "lax-or-strict",
        "chain",
        "default",
        "nullable",
        "tagged-union",
        "union",
        "call",
        "arguments",
        "is-instance",
        "is-subclass",
        "callable",
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "bytearray",
        "list",
        "tuple",
        "dict",
        "set",
        "frozenset",
        "complex",
        "none",
        "nonetype",
    ]
)


def _clean_loc(loc: Sequence[Any]) -> str:
    """A location as a dotted path without pydantic's union-branch markers (validation.py:135)."""
    parts = [
        str(p)
        for p in loc
        if not (_INTERNAL_LOC.search(str(p)) or str(p).lower() in _INTERNAL_LOC_MARKERS)
    ]
    return ".".join(parts) if parts else ".".join(str(p) for p in loc)


def validation_message(err: ValidationError) -> str:
    """One readable line per field error, without pydantic's URLs."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    n = len(parts)
    return f"{n} validation error{'s' if n > 1 else ''} for request: " + "; ".join(parts)


def context_error(
    max_model_len: int,
    prompt_tokens: int,
    requested: int | None,
    param: str = "max_tokens",
    text_prompt: bool = True,
) -> ApiError | None:
    """vLLM's 400 for a request that cannot fit the context, or None when it fits.

    vLLM refuses a limit larger than the whole context (renderers/params.py:272-284) and a
    prompt longer than it (params.py:532-551); a prompt plus a limit that overflows is not
    refused: the limit is clamped to what is left (:func:`clamped_max_tokens`). A text prompt is
    tokenized with truncation at max_model_len + 1 (params.py:372-375), so its count then
    reads "at least max_model_len + 1".
    """
    if requested is not None and requested > max_model_len:
        return vllm_error(
            f"{param}={requested} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            parameter=param,
            value=requested,
        )
    if prompt_tokens > max_model_len:
        count = min(prompt_tokens, max_model_len + 1) if text_prompt else prompt_tokens
        qualifier = "at least " if count == max_model_len + 1 else ""
        return vllm_error(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {qualifier}{count} input tokens, which exceeds this limit even "
            "without any output tokens. Please reduce the length of the input prompt.",
            parameter="input_tokens",
            value=count,
        )
    return None


def clamped_max_tokens(max_model_len: int, prompt_tokens: int, requested: int | None) -> int:
    """vLLM's ``get_max_tokens`` (serve/utils/api_utils.py:234-268): the request's limit (or its
    API's default) clamped to the context left after the prompt; 0 for a prompt that fills the
    context (SamplingParams then refuses it: max_tokens must be at least 1)."""
    left = max_model_len - prompt_tokens
    return left if requested is None else min(left, requested)


def model_not_found_message(model: str, served: Sequence[str] = ()) -> str:
    """vLLM's 404 text (serve/engine/serving.py:75-80); the served names when known."""
    if not served:
        return f"The model `{model}` does not exist."
    return f"The model `{model}` does not exist. Valid aliases: {', '.join(served)}."


# ------------------------------------------------------------------------------ requests


class OpenAIBody(BaseModel):
    """Request bodies: typed fields, unknown fields allowed (as the OpenAI API allows)."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBody):
    include_usage: bool | None = False  # vLLM's default (generate/base/protocol.py:294)
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

    #: the limit when the request sets none (None: the rest of the context)
    default_max_tokens: ClassVar[int | None] = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def max_tokens_param(self) -> str:
        """The field the limit came from, as vLLM names it in a context error."""
        return "max_tokens"

    def client_request_id(self) -> str | None:
        """vLLM's ``request_id`` body field (completion/protocol.py:147): the response's id when
        no X-Request-Id header is sent."""
        rid = (self.model_extra or {}).get("request_id")
        return rid if isinstance(rid, str) and rid else None

    def check_stream_options(self) -> None:
        """vLLM's model validator (completion/protocol.py:599-610): raised while the body is
        parsed, before the model is looked up."""
        if self.stream_options is not None and not self.stream:
            raise vllm_error(
                "Stream options can only be defined when `stream=True`.", "stream_options"
            )

    def check_sampling(self, max_tokens: int) -> None:
        """vLLM's SamplingParams checks (sampling_params.py:656-705) of the clamped limit."""
        if self.n is not None and self.n != 1:
            if self.n < 1:
                raise ApiError(f"n must be at least 1, got {self.n}.", param="n")
            raise ApiError("n > 1 is not supported (one choice per request).", param="n")
        if max_tokens < 1:
            raise vllm_error(
                f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
            )
        if self.min_tokens < 0:
            raise vllm_error(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."
            )
        if self.min_tokens > max_tokens:
            raise vllm_error(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {self.min_tokens}."
            )
        if self.temperature is not None and self.temperature < 0:
            raise vllm_error(
                f"temperature must be non-negative, got {self.temperature}.",
                "temperature",
                self.temperature,
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise vllm_error(f"top_p must be in (0, 1], got {self.top_p}.", "top_p", self.top_p)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        opts = self.stream_options
        return bool(self.include_usage and opts and opts.continuous_usage_stats)


class CompletionRequest(SamplingFields):
    # vLLM's completions default (completion/protocol.py:64; a null max_tokens too: :446-451)
    default_max_tokens: ClassVar[int | None] = 16

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

    def max_tokens_param(self) -> str:
        # chat_completion/protocol.py:684-690
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

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
    """Builds the SSE events of one streamed choice, field for field as vLLM 0.33.0 writes them.

    vLLM dumps each chunk with ``exclude_unset=True`` (chat_completion/serving.py:499,
    completion/serving.py:486), so a chunk has the fields its constructor set, null or not:
    chat's role chunk adds ``prompt_token_ids`` and ``prompt_text`` (serving.py:598-620), its
    content chunks ``token_ids`` and the chunk's ``kv_transfer_params``, its last chunk
    ``stop_reason`` and ``weight_versions`` too (serving.py:784-826); completion chunks carry
    every choice field (completion/serving.py:437-467). The usage chunk is dumped with
    ``exclude_none=True``: ``choices: []`` and the three counts.

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
            self._suffix = (
                b'},"logprobs":null,"finish_reason":null,"token_ids":null}],'
                b'"kv_transfer_params":null}\n\n'
            )
        else:
            self._prefix = b"data: " + head + b',"choices":[{"index":0,"text":'
            self._suffix = (
                b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":null,"weight_versions":null}],'
                b'"kv_transfer_params":null}\n\n'
            )

    def _choice(self, text: str, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        if self.kind == "completion":
            return {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
                "weight_versions": None,
            }
        delta: dict[str, Any] = (
            {"role": "assistant", "content": text} if role else {"content": text}
        )
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if role:
            return choice
        if finish_reason is not None:
            choice["stop_reason"] = None
        choice["token_ids"] = None
        if finish_reason is not None:
            choice["weight_versions"] = None
        return choice

    def _usage(self, completion_tokens: int) -> dict[str, Any]:
        out: dict[str, Any] = usage(self.prompt_tokens, completion_tokens)
        if self.kind == "chat":  # chat sets the details field (to null without a reasoning parser)
            out["completion_tokens_details"] = None
        return out

    def chunk(
        self,
        choices: list[dict[str, Any]],
        completion_tokens: int | None = None,
        role: bool = False,
    ) -> dict[str, Any]:
        """A content chunk (the role chunk with ``role``); usage when ``completion_tokens``."""
        out: dict[str, Any] = dict(self._head)
        out["choices"] = choices
        if completion_tokens is not None:
            out["usage"] = self._usage(completion_tokens)
        if role:
            out["prompt_token_ids"] = None
            out["prompt_text"] = None
        else:
            out["kv_transfer_params"] = None
        return out

    def role(self) -> bytes:
        """The first chat chunk: the assistant role and empty content."""
        return sse_event(self.chunk([self._choice("", None, role=True)], self._cont(0), role=True))

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
        out: dict[str, Any] = dict(self._head)
        out["choices"] = []
        out["usage"] = usage(self.prompt_tokens, completion_tokens)
        return sse_event(out)

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
