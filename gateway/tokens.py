"""Media-stream tokens: what ties a carrier's media socket to a call the gateway just accepted.

A carrier's media upgrade is not signed per call (Twilio's signature is the same for every stream,
Telnyx signs nothing), so the webhook that accepts a call hands out a token with the stream URL, and
the media socket must present it. Tokens are signed, not stored, so any replica sharing the config
can check one; each is short-lived and is accepted once per process.

The signing secret comes from the carriers' credentials, so a config reload that changes them changes
the key (`rekey`). The previous key stays good for one token lifetime: a call answered just before the
reload, whose media socket arrives just after, must not be refused. The object itself lives as long as
the process, so what it remembers against replays survives reloads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

TOKEN_TTL_S = 30.0
# How long a call that has streamed is remembered, so a replayed webhook cannot mint a token that
# opens a second session for it (Twilio signatures carry no timestamp to stop such replays).
STREAMED_MEMORY_S = 4 * 3600.0
TokenProblem = Literal["missing", "invalid", "expired", "reused", "wrong_call"]


@dataclass(frozen=True, slots=True)
class Grant:
    carrier: str
    call_id: str
    agent: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: bytes) -> bytes:
    return hashlib.sha256(b"gateway-media-token|" + secret).digest()


class MediaTokens:
    def __init__(
        self, secret: bytes, *, ttl_s: float = TOKEN_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = _derive(secret)
        self._retired: list[tuple[bytes, float]] = []  # (key, until when its tokens may be redeemed)
        self._ttl_s = ttl_s
        self._clock = clock
        self._used: dict[str, float] = {}  # token -> expiry, so the set forgets what has expired
        self._streamed: dict[tuple[str, str], float] = {}  # (carrier, call id) -> when to forget it

    @staticmethod
    def _mac(key: bytes, payload: str) -> str:
        return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest()[:18])

    def rekey(self, secret: bytes) -> bool:
        """Sign new tokens with `secret`; tokens of the previous key stay good for one token lifetime.
        False (and nothing changes) when the secret is the one in use."""
        key = _derive(secret)
        if hmac.compare_digest(key, self._key):
            return False
        now = self._clock()
        # Every token of the old key expires within ttl_s of now (plus the rounding of `expires`), so
        # the key is useless after that; redeem() still checks each token's own expiry.
        self._retired = [(k, until) for k, until in self._retired if until >= now and k != key]
        self._retired.append((self._key, now + self._ttl_s + 1.0))
        self._key = key
        return True

    def _signed(self, payload: str, mac: str) -> bool:
        if hmac.compare_digest(self._mac(self._key, payload).encode(), mac.encode()):
            return True
        now = self._clock()
        return any(
            until >= now and hmac.compare_digest(self._mac(key, payload).encode(), mac.encode())
            for key, until in self._retired
        )

    def issue(self, carrier: str, call_id: str, agent: str) -> str:
        expires = round(self._clock() + self._ttl_s, 3)
        payload = _b64(json.dumps([carrier, call_id, agent, expires], separators=(",", ":")).encode())
        return f"{payload}.{self._mac(self._key, payload)}"

    def redeem(self, token: str, carrier: str, call_id: str | None = None) -> Grant | TokenProblem:
        """The grant for a valid, unexpired, unused token (marking it used), else what is wrong."""
        if not token:
            return "missing"
        payload, _, mac = token.partition(".")
        if not self._signed(payload, mac):
            return "invalid"
        try:
            token_carrier, token_call, agent, expires = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return "invalid"
        now = self._clock()
        if token_carrier != carrier:
            return "invalid"
        if float(expires) < now:
            return "expired"
        self._used = {t: e for t, e in self._used.items() if e >= now}
        self._streamed = {c: e for c, e in self._streamed.items() if e >= now}
        if token in self._used or (carrier, token_call) in self._streamed:
            return "reused"
        if call_id is not None and call_id != token_call:
            return "wrong_call"
        self._used[token] = float(expires)
        self._streamed[(carrier, str(token_call))] = now + STREAMED_MEMORY_S
        return Grant(str(token_carrier), str(token_call), str(agent))
