"""Config reload (SIGHUP): new calls use the new file, live calls keep theirs, a bad file changes nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from pydantic import SecretStr
from structlog.typing import EventDict

from gateway import keys, reload
from gateway.config import GatewayConfig
from gateway.log import mask_numbers
from gateway.reload import Reloader, reload_config
from tests.conftest import StartGateway
from tests.fakes.telnyx import new_call_control_id
from tests.test_handoff import function_call

SALES = "+15555550101"
# (server.port is ignored by the test server, which listens on its own port.)
SERVER = {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1"}
BILLING = "+15555550102"
AGENTS: dict[str, Any] = {
    "receptionist": {
        "engine": "openai_realtime_2",
        "audio": "g711",
        "prompt": "front desk",
        "tools": [{"builtin": "handoff", "agents": ["billing"]}],
    },
    "billing": {"engine": "openai_realtime_2", "audio": "g711", "prompt": "billing desk"},
}


def document(config: GatewayConfig) -> dict[str, Any]:
    """The YAML document a running config came from, secrets included, for a test to vary."""

    def reveal(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return node.get_secret_value()
        if isinstance(node, dict):
            return {key: reveal(value) for key, value in node.items()}
        if isinstance(node, list):
            return [reveal(value) for value in node]
        return node

    return dict(reveal(config.model_dump(exclude_unset=True)))


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def events(logs: list[EventDict], name: str) -> list[EventDict]:
    return [line for line in logs if line["event"] == name]


async def instructions_of_next_session(gw: Any) -> str:
    model = await gw.model.next_connection()
    return str((await model.wait_for("session.update"))[0]["session"]["instructions"])


class TestReloadConfig:
    async def test_new_calls_get_the_new_file_while_a_live_call_keeps_its_config(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """After a reload a new agent answers its new route and a changed prompt reaches new calls;
        a call that started before the reload hands off to the agent as it was when the call began."""
        gw = await start_gateway(agents=AGENTS, default_agent="receptionist")
        live = await gw.twilio.call()
        live_model = await gw.model.next_connection()
        await live_model.wait_for("session.update")

        doc = document(gw.config)
        doc["agents"]["billing"]["prompt"] = "billing desk, new"
        doc["agents"]["sales"] = {"engine": "openai_realtime_2", "audio": "g711", "prompt": "sales desk"}
        doc["routes"] |= {SALES: "sales", BILLING: "billing"}
        with structlog.testing.capture_logs() as logs:
            assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "ok"

        await gw.twilio.call(to=SALES)
        assert await instructions_of_next_session(gw) == "sales desk"
        await gw.twilio.call(to=BILLING)
        assert await instructions_of_next_session(gw) == "billing desk, new"
        await function_call(live_model, "handoff", {"agent": "billing"})
        assert await instructions_of_next_session(gw) == "billing desk"  # the live call's own config

        (line,) = events(logs, "config.reloaded")
        assert line["result"] == "ok"
        assert (line["agents_added"], line["agents_removed"], line["agents_changed"]) == (
            ["sales"],
            [],
            ["billing"],
        )
        assert (line["routes"], line["routes_changed"]) == (3, 2)
        assert line["sections_changed"] == ["agents", "routes"]
        assert SALES not in json.dumps(logs) and BILLING not in json.dumps(logs)
        assert gw.metric("gateway_config_reloads_total", result="ok") == 1
        assert gw.metric("gateway_config_last_reload_successful") == 1
        await live.stop()
        await live.wait_closed()

    async def test_invalid_file_leaves_the_running_config_and_logs_every_problem(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """A file with errors changes nothing: the error log lists each problem with its YAML path, no
        secret and no whole phone number; the reload counts as invalid, new calls get the old prompt."""
        gw = await start_gateway(agent={"audio": "g711", "prompt": "old prompt"})
        running = keys.runtime(gw.app)
        doc = document(gw.config)
        doc["agents"]["receptionist"] |= {"prompt": "new prompt", "voise": "alloy"}
        doc["routes"]["+15555550199"] = "nobody"
        doc["carriers"]["twilio"]["auth_token"] = "rotated-secret-never-logged"
        doc["providers"]["openai"]["api_key"] = ["sk-leaked-never-logged"]
        with structlog.testing.capture_logs() as logs:
            assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "invalid"

        assert keys.runtime(gw.app) is running
        (line,) = events(logs, "config.reload_failed")
        assert line["log_level"] == "error"
        assert "agents.receptionist.voise: unknown key" in line["problems"]
        assert "providers.openai.api_key: must be a string" in line["problems"]
        assert "routes.+***0199: no agent named 'nobody' under agents" in line["problems"]
        assert "never-logged" not in json.dumps(logs) and "+15555550199" not in json.dumps(logs)
        assert events(logs, "config.reloaded") == []
        assert gw.metric("gateway_config_reloads_total", result="invalid") == 1
        assert gw.metric("gateway_config_reloads_total", result="ok") == 0
        assert gw.metric("gateway_config_last_reload_successful") == 0
        await gw.twilio.call()
        assert await instructions_of_next_session(gw) == "old prompt"

    async def test_numbers_written_any_way_are_kept_out_of_the_log(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """Phone numbers YAML did not read as `+` strings still stay out of the reload's log: an
        unquoted route key (an int, its `+` lost), a key written with spaces, and a whole number in
        `allowed_outbound_prefixes` are each cut to their last four digits."""
        gw = await start_gateway(agent={"audio": "g711"})
        doc = document(gw.config)
        doc["routes"] |= {15555550177: "receptionist", "+1 555 555 0166": "receptionist"}
        doc["allowed_outbound_prefixes"] = ["15555550155"]
        with structlog.testing.capture_logs() as logs:
            assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "invalid"
        (line,) = events(logs, "config.reload_failed")
        problems = line["problems"]
        assert any(p.startswith("routes.***0177: phone numbers must be quoted") for p in problems)
        assert any(p.startswith("routes.+***0166: must be an E.164 number") for p in problems)
        assert (
            "allowed_outbound_prefixes: '***0155' must be '+' and at least one digit, e.g. \"+1555\""
            in problems
        )
        text = json.dumps(logs)
        for digits in ("5555550177", "555 555 0166", "5555550155"):
            assert digits not in text

    async def test_speak_ended_after_a_reload_ends_the_wait_of_a_call_started_before_it(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """A reload that changes carriers.telnyx builds a new TelnyxCarrier; a call that started before
        it announces through the old one. Its `call.speak.ended` webhook (handled by the new carrier)
        must still end the wait and bring the hang-up, not leave the caller in silence until the
        length-based fallback (20 s for this long apology)."""
        apology = "We are sorry. " * 30  # 420 characters: the fallback wait is SPEAK_MAX_WAIT_S
        gw = await start_gateway(server={**SERVER, "announcements": {"engine_failure": apology}})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        model = await gw.model.next_connection()
        doc = document(gw.config)
        doc["carriers"]["telnyx"]["say_voice"] = "male"
        assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "ok"
        assert keys.runtime(gw.app).telnyx.config.say_voice == "male"

        await model.error("insufficient_quota", "boom")
        speak = await gw.telnyx_api.wait_action(call.call_control_id, "speak")
        assert speak["voice"] == "female"  # the live call keeps the carrier it started with
        status, _ = await gw.telnyx.speak_ended(call.call_control_id)
        assert status == 200
        await gw.telnyx_api.wait_action(call.call_control_id, "hangup")  # bounded by the fake's 5 s
        await call.wait_closed()

    async def test_unreadable_hold_clip_rejects_the_whole_file(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """Hold clips are loaded before anything is swapped: a missing WAV rejects the file, so the
        prompt change in the same file does not apply either."""
        gw = await start_gateway(agent={"audio": "g711", "prompt": "old prompt"})
        doc = document(gw.config)
        doc["agents"]["receptionist"] |= {"prompt": "new", "hold_audio": {"file": str(tmp_path / "no.wav")}}
        with structlog.testing.capture_logs() as logs:
            assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "invalid"
        (line,) = events(logs, "config.reload_failed")
        assert [p.split(":")[0] for p in line["problems"]] == ["agents.receptionist.hold_audio.file"]
        await gw.twilio.call()
        assert await instructions_of_next_session(gw) == "old prompt"

    async def test_failure_while_building_keeps_the_running_config(
        self, start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Anything that goes wrong after the file validated (here: building its objects) still leaves
        the running config, counts as invalid, and logs only the exception's type, not its text."""
        gw = await start_gateway()
        running = keys.runtime(gw.app)

        def broken(*args: object, **kwargs: object) -> None:
            raise ValueError("quoting secret-never-logged")

        monkeypatch.setattr(reload, "build_runtime", broken)
        with structlog.testing.capture_logs() as logs:
            assert (
                await reload_config(gw.app, write(tmp_path / "agents.yaml", document(gw.config))) == "invalid"
            )
        assert keys.runtime(gw.app) is running
        assert events(logs, "config.reload_failed")[0]["problems"] == ["cannot apply the config (ValueError)"]
        assert "never-logged" not in json.dumps(logs)
        assert gw.metric("gateway_config_reloads_total", result="invalid") == 1

    async def test_fields_that_need_a_restart_keep_their_running_value(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """A changed port or public URL, or a carrier removed, is kept as it runs, with a warning naming
        the field; everything else in the file applies, and the reload counts as partial."""
        gw = await start_gateway(agent={"audio": "g711", "prompt": "old prompt"})
        doc = document(gw.config)
        doc["server"] |= {"port": 1, "public_url": "https://elsewhere.example.com", "max_concurrent_calls": 7}
        del doc["carriers"]["telnyx"]
        doc["agents"]["receptionist"]["prompt"] = "new prompt"
        with structlog.testing.capture_logs() as logs:
            assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "partial"

        warnings = events(logs, "config.restart_required")
        assert [line["field"] for line in warnings] == ["server.port", "server.public_url", "carriers.telnyx"]
        assert all(line["log_level"] == "warning" for line in warnings)
        config = keys.runtime(gw.app).config
        assert config.server == gw.config.server.model_copy(update={"max_concurrent_calls": 7})
        assert config.carriers.telnyx == gw.config.carriers.telnyx
        assert gw.app[keys.CALLS].max_concurrent_calls == 7
        assert gw.metric("gateway_config_reloads_total", result="partial") == 1
        assert gw.metric("gateway_config_last_reload_successful") == 1
        await gw.twilio.call()
        assert await instructions_of_next_session(gw) == "new prompt"
        telnyx_call = await gw.telnyx.call_texml()  # Telnyx's routes still answer, as before
        await gw.model.next_connection()
        await telnyx_call.stop()

    async def test_stream_answered_before_a_credential_change_is_accepted_after_it(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """Media tokens are signed with the carriers' secrets: a call answered just before a reload that
        changes them still opens its media socket just after; tokens issued after it work too."""
        gw = await start_gateway(agent={"audio": "g711"})
        call_id = new_call_control_id()
        _, body = await gw.telnyx.texml_webhook(call_sid=call_id)
        url, _, _ = gw.telnyx.parse_texml_stream(body)
        doc = document(gw.config)
        doc["carriers"]["telnyx"]["api_key"] = "KEY-rotated"
        with structlog.testing.capture_logs() as logs:
            assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "ok"
        assert events(logs, "config.reloaded")[0]["media_token_key"] == "rotated"

        early = await gw.telnyx.open_stream(url, call_control_id=call_id)
        await gw.model.next_connection()
        later = await gw.telnyx.call_texml()
        await gw.model.next_connection()
        for call in (early, later):
            await call.stop()
            assert await call.wait_closed() == 1000

    async def test_lower_call_limit_refuses_new_calls_and_keeps_the_live_one(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """Lowering max_concurrent_calls below the calls in progress ends none of them: the live call
        carries on, /readyz turns 503 full and the next caller gets busy."""
        gw = await start_gateway(agent={"audio": "g711"})
        live = await gw.twilio.call()
        model = await gw.model.next_connection()
        doc = document(gw.config)
        doc["server"]["max_concurrent_calls"] = 1
        assert await reload_config(gw.app, write(tmp_path / "agents.yaml", doc)) == "ok"

        async with gw.http.get(gw.url + "/readyz") as response:
            assert (response.status, (await response.json())["status"]) == (503, "full")
        status, body = await gw.twilio.webhook()
        assert status == 200 and '<Reject reason="busy"/>' in body
        await model.speak(b"\x34" * 800, chunk_bytes=800)
        await live.wait_audio(800)
        await live.stop()
        await live.wait_closed()


class TestMaskNumbers:
    @pytest.mark.parametrize(
        ("problem", "logged"),
        [
            ("routes.+15555550100: no agent named 'x'", "routes.+***0100: no agent named 'x'"),
            ("routes.15555550100: must be quoted", "routes.***0100: must be quoted"),
            ("routes.+1 555-555 0100: must be E.164", "routes.+***0100: must be E.164"),
            ("routes.client:alice: must be E.164", "routes.***: must be E.164"),
            ("x: '+1 (555) 555-0100' is wrong", "x: '+***0100' is wrong"),
            (
                "allowed_outbound_prefixes[0]: '+1555' must be",
                "allowed_outbound_prefixes[0]: '+1555' must be",
            ),
            ("server.port: must be at least 1", "server.port: must be at least 1"),
        ],
    )
    def test_route_keys_and_digit_runs_are_cut_to_their_last_four_digits(
        self, problem: str, logged: str
    ) -> None:
        """A route key, whatever it is, and any run of six or more digits (with a `+` or without, with
        spaces, dashes or brackets inside) keep only their last four digits; short numbers (a
        four-digit prefix, a limit) are left as they are."""
        assert mask_numbers(problem) == logged


class TestReloader:
    async def test_reloads_run_one_at_a_time_and_a_request_meanwhile_runs_once_after(
        self, start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two SIGHUPs during a reload queue exactly one more reload, which starts only after the
        first has finished (it must re-read a file that may have changed again)."""
        gw = await start_gateway()
        path = write(tmp_path / "agents.yaml", document(gw.config))
        real_load = reload.load
        entered, release = threading.Semaphore(0), threading.Event()
        running, overlaps = [0], [0]
        lock = threading.Lock()

        def gated_load(target: str | Path) -> reload.Loaded:
            with lock:
                running[0] += 1
                overlaps[0] = max(overlaps[0], running[0])
            entered.release()
            try:
                release.wait(5)
                return real_load(target)
            finally:
                with lock:
                    running[0] -= 1

        monkeypatch.setattr(reload, "load", gated_load)
        reloader = Reloader(gw.app, path)
        try:
            with structlog.testing.capture_logs() as logs:
                reloader.request()
                assert await asyncio.to_thread(entered.acquire, timeout=5)  # the first is reading
                reloader.request()
                reloader.request()
                release.set()
                await reloader.wait_idle()
        finally:
            release.set()
            await reloader.aclose()
        assert [line["event"] for line in logs if line["event"].startswith("config.")] == [
            "config.reloading",
            "config.reload_queued",
            "config.reloaded",
            "config.reloading",
            "config.reloaded",
        ]
        assert overlaps[0] == 1
        assert gw.metric("gateway_config_reloads_total", result="ok") == 2

    async def test_request_while_draining_is_ignored(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """A SIGHUP after the drain began does not reload: it is logged and nothing is counted."""
        gw = await start_gateway()
        reloader = Reloader(gw.app, write(tmp_path / "agents.yaml", document(gw.config)))
        gw.app[keys.STATE].accepting = False
        with structlog.testing.capture_logs() as logs:
            reloader.request()
            await reloader.wait_idle()
        await reloader.aclose()
        assert [(line["event"], line["reason"]) for line in logs] == [("config.reload_ignored", "draining")]
        assert gw.metric("gateway_config_reloads_total", result="ok") == 0
