"""Running the app: listen, on SIGHUP reload the config, and on SIGTERM/SIGINT drain before stopping.

Draining (uvicorn's order): stop accepting (readyz turns 503, new calls are refused as busy) while
still listening, so probes and the carrier see the refusal; let live calls finish for up to
`drain_timeout_s`; then cancel what remains (each is hung up at the carrier) and stop. A second
signal skips the rest of the drain. The previous signal handlers are restored on the way out.

SIGHUP re-reads the config file (gateway.reload): a reload runs as a task, one at a time, so the
signal handler returns at once and live calls are not held up.
"""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from gateway import keys
from gateway.reload import Reloader

log = structlog.get_logger("gateway.server")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def drain(app: web.Application, timeout_s: float, force: asyncio.Event | None = None) -> bool:
    """Stop accepting calls and wait for live ones to end; True if they all ended in time."""
    app[keys.STATE].accepting = False
    calls = app[keys.CALLS]
    log.info("gateway.draining", calls_active=len(calls), drain_timeout_s=timeout_s)
    waiters: set[asyncio.Task[object]] = {asyncio.create_task(calls.wait_empty(), name="drain:empty")}
    if force is not None:
        waiters.add(asyncio.create_task(force.wait(), name="drain:force"))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    if len(calls):
        log.warning("gateway.drain_incomplete", calls_active=len(calls))
        return False
    log.info("gateway.drained")
    return True


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
