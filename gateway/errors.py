"""The exception hierarchy: everything the gateway raises on purpose derives from GatewayError."""

from __future__ import annotations


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
    """A frame from a carrier or a model did not have the shape protocols.md describes."""


class EngineError(GatewayError):
    """The model side failed. `retryable` says whether reconnecting could help."""

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        self.code = code
        self.retryable = retryable
        super().__init__(message)
