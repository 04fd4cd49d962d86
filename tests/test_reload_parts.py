"""The pieces a config reload changes in place: the media-token key, the call limit, and which fields
of a new file are kept at their running value."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.calls import CallRegistry
from gateway.config import GatewayConfig, parse_config
from gateway.reload import keep_restart_only
from gateway.tokens import Grant, MediaTokens
from tests.conftest import config_dict


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Call:
    """A live call as the registry sees it (no task: nothing to cancel)."""

    task: asyncio.Task[object] | None = None

    def snapshot(self) -> dict[str, object]:
        return {}


def config(**overrides: Any) -> GatewayConfig:
    return parse_config(
        config_dict(8080, "ws://127.0.0.1:9/v1/realtime", "http://127.0.0.1:9", **overrides), {}
    )


class TestMediaTokenRekey:
    def test_token_of_the_previous_key_is_accepted_within_its_lifetime(self) -> None:
        """A token issued just before a re-key is still redeemed just after it, even across a second
        re-key; one of the old key is no longer accepted once its lifetime is over."""
        clock = Clock()
        tokens = MediaTokens(b"old", ttl_s=30, clock=clock)
        before = tokens.issue("twilio", "CA1", "receptionist")
        expired = tokens.issue("twilio", "CA2", "receptionist")
        assert tokens.rekey(b"new") is True
        assert tokens.rekey(b"newer") is True
        clock.now += 29
        assert tokens.redeem(before, "twilio", "CA1") == Grant("twilio", "CA1", "receptionist")
        clock.now += 2
        assert tokens.redeem(expired, "twilio", "CA2") == "expired"

    def test_new_tokens_use_the_new_key(self) -> None:
        """After a re-key, new tokens verify with the new secret: another replica that loaded the same
        new config accepts them, one still on the old config does not."""
        tokens = MediaTokens(b"old")
        tokens.rekey(b"new")
        token = tokens.issue("telnyx", "v3:1", "receptionist")
        assert isinstance(MediaTokens(b"new").redeem(token, "telnyx"), Grant)
        assert MediaTokens(b"old").redeem(token, "telnyx") == "invalid"

    def test_same_secret_changes_nothing(self) -> None:
        """A reload that leaves the carriers' credentials alone does not re-key."""
        tokens = MediaTokens(b"same")
        token = tokens.issue("twilio", "CA1", "receptionist")
        assert tokens.rekey(b"same") is False
        assert isinstance(MediaTokens(b"same").redeem(token, "twilio", "CA1"), Grant)

    def test_replay_memory_survives_a_rekey(self) -> None:
        """A token used before the re-key stays used, and a call that streamed cannot get a second
        stream with a token of the new key."""
        tokens = MediaTokens(b"old")
        token = tokens.issue("twilio", "CA1", "receptionist")
        assert isinstance(tokens.redeem(token, "twilio", "CA1"), Grant)
        tokens.rekey(b"new")
        assert tokens.redeem(token, "twilio", "CA1") == "reused"
        assert tokens.redeem(tokens.issue("twilio", "CA1", "receptionist"), "twilio", "CA1") == "reused"


class TestCallLimit:
    def test_lowering_the_limit_keeps_live_calls_and_refuses_new_ones(self) -> None:
        """Below the calls in progress, the registry ends none of them; it refuses new ones until the
        load is under the new limit, and raising the limit admits again at once."""
        calls = CallRegistry(3)
        for call_id in ("a", "b"):
            assert calls.add(call_id, Call()) == "ok"
        calls.set_limit(1)
        assert len(calls) == 2 and calls.full
        assert not calls.reserve("c")
        calls.remove("a")
        assert calls.full
        calls.remove("b")
        assert calls.reserve("c")
        calls.set_limit(5)
        assert calls.add("d", Call()) == "ok"


class TestKeepRestartOnly:
    def test_a_file_without_restart_only_changes_is_taken_as_it_is(self) -> None:
        """Changing what a reload can apply (agents, the call limit, the admin token) keeps nothing."""
        running = config()
        server = {**config_dict(8080, "", "")["server"], "max_concurrent_calls": 3, "admin_token": "t"}
        new = config(server=server, default_agent=None)
        assert keep_restart_only(running, new) == (new, [])

    def test_listener_and_carrier_set_keep_their_running_values(self) -> None:
        """host, port, public_url and drain_timeout_s keep their running values; a carrier the new file
        adds is left out and one it removes stays; each is named; the rest comes from the file."""
        running = config()
        doc = config_dict(9090, "ws://127.0.0.1:9/v1/realtime", "http://127.0.0.1:9")
        doc["server"] |= {"host": "127.0.0.2", "public_url": "https://x.example", "drain_timeout_s": 5.0}
        doc["server"]["max_concurrent_calls"] = 3
        doc["carriers"]["telnyx"] = {"api_key": "KEY", "public_key": "A" * 43 + "="}
        doc["agents"]["receptionist"]["prompt"] = "new prompt"
        kept, fields = keep_restart_only(running, parse_config(doc, {}))
        assert fields == [
            "server.host",
            "server.port",
            "server.public_url",
            "server.drain_timeout_s",
            "carriers.telnyx",
        ]
        assert kept.server == running.server.model_copy(update={"max_concurrent_calls": 3})
        assert kept.carriers == running.carriers
        assert kept.agents["receptionist"].prompt == "new prompt"
