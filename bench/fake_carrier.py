"""A lean fake Twilio for bench/load.py, run as its own process: it places N calls and drives the run.

Each call goes through the real flow: a signed voice webhook, the <Connect><Stream> TwiML it gets back,
a signed Media Streams upgrade, `connected` and `start` (protocols.md §C). Then the call streams caller
audio, a 160-byte µ-law media frame every 20 ms, silence or not, as Twilio does; and it plays back
what the gateway sends in real time, echoing each mark once the audio queued before it has played
(and every pending mark at once on `clear`).

Calls are opened one at a time; after each `start` the carrier claims the fake model's oldest
unclaimed connection (GET /bench/claim), which is how the two processes agree on which model socket
belongs to which call without touching the gateway's traffic.

Frames are sent by one ticker for all calls: every 2 ms it serves one of ten groups of calls, so each
call gets a frame every 20 ms and the load is spread over the period rather than arriving as one
burst. A late tick is caught up, never skipped, so no frame is dropped by the carrier itself.

Run order (printed on stdout for bench/load.py): ramp, `HOLD_START <t>`, hold, `HOLD_END <t>`, drain
until the fake model has all caller audio and the carrier all model audio (bounded), hang up, write
carrier.npz / carrier.json, ask the model to write its side, `DONE`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from array import array
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from gateway import fastws

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audiosignals import speech_like, ulaw_encode
from benchproc import LoopLagMonitor, install_fast_loop, process_cpu_seconds
from loadstats import TOL_MS

TICK_S = 0.002
GROUPS = 10  # TICK_S * GROUPS = 20 ms, Twilio's frame period
FRAME_MS = 20
ACCOUNT_SID = "AC" + "b" * 32
SOCKET_DONE = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the media socket's size limit (aiohttp's default, said out loud)


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature (§C.3): HMAC-SHA1 over the URL and each sorted name+value, base64."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def caller_frames() -> list[str]:
    """One second of speech-like µ-law in 20 ms frames, base64, to cycle through."""
    ulaw = ulaw_encode(speech_like(8000, 1.0).tobytes())
    return [base64.b64encode(ulaw[i : i + 160]).decode() for i in range(0, len(ulaw), 160)]


class Call:
    def __init__(
        self, index: int, conn: int, ws: aiohttp.ClientWebSocketResponse, sid: str, stream: str
    ) -> None:
        self.index = index
        self.conn = conn
        self.ws = ws
        self.call_sid = sid
        self.stream_sid = stream
        self.send_t = array("d")
        self.recv_t = array("d")
        self.recv_ms = array("d")
        self.recv_bytes = 0
        self.seq = 2  # `start` was 1
        self.marks: deque[tuple[str, float]] = deque()
        self.playback_end = 0.0
        self.marks_echoed = 0
        self.clears = 0
        self.closed_at = math.inf
        self.reader: asyncio.Task[None] | None = None
        self.writer = fastws.writer(ws)
        self._frame_prefix = '{"event":"media","sequenceNumber":"'
        self._frame_mid = '","streamSid":"' + stream + '","media":{"track":"inbound","chunk":"'
        # The gateway's own serialisation of its media and mark frames (compact, streamSid second),
        # recognised by prefix so the carrier need not parse JSON for the two frames it gets most;
        # anything else, or any difference at all, goes through json.loads.
        self._media_in = '{"event":"media","streamSid":' + json.dumps(stream) + ',"media":{"payload":"'
        self._mark_in = '{"event":"mark","streamSid":' + json.dumps(stream) + ',"mark":{"name":"'
        self._echo_mid = '","streamSid":' + json.dumps(stream) + ',"mark":{"name":'

    async def send_json(self, frame: dict[str, Any]) -> None:
        frame = {
            "event": frame["event"],
            "sequenceNumber": str(self.seq),
            "streamSid": self.stream_sid,
            **frame,
        }
        self.seq += 1
        await self.ws.send_str(json.dumps(frame))

    async def send_frame(self, payload: str) -> None:
        chunk = len(self.send_t) + 1
        text = (
            f'{self._frame_prefix}{self.seq}{self._frame_mid}{chunk}","timestamp":"{(chunk - 1) * FRAME_MS}",'
            f'"payload":"{payload}"}}}}'
        )
        self.seq += 1
        self.send_t.append(time.monotonic())
        await self.write(text)

    async def write(self, text: str) -> None:
        # Straight to the socket where it can take it (the gateway's own fast path): the fake must
        # stay far cheaper than what it measures.
        if self.writer is not None and self.writer.ready():
            self.writer.write((text,))
        else:
            await self.ws.send_str(text)

    async def echo_marks(self, now: float) -> None:
        while self.marks and self.marks[0][1] <= now:
            name, _ = self.marks.popleft()
            self.marks_echoed += 1
            # What send_json would write, without building and serialising a dict per echo.
            seq = str(self.seq)
            text = '{"event":"mark","sequenceNumber":"' + seq + self._echo_mid + json.dumps(name) + "}}"
            self.seq += 1
            await self.write(text)

    def _played(self, now: float, nbytes: int) -> None:
        self.recv_bytes += nbytes
        self.recv_t.append(now)
        self.recv_ms.append(self.recv_bytes / 8)
        self.playback_end = max(self.playback_end, now) + nbytes / 8000

    def _fast_path(self, data: str, now: float) -> bool:
        """Media and marks in the gateway's exact layout, without json.loads; False for anything else."""
        if not data.endswith('"}}'):
            return False
        if data.startswith(self._media_in):
            payload = data[len(self._media_in) : -3]
            if len(payload) % 4 or '"' in payload or "\\" in payload:
                return False
            self._played(now, len(payload) // 4 * 3 - (len(payload) - len(payload.rstrip("="))))
            return True
        if data.startswith(self._mark_in):
            name = data[len(self._mark_in) : -3]
            if '"' in name or "\\" in name:
                return False
            self.marks.append((name, self.playback_end))
            return True
        return False

    async def read(self) -> None:
        """Record the gateway's audio as it arrives; queue its marks behind it for playback."""
        fastws.tap(self.ws, lambda text: self._fast_path(text, time.monotonic()), MAX_MESSAGE_BYTES)
        try:
            while True:
                message = await self.ws.receive()
                if message.type in SOCKET_DONE:
                    break
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.monotonic()
                if self._fast_path(message.data, now):
                    continue
                frame = json.loads(message.data)
                event = frame.get("event")
                if event == "media":
                    self._played(now, len(base64.b64decode(frame["media"]["payload"])))
                elif event == "mark":
                    self.marks.append((frame["mark"]["name"], self.playback_end))
                elif event == "clear":
                    # Twilio drops what is queued and reports every pending mark (§C.5).
                    self.clears += 1
                    self.playback_end = now
                    await self.echo_marks(math.inf)
        finally:
            self.closed_at = time.monotonic()


class FakeCarrier:
    def __init__(self, args: argparse.Namespace, http: aiohttp.ClientSession) -> None:
        self.args = args
        self.http = http
        self.gateway = args.gateway.rstrip("/")
        self.public_url = args.public_url.rstrip("/")
        self.control = args.model_control.rstrip("/")
        self.calls: list[Call] = []
        self.groups: list[list[Call]] = [[] for _ in range(GROUPS)]
        self.failures: list[str] = []
        self.send_until = math.inf
        self.stopped = False
        self.payloads = caller_frames()
        self.lag = LoopLagMonitor()

    async def open_call(self, index: int) -> Call:
        call_sid = f"CA{index:032x}"
        params = {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT_SID,
            "From": "+15551230000",
            "To": "+15555550100",
            "CallStatus": "ringing",
            "ApiVersion": "2010-04-01",
            "Direction": "inbound",
        }
        signature = twilio_signature(self.args.auth_token, self.public_url + "/twilio/voice", params)
        async with self.http.post(
            self.gateway + "/twilio/voice", data=params, headers={"X-Twilio-Signature": signature}
        ) as response:
            body = await response.text()
            if response.status != 200:
                raise RuntimeError(f"webhook answered HTTP {response.status}")
        stream = ET.fromstring(body).find("./Connect/Stream")  # noqa: S314 - our own gateway wrote it
        if stream is None:
            raise RuntimeError("webhook answered without <Connect><Stream> (rejected?)")
        url = stream.attrib["url"]
        custom = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        ws = await self.http.ws_connect(
            url,
            headers={"X-Twilio-Signature": twilio_signature(self.args.auth_token, url, {})},
            max_msg_size=MAX_MESSAGE_BYTES,
        )
        stream_sid = f"MZ{index:032x}"
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "accountSid": ACCOUNT_SID,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": custom,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await ws.send_str(
            json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start})
        )
        async with self.http.get(self.control + "/bench/claim") as response:
            claimed = await response.json()
            if response.status != 200:
                await ws.close()
                raise RuntimeError(f"no model connection for call {index}: {claimed}")
        call = Call(index, int(claimed["conn"]), ws, call_sid, stream_sid)
        call.reader = asyncio.create_task(call.read(), name=f"fake-carrier:{index}:read")
        return call

    async def ticker(self) -> None:
        t0 = time.monotonic()
        tick = 0
        payloads = self.payloads
        while not self.stopped:
            due = t0 + tick * TICK_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            sending = due < self.send_until
            for call in self.groups[tick % GROUPS]:
                if call.closed_at <= now:
                    continue
                try:
                    if sending:
                        await call.send_frame(payloads[(call.index + len(call.send_t)) % len(payloads)])
                    await call.echo_marks(now)
                except (ConnectionResetError, RuntimeError):
                    call.closed_at = min(call.closed_at, now)
            tick += 1

    async def ramp(self) -> None:
        args = self.args
        started = time.monotonic()
        deadline = started + args.ramp_timeout
        for index in range(args.calls):
            await asyncio.sleep(max(0.0, started + index / args.ramp_rate - time.monotonic()))
            if time.monotonic() > deadline:
                self.failures.append(f"ramp timeout after {index} calls")
                break
            try:
                call = await self.open_call(index)
            except (aiohttp.ClientError, RuntimeError, TimeoutError, KeyError) as exc:
                self.failures.append(f"call {index}: {type(exc).__name__}: {exc}")
                if "model connection" in str(exc):
                    break  # the claim order can no longer be trusted
                continue
            self.calls.append(call)
            self.groups[index % GROUPS].append(call)

    async def drained(self) -> bool:
        """True once the model has every caller frame and the carrier every model delta (within tol)."""
        tol = TOL_MS[self.args.audio]
        async with self.http.get(self.control + "/bench/totals") as response:
            totals: dict[str, list[float]] = await response.json()
        for call in self.calls:
            if call.closed_at < math.inf:
                continue
            up_ms, down_ms = totals.get(str(call.conn), [0.0, 0.0])
            if up_ms < len(call.send_t) * FRAME_MS - tol or call.recv_bytes / 8 < down_ms - tol:
                return False
        return True

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.lag.start()
        ticker = asyncio.create_task(self.ticker(), name="fake-carrier:ticker")
        try:
            await self.ramp()
            hold_start = time.monotonic()
            hold_end = hold_start + args.seconds
            async with self.http.post(self.control + "/bench/end", params={"at": repr(hold_end)}):
                pass
            self.send_until = hold_end
            print(f"HOLD_START {hold_start!r} {len(self.calls)}", flush=True)
            await asyncio.sleep(max(0.0, hold_end - time.monotonic()))
            print(f"HOLD_END {time.monotonic()!r}", flush=True)
            drain_deadline = time.monotonic() + args.drain_timeout
            drained = False
            while time.monotonic() < drain_deadline:
                if drained := await self.drained():
                    break
                await asyncio.sleep(0.05)
            held = sum(1 for c in self.calls if c.closed_at >= hold_end)
        finally:
            self.stopped = True
            await asyncio.gather(ticker, return_exceptions=True)
            await self.hang_up()
            await self.lag.stop()
        return {
            "calls_requested": args.calls,
            "calls_opened": len(self.calls),
            "calls_held": held,
            "failures": self.failures[:20],
            "failures_total": len(self.failures),
            "hold_start": hold_start,
            "hold_end": hold_end,
            "drained": drained,
            "marks_echoed": sum(c.marks_echoed for c in self.calls),
            "clears": sum(c.clears for c in self.calls),
            "loop_lag_ms": self.lag.summary(),
        }

    async def hang_up(self) -> None:
        for call in self.calls:
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                if call.closed_at == math.inf:
                    await call.send_json(
                        {"event": "stop", "stop": {"accountSid": ACCOUNT_SID, "callSid": call.call_sid}}
                    )
        readers = [c.reader for c in self.calls if c.reader is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*readers, return_exceptions=True)
        for call in self.calls:
            await call.ws.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def save(self, out: Path, summary: dict[str, Any]) -> None:
        arrays: dict[str, np.ndarray] = {"conn": np.array([c.conn for c in self.calls], dtype=np.int64)}
        for c in self.calls:
            for name in ("send_t", "recv_t", "recv_ms"):
                arrays[f"{name}_{c.index}"] = np.frombuffer(getattr(c, name), dtype=np.float64)
        arrays["index"] = np.array([c.index for c in self.calls], dtype=np.int64)
        np.savez(out / "carrier.npz", **arrays)  # type: ignore[arg-type]
        summary["cpu_seconds"] = process_cpu_seconds()
        (out / "carrier.json").write_text(json.dumps(summary))


async def main_async(args: argparse.Namespace) -> None:
    # The default connector opens at most 100 connections at once: every call holds one for its socket.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, ws_response_class=fastws.TappedClientWebSocketResponse
    ) as http:
        carrier = FakeCarrier(args, http)
        summary = await carrier.run()
        out = Path(args.out)
        carrier.save(out, summary)
        async with http.post(carrier.control + "/bench/dump") as response:
            response.raise_for_status()
    print("DONE", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="fake Twilio caller side for bench/load.py")
    parser.add_argument("--gateway", required=True, help="http://127.0.0.1:<port> of the gateway")
    parser.add_argument("--public-url", required=True, help="the gateway's server.public_url (signed URL)")
    parser.add_argument("--model-control", required=True, help="http://127.0.0.1:<port> of the fake model")
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--audio", choices=sorted(TOL_MS), default="pcm24k")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ramp-rate", type=float, default=50.0, help="calls opened per second at most")
    parser.add_argument("--ramp-timeout", type=float, default=120.0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    install_fast_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
