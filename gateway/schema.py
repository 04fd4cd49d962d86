"""The YAML schema: one pydantic model per section, each with `extra="forbid"` so that a typo in an
operator's file is an error, not a silently ignored key. Loading and error reporting: gateway.config."""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator

from gateway.pricing import PricingConfig

OpenAIEngine = Literal["openai_realtime", "openai_realtime_2"]
Engine = Literal["openai_realtime", "openai_realtime_2", "elevenlabs_convai"]
AudioMode = Literal["pcm24k", "g711"]
ReasoningEffort = Literal["minimal", "low", "medium", "high"]
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

DEFAULT_MODELS: dict[str, str] = {
    "openai_realtime": "gpt-realtime-mini",
    "openai_realtime_2": "gpt-realtime-2",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReconnectConfig(_Section):
    """How a call survives its model socket dropping (README "Model reconnects")."""

    attempts: int = Field(3, ge=0, le=10)  # 0: never reconnect; a drop ends the call
    # Wait before attempt 1, 2, 3… (the last value repeats), each stretched or shrunk by up to `jitter`.
    backoff_s: list[Annotated[float, Field(ge=0, le=60)]] = Field(
        default_factory=lambda: [0.25, 1.0, 2.0], min_length=1
    )
    jitter: float = Field(0.2, ge=0, le=1)
    # The most silence a reconnect may cost the caller, connects included; then the call ends.
    budget_s: float = Field(15.0, gt=0)
    replay_turns: int = Field(40, ge=0)  # how much of the conversation the new session is given
    replay_chars: int = Field(8000, ge=0)
    # OpenAI sessions end at a maximum length (60 minutes today): open the next one this long after
    # the current one started, at a quiet moment. null: never.
    rollover_after_s: float | None = Field(3300.0, gt=0)
    rollover_wait_s: float = Field(20.0, ge=0)  # the longest wait for that quiet moment


class AnnouncementsConfig(_Section):
    """What the carrier itself says (its own text-to-speech) before hanging up a call the agent cannot
    finish: the model is gone or the gateway is shutting down. An empty text means a plain hang-up."""

    language: str = Field("en-US", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    shutdown: str = Field(
        "We're sorry, we have to end this call now. Please call us again. Goodbye.", max_length=500
    )
    engine_failure: str = Field(
        "We're sorry, we're having technical difficulties. Please call us again later. Goodbye.",
        max_length=500,
    )


class LimitsConfig(_Section):
    """What one carrier media socket may send (README "Hardening"). The floors keep a typo from
    cutting the audio of every call: a carrier sends 50 media frames a second, plus a mark echo for
    each agent audio frame, plus DTMF."""

    # The largest legitimate inbound frame is a `start` (a few hundred bytes; a media frame is ~400).
    # 64 KiB is over a hundred times that; a bigger message closes the socket (1009) before it is
    # buffered, and the call is ended as `protocol_violation`.
    max_message_bytes: int = Field(64 * 1024, ge=4096, le=16 * 1024 * 1024)
    # Sustained frames per second: twice the busiest honest stream (50 media + 50 mark echoes).
    frames_per_s: float = Field(200.0, ge=100)
    # Frames allowed at once above that: two seconds at the sustained rate, enough for a TCP stall
    # delivering its backlog and for the mark echoes a `clear` releases all together.
    frame_burst: int = Field(400, ge=50)
    # Frames over the limit are dropped; a call still dropping after this long is ended.
    flood_timeout_s: float = Field(5.0, gt=0, le=300)
    # Carriers stream audio continuously, silence included: a media socket that sends no frame for
    # this long is dead (pongs do not count: a peer that answers pings but sends no audio is gone too).
    idle_timeout_s: float = Field(15.0, gt=0, le=300)
    # A media socket quiet this long is pinged; without a pong within half of it, it is dead.
    # Any frame received resets the clock, so a streaming carrier is never pinged. null: off.
    heartbeat_s: float | None = Field(5.0, ge=1, le=60)
    # At most one warning per call, per kind of bad frame, per this many seconds.
    bad_frame_log_interval_s: float = Field(10.0, ge=0)


class ServerConfig(_Section):
    # Binding every interface is what a container needs; operators narrow it with `host:`.
    host: str = "0.0.0.0"  # noqa: S104
    port: int = Field(8080, ge=1, le=65535)
    public_url: str
    drain_timeout_s: float = Field(30.0, ge=0)
    max_concurrent_calls: int = Field(200, ge=1)
    admin_token: SecretStr | None = None  # enables GET /calls (Authorization: Bearer <token>)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    announcements: AnnouncementsConfig = Field(default_factory=AnnouncementsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

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

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # `${GATEWAY_ADMIN_TOKEN:-}` with the variable unset must disable /calls, not open it to "Bearer ".
        return None if value == "" else value

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
    say_voice: str | None = (
        None  # <Say voice=…> for announcements, e.g. Polly.Joanna; Twilio's default if unset
    )

    @field_validator("auth_token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value


class TelnyxConfig(_Section):
    api_key: SecretStr
    public_key: str  # base64 Ed25519 public key from Mission Control (verifies webhook signatures)
    api_base_url: str = "https://api.telnyx.com"
    verify_signatures: bool = True
    webhook_tolerance_s: float = Field(300.0, gt=0)
    codec: Literal["PCMU", "PCMA"] = "PCMU"  # the media stream's codec, both directions
    connection_id: str | None = None  # the Call Control application that places outbound calls
    # GET instruction fetches carry the call in the query string, which no body signature covers:
    # they must present this secret (`?secret=`) instead. POST fetches are checked by signature.
    texml_secret: SecretStr | None = None
    say_voice: str = "female"  # `speak` voice for announcements: female, male, or e.g. AWS.Polly.Joanna

    @field_validator("api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("public_key")
    @classmethod
    def _ed25519_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError("must be the base64 Ed25519 public key from Mission Control") from None
        if len(raw) != 32:
            raise ValueError("must be a base64 Ed25519 public key (32 bytes)")
        return value


class CarriersConfig(_Section):
    twilio: TwilioConfig | None = None
    telnyx: TelnyxConfig | None = None


class OpenAIConfig(_Section):
    api_key: SecretStr
    realtime_url: str = "wss://api.openai.com/v1/realtime"

    @field_validator("realtime_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value


class ElevenLabsConfig(_Section):
    api_key: SecretStr | None = None  # set for private agents (signed URLs); omit for public agents
    api_base_url: str = "https://api.elevenlabs.io"
    ws_url: str = "wss://api.elevenlabs.io/v1/convai/conversation"

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value


class ProvidersConfig(_Section):
    openai: OpenAIConfig | None = None
    elevenlabs: ElevenLabsConfig | None = None


class ServerVad(_Section):
    type: Literal["server_vad"]
    threshold: float = Field(0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(500, ge=0)


class SemanticVad(_Section):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class WebhookSpec(_Section):
    url: str
    method: Literal["POST", "PUT"] = "POST"
    timeout_s: float = Field(5.0, gt=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value


class WebhookTool(_Section):
    """A function the model may call; the gateway POSTs {call_id, agent, tool, arguments} to `webhook`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    webhook: WebhookSpec


class EndCallTool(_Section):
    builtin: Literal["end_call"]
    description: str = "End the call after saying goodbye, when the caller has nothing more to ask."


class TransferTool(_Section):
    builtin: Literal["transfer_call"]
    # Names the model may choose → E.164 numbers or SIP URIs. The model never supplies a number.
    destinations: dict[str, str] = Field(min_length=1)
    description: str = "Transfer the caller to a person or department, chosen by name."

    @field_validator("destinations")
    @classmethod
    def _dialable(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not (E164.match(target) or target.startswith("sip:")):
                raise ValueError(f"{name}: must be an E.164 number (+15550001111) or a sip: URI")
        return value


class HandoffTool(_Section):
    builtin: Literal["handoff"]
    agents: list[str] = Field(min_length=1)  # names under `agents:` this agent may hand the caller to
    description: str = "Hand the caller over to another agent, chosen by name."


def _tool_kind(value: object) -> str:
    builtin = value.get("builtin") if isinstance(value, dict) else getattr(value, "builtin", None)
    return str(builtin) if builtin in ("end_call", "transfer_call", "handoff") else "webhook"


ToolConfig = Annotated[
    Annotated[WebhookTool, Tag("webhook")]
    | Annotated[EndCallTool, Tag("end_call")]
    | Annotated[TransferTool, Tag("transfer_call")]
    | Annotated[HandoffTool, Tag("handoff")],
    Discriminator(_tool_kind),
]
TOOL_UNION_TAGS = frozenset({"webhook", "end_call", "transfer_call", "handoff"})


class HoldAudio(_Section):
    file: str  # a WAV file (any common rate), converted once at startup
    after_ms: int = Field(800, ge=0)


class _CallFeatures(_Section):
    """What every agent can do on the call, whatever its engine."""

    tools: list[ToolConfig] = Field(default_factory=list)
    dtmf: Literal["forward", "ignore"] = "forward"
    idle_timeout_s: float | None = Field(None, gt=0)
    idle_prompts: list[str] = Field(
        default_factory=lambda: ["Ask the caller, briefly, whether they are still there."]
    )
    hold_audio: HoldAudio | None = None


class OpenAIAgentConfig(_CallFeatures):
    # Typed with every engine so an unknown one is reported as such; `elevenlabs_convai` never
    # reaches this model (see AgentConfig).
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
        return self.model or DEFAULT_MODELS.get(self.engine, "")


class ElevenLabsAgentConfig(_CallFeatures):
    """An ElevenLabs Conversational AI agent. Each override set here must be enabled on the agent
    (Security → overrides) or ElevenLabs rejects the conversation."""

    engine: Literal["elevenlabs_convai"]
    agent_id: str = Field(min_length=1)
    voice: str | None = None  # voice_id override
    prompt: str | None = None
    first_message: str | None = None
    language: str | None = None
    dynamic_variables: dict[str, str | int | float | bool] = Field(default_factory=dict)
    resample_quality: Literal["high", "fast"] = "high"
    max_call_duration_s: float = Field(1800.0, gt=0)

    # The bridge reads these of every agent; an ElevenLabs agent negotiates its audio itself.
    input_audio_transcription_model: None = None

    @property
    def resolved_model(self) -> str:
        return "elevenlabs_convai"


def _agent_kind(value: object) -> str:
    engine = value.get("engine") if isinstance(value, dict) else getattr(value, "engine", None)
    return "elevenlabs_agent" if engine == "elevenlabs_convai" else "openai_agent"


# Anything that is not an ElevenLabs agent is validated as an OpenAI one, so a bad or missing
# `engine` is reported together with the agent's other problems, not instead of them.
AgentConfig = Annotated[
    Annotated[OpenAIAgentConfig, Tag("openai_agent")]
    | Annotated[ElevenLabsAgentConfig, Tag("elevenlabs_agent")],
    Discriminator(_agent_kind),
]
AGENT_UNION_TAGS = frozenset({"openai_agent", "elevenlabs_agent"})
AnyAgentConfig = OpenAIAgentConfig | ElevenLabsAgentConfig


class TranscriptsConfig(_Section):
    dir: str  # one JSONL file per call is written here (personal data: protect the directory)


class GatewayConfig(_Section):
    server: ServerConfig
    carriers: CarriersConfig = CarriersConfig()
    providers: ProvidersConfig = ProvidersConfig()
    agents: dict[str, AgentConfig] = Field(min_length=1)
    routes: dict[str, str] = Field(default_factory=dict)
    default_agent: str | None = None
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    transcripts: TranscriptsConfig | None = None
    # E.164 prefixes outbound calls may dial (e.g. "+1555"); empty: outbound calls are refused.
    allowed_outbound_prefixes: list[str] = Field(default_factory=list)

    @field_validator("allowed_outbound_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            # At least a country code: "+" or "" would let a leaked admin token dial anything.
            if not re.fullmatch(r"\+[1-9]\d{0,14}", prefix):
                raise ValueError(f"{prefix!r} must be '+' and at least one digit, e.g. \"+1555\"")
        return value

    def agent_for(self, called_number: str) -> str | None:
        """The agent that answers calls to `called_number`: its route, else the default, else None."""
        return self.routes.get(called_number, self.default_agent)
