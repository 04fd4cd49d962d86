"""A lean fake OpenAI Realtime server (GA dialect) for bench/load.py, run as its own process.

It plays the model side of every call at real-time pace: a simulated caller turn (VAD events, a
transcription), then a spoken answer in audio deltas of 40-100 ms, each sent when the previous one's
duration has elapsed, then `response.done` with usage; and again, until the run ends. It also answers
Twilio's REST API (hang-ups), so the gateway never reaches for the internet.

What it records, per model connection, for the latency figures (time.monotonic(), which is one clock
for every process on the machine):
  up_t / up_ms     arrival time of each `input_audio_buffer.append`, and the caller audio received
                   so far (ms) once it is in;
  down_t / down_ms send time of each audio delta, and the model audio sent so far (ms) with it.
Audio is matched by duration, not by content, so it survives transcoding (see bench/loadstats.py).

Calls are told apart by order: the fake carrier opens calls one at a time and, after each `start`,
claims the oldest unclaimed connection here (GET /bench/claim). Control endpoints, all on loopback:
  GET  /bench/claim    the next unclaimed connection id (waits up to 10 s for it)
  POST /bench/end?at=  stop starting deltas and turns at monotonic time `at`
  GET  /bench/totals   {conn: [caller ms received, model ms sent]} for the drain check
  POST /bench/dump     write model.npz and model.json into --out; returns the paths
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import random
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from gateway import fastws

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audiosignals import speech_like, ulaw_encode
from benchproc import LoopLagMonitor, install_fast_loop, process_cpu_seconds

APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
CLAIM_TIMEOUT_S = 10.0
BYTES_PER_MS = {"pcm24k": 48, "g711": 8}


def b64_len(text_len: int, padding: int) -> int:
    """Decoded size of a canonical base64 string of `text_len` characters ending in `padding` '='."""
    return text_len * 3 // 4 - padding


def delta_payloads(audio: str) -> dict[int, str]:
    """One base64 payload per delta duration (40..100 ms), precomputed: sending must stay cheap."""
    if audio == "pcm24k":
        pcm = speech_like(24000, 0.1).tobytes()
        return {ms: base64.b64encode(pcm[: ms * 48]).decode() for ms in range(40, 101)}
    ulaw = ulaw_encode(speech_like(8000, 0.1).tobytes())
    return {ms: base64.b64encode(ulaw[: ms * 8]).decode() for ms in range(40, 101)}


class Connection:
    """The server end of one model socket: records caller audio, speaks turns."""

    def __init__(self, conn_id: int, ws: web.WebSocketResponse, server: FakeModel) -> None:
        self.id = conn_id
        self.ws = ws
        self.server = server
        self.up_t = array("d")
        self.up_ms = array("d")
        self.down_t = array("d")
        self.down_ms = array("d")
        self.up_bytes = 0
        self.down_ms_total = 0.0
        self.rng = random.Random(server.seed * 100_003 + conn_id)
        self.cancels = 0
        self.truncates = 0
        self.writer = fastws.writer(ws)

    async def send(self, event: dict[str, Any]) -> None:
        event["event_id"] = f"ev_{next(self.server.ids)}"
        await self.ws.send_str(json.dumps(event))

    def on_append(self, data: str) -> bool:
        """An append in the gateway's exact layout, recorded; False for anything else."""
        if data.startswith(APPEND_PREFIX) and data.endswith('"}'):
            self.on_text(data, time.monotonic())
            return True
        return False

    def on_text(self, data: str, now: float) -> None:
        if data.startswith(APPEND_PREFIX) and data.endswith('"}'):
            n = len(data) - len(APPEND_PREFIX) - 2
            pad = 2 if data.endswith('=="}') else 1 if data.endswith('="}') else 0
            nbytes = b64_len(n, pad)
        else:
            event = json.loads(data)
            kind = event.get("type")
            if kind == "input_audio_buffer.append":
                nbytes = len(base64.b64decode(event.get("audio", "")))
            else:
                if kind == "response.cancel":
                    self.cancels += 1
                elif kind == "conversation.item.truncate":
                    self.truncates += 1
                elif kind == "session.update":
                    self.server.spawn(self.send({"type": "session.updated", "session": event["session"]}))
                return
        self.up_bytes += nbytes
        self.up_t.append(now)
        self.up_ms.append(self.up_bytes / self.server.bytes_per_ms)

    async def speak(self) -> None:
        """The model's side of the conversation, turn after turn, until the run's end time."""
        server, rng = self.server, self.rng
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # calls do not all talk in step
        # The agent greets first, as most deployments do; then caller turn, answer, and so on.
        await self.respond(f"resp_{self.id}_0", f"item_out_{self.id}_0", rng.uniform(1.0, 2.0))
        turn = 0
        while time.monotonic() < server.end_at:
            turn += 1
            await asyncio.sleep(0.3)
            item_in = f"item_in_{self.id}_{turn}"
            await self.send(
                {"type": "input_audio_buffer.speech_started", "item_id": item_in, "audio_start_ms": 0}
            )
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            await self.send(
                {"type": "input_audio_buffer.speech_stopped", "item_id": item_in, "audio_end_ms": 0}
            )
            await self.send({"type": "input_audio_buffer.committed", "item_id": item_in})
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_in,
                    "content_index": 0,
                    "transcript": "bench",
                    "usage": {"type": "duration", "seconds": 2},
                }
            )
            await asyncio.sleep(0.2)
            await self.respond(f"resp_{self.id}_{turn}", f"item_out_{self.id}_{turn}", rng.uniform(1.5, 4.0))

    async def respond(self, response_id: str, item_id: str, seconds: float) -> None:
        server, rng = self.server, self.rng
        await self.send(
            {
                "type": "response.created",
                "response": {
                    "id": response_id,
                    "status": "in_progress",
                    "object": "realtime.response",
                    "output": [],
                },
            }
        )
        prefix = (
            '{"type":"response.output_audio.delta","event_id":"ev_d","response_id":"'
            + response_id
            + '","item_id":"'
            + item_id
            + '","output_index":0,"content_index":0,"delta":"'
        )
        due = time.monotonic()
        spoken_ms = 0
        while spoken_ms < seconds * 1000:
            now = time.monotonic()
            if now >= server.end_at:
                break
            ms = rng.randint(40, 100)
            text = prefix + server.payloads[ms] + '"}'
            if self.writer is not None and self.writer.ready():
                self.writer.write((text,))
            else:
                await self.ws.send_str(text)
            self.down_ms_total += ms
            self.down_t.append(now)
            self.down_ms.append(self.down_ms_total)
            spoken_ms += ms
            due += ms / 1000
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        ids = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send({"type": "response.output_audio.done", **ids})
        await self.send({"type": "response.output_audio_transcript.done", **ids, "transcript": "bench"})
        usage = {
            "total_tokens": 300,
            "input_tokens": 200,
            "output_tokens": 100,
            "input_token_details": {"text_tokens": 50, "audio_tokens": 150, "cached_tokens": 0},
            "output_token_details": {"text_tokens": 20, "audio_tokens": 80},
        }
        await self.send(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "completed",
                    "output": [],
                    "usage": usage,
                },
            }
        )


class FakeModel:
    def __init__(self, audio: str, out_dir: Path, seed: int) -> None:
        self.audio = audio
        self.bytes_per_ms = BYTES_PER_MS[audio]
        self.payloads = delta_payloads(audio)
        self.out_dir = out_dir
        self.seed = seed
        self.end_at = math.inf
        self.ids = itertools.count(1)
        self.conns: dict[int, Connection] = {}
        self._conn_ids = itertools.count(0)
        self._unclaimed: asyncio.Queue[int] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hangups = 0
        self.lag = LoopLagMonitor()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = fastws.TappedWebSocketResponse(max_msg_size=16 * 1024 * 1024, compress=False)
        await ws.prepare(request)
        conn = Connection(next(self._conn_ids), ws, self)
        self.conns[conn.id] = conn
        self._unclaimed.put_nowait(conn.id)
        await conn.send(
            {"type": "session.created", "session": {"type": "realtime", "object": "realtime.session"}}
        )
        speaker = asyncio.create_task(conn.speak(), name=f"fake-model:{conn.id}:speak")
        # Appends are taken as they arrive (the gateway's own fast path, gateway/fastws.py): the fake
        # must stay far cheaper than what it measures. Anything else comes out of receive().
        fastws.tap(ws, conn.on_append)
        try:
            while True:
                message = await ws.receive()
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                if message.type == WSMsgType.TEXT:
                    conn.on_text(message.data, time.monotonic())
        except ConnectionResetError:
            pass
        finally:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError, RuntimeError):
                await speaker
        return ws

    async def twilio_rest(self, request: web.Request) -> web.Response:
        await request.post()
        self.hangups += 1
        return web.json_response({"sid": request.match_info["call"], "status": "completed"})

    async def claim(self, _: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT_S):
                conn_id = await self._unclaimed.get()
        except TimeoutError:
            return web.json_response({"error": "no model connection arrived"}, status=504)
        return web.json_response({"conn": conn_id})

    async def end(self, request: web.Request) -> web.Response:
        self.end_at = float(request.query["at"])
        return web.json_response({"end_at": self.end_at})

    async def totals(self, _: web.Request) -> web.Response:
        return web.json_response(
            {str(c.id): [c.up_bytes / self.bytes_per_ms, c.down_ms_total] for c in self.conns.values()}
        )

    async def dump(self, _: web.Request) -> web.Response:
        arrays: dict[str, np.ndarray] = {}
        for c in self.conns.values():
            for name in ("up_t", "up_ms", "down_t", "down_ms"):
                arrays[f"{name}_{c.id}"] = np.frombuffer(getattr(c, name), dtype=np.float64)
        npz = self.out_dir / "model.npz"
        np.savez(npz, **arrays)  # type: ignore[arg-type]
        info = {
            "connections": len(self.conns),
            "hangups_rest": self.hangups,
            "response_cancels": sum(c.cancels for c in self.conns.values()),
            "truncates": sum(c.truncates for c in self.conns.values()),
            "loop_lag_ms": self.lag.summary(),
            "cpu_seconds": process_cpu_seconds(),
        }
        (self.out_dir / "model.json").write_text(json.dumps(info))
        return web.json_response({"npz": str(npz)})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/realtime", self.realtime)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self.twilio_rest)
        app.router.add_get("/bench/claim", self.claim)
        app.router.add_post("/bench/end", self.end)
        app.router.add_get("/bench/totals", self.totals)
        app.router.add_post("/bench/dump", self.dump)
        return app


async def main_async(args: argparse.Namespace) -> None:
    model = FakeModel(args.audio, Path(args.out), args.seed)
    runner = web.AppRunner(model.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    model.lag.start()
    print(f"READY {args.port}", flush=True)
    try:
        # Bounded: the orchestrator normally ends this process long before; this is the backstop.
        await asyncio.sleep(args.max_seconds)
    finally:
        await model.lag.stop()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI Realtime server for bench/load.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--audio", choices=sorted(BYTES_PER_MS), default="pcm24k")
    parser.add_argument("--out", required=True, help="directory for model.npz / model.json")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long regardless")
    args = parser.parse_args()
    install_fast_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
