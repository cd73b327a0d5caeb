"""The OpenAPI 3.1 document, generated from the routes and their typed models (``GET /v1/openapi.json``)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ztdns import __version__
from ztdns.admin import models
from ztdns.admin.api import ROUTES

_REF = "#/components/schemas/{model}"


@functools.cache
def document() -> dict[str, Any]:
    used: set[type[BaseModel]] = {
        models.ErrorBody,
        models.ConfigRejected,
        models.ConfigToPublish,
        models.LoginRequest,
        models.SessionInfo,
    }
    for route in ROUTES:
        used.add(route.response)
        if route.request is not None:
            used.add(route.request)
    ordered = sorted(used, key=lambda m: m.__name__)
    _, schema = models_json_schema([(m, "validation") for m in ordered], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "description": f"Needs the {route.role} role.",
            "responses": {
                str(route.status): _content(route.response),
                "401": _content(models.ErrorBody),
                "403": _content(models.ErrorBody),
            },
            "security": [{"bearer": []}, {"mtls": []}, {"session": []}],
        }
        if route.request is not None:
            operation["requestBody"] = {"required": True, **_content(route.request)}
        elif route.request_type != "application/json":
            operation["requestBody"] = {
                "required": True,
                "content": {route.request_type: {"schema": {"type": "string"}}},
            }
        if route.path == "/v1/config" and route.method in ("PUT", "PATCH"):
            operation["parameters"] = [
                {"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"}}
            ]
            operation["responses"]["400"] = _content(models.ConfigRejected)
            operation["responses"]["412"] = {"description": "the config changed since it was read"}
        if route.path in ("/v1/config", "/v1/exceptions") and route.method in ("PUT", "PATCH", "POST"):
            operation["responses"]["202"] = _content(models.ConfigToPublish)
        if route.path.endswith("{name}"):
            operation.setdefault("parameters", []).append(
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            )
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/v1/session"]["post"] = {
        "summary": "Log in with a token: sets an HttpOnly session cookie, returns the CSRF token (rate-limited)",
        "requestBody": {"required": True, **_content(models.LoginRequest)},
        "responses": {
            "200": _content(models.SessionInfo),
            "401": _content(models.ErrorBody),
            "429": _content(models.ErrorBody),
        },
    }
    paths["/v1/session"]["delete"] = {"summary": "Log out", "responses": {"204": {"description": "logged out"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ztdns admin API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "mtls": {"type": "mutualTLS"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ztdns_session"},
            },
        },
    }


def _content(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "description": (model.__doc__ or model.__name__).strip().splitlines()[0],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }
