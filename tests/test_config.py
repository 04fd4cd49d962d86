"""Tests for gateway.config: the YAML schema, ${ENV} interpolation and the operator-facing problem list.

Every problem message is asserted verbatim: the exact text, with its YAML path, is what an operator
reads from `gateway check`, so a change to it must be a deliberate one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    GatewayConfig,
    OpenAIAgentConfig,
    SemanticVad,
    ServerVad,
    _interpolate,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError, GatewayError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "agents.example.yaml"
EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-example-key-0001",
    "TWILIO_ACCOUNT_SID": "AC00000000000000000000000000000001",
    "TWILIO_AUTH_TOKEN": "example-auth-token-0001",
    "PUBLIC_URL": "https://gw.example.com",
}
TWILIO_TOKEN = "tw-secret-token-7f3a9c"
OPENAI_KEY = "sk-secret-key-5d2e8b"

_MINIMAL: dict[str, Any] = {
    "server": {"public_url": "https://gw.example.com"},
    "carriers": {"twilio": {"account_sid": "AC123", "auth_token": TWILIO_TOKEN}},
    "providers": {"openai": {"api_key": OPENAI_KEY}},
    "agents": {"sales": {"engine": "openai_realtime_2"}},
}


def minimal() -> dict[str, Any]:
    """A fresh copy of the smallest valid document; tests mutate it."""
    return copy.deepcopy(_MINIMAL)


def with_agent(**fields: Any) -> dict[str, Any]:
    raw = minimal()
    raw["agents"]["sales"].update(fields)
    return raw


def problems_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {} if env is None else env)
    return caught.value.problems


def interpolation_problem(path: str, name: str) -> str:
    return f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)"


class TestConfigError:
    def test_problems_are_the_message_lines(self) -> None:
        """ConfigError is a GatewayError whose str() is its problems, one per line."""
        error = ConfigError(["a: required", "b: unknown key"])
        assert isinstance(error, GatewayError)
        assert error.problems == ["a: required", "b: unknown key"]
        assert str(error) == "a: required\nb: unknown key"


class TestUnknownKeys:
    @pytest.mark.parametrize(
        ("section", "expected"),
        [
            ((), "bogus: unknown key"),
            (("server",), "server.bogus: unknown key"),
            (("carriers",), "carriers.bogus: unknown key"),
            (("carriers", "twilio"), "carriers.twilio.bogus: unknown key"),
            (("providers",), "providers.bogus: unknown key"),
            (("providers", "openai"), "providers.openai.bogus: unknown key"),
            (("agents", "sales"), "agents.sales.bogus: unknown key"),
        ],
    )
    def test_unknown_key_at_each_level(self, section: tuple[str, ...], expected: str) -> None:
        """A typo'd key at any level is an error naming its full YAML path, never silently ignored."""
        raw = minimal()
        node = raw
        for key in section:
            node = node[key]
        node["bogus"] = 1
        assert problems_of(raw) == [expected]

    def test_unknown_key_inside_server_vad(self) -> None:
        """A semantic_vad field under server_vad is unknown; the path is the YAML one (no union tag)."""
        raw = with_agent(turn_detection={"type": "server_vad", "eagerness": "auto"})
        assert problems_of(raw) == ["agents.sales.turn_detection.eagerness: unknown key"]

    def test_unknown_key_inside_semantic_vad(self) -> None:
        """A server_vad field under semantic_vad is unknown, reported at its YAML path."""
        raw = with_agent(turn_detection={"type": "semantic_vad", "threshold": 0.5})
        assert problems_of(raw) == ["agents.sales.turn_detection.threshold: unknown key"]

    def test_unknown_carrier(self) -> None:
        """An unknown carrier (and no twilio) reports both the unknown key and the missing carrier."""
        raw = minimal()
        raw["carriers"] = {"vonage": {"api_key": "x"}}
        assert problems_of(raw) == [
            "carriers.vonage: unknown key",
            "carriers: at least one carrier must be configured (carriers.twilio or carriers.telnyx)",
        ]


class TestLiteralChoices:
    @pytest.mark.parametrize(
        ("field", "value", "expected"),
        [
            (
                "engine",
                "gpt4",
                "agents.sales.engine: must be one of openai_realtime, openai_realtime_2, elevenlabs_convai",
            ),
            (
                "reasoning_effort",
                "max",
                "agents.sales.reasoning_effort: must be one of minimal, low, medium, high",
            ),
            ("audio", "mp3", "agents.sales.audio: must be one of pcm24k, g711"),
            ("resample_quality", "best", "agents.sales.resample_quality: must be one of high, fast"),
        ],
    )
    def test_value_outside_the_choices(self, field: str, value: str, expected: str) -> None:
        """A value outside a closed set lists every allowed value, without quotes."""
        assert problems_of(with_agent(**{field: value})) == [expected]

    @pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
    def test_every_reasoning_effort_is_accepted(self, effort: str) -> None:
        """Each documented reasoning_effort validates and is kept as written."""
        config = parse_config(with_agent(reasoning_effort=effort), {})
        assert config.agents["sales"].reasoning_effort == effort

    @pytest.mark.parametrize(("field", "value"), [("audio", "g711"), ("resample_quality", "fast")])
    def test_non_default_choices_are_accepted(self, field: str, value: str) -> None:
        """The non-default audio mode and resample quality validate."""
        config = parse_config(with_agent(**{field: value}), {})
        assert getattr(config.agents["sales"], field) == value


class TestTurnDetection:
    def test_unknown_type(self) -> None:
        """An unknown turn_detection type lists both supported types."""
        raw = with_agent(turn_detection={"type": "push_to_talk"})
        assert problems_of(raw) == [
            "agents.sales.turn_detection: type must be one of server_vad, semantic_vad"
        ]

    def test_missing_type(self) -> None:
        """turn_detection without a type says the type is required."""
        raw = with_agent(turn_detection={"threshold": 0.5})
        assert problems_of(raw) == ["agents.sales.turn_detection: type: required"]

    def test_not_a_mapping(self) -> None:
        """turn_detection given as a bare string asks for a mapping."""
        raw = with_agent(turn_detection="server_vad")
        assert problems_of(raw) == ["agents.sales.turn_detection: must be a mapping"]

    def test_server_vad_field_errors(self) -> None:
        """Each out-of-range or mistyped server_vad field is reported at its YAML path."""
        raw = with_agent(
            turn_detection={
                "type": "server_vad",
                "threshold": 1.5,
                "prefix_padding_ms": -1,
                "silence_duration_ms": "long",
            }
        )
        assert problems_of(raw) == [
            "agents.sales.turn_detection.threshold: must be at most 1.0",
            "agents.sales.turn_detection.prefix_padding_ms: must be at least 0",
            "agents.sales.turn_detection.silence_duration_ms: must be a whole number",
        ]

    def test_negative_threshold(self) -> None:
        """server_vad threshold below 0 is rejected."""
        raw = with_agent(turn_detection={"type": "server_vad", "threshold": -0.1})
        assert problems_of(raw) == ["agents.sales.turn_detection.threshold: must be at least 0.0"]

    def test_semantic_vad_eagerness(self) -> None:
        """semantic_vad eagerness must be one of the four documented values."""
        raw = with_agent(turn_detection={"type": "semantic_vad", "eagerness": "eager"})
        assert problems_of(raw) == [
            "agents.sales.turn_detection.eagerness: must be one of low, medium, high, auto"
        ]

    def test_server_vad_values(self) -> None:
        """A full server_vad block is parsed into ServerVad with its values."""
        raw = with_agent(
            turn_detection={
                "type": "server_vad",
                "threshold": 0.7,
                "prefix_padding_ms": 200,
                "silence_duration_ms": 800,
            }
        )
        turn = parse_config(raw, {}).agents["sales"].turn_detection
        assert turn == ServerVad(
            type="server_vad", threshold=0.7, prefix_padding_ms=200, silence_duration_ms=800
        )

    def test_semantic_vad_default_eagerness(self) -> None:
        """semantic_vad without eagerness defaults to auto."""
        turn = (
            parse_config(with_agent(turn_detection={"type": "semantic_vad"}), {})
            .agents["sales"]
            .turn_detection
        )
        assert turn == SemanticVad(type="semantic_vad", eagerness="auto")

    def test_default_is_server_vad(self) -> None:
        """Without turn_detection an agent uses server_vad 0.5 / 300 ms / 500 ms."""
        turn = parse_config(minimal(), {}).agents["sales"].turn_detection
        assert turn == ServerVad(
            type="server_vad", threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500
        )


class TestRequiredKeys:
    def test_public_url_required(self) -> None:
        """server.public_url is required."""
        raw = minimal()
        del raw["server"]["public_url"]
        assert problems_of(raw) == ["server.public_url: required"]

    def test_server_required(self) -> None:
        """The server section itself is required."""
        raw = minimal()
        del raw["server"]
        assert problems_of(raw) == ["server: required"]

    def test_agents_required(self) -> None:
        """The agents section is required."""
        raw = minimal()
        del raw["agents"]
        assert problems_of(raw) == ["agents: required"]

    def test_agents_must_not_be_empty(self) -> None:
        """An empty agents mapping is rejected: at least one agent is needed."""
        raw = minimal()
        raw["agents"] = {}
        assert problems_of(raw) == ["agents: must have at least 1 entry"]

    def test_engine_required(self) -> None:
        """Every agent must name its engine."""
        raw = minimal()
        raw["agents"]["sales"] = {"voice": "marin"}
        assert problems_of(raw) == ["agents.sales.engine: required"]

    def test_twilio_credentials_required(self) -> None:
        """A twilio carrier needs both account_sid and auth_token."""
        raw = minimal()
        raw["carriers"]["twilio"] = {"verify_signatures": True}
        assert problems_of(raw) == [
            "carriers.twilio.account_sid: required",
            "carriers.twilio.auth_token: required",
        ]

    def test_twilio_credentials_not_empty(self) -> None:
        """Empty strings for the Twilio credentials are rejected like missing ones."""
        raw = minimal()
        raw["carriers"]["twilio"] = {"account_sid": "", "auth_token": ""}
        assert problems_of(raw) == [
            "carriers.twilio.account_sid: must not be empty",
            "carriers.twilio.auth_token: must not be empty",
        ]

    def test_openai_api_key_required(self) -> None:
        """providers.openai needs its api_key."""
        raw = minimal()
        raw["providers"]["openai"] = {"realtime_url": "wss://api.openai.com/v1/realtime"}
        assert problems_of(raw) == ["providers.openai.api_key: required"]

    def test_missing_providers_openai_names_the_agents(self) -> None:
        """OpenAI agents without providers.openai name every agent that needs it."""
        raw = minimal()
        raw["agents"]["support"] = {"engine": "openai_realtime"}
        del raw["providers"]
        assert problems_of(raw) == ["providers.openai: required by the OpenAI agents (sales, support)"]

    def test_null_providers_openai(self) -> None:
        """An explicit `openai: null` counts as missing."""
        raw = minimal()
        raw["providers"]["openai"] = None
        assert problems_of(raw) == ["providers.openai: required by the OpenAI agents (sales)"]

    def test_missing_carriers(self) -> None:
        """Without any carrier no call can arrive, so it is an error."""
        raw = minimal()
        del raw["carriers"]
        assert problems_of(raw) == [
            "carriers: at least one carrier must be configured (carriers.twilio or carriers.telnyx)"
        ]

    @pytest.mark.parametrize("raw", [None, [], "server: x", 42])
    def test_document_not_a_mapping(self, raw: object) -> None:
        """An empty file or a non-mapping document gets one top-level problem."""
        assert problems_of(raw) == ["(top level): must be a mapping with at least server and agents"]

    @pytest.mark.parametrize(
        ("path", "value", "expected"),
        [
            (("server",), "x", "server: must be a mapping"),
            (("agents",), ["sales"], "agents: must be a mapping"),
            (("agents", "sales"), None, "agents.sales: must be a mapping"),
            (("routes",), "x", "routes: must be a mapping"),
        ],
    )
    def test_section_not_a_mapping(self, path: tuple[str, ...], value: object, expected: str) -> None:
        """A section given as a scalar or list asks for a mapping at its path."""
        raw = minimal()
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert problems_of(raw) == [expected]

    def test_non_string_top_level_key(self) -> None:
        """A non-string key is reported once, with the key."""
        raw = minimal()
        raw[7] = "x"
        assert problems_of(raw) == ["7: keys must be strings"]


class TestServerSection:
    @pytest.mark.parametrize(
        "url", ["ftp://gw.example.com", "gw.example.com", "https://", "wss://gw.example.com", ""]
    )
    def test_public_url_must_be_http_with_host(self, url: str) -> None:
        """public_url must be an http(s) URL with a host; the message shows an example."""
        raw = minimal()
        raw["server"]["public_url"] = url
        assert problems_of(raw) == [
            "server.public_url: must be an http:// or https:// URL with a host, e.g. https://gw.example.com"
        ]

    @pytest.mark.parametrize("url", ["https://gw.example.com/?a=1", "https://gw.example.com/#x"])
    def test_public_url_without_query_or_fragment(self, url: str) -> None:
        """A query string or fragment on public_url would break signature URLs, so it is rejected."""
        raw = minimal()
        raw["server"]["public_url"] = url
        assert problems_of(raw) == ["server.public_url: must not carry a query string or fragment"]

    @pytest.mark.parametrize(("port", "ok"), [(0, False), (1, True), (65535, True), (65536, False)])
    def test_port_range(self, port: int, ok: bool) -> None:
        """Ports 1..65535 are accepted; 0 and 65536 are rejected with the bound."""
        raw = minimal()
        raw["server"]["port"] = port
        if ok:
            assert parse_config(raw, {}).server.port == port
        else:
            bound = "must be at least 1" if port == 0 else "must be at most 65535"
            assert problems_of(raw) == [f"server.port: {bound}"]

    def test_port_not_a_number(self) -> None:
        """A non-numeric port says it must be a whole number."""
        raw = minimal()
        raw["server"]["port"] = "http"
        assert problems_of(raw) == ["server.port: must be a whole number"]

    def test_port_from_string(self) -> None:
        """A numeric string (what ${PORT} interpolation yields) is accepted as the port."""
        raw = minimal()
        raw["server"]["port"] = "9090"
        assert parse_config(raw, {}).server.port == 9090

    def test_limits(self) -> None:
        """drain_timeout_s, max_concurrent_calls and max_call_duration_s reject impossible values."""
        raw = with_agent(max_call_duration_s=0)
        raw["server"].update(drain_timeout_s=-1, max_concurrent_calls=0)
        assert problems_of(raw) == [
            "server.drain_timeout_s: must be at least 0.0",
            "server.max_concurrent_calls: must be at least 1",
            "agents.sales.max_call_duration_s: must be greater than 0.0",
        ]

    def test_verify_signatures_boolean(self) -> None:
        """verify_signatures must be a YAML boolean."""
        raw = minimal()
        raw["carriers"]["twilio"]["verify_signatures"] = "maybe"
        assert problems_of(raw) == ["carriers.twilio.verify_signatures: must be true or false"]

    def test_server_defaults(self) -> None:
        """Unset server keys take the documented defaults."""
        server = parse_config(minimal(), {}).server
        assert (server.host, server.port, server.drain_timeout_s, server.max_concurrent_calls) == (
            "0.0.0.0",  # noqa: S104 - the documented default, asserted not bound
            8080,
            30.0,
            200,
        )


class TestMediaBaseUrl:
    @pytest.mark.parametrize(
        ("public_url", "stored", "media"),
        [
            ("https://gw.example.com", "https://gw.example.com", "wss://gw.example.com"),
            ("https://gw.example.com/", "https://gw.example.com", "wss://gw.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
            ("http://localhost:8080/", "http://localhost:8080", "ws://localhost:8080"),
            (
                "https://gw.example.com:8443/voice/",
                "https://gw.example.com:8443/voice",
                "wss://gw.example.com:8443/voice",
            ),
            ("HTTPS://gw.example.com", "https://gw.example.com", "wss://gw.example.com"),
        ],
    )
    def test_scheme_mapping_and_trailing_slash(self, public_url: str, stored: str, media: str) -> None:
        """https gives wss and http gives ws; a trailing slash is stripped; host, port and path are kept."""
        raw = minimal()
        raw["server"]["public_url"] = public_url
        server = parse_config(raw, {}).server
        assert server.public_url == stored
        assert server.media_base_url == media


class TestProviders:
    @pytest.mark.parametrize("url", ["https://api.openai.com/v1/realtime", "api.openai.com"])
    def test_realtime_url_must_be_websocket(self, url: str) -> None:
        """realtime_url must be ws:// or wss://."""
        raw = minimal()
        raw["providers"]["openai"]["realtime_url"] = url
        assert problems_of(raw) == ["providers.openai.realtime_url: must be a ws:// or wss:// URL"]

    def test_plain_ws_realtime_url(self) -> None:
        """A ws:// realtime_url (the tests' fake server) is accepted as written."""
        raw = minimal()
        raw["providers"]["openai"]["realtime_url"] = "ws://127.0.0.1:9999/v1/realtime"
        openai = parse_config(raw, {}).providers.openai
        assert openai is not None
        assert openai.realtime_url == "ws://127.0.0.1:9999/v1/realtime"

    def test_provider_defaults(self) -> None:
        """realtime_url defaults to OpenAI's; Twilio verifies signatures against api.twilio.com by default."""
        config = parse_config(minimal(), {})
        assert config.providers.openai is not None
        assert config.providers.openai.realtime_url == "wss://api.openai.com/v1/realtime"
        assert config.carriers.twilio is not None
        assert config.carriers.twilio.verify_signatures is True
        assert config.carriers.twilio.api_base_url == "https://api.twilio.com"


class TestRoutes:
    def test_route_to_unknown_agent(self) -> None:
        """A route naming an agent that does not exist is reported at the route."""
        raw = minimal()
        raw["routes"] = {"+15555550100": "sales", "+15555550101": "support"}
        assert problems_of(raw) == ["routes.+15555550101: no agent named 'support' under agents"]

    def test_default_agent_unknown(self) -> None:
        """default_agent must name an existing agent."""
        raw = minimal()
        raw["default_agent"] = "support"
        assert problems_of(raw) == ["default_agent: no agent named 'support' under agents"]

    def test_unquoted_number(self) -> None:
        """An unquoted number (YAML int, + lost) is reported once, explaining the quoting."""
        raw = minimal()
        raw["routes"] = {15555550100: "sales"}
        assert problems_of(raw) == [
            'routes.15555550100: phone numbers must be quoted ("+15555550100"), '
            "or YAML reads them as integers and drops the +"
        ]

    def test_unquoted_number_from_yaml(self, tmp_path: Path) -> None:
        """The same problem is reported for a real YAML file where the key was written +1555… unquoted."""
        path = tmp_path / "agents.yaml"
        path.write_text(
            "server: {public_url: https://gw.example.com}\n"
            "carriers: {twilio: {account_sid: AC1, auth_token: t}}\n"
            "providers: {openai: {api_key: k}}\n"
            "agents: {sales: {engine: openai_realtime}}\n"
            "routes:\n  +15555550100: sales\n"
        )
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.problems == [
            'routes.15555550100: phone numbers must be quoted ("+15555550100"), '
            "or YAML reads them as integers and drops the +"
        ]

    @pytest.mark.parametrize(
        "number", ["15555550100", "+0155555501", "+1", "+1555555010012345", "+1 555 555 0100", "client:alice"]
    )
    def test_non_e164_keys(self, number: str) -> None:
        """Route keys must be E.164: +, a non-zero digit, 2..15 digits in all, nothing else."""
        raw = minimal()
        raw["routes"] = {number: "sales"}
        assert problems_of(raw) == [
            f'routes.{number}: must be an E.164 number such as "+15555550100" (quoted)'
        ]

    def test_route_value_must_be_a_string(self) -> None:
        """A route with no agent name is a type error at the route."""
        raw = minimal()
        raw["routes"] = {"+15555550100": None}
        assert problems_of(raw) == ["routes.+15555550100: must be a string"]

    def test_valid_routes(self) -> None:
        """Quoted E.164 routes to existing agents, shortest and longest, validate."""
        raw = minimal()
        raw["routes"] = {"+15": "sales", "+123456789012345": "sales"}
        raw["default_agent"] = "sales"
        config = parse_config(raw, {})
        assert config.routes == {"+15": "sales", "+123456789012345": "sales"}
        assert config.default_agent == "sales"


class TestAgentFor:
    def _config(self, default_agent: str | None) -> GatewayConfig:
        raw = minimal()
        raw["agents"]["support"] = {"engine": "openai_realtime"}
        raw["routes"] = {"+15555550100": "support"}
        if default_agent is not None:
            raw["default_agent"] = default_agent
        return parse_config(raw, {})

    def test_route_wins(self) -> None:
        """A routed number gets its route's agent even when a default exists."""
        assert self._config("sales").agent_for("+15555550100") == "support"

    def test_default_for_unrouted(self) -> None:
        """An unrouted number falls back to default_agent."""
        assert self._config("sales").agent_for("+15555550199") == "sales"

    def test_none_without_default(self) -> None:
        """Without default_agent an unrouted number (or an empty To) gets no agent."""
        config = self._config(None)
        assert config.agent_for("+15555550199") is None
        assert config.agent_for("") is None


class TestAgentDefaults:
    def test_defaults(self) -> None:
        """An agent with only an engine gets the documented defaults."""
        agent = parse_config(minimal(), {}).agents["sales"]
        assert agent.model is None
        assert agent.voice == "alloy"
        assert agent.reasoning_effort is None
        assert agent.prompt == ""
        assert agent.first_message is None
        assert agent.input_audio_transcription_model == "whisper-1"
        assert agent.audio == "pcm24k"
        assert agent.resample_quality == "high"
        assert agent.max_call_duration_s == 1800

    @pytest.mark.parametrize(
        ("engine", "model"),
        [("openai_realtime", "gpt-realtime-mini"), ("openai_realtime_2", "gpt-realtime-2")],
    )
    def test_default_model_per_engine(self, engine: str, model: str) -> None:
        """resolved_model picks the engine's default model when none is configured."""
        assert parse_config(with_agent(engine=engine), {}).agents["sales"].resolved_model == model

    def test_explicit_model_wins(self) -> None:
        """A configured model is used as is, whatever the engine."""
        agent = parse_config(with_agent(engine="openai_realtime", model="gpt-realtime"), {}).agents["sales"]
        assert agent.resolved_model == "gpt-realtime"

    def test_null_transcription_disables_it(self) -> None:
        """input_audio_transcription_model: null becomes None (caller transcription off)."""
        agent = parse_config(with_agent(input_audio_transcription_model=None), {}).agents["sales"]
        assert agent.input_audio_transcription_model is None

    def test_config_is_frozen(self) -> None:
        """Parsed config objects are immutable: per-call code cannot change an agent for everyone."""
        agent = parse_config(minimal(), {}).agents["sales"]
        with pytest.raises(ValueError, match="frozen"):
            agent.voice = "marin"  # type: ignore[misc]
        assert isinstance(agent, OpenAIAgentConfig)


class TestInterpolation:
    def test_nested_strings(self) -> None:
        """${VAR} is replaced in strings at any depth, also mid-string and several per string."""
        raw = minimal()
        raw["server"]["public_url"] = "https://${HOST}"
        raw["agents"]["sales"]["prompt"] = "You work for ${COMPANY} in ${CITY}."
        config = parse_config(raw, {"HOST": "gw.acme.test", "COMPANY": "Acme", "CITY": "Paris"})
        assert config.server.public_url == "https://gw.acme.test"
        assert config.agents["sales"].prompt == "You work for Acme in Paris."

    def test_default_used_when_unset(self) -> None:
        """${VAR:-default} gives the default when VAR is unset, including an empty default and colons."""
        raw = with_agent(voice="${VOICE:-marin}", prompt="[${EMPTY:-}] ${URL:-http://x:1}")
        agent = parse_config(raw, {}).agents["sales"]
        assert agent.voice == "marin"
        assert agent.prompt == "[] http://x:1"

    def test_set_variable_beats_default(self) -> None:
        """A set variable wins over its default, even when set to the empty string."""
        raw = with_agent(voice="${VOICE:-marin}", prompt="${PROMPT:-fallback}")
        agent = parse_config(raw, {"VOICE": "cedar", "PROMPT": ""}).agents["sales"]
        assert agent.voice == "cedar"
        assert agent.prompt == ""

    def test_interpolated_number(self) -> None:
        """An interpolated port is validated as a number after substitution."""
        raw = minimal()
        raw["server"]["port"] = "${PORT:-8080}"
        assert parse_config(raw, {}).server.port == 8080
        assert parse_config(raw, {"PORT": "9000"}).server.port == 9000
        assert problems_of(raw, {"PORT": "eighty"}) == ["server.port: must be a whole number"]

    def test_dollar_dollar_escapes(self) -> None:
        """$${ gives a literal ${ and is not interpolated, even if the variable exists."""
        raw = with_agent(prompt="Say $${NAME} literally, but greet ${NAME}.")
        agent = parse_config(raw, {"NAME": "Ada"}).agents["sales"]
        assert agent.prompt == "Say ${NAME} literally, but greet Ada."

    def test_non_references_untouched(self) -> None:
        """Lone $, $VAR without braces and unterminated ${ are left as written."""
        raw = with_agent(prompt="Costs $5, $HOME, ${ open")
        assert parse_config(raw, {"HOME": "/root"}).agents["sales"].prompt == "Costs $5, $HOME, ${ open"

    def test_non_strings_untouched(self) -> None:
        """Numbers, booleans and nulls pass through interpolation unchanged."""
        raw = with_agent(max_call_duration_s=60, input_audio_transcription_model=None)
        raw["carriers"]["twilio"]["verify_signatures"] = False
        config = parse_config(raw, {})
        assert config.agents["sales"].max_call_duration_s == 60
        assert config.agents["sales"].input_audio_transcription_model is None
        assert config.carriers.twilio is not None
        assert config.carriers.twilio.verify_signatures is False

    def test_lists_are_walked(self) -> None:
        """Strings inside lists (and lists of mappings) are interpolated too.

        No schema field is a list today, so this pins the private walker directly.
        """
        problems: list[str] = []
        result = _interpolate({"a": ["${X}", {"b": ["x${Y:-y}", 3]}], "c": None}, "", {"X": "1"}, problems)
        assert result == {"a": ["1", {"b": ["xy", 3]}], "c": None}
        assert problems == []

    def test_missing_variable_in_a_list_names_its_index(self) -> None:
        """A missing variable inside a list is reported with the list index in its path."""
        raw = with_agent(extras=["ok", "${TOOL_URL}"])
        assert problems_of(raw) == [
            interpolation_problem("agents.sales.extras[1]", "TOOL_URL"),
            "agents.sales.extras: unknown key",
        ]

    def test_missing_variable_names_variable_and_path(self) -> None:
        """A missing variable without default is one problem naming the variable and the YAML path."""
        raw = with_agent(prompt="Hi from ${COMPANY}")
        assert problems_of(raw) == [interpolation_problem("agents.sales.prompt", "COMPANY")]

    def test_missing_variable_not_reported_twice(self) -> None:
        """The empty value a missing variable leaves behind is not reported again as invalid."""
        raw = minimal()
        raw["server"]["public_url"] = "${PUBLIC_URL}"
        raw["server"]["port"] = "${PORT}"
        raw["agents"]["sales"]["engine"] = "${ENGINE}"
        raw["default_agent"] = "${DEFAULT}"
        assert problems_of(raw) == [
            interpolation_problem("server.public_url", "PUBLIC_URL"),
            interpolation_problem("server.port", "PORT"),
            interpolation_problem("agents.sales.engine", "ENGINE"),
            interpolation_problem("default_agent", "DEFAULT"),
        ]

    def test_every_missing_variable_in_one_string(self) -> None:
        """Two missing variables in one string are both named."""
        raw = with_agent(prompt="${A} and ${B}")
        assert problems_of(raw) == [
            interpolation_problem("agents.sales.prompt", "A"),
            interpolation_problem("agents.sales.prompt", "B"),
        ]

    def test_process_environment_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With env=None the process environment is used."""
        monkeypatch.setenv("GW_TEST_VOICE", "verse")
        monkeypatch.delenv("GW_TEST_UNSET", raising=False)
        raw = with_agent(voice="${GW_TEST_VOICE}", prompt="${GW_TEST_UNSET:-none}")
        agent = parse_config(raw).agents["sales"]
        assert (agent.voice, agent.prompt) == ("verse", "none")

    def test_explicit_env_ignores_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An explicit env mapping is the only source: process variables are not consulted."""
        monkeypatch.setenv("GW_TEST_VOICE", "verse")
        assert problems_of(with_agent(voice="${GW_TEST_VOICE}"), {}) == [
            interpolation_problem("agents.sales.voice", "GW_TEST_VOICE")
        ]


class TestSecrets:
    def test_secrets_masked_in_repr_and_str(self) -> None:
        """auth_token and api_key are SecretStr: repr(), str() and JSON dumps of the config hide them."""
        config = parse_config(minimal(), {})
        for text in (repr(config), str(config), config.model_dump_json()):
            assert TWILIO_TOKEN not in text
            assert OPENAI_KEY not in text
        assert config.carriers.twilio is not None
        assert config.providers.openai is not None
        assert config.carriers.twilio.auth_token.get_secret_value() == TWILIO_TOKEN
        assert config.providers.openai.api_key.get_secret_value() == OPENAI_KEY

    def test_interpolated_secrets_masked(self) -> None:
        """Secrets that come from the environment are masked the same way."""
        raw = minimal()
        raw["carriers"]["twilio"]["auth_token"] = "${TWILIO_AUTH_TOKEN}"
        raw["providers"]["openai"]["api_key"] = "${OPENAI_API_KEY}"
        config = parse_config(raw, {"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "OPENAI_API_KEY": OPENAI_KEY})
        assert TWILIO_TOKEN not in repr(config)
        assert OPENAI_KEY not in repr(config)

    def test_secrets_never_in_problems(self) -> None:
        """Secrets pasted into the wrong fields are reported by path only, never echoing the value."""
        env = {"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "OPENAI_API_KEY": OPENAI_KEY}
        raw = minimal()
        raw["server"]["public_url"] = "${TWILIO_AUTH_TOKEN}"
        raw["server"]["port"] = "${OPENAI_API_KEY}"
        raw["server"]["host"] = {"token": TWILIO_TOKEN}
        raw["carriers"]["twilio"]["auth_token"] = {"value": TWILIO_TOKEN}
        raw["carriers"]["twilio"]["verify_signatures"] = "${TWILIO_AUTH_TOKEN}"
        raw["providers"]["openai"]["api_key"] = [OPENAI_KEY]
        raw["providers"]["openai"]["realtime_url"] = "${OPENAI_API_KEY}"
        raw["agents"]["sales"].update(
            engine="${OPENAI_API_KEY}",
            reasoning_effort="${TWILIO_AUTH_TOKEN}",
            turn_detection={"type": "${OPENAI_API_KEY}"},
            max_call_duration_s="${TWILIO_AUTH_TOKEN}",
        )
        problems = problems_of(raw, env)
        assert problems == [
            "server.host: must be a string",
            "server.port: must be a whole number",
            "server.public_url: must be an http:// or https:// URL with a host, e.g. https://gw.example.com",
            "carriers.twilio.auth_token: must be a string",
            "carriers.twilio.verify_signatures: must be true or false",
            "providers.openai.api_key: must be a string",
            "providers.openai.realtime_url: must be a ws:// or wss:// URL",
            "agents.sales.engine: must be one of openai_realtime, openai_realtime_2, elevenlabs_convai",
            "agents.sales.reasoning_effort: must be one of minimal, low, medium, high",
            "agents.sales.turn_detection: type must be one of server_vad, semantic_vad",
            "agents.sales.max_call_duration_s: must be a number",
        ]
        text = "\n".join(problems)
        assert TWILIO_TOKEN not in text
        assert OPENAI_KEY not in text

    def test_secret_file_error_does_not_echo(self, tmp_path: Path) -> None:
        """A YAML syntax error on a secret's line reports the position, not the line's text."""
        path = tmp_path / "agents.yaml"
        path.write_text(f"carriers:\n  twilio:\n    auth_token: {TWILIO_TOKEN}: [\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert TWILIO_TOKEN not in str(caught.value)


class TestAllProblemsTogether:
    def test_every_kind_reported_in_one_run(self) -> None:
        """Interpolation, schema and cross-section problems are all reported together, in one error."""
        raw = minimal()
        raw["bogus"] = True
        raw["server"]["port"] = 70000
        raw["server"]["public_url"] = "${PUBLIC_URL}"
        raw["providers"]["openai"]["realtime_url"] = "https://api.openai.com"
        raw["agents"]["sales"].update(reasoning_effort="extreme", audio="opus")
        raw["agents"]["support"] = {"voice": "marin"}
        raw["routes"] = {"+15555550100": "ghost", "5555550101": "sales", 15555550102: "sales"}
        raw["default_agent"] = "nobody"
        del raw["carriers"]
        assert problems_of(raw) == [
            'routes.15555550102: phone numbers must be quoted ("+15555550102"), '
            "or YAML reads them as integers and drops the +",
            interpolation_problem("server.public_url", "PUBLIC_URL"),
            "server.port: must be at most 65535",
            "providers.openai.realtime_url: must be a ws:// or wss:// URL",
            "agents.sales.reasoning_effort: must be one of minimal, low, medium, high",
            "agents.sales.audio: must be one of pcm24k, g711",
            "agents.support.engine: required",
            "bogus: unknown key",
            "routes.+15555550100: no agent named 'ghost' under agents",
            'routes.5555550101: must be an E.164 number such as "+15555550100" (quoted)',
            "default_agent: no agent named 'nobody' under agents",
            "carriers: at least one carrier must be configured (carriers.twilio or carriers.telnyx)",
        ]

    def test_same_field_in_several_agents(self) -> None:
        """The same mistake in two agents is reported once per agent."""
        raw = minimal()
        raw["agents"] = {
            "a": {"engine": "openai_realtime", "audio": "wav"},
            "b": {"engine": "openai_realtime_2", "audio": "wav"},
        }
        assert problems_of(raw) == [
            "agents.a.audio: must be one of pcm24k, g711",
            "agents.b.audio: must be one of pcm24k, g711",
        ]


class TestLoadConfig:
    def test_valid_file(self, tmp_path: Path) -> None:
        """load_config reads, interpolates and validates a YAML file; str and Path both work."""
        path = tmp_path / "agents.yaml"
        path.write_text(
            "server:\n  public_url: ${URL}\n"
            "carriers:\n  twilio: {account_sid: AC1, auth_token: t}\n"
            "providers:\n  openai: {api_key: k}\n"
            "agents:\n  sales: {engine: openai_realtime, audio: g711}\n"
            'routes:\n  "+15555550100": sales\n'
        )
        for where in (path, str(path)):
            config = load_config(where, {"URL": "http://localhost:8080"})
            assert config.server.media_base_url == "ws://localhost:8080"
            assert config.agent_for("+15555550100") == "sales"

    @pytest.mark.parametrize(
        ("text", "line", "column"),
        [
            ("server:\n  public_url: https://x\nagents: [\n", 4, 1),
            ("server:\n  a: b\n c: d\n", 3, 2),
            ('agents: "unterminated\n', 2, 1),
            ("server: x\n\tagents: y\n", 2, 1),
        ],
    )
    def test_invalid_yaml_names_line(self, tmp_path: Path, text: str, line: int, column: int) -> None:
        """A YAML syntax error is one problem with the file path and the 1-based line and column."""
        path = tmp_path / "broken.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.problems == [f"{path}: not valid YAML at line {line}, column {column}"]

    def test_python_tags_refused(self, tmp_path: Path) -> None:
        """safe_load is used: a python/object tag is a YAML error, not code execution."""
        path = tmp_path / "evil.yaml"
        path.write_text("server: !!python/object/apply:os.getcwd []\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.problems == [f"{path}: not valid YAML at line 1, column 9"]

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that does not exist is one problem naming the path and the OS reason."""
        path = tmp_path / "nope.yaml"
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.problems == [f"{path}: cannot read the file (No such file or directory)"]

    def test_directory(self, tmp_path: Path) -> None:
        """A directory given as the config path is unreadable, with the OS reason."""
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path, {})
        assert caught.value.problems == [f"{tmp_path}: cannot read the file (Is a directory)"]

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is a ConfigError, not a traceback."""
        path = tmp_path / "latin1.yaml"
        path.write_bytes("agents:\n  caf\xe9: {}\n".encode("latin-1"))
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.problems == [f"{path}: not UTF-8 text"]

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file is a document that is not a mapping."""
        path = tmp_path / "empty.yaml"
        path.write_text("")
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.problems == ["(top level): must be a mapping with at least server and agents"]


class TestExampleConfig:
    def test_validates_with_the_four_variables(self) -> None:
        """config/agents.example.yaml works with exactly the four documented variables set."""
        config = load_config(EXAMPLE, EXAMPLE_ENV)
        assert config.server.public_url == "https://gw.example.com"
        assert config.server.media_base_url == "wss://gw.example.com"
        assert config.server.port == 8080
        assert config.carriers.twilio is not None
        assert config.carriers.twilio.account_sid == EXAMPLE_ENV["TWILIO_ACCOUNT_SID"]
        assert config.carriers.twilio.auth_token.get_secret_value() == EXAMPLE_ENV["TWILIO_AUTH_TOKEN"]
        assert config.carriers.twilio.verify_signatures is True
        assert config.providers.openai is not None
        assert config.providers.openai.api_key.get_secret_value() == EXAMPLE_ENV["OPENAI_API_KEY"]
        agent = config.agents["receptionist"]
        assert (agent.engine, agent.resolved_model, agent.voice, agent.reasoning_effort) == (
            "openai_realtime_2",
            "gpt-realtime-2",
            "marin",
            "low",
        )
        assert agent.first_message == "Hello! How can I help today?"
        assert config.agent_for("+15555550100") == "receptionist"
        assert config.agent_for("+15555550199") == "receptionist"

    def test_names_each_missing_variable(self) -> None:
        """With no variables set, each of the four is named once at its YAML path, and nothing else."""
        with pytest.raises(ConfigError) as caught:
            load_config(EXAMPLE, {})
        assert caught.value.problems == [
            interpolation_problem("server.public_url", "PUBLIC_URL"),
            interpolation_problem("carriers.twilio.account_sid", "TWILIO_ACCOUNT_SID"),
            interpolation_problem("carriers.twilio.auth_token", "TWILIO_AUTH_TOKEN"),
            interpolation_problem("providers.openai.api_key", "OPENAI_API_KEY"),
        ]

    @pytest.mark.parametrize("name", sorted(EXAMPLE_ENV))
    def test_each_variable_is_needed(self, name: str) -> None:
        """Leaving out any one of the four variables fails, naming just that one."""
        env = {k: v for k, v in EXAMPLE_ENV.items() if k != name}
        with pytest.raises(ConfigError) as caught:
            load_config(EXAMPLE, env)
        assert len(caught.value.problems) == 1
        assert f"environment variable {name} is not set" in caught.value.problems[0]
