"""Checks client events against the `openai` package's pydantic types, rejecting any extra key.

The SDK models allow extra keys (`extra="allow"`), so validation alone would accept a beta-only field in
a GA event. After validating, every model in the tree must have an empty `model_extra`.
"""

from __future__ import annotations

from typing import Any, Literal

import openai.types.beta.realtime as beta
import openai.types.realtime as ga
from pydantic import BaseModel, TypeAdapter

Dialect = Literal["beta", "ga"]

_GA = TypeAdapter(ga.RealtimeClientEvent)
_BETA = TypeAdapter(beta.RealtimeClientEvent)


def _extras(node: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(node, BaseModel):
        found += [f"{path}.{key}" for key in (node.model_extra or {})]
        for name in type(node).model_fields:
            found += _extras(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            found += _extras(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            found += _extras(value, f"{path}.{key}")
    return found


def validate_client_event(event: dict[str, Any], dialect: Dialect) -> list[str]:
    """Problems with `event` as a client event of `dialect`: validation errors or extra keys."""
    adapter = _GA if dialect == "ga" else _BETA
    try:
        model = adapter.validate_python(event)
    except Exception as exc:  # pydantic.ValidationError, reported as text for the test's assertion
        return [f"{event.get('type')}: {exc}"]
    return [f"{event.get('type')}: extra key {path}" for path in _extras(model, "event")]
