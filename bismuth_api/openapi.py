"""The OpenAPI 3 description of ``bismuth-api`` served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from bismuth_core import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _errors(*codes: int, reasons: dict[int, str] | None = None) -> dict[str, Any]:
    reasons = {
        400: "invalid request or definition",
        404: "unknown function",
        409: "a hostname is already routed to another function",
        413: "request body too large",
        503: "ZooKeeper unreachable or not enough capacity in the fleet",
        **(reasons or {}),
    }
    return {
        str(c): {"description": reasons[c], "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_DEFINITION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["image", "cpu", "memory", "invoke_mode"],
    "properties": {
        "image": {"type": "string", "description": "OCI image reference"},
        "repo": {
            "description": "[git url, branch] cloned into /repo before start",
            "oneOf": [
                {"type": "null"},
                {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
            ],
        },
        "svc_group_id": {"type": ["string", "null"], "format": "uuid"},
        "cpu": {"type": "number", "exclusiveMinimum": 0, "description": "fraction of a core"},
        "memory": {"type": "integer", "minimum": 4194304, "description": "bytes"},
        "svc_quotas": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "kv": {"type": "integer", "minimum": 0},
                        "blob": {"type": "integer", "minimum": 0},
                    },
                },
            ]
        },
        "invoke_mode": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["Server"],
                    "additionalProperties": False,
                    "properties": {"Server": {"type": "array", "minItems": 2, "maxItems": 2}},
                },
                {
                    "type": "object",
                    "required": ["Executable"],
                    "additionalProperties": False,
                    "properties": {
                        "Executable": {"type": "array", "items": {"type": "string"}, "minItems": 1}
                    },
                },
            ]
        },
        "max_instances": {"type": "integer", "minimum": 1},
        "routes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["hostname"],
                "additionalProperties": False,
                "properties": {"hostname": {"type": "string", "format": "hostname"}},
            },
        },
    },
}

_SECRET_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '.'",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"},
}

_SECRETS: dict[str, Any] = {
    "/function/{id}/secrets": {
        "parameters": [_ID],
        "get": {
            "summary": "Names of the function's secrets, sorted (never their values)",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"secrets": {"type": "array", "items": {"type": "string"}}},
                    }
                ),
                **_errors(400, 404, 503),
            },
        },
    },
    "/function/{id}/secrets/{name}": {
        "parameters": [_ID, _SECRET_NAME],
        "put": {
            "summary": "Set a secret: the raw body (any content type, at most 64 KiB) is its value",
            "description": "Stored in ZooKeeper sealed with the cluster key (AES-256-GCM); "
            "the function's code reads it from its provider.",
            "requestBody": {
                "required": True,
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {
                "204": {"description": "stored (created or replaced)"},
                **_errors(
                    400,
                    404,
                    413,
                    503,
                    reasons={
                        400: "invalid function id or secret name",
                        413: "secret value over 64 KiB",
                        503: "no cluster key configured, or ZooKeeper unreachable",
                    },
                ),
            },
        },
        "delete": {
            "summary": "Delete a secret",
            "responses": {
                "204": {"description": "deleted"},
                **_errors(
                    400,
                    404,
                    503,
                    reasons={
                        400: "invalid function id or secret name",
                        404: "unknown function or secret",
                    },
                ),
            },
        },
    },
}

_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "definition": {"$ref": "#/components/schemas/Definition"},
        "backends": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "backend": {
                        "type": "object",
                        "properties": {
                            "ip": {"type": "string", "format": "ipv4"},
                            "container_id": {"type": "string", "format": "uuid"},
                        },
                    },
                    "status": {
                        "type": "string",
                        "enum": ["Pending", "Invalid", "Starting", "Running", "Paused", "Failed"],
                    },
                    "retiring": {
                        "type": "boolean",
                        "description": "old container kept until the new ones run",
                    },
                },
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    status_ref = {"$ref": "#/components/schemas/FunctionStatus"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "bismuth-api",
            "version": __version__,
            "description": "Control plane of a Bismuth cluster.",
        },
        "paths": {
            "/function": {
                "post": {
                    "summary": "Create a function and schedule its containers",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Definition"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"id": {"type": "string", "format": "uuid"}},
                            }
                        ),
                        **_errors(400, 409, 413, 503),
                    },
                },
                "get": {
                    "summary": "List functions with their status",
                    "responses": {
                        "200": _json({"type": "array", "items": status_ref}),
                        **_errors(503),
                    },
                },
            },
            "/function/{id}": {
                "parameters": [_ID],
                "get": {
                    "summary": "A function's definition and backends",
                    "responses": {"200": _json(status_ref), **_errors(400, 404, 503)},
                },
                "put": {
                    "summary": "Replace the definition (empty body: redeploy); no gap in service",
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Definition"}
                            }
                        },
                    },
                    "responses": {"200": _json(status_ref), **_errors(400, 404, 409, 413, 503)},
                },
                "delete": {
                    "summary": "Delete a function, its containers and routes",
                    "responses": {"200": _json({"type": "object"}), **_errors(400, 404, 503)},
                },
            },
            "/function/{id}/logs": {
                "parameters": [
                    _ID,
                    {
                        "name": "follow",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean"},
                    },
                ],
                "get": {
                    "summary": "Container output; with follow, Server-Sent Events",
                    "responses": {
                        "200": {"description": "text/plain or text/event-stream"},
                        **_errors(400, 404, 503),
                    },
                },
            },
            **_SECRETS,
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"})}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                },
                "Definition": _DEFINITION,
                "FunctionStatus": _STATUS,
            }
        },
    }
