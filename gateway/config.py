"""The YAML schema and its loader.

Every section is a pydantic model with `extra="forbid"`: a typo in an operator's file must be an error,
not a silently ignored key. Loading collects *every* problem, each prefixed with its YAML path, so one
run of `gateway check` shows the operator everything to fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gateway.errors import ConfigError
from gateway.pricing import PricingConfig

Engine = Literal["openai_realtime", "openai_realtime_2"]
AudioMode = Literal["pcm24k", "g711"]
ReasoningEffort = Literal["minimal", "low", "medium", "high"]
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

DEFAULT_MODELS: dict[str, str] = {
    "openai_realtime": "gpt-realtime-mini",
    "openai_realtime_2": "gpt-realtime-2",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    # Binding every interface is what a container needs; operators narrow it with `host:`.
    host: str = "0.0.0.0"  # noqa: S104
    port: int = Field(8080, ge=1, le=65535)
    public_url: str
    drain_timeout_s: float = Field(30.0, ge=0)
    max_concurrent_calls: int = Field(200, ge=1)
    admin_token: SecretStr | None = None  # enables GET /calls (Authorization: Bearer <token>)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://gw.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        # urlsplit lowercases the scheme; keep that spelling so HTTPS:// still gives a wss:// media URL.
        return (parts.scheme + value[len(parts.scheme) :]).rstrip("/")

    @property
    def media_base_url(self) -> str:
        """The ws(s):// origin carriers open media sockets on: wss for https, ws for plain http."""
        scheme = "wss" if self.public_url.startswith("https://") else "ws"
        return scheme + self.public_url[self.public_url.index("://") :]


class TwilioConfig(_Section):
    account_sid: str = Field(min_length=1)
    auth_token: SecretStr
    verify_signatures: bool = True
    api_base_url: str = "https://api.twilio.com"

    @field_validator("auth_token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value


class CarriersConfig(_Section):
    twilio: TwilioConfig | None = None


class OpenAIConfig(_Section):
    api_key: SecretStr
    realtime_url: str = "wss://api.openai.com/v1/realtime"

    @field_validator("realtime_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value


class ProvidersConfig(_Section):
    openai: OpenAIConfig | None = None


class ServerVad(_Section):
    type: Literal["server_vad"]
    threshold: float = Field(0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(500, ge=0)


class SemanticVad(_Section):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AgentConfig(_Section):
    engine: Engine
    model: str | None = None
    voice: str = "alloy"
    reasoning_effort: ReasoningEffort | None = None
    prompt: str = ""
    first_message: str | None = None
    input_audio_transcription_model: str | None = "whisper-1"
    audio: AudioMode = "pcm24k"
    resample_quality: Literal["high", "fast"] = "high"
    turn_detection: TurnDetection = Field(default_factory=lambda: ServerVad(type="server_vad"))
    max_call_duration_s: float = Field(1800.0, gt=0)

    @property
    def resolved_model(self) -> str:
        return self.model or DEFAULT_MODELS[self.engine]


class GatewayConfig(_Section):
    server: ServerConfig
    carriers: CarriersConfig = CarriersConfig()
    providers: ProvidersConfig = ProvidersConfig()
    agents: dict[str, AgentConfig] = Field(min_length=1)
    routes: dict[str, str] = Field(default_factory=dict)
    default_agent: str | None = None
    pricing: PricingConfig = Field(default_factory=PricingConfig)

    def agent_for(self, called_number: str) -> str | None:
        """The agent that answers calls to `called_number`: its route, else the default, else None."""
        return self.routes.get(called_number, self.default_agent)


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
        if isinstance(node, dict) and part not in node and node.get("type") == part:
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
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"type must be one of {expected}"
    if kind == "union_tag_not_found":
        return "type: required"
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
    if _mapping(data.get("carriers")).get("twilio") is None:
        problems.append("carriers: at least one carrier must be configured (carriers.twilio)")
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
            if path not in reported:
                problems.append(f"{path}: {_describe(error)}")
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
