"""Reloading the config file (SIGHUP): new calls use the new config, live calls keep theirs.

A reload first reads and validates everything, the YAML (with ${ENV} interpolation) and the hold
clips, in a worker thread so that live calls' audio does not stall while WAV files are converted.
Only then does it swap, in one synchronous step: the `Runtime` (config, carriers, engines, prices,
hold clips, the `Services` new calls start with), the call limit and the media-token key. A file that
does not validate changes nothing: the running config stays, and every problem is logged.

A call in progress holds the `Services` it started with, so its agent, prompt, tools, prices and
engine credentials do not change under it.

Some fields cannot change in a running process. A reload keeps their running values, logs a warning
naming each one, applies everything else, and counts as `partial`:
- `server.host`, `server.port`: the listening socket is bound once;
- `server.public_url`: carriers were told to send webhooks and media there (and Twilio signs that
  URL), so it changes together with the listener and the carrier console, i.e. with a restart;
- `server.drain_timeout_s`: the signal handling took it at startup;
- adding or removing `carriers.twilio` / `carriers.telnyx`: a carrier's routes are fixed when the app
  starts. Changing a configured carrier's settings or credentials does reload.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from gateway import keys
from gateway.app import load_hold_clips, token_secret
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.hold import HoldClip
from gateway.log import mask_numbers
from gateway.metrics import ReloadResult
from gateway.runtime import build_runtime

log = structlog.get_logger("gateway.reload")

RESTART_ONLY_SERVER_FIELDS = ("host", "port", "public_url", "drain_timeout_s")
CARRIERS = ("twilio", "telnyx")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A config file that validated, with what else it names that must load (the hold clips)."""

    config: GatewayConfig
    hold_clips: dict[str, HoldClip]


def load(path: str | Path) -> Loaded:
    """Read and validate `path` the way startup does; ConfigError lists every problem. Blocking."""
    config = load_config(path)
    return Loaded(config, load_hold_clips(config))


def keep_restart_only(running: GatewayConfig, new: GatewayConfig) -> tuple[GatewayConfig, list[str]]:
    """`new`, with the running value of each field a reload cannot change, and the names of those
    whose value differed (YAML paths, never values: some of them are credentials)."""
    fields = [
        f"server.{name}"
        for name in RESTART_ONLY_SERVER_FIELDS
        if getattr(new.server, name) != getattr(running.server, name)
    ]
    carriers = {
        name: getattr(running.carriers, name)
        for name in CARRIERS
        if (getattr(new.carriers, name) is None) != (getattr(running.carriers, name) is None)
    }
    fields += [f"carriers.{name}" for name in carriers]
    if not fields:
        return new, []
    server = new.server.model_copy(
        update={name: getattr(running.server, name) for name in RESTART_ONLY_SERVER_FIELDS}
    )
    carriers_section = new.carriers.model_copy(update=carriers)
    return new.model_copy(update={"server": server, "carriers": carriers_section}), fields


def summarize(old: GatewayConfig, new: GatewayConfig) -> dict[str, object]:
    """What a reload changed, for its log line: agent names and counts. Routes are keyed by phone
    number, so only their count and how many changed are given."""
    both = old.agents.keys() & new.agents.keys()
    numbers = old.routes.keys() | new.routes.keys()
    return {
        "sections_changed": sorted(
            name for name in GatewayConfig.model_fields if getattr(old, name) != getattr(new, name)
        ),
        "agents_added": sorted(new.agents.keys() - old.agents.keys()),
        "agents_removed": sorted(old.agents.keys() - new.agents.keys()),
        "agents_changed": sorted(name for name in both if old.agents[name] != new.agents[name]),
        "routes": len(new.routes),
        "routes_changed": sum(1 for number in numbers if old.routes.get(number) != new.routes.get(number)),
    }


def _unexpected(exc: Exception) -> str:
    # Whatever went wrong, the running config must stay. Only the type is logged: an exception's text
    # could quote a credential it choked on.
    return f"cannot apply the config ({type(exc).__name__})"


def _failed(app: web.Application, path: str, problems: list[str]) -> ReloadResult:
    log.error(
        "config.reload_failed",
        path=path,
        problems=[mask_numbers(problem) for problem in problems],
        hint="the running config stays in place; `gateway check` on the file shows the same problems",
    )
    app[keys.METRICS].config_reloaded("invalid", time.time())
    return "invalid"


async def reload_config(app: web.Application, path: str) -> ReloadResult:
    """Load `path` and, if it is valid, make it the config new calls and webhooks use."""
    log.info("config.reloading", path=path)
    try:
        loaded = await asyncio.to_thread(load, path)
    except ConfigError as error:
        return _failed(app, path, error.problems)
    except Exception as exc:
        return _failed(app, path, [_unexpected(exc)])
    ref = app[keys.RUNTIME]
    previous = ref.current
    config, kept = keep_restart_only(previous.config, loaded.config)
    try:
        runtime = build_runtime(
            config,
            loaded.hold_clips,
            http=app[keys.HTTP],
            registry=app[keys.CALLS],
            metrics=app[keys.METRICS],
            previous=previous,
        )
    except Exception as exc:
        return _failed(app, path, [_unexpected(exc)])
    # The swap: no await from here to the end, so no webhook sees half of it.
    ref.current = runtime
    app[keys.CALLS].set_limit(config.server.max_concurrent_calls)
    rekeyed = app[keys.TOKENS].rekey(token_secret(config))
    result: ReloadResult = "partial" if kept else "ok"
    for field in kept:
        log.warning(
            "config.restart_required",
            field=field,
            hint="kept the running value; restart the gateway to apply this field",
        )
    for name in CARRIERS:  # the same warning as at startup
        carrier = getattr(config.carriers, name)
        if carrier is not None and not carrier.verify_signatures:
            hint = "anyone who can reach the gateway can start calls"
            log.warning(f"{name}.signatures_disabled", hint=hint)
    log.info(
        "config.reloaded",
        path=path,
        result=result,
        media_token_key="rotated" if rekeyed else "unchanged",
        calls_active=len(app[keys.CALLS]),
        **summarize(previous.config, config),
    )
    app[keys.METRICS].config_reloaded(result, time.time())
    return result


class Reloader:
    """Runs reloads one at a time, on request (SIGHUP). A request during a reload queues one more,
    because the file may have changed again after the running reload read it; further requests in
    the meantime fold into that one. Requests while the gateway drains are ignored."""

    def __init__(self, app: web.Application, path: str) -> None:
        self._app = app
        self._path = path
        self._pending = False
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        if not self._app[keys.STATE].accepting:
            log.info("config.reload_ignored", reason="draining")
            return
        if self._task is not None and not self._task.done():
            if not self._pending:
                log.info("config.reload_queued", reason="a reload is running")
            self._pending = True
            return
        self._pending = True
        self._task = asyncio.create_task(self._run(), name="config:reload")

    async def _run(self) -> None:
        while self._pending and self._app[keys.STATE].accepting:
            self._pending = False
            await reload_config(self._app, self._path)

    async def wait_idle(self) -> None:
        """Until no reload is running or queued."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
