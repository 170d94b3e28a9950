"""The MA Tracker cloud's side of relay protocol v1 (DESIGN.md 4 and 6), as a real server on loopback.

`python -m tests.fake_relay --port P --key K` serves the agent's WebSocket at /ws/agent and a small
HTTP API for tests, reviewers and the web-app team. From Python, `FakeRelay` runs the same server
on a background thread with its own asyncio loop. It also checks every frame the agent sends
against the protocol and records what is wrong in `violations`, so tests notice a bad frame even
when they do not look at it. Like the real cloud, it sends every request still waiting for its
response again when the agent says hello on a new connection.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import hmac
import itertools
import json
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from aiohttp import WSMsgType, web

from agent.errors import ALL_CODES

IB_KEYS = {
    "connected",
    "host",
    "port",
    "client_id",
    "accounts",
    "account_type",
    "server_version",
    "market_data_type",
    "read_only",
    "error",
}
MAX_FRAME_BYTES = 256 * 1024 * 1024
PROGRESS_PER_SECOND = 4


def make_certificate(folder, name: str = "relay") -> tuple:
    """A self-signed certificate for 127.0.0.1 made with openssl: (cert.pem, key.pem) paths."""
    import subprocess
    from pathlib import Path

    cert, private = Path(folder) / f"{name}-cert.pem", Path(folder) / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(private),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, private


def tls_relay(cert, private, key: str, port: int = 0) -> "FakeRelay":
    """A started FakeRelay on wss:// with that certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, private)
    relay = FakeRelay(port=port, key=key, ssl_context=context)
    relay.start()
    return relay


def self_signed_relay(test, key: str) -> tuple:
    """For a unittest.TestCase: a started wss:// FakeRelay with a new self-signed certificate, both
    cleaned up after the test; (relay, path of cert.pem) so the test can trust or withhold it."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, folder, True)
    cert, private = make_certificate(folder)
    relay = tls_relay(cert, private, key=key)
    test.addCleanup(relay.stop)
    return relay, str(cert)


class FakeRelayError(Exception):
    """A request the relay could not complete; http_status is what POST /api/request answers."""

    http_status = 500


class AgentNotConnected(FakeRelayError):
    http_status = 503


class RequestTimedOut(FakeRelayError):
    http_status = 504


@dataclass
class _Pending:
    """A request callers are waiting on (FakeRelay.submit, POST /api/request): its frame, sent again
    on every new connection until the response resolves `future`."""

    text: str
    future: asyncio.Future
    callers: int = 0
    sent_on: Optional[web.WebSocketResponse] = None  # the connection it last went out on


def _frame_problems(frame: Any, ib_keys=IB_KEYS) -> List[str]:
    """What is wrong with one agent->cloud frame (empty when it follows DESIGN.md 4)."""
    if not isinstance(frame, dict):
        return ["frame is not a JSON object"]
    kind = frame.get("type")
    if kind == "hello":
        problems = [] if frame.get("protocol") == 1 else ["hello.protocol is not 1"]
        for name, kind_ok in (("agent_version", str), ("session", str), ("actions", list), ("ib", dict)):
            if not isinstance(frame.get(name), kind_ok):
                problems.append(f"hello.{name} missing or of the wrong type")
        if isinstance(frame.get("ib"), dict) and set(frame["ib"]) != ib_keys:
            problems.append(f"hello.ib keys {sorted(frame['ib'])} differ from the IB object")
        return problems
    if kind == "status":
        ib = frame.get("ib")
        return [] if isinstance(ib, dict) and set(ib) == ib_keys else ["status.ib is not the IB object"]
    if kind == "progress":
        ok = (
            isinstance(frame.get("id"), str)
            and isinstance(frame.get("done"), int)
            and isinstance(frame.get("total"), int)
        )
        return [] if ok else [f"progress frame malformed: {frame}"]
    if kind == "response":
        if not isinstance(frame.get("id"), str) or not isinstance(frame.get("ok"), bool):
            return [f"response without id/ok: {str(frame)[:200]}"]
        if frame["ok"]:
            return [] if isinstance(frame.get("data"), dict) else ["response.data is not an object"]
        error = frame.get("error")
        if (
            not isinstance(error, dict)
            or error.get("code") not in ALL_CODES
            or not isinstance(error.get("message"), str)
            or not (error.get("ib_code") is None or isinstance(error.get("ib_code"), int))
        ):
            return [f"response.error malformed: {error}"]
        return []
    if kind in V11_FRAMES:
        return [
            f"{kind}.{name} missing or of the wrong type" for name, ok in V11_FRAMES[kind] if not ok(frame.get(name))
        ]
    return [f"unknown frame type {kind!r}"]


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# The v1.1 pushed frames (DESIGN.md 4): each field and the check its value must pass.
V11_FRAMES = {
    "partial": (
        ("id", lambda v: isinstance(v, str)),
        ("expiration", lambda v: isinstance(v, str) and len(v) == 8 and v.isdigit()),
        ("options", lambda v: isinstance(v, list)),
    ),
    "update": (
        ("subscription", lambda v: isinstance(v, str) and bool(v)),
        ("seq", _is_seq),
        ("options", lambda v: isinstance(v, list)),
        ("underlyings", lambda v: isinstance(v, dict)),
    ),
    "event": (
        ("event", lambda v: v == "order"),
        ("seq", _is_seq),
        ("data", lambda v: isinstance(v, dict)),
    ),
}


class FakeRelay:
    """The cloud double. Start it, point the agent at `url`, then drive the agent through request()."""

    def __init__(
        self,
        port: int = 0,
        key: str = "test-key",
        host: str = "127.0.0.1",
        auto_ack: bool = True,
        ssl_context: Optional[ssl.SSLContext] = None,
        answer_pings: bool = True,
    ):
        self.host = host
        self.answer_pings = answer_pings  # False: a link that looks open but is dead
        self.ssl_context = ssl_context
        self.port = port
        self.key = key
        self.auto_ack = auto_ack
        self.frames: List[Any] = []  # every frame received, parsed (str if not JSON)
        # The connection (1, 2, ...) each of `frames` came on: a cut connection's last frames can be
        # read after the next connection's hello.
        self.frame_connections: List[int] = []
        self._connection_number: Dict[int, int] = {}  # id(ws) -> its number
        self.progress: Dict[str, List[dict]] = collections.defaultdict(list)
        self.responses: Dict[str, dict] = {}  # id -> last response frame
        self.response_counts: collections.Counter = collections.Counter()
        self.violations: List[str] = []
        self.hello: Optional[dict] = None
        self.last_status: Optional[dict] = None
        self.connections = 0  # accepted WebSocket connections
        self.auth_failures = 0  # upgrades refused with 401
        self.auth_failure_times: List[float] = []  # time.monotonic() of each refusal
        self.agent_headers: Dict[str, str] = {}  # of the last accepted connection, minus Authorization
        self.resent_requests = 0  # pending requests sent again after a hello
        self.partials: Dict[str, List[dict]] = collections.defaultdict(list)  # request id -> its partial frames
        self.updates: Dict[str, List[dict]] = collections.defaultdict(list)  # subscription -> its update frames
        self.events: List[dict] = []  # event frames, in arrival order
        self._last_seq: Dict[tuple, int] = {}  # ("update", subscription) / ("event", session) -> last seq
        self._changed = threading.Condition()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._ws: Optional[web.WebSocketResponse] = None
        self._ws_request: Optional[web.Request] = None
        self._frames_this_connection = 0
        self._progress_times: Dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._pending: Dict[str, _Pending] = {}  # id -> a request with callers still waiting
        self._ids = itertools.count(1)

    # ----- lifecycle -----

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}/ws/agent"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self) -> int:
        started = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="fake-relay", daemon=True)
        self._thread.start()
        self.port = started.result(timeout=10)
        return self.port

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def _serve(self, started: concurrent.futures.Future) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # report a bind failure to start() instead of dying silently
            started.set_exception(exc)
            return
        self._loop = loop
        started.set_result(self.port)
        loop.run_forever()
        loop.close()

    async def _listen(self) -> None:
        app = web.Application(client_max_size=MAX_FRAME_BYTES)
        app.add_routes(
            [
                web.get("/ws/agent", self._agent_socket),
                web.post("/api/request", self._http_request),
                web.get("/api/status", self._http_status),
                web.post("/api/raw", self._http_raw),
                web.post("/api/drop", self._http_drop),
                web.post("/api/cancel/{id}", self._http_cancel),
                web.get("/api/progress/{id}", self._http_progress),
                web.get("/api/frames", self._http_frames),
            ]
        )
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=1, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for site in self._runner.sites:  # stop listening first: an agent told of the close finds the port shut
            await site.stop()
        if self._ws is not None:
            await self._ws.close()
        await self._runner.cleanup()

    # ----- the agent's WebSocket -----

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode())

    async def _agent_socket(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            with self._changed:
                self.auth_failures += 1
                self.auth_failure_times.append(time.monotonic())
                self._changed.notify_all()
            return web.json_response({"error": "invalid API key"}, status=401)
        ws = web.WebSocketResponse(autoping=self.answer_pings, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        previous = self._ws
        with self._changed:
            self._ws, self._ws_request = ws, request
            self.connections += 1
            self._connection_number[id(ws)] = self.connections
            self.agent_headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
            self.hello = None
            self._frames_this_connection = 0
            self._changed.notify_all()
        if previous is not None:
            await previous.close()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_frame(ws, message.data)
                elif message.type == WSMsgType.BINARY:
                    self._violation("binary frame received")
        finally:
            with self._changed:
                if self._ws is ws:
                    self._ws = self._ws_request = None
                self._changed.notify_all()
        return ws

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    async def _on_frame(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = text
        problems = _frame_problems(frame)
        kind = frame.get("type") if isinstance(frame, dict) else None
        with self._changed:
            self.frames.append(frame)
            self.frame_connections.append(self._connection_number.get(id(ws), 0))
            self._frames_this_connection += 1
            if self._frames_this_connection == 1 and kind != "hello":
                problems.append(f"first frame of a connection is {kind!r}, not hello")
            self.violations.extend(problems)
            if kind == "hello":
                self.hello = frame
            elif kind == "status":
                self.last_status = frame
            elif kind == "progress" and not problems:
                self._record_progress(frame)
            elif kind in V11_FRAMES and not problems:
                self._record_pushed(kind, frame)
            elif kind == "response" and not problems:
                self.responses[frame["id"]] = frame
                self.response_counts[frame["id"]] += 1
            self._changed.notify_all()
        if kind == "hello":
            await self._resend_pending(ws)
        elif kind == "response" and not problems:
            pending = self._pending.get(frame["id"])
            if pending is not None and not pending.future.done():
                pending.future.set_result(frame)
            if self.auto_ack:
                try:
                    await ws.send_str(json.dumps({"type": "ack", "id": frame["id"]}))
                except ConnectionError:
                    pass  # cut while acking: the agent sends the response again after its hello

    def _record_pushed(self, kind: str, frame: dict) -> None:
        """partial / update / event frames. A seq that does not grow (per subscription for updates,
        per agent session for events) is a violation; a gap is not (a frame can die with a link)."""
        if kind == "partial":
            self.partials[frame["id"]].append(frame)
            return
        if kind == "update":
            self.updates[frame["subscription"]].append(frame)
            key = ("update", frame["subscription"])
        else:
            self.events.append(frame)
            key = ("event", (self.hello or {}).get("session"))
        if frame["seq"] <= self._last_seq.get(key, 0):
            self._violation(f"{kind} seq {frame['seq']} after {self._last_seq[key]} ({key[1]})")
        self._last_seq[key] = frame["seq"]

    def _record_progress(self, frame: dict) -> None:
        self.progress[frame["id"]].append(frame)
        times = self._progress_times[frame["id"]]
        now = time.monotonic()
        times.append(now)
        while times and now - times[0] > 1.0:
            times.popleft()
        if len(times) > PROGRESS_PER_SECOND + 1:  # one of slack for network jitter
            self._violation(f"more than {PROGRESS_PER_SECOND} progress frames a second for {frame['id']}")

    # ----- sending to the agent (loop thread) -----

    async def _send_text(self, text: str) -> web.WebSocketResponse:
        """Send to the agent over its current connection (returned). A connection that is going away
        is no agent either: aiohttp raises a ConnectionResetError subclass for a closing transport."""
        ws = self._ws
        if ws is None or ws.closed:
            raise AgentNotConnected("no agent is connected")
        try:
            await ws.send_str(text)
        except ConnectionError:
            raise AgentNotConnected("the agent's connection went away while sending") from None
        return ws

    async def _send_bytes(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise AgentNotConnected("no agent is connected")
        try:
            await ws.send_bytes(data)
        except ConnectionError:
            raise AgentNotConnected("the agent's connection went away while sending") from None

    async def _write_frames(self, frames: List[tuple]) -> None:
        """Every frame goes to the transport with no await in between, so no frame aiohttp sends (an
        ack) can land inside one; aiohttp writes each of its own frames whole, also without awaiting."""
        request = self._ws_request
        if request is None or request.transport is None or self._ws is None or self._ws.closed:
            raise AgentNotConnected("no agent is connected")
        transport = request.transport
        for opcode, payload, fin in frames:
            pieces = [
                p if isinstance(p, tuple) else (p, 1) for p in (payload if isinstance(payload, list) else [payload])
            ]
            length = sum(len(chunk) * count for chunk, count in pieces)
            first = (0x80 if fin else 0) | opcode
            if length < 126:
                header = struct.pack("!BB", first, length)
            elif length < 1 << 16:
                header = struct.pack("!BBH", first, 126, length)
            else:
                header = struct.pack("!BBQ", first, 127, length)
            transport.write(header)
            for chunk, count in pieces:
                for _ in range(count):
                    transport.write(chunk)

    async def _request(self, frame: dict, timeout_s: float) -> dict:
        """Send a request and wait for its response, across reconnects: a pending request outlives
        the connection it went out on, and _resend_pending sends it again on the next one."""
        text = json.dumps(frame)
        pending = self._pending.get(frame["id"])
        if pending is None:
            pending = self._pending[frame["id"]] = _Pending(text, asyncio.get_running_loop().create_future())
        pending.text = text
        pending.callers += 1
        try:
            pending.sent_on = await self._send_text(text)
            # shielded: one caller's timeout must not cancel the response another caller of this id awaits
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimedOut(f"no response to {frame['id']} within {timeout_s:g} s") from None
        finally:
            pending.callers -= 1
            if not pending.callers:  # answered, timed out or never delivered: nobody left to resend it for
                del self._pending[frame["id"]]

    async def _resend_pending(self, ws: web.WebSocketResponse) -> None:
        """What the real cloud does when the agent says hello again: every request still without a
        response goes out again with its id, so a request frame lost in a cut is still answered (the
        agent runs an id once: a running request's response follows, a finished one's comes again)."""
        for pending in list(self._pending.values()):
            if pending.future.done() or pending.sent_on is ws:
                continue
            try:
                await ws.send_str(pending.text)
            except ConnectionError:
                return  # this connection is gone too; the next hello sends them again
            pending.sent_on = ws
            self.resent_requests += 1

    async def _drop(self) -> bool:
        request = self._ws_request
        if request is None or request.transport is None:
            return False
        sock = request.transport.get_extra_info("socket")
        if sock is not None:  # linger 0: the agent sees a reset, not a clean close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
        return True

    def _run(self, coro, timeout: Optional[float] = 10) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FakeRelay is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    # ----- Python API -----

    def new_id(self) -> str:
        return f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"

    def submit(
        self, action: str, params: Optional[dict] = None, id: Optional[str] = None, timeout_s: float = 30
    ) -> concurrent.futures.Future:
        """Send a request; the future resolves to the response frame (or AgentNotConnected/RequestTimedOut)."""
        frame = {"type": "request", "id": id or self.new_id(), "action": action, "params": params or {}}
        return asyncio.run_coroutine_threadsafe(self._request(frame, timeout_s), self._loop)

    def request(
        self, action: str, params: Optional[dict] = None, id: Optional[str] = None, timeout_s: float = 30
    ) -> dict:
        return self.submit(action, params, id, timeout_s).result(timeout=timeout_s + 10)

    def send(self, frame: dict) -> None:
        self.send_raw(json.dumps(frame))

    def send_raw(self, text: str) -> None:
        self._run(self._send_text(text))

    def send_binary(self, data: bytes) -> None:
        """One binary frame (the agent must drop it: DESIGN.md 4)."""
        self._run(self._send_bytes(data))

    def send_frames(self, frames: List[tuple], timeout: float = 120) -> None:
        """Raw WebSocket frames written as given, for what aiohttp will not send: a message in
        fragments (continuation frames), a ping between them, a frame of any size. Each frame is
        (opcode, payload, fin); payload is bytes, (chunk, count) for `count` times `chunk`, or a list
        of those, written piece by piece so a 64 MiB frame is never one bytes object here (the
        transport still buffers what the agent has not read yet)."""
        self._run(self._write_frames(frames), timeout)

    def cancel(self, request_id: str) -> None:
        self.send({"type": "cancel", "id": request_id})

    def ack(self, request_id: str) -> None:
        self.send({"type": "ack", "id": request_id})

    def drop(self) -> bool:
        """Cut the agent's connection abruptly (no close frame); False when none was connected."""
        return self._run(self._drop())

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def status(self) -> dict:
        return {
            "connected": self.connected,
            "hello": self.hello,
            "status": self.last_status,
            "connections": self.connections,
            "auth_failures": self.auth_failures,
        }

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """Wait until predicate() is truthy (re-checked on every frame and connection change)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake relay: timed out after {timeout:g} s waiting for {what}")
                self._changed.wait(min(left, 0.2))

    def wait_hello(self, timeout: float = 15.0, connections: int = 1) -> dict:
        """The hello of the given connection number (1 = first ever)."""
        return self.wait_until(
            lambda: self.connections >= connections and self.hello, timeout, f"hello on connection {connections}"
        )

    def frames_of(self, kind: str) -> List[dict]:
        with self._changed:
            return [f for f in self.frames if isinstance(f, dict) and f.get("type") == kind]

    # ----- HTTP API -----

    async def _http_request(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "invalid API key"}, status=401)
        try:
            body = await request.json()
            action = body["action"]
            params = body.get("params") or {}
            timeout_s = float(body.get("timeout_s", 30))
            request_id = body.get("id") or self.new_id()
            if not isinstance(action, str) or not isinstance(params, dict) or not 0 < timeout_s <= 3600:
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response(
                {"error": 'body must be {"action": str, "params": {}, "id"?: str, "timeout_s"?: number}'}, status=400
            )
        frame = {"type": "request", "id": request_id, "action": action, "params": params}
        try:
            return web.json_response(await self._request(frame, timeout_s))
        except FakeRelayError as exc:
            return web.json_response({"error": str(exc), "id": request_id}, status=exc.http_status)

    async def _http_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _http_raw(self, request: web.Request) -> web.Response:
        try:
            if request.query.get("binary") in ("1", "true"):
                await self._send_bytes(await request.read())
            else:
                await self._send_text(await request.text())
        except AgentNotConnected as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"sent": True})

    async def _http_drop(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": await self._drop()})

    async def _http_cancel(self, request: web.Request) -> web.Response:
        try:
            await self._send_text(json.dumps({"type": "cancel", "id": request.match_info["id"]}))
        except AgentNotConnected as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"sent": True})

    async def _http_progress(self, request: web.Request) -> web.Response:
        return web.json_response({"progress": self.progress.get(request.match_info["id"], [])})

    async def _http_frames(self, request: web.Request) -> web.Response:
        return web.json_response({"frames": self.frames, "violations": self.violations})


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_relay", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--key", required=True, help="the API key the agent must present")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-ack", action="store_true", help="do not ack responses (outbox tests)")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    relay = FakeRelay(port=args.port, key=args.key, host=args.host, auto_ack=not args.no_ack)
    port = relay.start()
    print(f"fake_relay listening on {args.host}:{port}", flush=True)
    while not stopping.wait(0.5):
        pass
    relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
