"""Minimal schema-valid answers for calls the recording did not cover, from the `ocpp` package's schemas.

The official JSON schemas ship inside the ``ocpp`` package (``ocpp/v16/schemas/XResponse.json``,
``ocpp/v201/schemas/XResponse.json``, ``ocpp/v21/...``). :func:`minimal` builds the smallest instance
of a schema: required properties only, the first enum value (``Accepted`` when the enum has it), empty
strings padded to ``minLength``, numbers at their minimum, ``minItems`` array items, dates as given.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

_PACKAGES = {"1.6": "v16", "2.0": "v201", "2.0.1": "v201", "2.1": "v21"}


@cache
def response_schema(version: str | None, action: str) -> dict[str, Any] | None:
    """The official schema of ``action``'s response in ``version`` (1.6 if unknown), or None."""
    pkg = _PACKAGES.get(version or "1.6", "v16")
    base = resources.files("ocpp") / pkg / "schemas"
    for name in (f"{action}Response.json",):
        path = base / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8-sig"))
    return None


def minimal(schema: dict[str, Any], root: dict[str, Any] | None = None, now: datetime | None = None) -> Any:
    """The smallest instance valid against ``schema`` (``$ref`` resolved against ``root``)."""
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return minimal(target, root, now)
    if "enum" in schema:
        values = schema["enum"]
        return "Accepted" if "Accepted" in values else values[0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: minimal(props.get(k, {}), root, now) for k in schema.get("required", [])}
    if kind == "array":
        return [minimal(schema.get("items", {}), root, now) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        if schema.get("format") == "date-time":
            return (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
        return "x" * schema.get("minLength", 0)
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def default_response(version: str | None, action: str, now: datetime | None = None) -> dict[str, Any] | None:
    """A minimal valid answer to ``action``, or None when the schemas do not know the action."""
    schema = response_schema(version, action)
    return None if schema is None else minimal(schema, now=now)
