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


_TENANT = {
    "name": "tenant",
    "in": "query",
    "required": False,
    "description": "The tenant (id or name) an admin token acts for: on creates, the new "
    "thing's owner (default: the tenant 'default'); on listings, a filter (default: every "
    "tenant). A tenant token may only name its own tenant (403 otherwise).",
    "schema": {"type": "string"},
}
_AUTH_ERRORS = (401,)


def _errors(*codes: int, reasons: dict[int, str] | None = None) -> dict[str, Any]:
    reasons = {
        400: "invalid request or definition",
        401: "no token, a malformed one, or an unknown or revoked one "
        "(with WWW-Authenticate: Bearer)",
        403: "the token's scope does not allow this",
        404: "unknown function, or one of another tenant",
        409: "a hostname is already routed to another function",
        413: "request body too large",
        503: "ZooKeeper unreachable or not enough capacity in the fleet",
        **(reasons or {}),
    }
    return {
        str(c): {"description": reasons[c], "content": {"application/json": {"schema": _ERROR}}}
        for c in (*codes, *_AUTH_ERRORS)
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
        "svc_group_id": {
            "type": ["string", "null"],
            "format": "uuid",
            "description": "data shared by the functions of a group; default: the function's "
            "own id. Only the caller tenant's own function ids and groups (POST /group); "
            "anything else is a 400 naming svc_group_id",
        },
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
                        503: "ZooKeeper unreachable",
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

_UUID = {"type": "string", "format": "uuid"}
_GROUP = {"type": "object", "properties": {"id": _UUID, "tenant": _UUID}}

_GROUPS: dict[str, Any] = {
    "/group": {
        "post": {
            "summary": "Create a service group of the tenant (to share data between functions)",
            "parameters": [_TENANT],
            "responses": {
                "200": _json({"type": "object", "properties": {"id": _UUID}}),
                **_errors(403, 404, 503),
            },
        },
        "get": {
            "summary": "The tenant's service groups (an admin without tenant: every tenant's)",
            "parameters": [_TENANT],
            "responses": {"200": _json({"type": "array", "items": _GROUP}), **_errors(403, 503)},
        },
    },
    "/group/{id}": {
        "parameters": [{**_ID, "description": "the group's id"}],
        "delete": {
            "summary": "Delete a service group no function uses (its data stays)",
            "responses": {
                "200": _json({"type": "object"}),
                **_errors(
                    400,
                    404,
                    409,
                    503,
                    reasons={404: "unknown group, or one of another tenant", 409: "in use"},
                ),
            },
        },
    },
}

_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "tenant": {
            "type": ["string", "null"],
            "format": "uuid",
            "description": "the owning tenant (null: made before tenants, not adopted yet)",
        },
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
            "description": "Control plane of a Bismuth cluster. Every path but /healthz "
            "and /openapi.json needs Authorization: Bearer <token> (bismuthctl tenant create, "
            "token issue). A tenant token sees and acts on its own tenant's functions and "
            "groups only: another tenant's are 404. An admin token acts on every tenant's.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/function": {
                "post": {
                    "summary": "Create a function of the tenant and schedule its containers",
                    "parameters": [_TENANT],
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
                        **_errors(400, 403, 404, 409, 413, 503),
                    },
                },
                "get": {
                    "summary": "List the tenant's functions with their status",
                    "parameters": [_TENANT],
                    "responses": {
                        "200": _json({"type": "array", "items": status_ref}),
                        **_errors(403, 404, 503),
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
            **_GROUPS,
            "/healthz": {
                "get": {
                    "summary": "Liveness (no token needed)",
                    "security": [],
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (admin tokens only)",
                    "responses": {
                        "200": {"description": "text exposition"},
                        **_errors(403),
                    },
                }
            },
            "/status": {
                "get": {
                    "summary": "What the status page at /ui/ shows: the caller's functions with "
                    "their replicas, status and node, failed replicas (newest first, with the "
                    "time their status was written) and, for admin tokens, the nodes with "
                    "capacity and liveness ('nodes' is null for tenant tokens)",
                    "responses": {"200": _json({"type": "object"}), **_errors(503)},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document (no token needed)",
                    "security": [],
                    "responses": {"200": _json({"type": "object"})},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "bth_<16 hex digits>_<43 characters>: a tenant or admin token",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                },
                "Definition": _DEFINITION,
                "FunctionStatus": _STATUS,
            },
        },
    }
