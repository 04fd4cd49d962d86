"""Agent tools: the built-ins (end_call, transfer_call, handoff) and HTTP webhook tools.

Whatever goes wrong with a tool (a timeout, a non-2xx answer, arguments that are not JSON, a name the
agent does not have) becomes an error *output* the model can recover from: a tool never ends a call.
The model never supplies a phone number: transfers and hand-offs name an entry of an allowlist.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from gateway.schema import EndCallTool, HandoffTool, ToolConfig, TransferTool, WebhookTool

log = structlog.get_logger("gateway.tools")

MAX_OUTPUT_CHARS = 16_000  # a webhook's answer goes into the model's context: keep it bounded


@dataclass(frozen=True, slots=True)
class EndCall:
    """The `end_call` built-in: it takes no arguments and needs no configuration."""


@dataclass(frozen=True, slots=True)
class Transfer:
    name: str
    destination: str


@dataclass(frozen=True, slots=True)
class Handoff:
    agent: str


Action = EndCall | Transfer | Handoff


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    output: str  # what the model is told (JSON text)
    is_error: bool
    action: Action | None = None


def _error(message: str) -> ToolOutcome:
    return ToolOutcome(json.dumps({"error": message}), True)


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": description, "parameters": parameters}


def _choice(field: str, options: Sequence[str]) -> dict[str, Any]:
    """Parameters for a pick from a fixed list: the model names an entry, never supplies a value."""
    return {
        "type": "object",
        "required": [field],
        "properties": {field: {"type": "string", "enum": list(options)}},
    }


def function_specs(tools: Sequence[ToolConfig]) -> list[dict[str, Any]]:
    """The tools as function definitions, the shape both OpenAI dialects take (`type: function`)."""
    specs: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, WebhookTool):
            specs.append(_function(tool.name, tool.description, tool.parameters))
        elif isinstance(tool, EndCallTool):
            specs.append(_function("end_call", tool.description, {"type": "object", "properties": {}}))
        elif isinstance(tool, TransferTool):
            specs.append(
                _function(
                    "transfer_call", tool.description, _choice("destination", sorted(tool.destinations))
                )
            )
        else:
            specs.append(_function("handoff", tool.description, _choice("agent", tool.agents)))
    return specs


def tool_name(tool: ToolConfig) -> str:
    return tool.name if isinstance(tool, WebhookTool) else tool.builtin


class ToolRunner:
    """Runs one agent's tools for one call."""

    def __init__(
        self, tools: Sequence[ToolConfig], http: aiohttp.ClientSession, *, call_id: str, agent: str
    ) -> None:
        self._tools = {tool_name(tool): tool for tool in tools}
        self._http = http
        self._call_id = call_id
        self._agent = agent

    def is_slow(self, name: str) -> bool:
        """Webhook tools may take a while (hold audio applies); built-ins answer at once."""
        return isinstance(self._tools.get(name), WebhookTool)

    async def run(self, name: str, arguments: str) -> ToolOutcome:
        tool = self._tools.get(name)
        if tool is None:
            return _error(f"unknown tool {name!r}; available: {', '.join(sorted(self._tools)) or 'none'}")
        try:
            args = json.loads(arguments or "{}")
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than json.loads follows
            return _error("the arguments are not valid JSON")
        if not isinstance(args, dict):
            return _error("the arguments must be a JSON object")
        if isinstance(tool, EndCallTool):
            return ToolOutcome(json.dumps({"status": "ending the call"}), False, EndCall())
        if isinstance(tool, TransferTool):
            choice = args.get("destination")
            if not isinstance(choice, str) or choice not in tool.destinations:
                return _error(f"unknown destination; choose one of: {', '.join(sorted(tool.destinations))}")
            return ToolOutcome(json.dumps({"status": f"transferring to {choice}"}), False,
                               Transfer(choice, tool.destinations[choice]))  # fmt: skip
        if isinstance(tool, HandoffTool):
            choice = args.get("agent")
            if not isinstance(choice, str) or choice not in tool.agents:
                return _error(f"unknown agent; choose one of: {', '.join(tool.agents)}")
            return ToolOutcome(json.dumps({"status": f"handing over to {choice}"}), False, Handoff(choice))
        return await self._webhook(tool, args)

    async def _webhook(self, tool: WebhookTool, args: dict[str, Any]) -> ToolOutcome:
        spec = tool.webhook
        body = {"call_id": self._call_id, "agent": self._agent, "tool": tool.name, "arguments": args}
        try:
            async with self._http.request(
                spec.method,
                spec.url,
                json=body,
                headers=spec.headers,
                timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
            ) as response:
                text = await response.text(errors="replace")
                if not 200 <= response.status < 300:
                    log.warning("tool.webhook_failed", tool=tool.name, status=response.status)
                    return _error(f"the {tool.name} service answered HTTP {response.status}")
        except TimeoutError:
            log.warning("tool.webhook_timeout", tool=tool.name, timeout_s=spec.timeout_s)
            return _error(f"the {tool.name} service did not answer within {spec.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            log.warning("tool.webhook_failed", tool=tool.name, error=type(exc).__name__)
            return _error(f"the {tool.name} service could not be reached")
        return ToolOutcome(text[:MAX_OUTPUT_CHARS] or "{}", False)
