"""The `gateway` command: `gateway run [--config PATH]` and `gateway check PATH`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence

import structlog

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.log import configure_logging, mask_numbers

DEFAULT_CONFIG_PATH = "/config/agents.yaml"
EXIT_CONFIG_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Telephony gateway for speech-to-speech AI.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the server")
    run.add_argument(
        "--config",
        help=f"agents YAML (default: $GATEWAY_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
    run.add_argument(
        "--log-format", choices=["json", "console"], help="default: console on a TTY, JSON otherwise"
    )
    check = commands.add_parser("check", help="validate a config file and print every problem")
    check.add_argument("path")
    return parser


def _report(path: str, error: ConfigError, *, for_log: bool = False) -> None:
    """Every problem on stderr. `check` is the operator's own command and shows the file's content
    whole; `run` writes to the gateway's log stream (a container's stderr), which never carries a
    phone number, so its route keys and digit runs are cut (gateway.log.mask_numbers)."""
    print(f"{path}: {len(error.problems)} problem(s)", file=sys.stderr)
    for problem in error.problems:
        print(f"  {mask_numbers(problem) if for_log else problem}", file=sys.stderr)


def _summary(config: GatewayConfig) -> str:
    agents = ", ".join(f"{name} ({agent.engine})" for name, agent in config.agents.items())
    return f"agents: {agents}; routes: {len(config.routes)}; default_agent: {config.default_agent or '-'}"


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop's event loop when it is importable (the `fast` extra), else asyncio's default.

    uvloop's transports, timers and handles are C: at a few hundred calls the per-frame cost of the
    event loop is a large share of the gateway's CPU (bench/PROFILE.md). Returns the factory for
    asyncio.Runner (None: the default loop) and the name logged at start-up.
    """
    if os.environ.get("GATEWAY_EVENT_LOOP", "").lower() == "asyncio":
        return None, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 - optional: the gateway runs without it, only slower
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        try:
            config = load_config(args.path)
            from gateway.app import load_hold_clips  # noqa: PLC0415 - the WAV check needs numpy/samplerate

            load_hold_clips(config)
        except ConfigError as error:
            _report(args.path, error)
            return EXIT_CONFIG_ERROR
        print(f"{args.path}: OK ({_summary(config)})")
        return 0

    path = args.config or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH
    configure_logging(args.log_format)
    log = structlog.get_logger("gateway")
    try:
        config = load_config(path)
    except ConfigError as error:
        _report(path, error, for_log=True)
        return EXIT_CONFIG_ERROR
    # Imported here so that `gateway check` needs none of the server's dependencies.
    from gateway.app import create_app  # noqa: PLC0415
    from gateway.server import serve  # noqa: PLC0415

    log.info(
        "gateway.starting",
        config=path,
        host=config.server.host,
        port=config.server.port,
        public_url=config.server.public_url,
        agents=sorted(config.agents),
    )
    factory, loop_name = loop_factory()
    log.info("gateway.event_loop", loop=loop_name)
    app = create_app(config)
    server = config.server
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(app, server.host, server.port, server.drain_timeout_s, config_path=path))
    log.info("gateway.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
