"""Running the app: listen, on SIGHUP reload the config, and on SIGTERM/SIGINT drain before stopping.

Draining (uvicorn's order): stop accepting (readyz turns 503, new calls are refused as busy) while
still listening, so probes and the carrier see the refusal; let live calls finish for up to
`drain_timeout_s`, and calls already answered whose media has not connected yet start and finish
(closing the listener under them would drop their callers); then end what remains with a goodbye
the carrier speaks (`server.announcements`) and a hang-up, for up to GOODBYE_TIMEOUT_S; then cancel
whatever is left (hung up at once) and stop. A second signal skips the rest of the drain and the
goodbyes. The previous signal handlers are restored on the way out.

SIGHUP re-reads the config file (gateway.reload): a reload runs as a task, one at a time, so the
signal handler returns at once and live calls are not held up.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable

import structlog
from aiohttp import web

from gateway import keys
from gateway.reload import Reloader

log = structlog.get_logger("gateway.server")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Time for the goodbyes after the drain: one carrier request each, and on Telnyx the speech itself
# (gateway.carriers.telnyx.SPEAK_MAX_WAIT_S bounds it). Deployments allow drain_timeout_s + this.
GOODBYE_TIMEOUT_S = 25.0


async def _wait(awaitable: Awaitable[object], timeout_s: float, force: asyncio.Event | None) -> None:
    """Wait for `awaitable` for up to `timeout_s`, or until `force` is set."""
    waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(awaitable)}
    if force is not None:
        waiters.add(asyncio.ensure_future(force.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def drain(
    app: web.Application,
    timeout_s: float,
    force: asyncio.Event | None = None,
    goodbye_timeout_s: float = GOODBYE_TIMEOUT_S,
) -> bool:
    """Stop accepting calls and wait for live and answered ones to end; True if they all ended in time.

    Calls still live after `timeout_s` are ended with a spoken goodbye (unless `force` is set).
    """
    app[keys.STATE].accepting = False
    calls = app[keys.CALLS]
    log.info(
        "gateway.draining", calls_active=len(calls), calls_answered=calls.reserved, drain_timeout_s=timeout_s
    )
    await _wait(calls.wait_idle(), timeout_s, force)
    if not len(calls) and not calls.reserved:
        log.info("gateway.drained")
        return True
    log.warning("gateway.drain_incomplete", calls_active=len(calls), calls_answered=calls.reserved)
    if force is None or not force.is_set():
        await calls.shut_down_all()
        await _wait(calls.wait_empty(), goodbye_timeout_s, force)
        if len(calls):
            log.warning("gateway.goodbyes_incomplete", calls_active=len(calls))
    return False


async def serve(
    app: web.Application, host: str, port: int, drain_timeout_s: float, config_path: str | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and shut down. With `config_path`, SIGHUP reloads it."""
    loop = asyncio.get_running_loop()
    reloader = Reloader(app, config_path) if config_path is not None else None
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("gateway.forced_stop", signal=signal.Signals(signum).name)
            force.set()
        else:
            log.info("gateway.stopping", signal=signal.Signals(signum).name)
            stop.set()

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("gateway.listening", host=host, port=port)
        for signum in SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        if reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
        try:
            await stop.wait()
            await drain(app, drain_timeout_s, force)
        finally:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)
            if reloader is not None:
                loop.remove_signal_handler(signal.SIGHUP)
                await reloader.aclose()
    finally:
        # Runs on_shutdown (cancelling and hanging up calls still live) and closes the listener.
        await runner.cleanup()
