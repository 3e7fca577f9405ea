"""The API's OpenAPI 3.1 document, built from the route table, so it cannot drift from it."""

from __future__ import annotations

import re
from typing import Any

JSON_BODY = {
    "content": {"application/json": {"schema": {"type": "object"}}},
    "required": True,
}


def document(entries: list[Any]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in entries:
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", e.path)
        ]
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__,
            "parameters": params,
            "x-permission": e.permission,
            "responses": {
                "200": {"description": "OK"},
                "401": {"description": "no valid token or session"},
                "403": {"description": "the user's role may not do this"},
                "404": {"description": "no such object"},
            },
        }
        if e.method in ("POST", "DELETE") and "openapi" not in e.path:
            op["requestBody"] = JSON_BODY | {"required": e.method == "POST"}
        if e.path.endswith("/audio"):
            op["parameters"].append({"name": "Range", "in": "header", "schema": {"type": "string"}})
            op["responses"]["206"] = {"description": "the range asked for"}
            op["responses"]["416"] = {"description": "a range that cannot be served"}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "callconsent", "version": "1"},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"token": []}],
        "paths": paths,
    }
