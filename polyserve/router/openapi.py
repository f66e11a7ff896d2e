"""The OpenAPI document of what the router serves (``GET /openapi.json``).

Request schemas come from the same pydantic models the router validates with, so the document
cannot drift from the checks.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from polyserve.autoscale.signals import RouterState
from polyserve.router.auth import TIER_HEADER, TPOT_HEADER, TTFT_HEADER
from polyserve.router.spec import FleetSpec
from polyserve.wire import openai as proto

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "integer"},
            },
            "required": ["message", "type", "code"],
        }
    },
    "required": ["error"],
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": "An OpenAI-shaped error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def _header(name: str, doc: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": doc, "schema": schema}


_TIER_PARAMS = [
    _header(TIER_HEADER, "The tier to use (among those the API key may use).", {"type": "string"}),
    _header(
        TPOT_HEADER,
        "llm-d: the per-token SLO in ms; bins to the next tighter tier.",
        {"type": "number", "exclusiveMinimum": 0},
    ),
    _header(
        TTFT_HEADER, "llm-d: the first-token SLO in ms.", {"type": "number", "exclusiveMinimum": 0}
    ),
]


def _generation(schema: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "parameters": _TIER_PARAMS,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "200": {
                    "description": "The backend's answer: JSON, or an SSE stream when `stream` is true",
                    "content": {"application/json": {}, "text/event-stream": {}},
                },
                **_errors(400, 401, 403, 404, 413, 429, 502, 503),
            },
        }
    }


def _plain(summary: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    for name, model in (
        ("CompletionRequest", proto.CompletionRequest),
        ("ChatCompletionRequest", proto.ChatCompletionRequest),
        ("FleetSpec", FleetSpec),
        ("RouterState", RouterState),
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    state = _plain("Tiers, queues, backends and drain candidates (for the autoscaler)")
    state["get"]["responses"]["200"]["content"] = {
        "application/json": {"schema": {"$ref": "#/components/schemas/RouterState"}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "PolyServe router", "version": "0.1.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from the key file (unless the router runs --no-auth)",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (the admin API is off without one: 404)",
                },
            },
        },
        "paths": {
            "/v1/completions": _generation("CompletionRequest", "Text completion"),
            "/v1/chat/completions": _generation("ChatCompletionRequest", "Chat completion"),
            "/v1/models": _plain("The models the tiers serve, with their tiers"),
            "/health": _plain("Liveness"),
            "/metrics": _plain("Prometheus metrics", "text/plain"),
            "/polyserve/v1/state": state,
            "/polyserve/v1/fleet": {
                "put": {
                    "summary": "Replace the tiers and backends (admin token)",
                    "security": [{"adminToken": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/FleetSpec"}
                            }
                        },
                    },
                    "responses": {"200": {"description": "Applied"}, **_errors(400, 401, 404)},
                }
            },
        },
    }
