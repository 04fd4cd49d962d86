"""Loading the YAML config: ${ENV} interpolation, validation against gateway.schema, and problems.

Loading collects *every* problem, each prefixed with its YAML path, so one run of `gateway check`
shows the operator everything to fix. The schema's names are re-exported here for convenience.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.schema import (
    AGENT_UNION_TAGS,
    DEFAULT_MODELS,
    E164,
    TOOL_UNION_TAGS,
    AgentConfig,
    AnyAgentConfig,
    AudioMode,
    CarriersConfig,
    ElevenLabsAgentConfig,
    ElevenLabsConfig,
    Engine,
    GatewayConfig,
    OpenAIAgentConfig,
    OpenAIConfig,
    ProvidersConfig,
    ReasoningEffort,
    ReconnectConfig,
    SemanticVad,
    ServerConfig,
    ServerVad,
    TelnyxConfig,
    TurnDetection,
    TwilioConfig,
)

__all__ = [
    "DEFAULT_MODELS",
    "E164",
    "AgentConfig",
    "AnyAgentConfig",
    "AudioMode",
    "CarriersConfig",
    "ElevenLabsAgentConfig",
    "ElevenLabsConfig",
    "Engine",
    "GatewayConfig",
    "OpenAIAgentConfig",
    "OpenAIConfig",
    "ProvidersConfig",
    "ReasoningEffort",
    "ReconnectConfig",
    "SemanticVad",
    "ServerConfig",
    "ServerVad",
    "TelnyxConfig",
    "TurnDetection",
    "TwilioConfig",
    "load_config",
    "parse_config",
]

# ${VAR} or ${VAR:-default}; "$${" escapes a literal "${".
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(path, k), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(
            f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)"
        )
        return ""

    return _ENV_REF.sub(substitute, node)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _yaml_path(loc: tuple[int | str, ...], data: Any) -> str:
    """The error location as the operator's YAML path, without the tag pydantic inserts for a
    discriminated union (`turn_detection.server_vad.threshold` is `turn_detection.threshold` in YAML).
    """
    parts: list[str] = []
    node = data
    for part in loc:
        if part in AGENT_UNION_TAGS | TOOL_UNION_TAGS and not (isinstance(node, dict) and part in node):
            continue
        if isinstance(node, dict) and part not in node and part == node.get("type"):
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _describe(error: Any) -> str:
    """A short operator-facing message for one pydantic error; never echoes the offending value."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        return f"must be one of {expected}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # Named as the YAML key that selects the variant: `engine` for agents, `type` elsewhere.
        tag = str(ctx.get("discriminator", "type")).strip("'")
        if kind == "union_tag_not_found":
            return f"{tag}: required"
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"{tag}: must be one of {expected}" if tag != "type" else f"type must be one of {expected}"
    simple = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "list_type": "must be a list",
    }
    if kind in simple:
        return simple[kind]
    comparisons = {
        "greater_than": "gt",
        "greater_than_equal": "ge",
        "less_than": "lt",
        "less_than_equal": "le",
    }
    if kind in comparisons:
        words = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}
        bound = comparisons[kind]
        return f"must be {words[bound]} {ctx.get(bound)}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} entry"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _cross_checks(data: dict[str, Any]) -> list[str]:
    """Checks that span sections. They read the plain data rather than a validated GatewayConfig so
    they are reported together with schema problems: `gateway check` must show everything at once."""
    problems: list[str] = []
    agents = data.get("agents")
    for number, agent in _mapping(data.get("routes")).items():
        if not E164.match(number):
            problems.append(f'routes.{number}: must be an E.164 number such as "+15555550100" (quoted)')
        if isinstance(agents, dict) and isinstance(agent, str) and agent not in agents:
            problems.append(f"routes.{number}: no agent named {agent!r} under agents")
    default_agent = data.get("default_agent")
    if isinstance(agents, dict) and isinstance(default_agent, str) and default_agent not in agents:
        problems.append(f"default_agent: no agent named {default_agent!r} under agents")
    for name, agent in _mapping(agents).items():
        seen: set[str] = set()
        for i, raw_tool in enumerate(_mapping(agent).get("tools") or []):
            tool = _mapping(raw_tool)
            tool_name = str(tool.get("builtin") or tool.get("name") or "")
            if tool_name and tool_name in seen:
                problems.append(f"agents.{name}.tools[{i}]: a second tool named {tool_name!r}")
            seen.add(tool_name)
            for j, target in enumerate(tool.get("agents") or [] if tool.get("builtin") == "handoff" else []):
                if isinstance(agents, dict) and target not in agents:
                    problems.append(
                        f"agents.{name}.tools[{i}].agents[{j}]: no agent named {target!r} under agents"
                    )
    carriers = _mapping(data.get("carriers"))
    if carriers.get("twilio") is None and carriers.get("telnyx") is None:
        problems.append(
            "carriers: at least one carrier must be configured (carriers.twilio or carriers.telnyx)"
        )
    elevenlabs_agents = [
        str(name)
        for name, agent in _mapping(agents).items()
        if _mapping(agent).get("engine") == "elevenlabs_convai"
    ]
    if elevenlabs_agents and _mapping(data.get("providers")).get("elevenlabs") is None:
        problems.append(
            f"providers.elevenlabs: required by the ElevenLabs agents ({', '.join(elevenlabs_agents)})"
        )
    openai_agents = [
        str(name)
        for name, agent in _mapping(agents).items()
        if str(_mapping(agent).get("engine", "")).startswith("openai_")
    ]
    if openai_agents and _mapping(data.get("providers")).get("openai") is None:
        problems.append(f"providers.openai: required by the OpenAI agents ({', '.join(openai_agents)})")
    return problems


def parse_config(raw: object, env: dict[str, str] | None = None) -> GatewayConfig:
    """Validate an already-parsed YAML document. Raises ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping with at least server and agents"])
    problems: list[str] = []
    for key in raw:
        if not isinstance(key, str):
            problems.append(f"{key}: keys must be strings")
    if isinstance(raw.get("routes"), dict):
        for number in raw["routes"]:
            if not isinstance(number, str):
                problems.append(
                    f'routes.{number}: phone numbers must be quoted ("+{number}"), '
                    "or YAML reads them as integers and drops the +"
                )
        raw = {**raw, "routes": {str(k): v for k, v in raw["routes"].items()}}
    data = _interpolate(raw, "", dict(os.environ) if env is None else env, problems)
    # A missing variable (or an unquoted number) already explains its field; don't report it twice.
    reported = {problem.split(": ", 1)[0] for problem in problems}
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path = _yaml_path(error["loc"], data)
            message = _describe(error)
            if message.startswith("engine: "):  # an agent's variant is chosen by its engine key
                path, message = f"{path}.engine", message.removeprefix("engine: ")
            if path not in reported:
                problems.append(f"{path}: {message}")
    problems += [p for p in _cross_checks(data) if p.split(": ", 1)[0] not in reported]
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: dict[str, str] | None = None) -> GatewayConfig:
    """Read, interpolate and validate the YAML file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    return parse_config(raw, env)
