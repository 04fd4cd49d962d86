"""The exception hierarchy: everything the gateway raises on purpose derives from GatewayError."""

from __future__ import annotations

from typing import Literal

# Why a frame from a carrier or a model was not used: the `reason` label of gateway_bad_frames_total.
# A closed set, so the metric's cardinality stays bounded whatever a peer sends.
BadFrameReason = Literal[
    "malformed_json",  # not JSON, not an object, or no event/type name
    "malformed_frame",  # a known event without a field it needs, or with one of the wrong type
    "bad_base64",  # an audio payload that is not canonical base64
    "oversize",  # a message over the socket's size limit (the socket is closed with 1009)
    "binary",  # a binary message where only JSON text is spoken
    "unknown_event",  # a well-formed event of a type the protocol does not define
    "media_before_start",  # media, mark or dtmf before the carrier's `start`
    "duplicate_start",  # a second `start` on a socket already streaming
    "rate_limited",  # dropped unread: the call is over its frame budget
    "invalid_websocket",  # a WebSocket-level violation (bad UTF-8, bad opcode); the socket closes
]


class GatewayError(Exception):
    """Root of every error the gateway raises deliberately."""


class ConfigError(GatewayError):
    """The configuration is invalid; `problems` holds one line per problem, each with its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class WebhookAuthError(GatewayError):
    """A carrier webhook or media upgrade failed signature verification."""


class ProtocolError(GatewayError):
    """A frame from a carrier or a model did not have the shape protocols.md describes.

    The message names what is wrong (a field, an event), never the frame's content."""

    def __init__(self, message: str, *, reason: BadFrameReason = "malformed_frame") -> None:
        self.reason: BadFrameReason = reason
        super().__init__(message)


class EngineError(GatewayError):
    """The model side failed. `retryable` says whether reconnecting could help."""

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        self.code = code
        self.retryable = retryable
        super().__init__(message)
