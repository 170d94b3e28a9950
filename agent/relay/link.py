"""The WebSocket to the MA Tracker cloud (relay protocol v1, DESIGN.md 4; docs/PROTOCOL.md).

RelayLink owns the connection (its own thread, redialled after the wait ReconnectPolicy decides),
the frames the agent sends (hello, status, progress, response: all through one lock), the outbox of
unacknowledged responses, and each request's life from arrival to response: duplicates, cancels and
acks are settled here, and the work itself is handed to an executor that must never block the
reader thread. It also says, once per outage and per reason, why the link is down.

What the cloud sends is read and parsed by agent.relay.frames (a message over 1 MiB is skipped
unread, binary and non-UTF-8 messages never reach the request parser, JSON with a repeated key is
refused); the TLS context and the line for a refused certificate are agent.relay.tls's.
"""

from __future__ import annotations

import collections
import json
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

import websocket

from agent import log as agent_log
from agent.backoff import ReconnectPolicy
from agent.config import relay_url_problem
from agent.errors import AgentError, Internal, InvalidRequest
from agent.ib.requests import CancelToken
from agent.relay.frames import LOGGED_FRAME_CHARS, BoundedFrameReader, ParsedFrame
from agent.relay.tls import tls_context, tls_help

PROTOCOL_VERSION = 1
# Order actions are idempotent like a payment API's keys (DESIGN.md 4, Delivery): a repeat of an
# answered id goes to the order desk, which answers it from its request-id store (35 days, across
# restarts) or from TWS. The link never answers it "already answered": that advice once made the
# cloud place the order again under a new id.
ORDER_ACTIONS = frozenset(("place-order", "cancel-order"))
MAX_ID_LENGTH = 128
MAX_ACTION_LENGTH = 64
MAX_PATH_CHARS = 200  # of a field path named in an INVALID_REQUEST message
AUTH_FAILED_HELP = (
    "Authentication failed: the MA Tracker cloud rejected the API key (HTTP {status}). "
    "Your API key may have been regenerated. Download a fresh copy of the agent from the "
    "MA Tracker web app. Retrying in {retry}."
)
CONNECT_FAILED_HELP = (
    "WebSocket connection failed ({reason}). Check your internet connection; the "
    "MA Tracker cloud may be temporarily unavailable. The agent will retry automatically."
)

log = agent_log.logger("relay")


@dataclass(frozen=True)
class LinkTimings:
    """Seconds. The defaults are the product's; tests shorten them."""

    backoff_min_s: float = 1.0  # full-jitter window of the first retry; doubles per failure
    backoff_max_s: float = 15.0  # cap of that window: the longest a flapping link waits offline
    stable_s: float = 10.0  # a connection that lasted this long resets the backoff
    auth_retry_s: float = 300.0  # wait after the cloud refused the key (401/403)
    ping_interval_s: float = 20.0  # a dead link is noticed within ping_interval + ping_timeout
    ping_timeout_s: float = 10.0
    io_timeout_s: float = 15.0  # TCP/TLS connect, handshake and a stalled send
    status_interval_s: float = 30.0
    progress_after_s: float = 1.0  # progress frames only for work running longer than this
    progress_interval_s: float = 0.25  # and at most this often per request (4 a second)
    console_progress_s: float = 10.0  # a request running longer than this says how far it is, this often


@dataclass(frozen=True)
class OutboxLimits:
    max_age_s: float = 600.0
    max_count: int = 1000
    max_bytes: int = 50 * 1024 * 1024
    remembered_ids: int = 10000  # ids of forgotten responses, so they are never executed again


def _seconds_text(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{seconds:g} s"


class Outbox:
    """Responses the cloud has not acknowledged yet, oldest first, within OutboxLimits.

    Not thread-safe on its own: RelayLink calls it under its lock.
    """

    def __init__(self, limits: OutboxLimits):
        self._limits = limits
        self._entries: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()  # id -> (text, bytes, t)
        self._bytes = 0
        self._answered: "collections.OrderedDict[str, None]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, request_id: str, text: str) -> None:
        self.expire()
        self._remove(request_id)
        size = len(text.encode("utf-8"))
        self._entries[request_id] = (text, size, time.monotonic())
        self._bytes += size
        self._answered[request_id] = None
        self._answered.move_to_end(request_id)
        while len(self._answered) > self._limits.remembered_ids:
            self._answered.popitem(last=False)
        while len(self._entries) > self._limits.max_count or self._bytes > self._limits.max_bytes:
            self._drop_oldest("the outbox is full")

    def get(self, request_id: str) -> Optional[str]:
        entry = self._entries.get(request_id)
        return entry[0] if entry else None

    def ack(self, request_id: str) -> bool:
        return self._remove(request_id)

    def was_answered(self, request_id: str) -> bool:
        return request_id in self._answered

    def texts(self) -> List[str]:
        return [text for text, _, _ in self._entries.values()]

    def expire(self) -> None:
        oldest_allowed = time.monotonic() - self._limits.max_age_s
        while self._entries and next(iter(self._entries.values()))[2] < oldest_allowed:
            self._drop_oldest(f"not acknowledged within {_seconds_text(self._limits.max_age_s)}")

    def _drop_oldest(self, reason: str) -> None:
        request_id = next(iter(self._entries))
        self._remove(request_id)
        log.warning("Dropped the response to request %s: %s", request_id, reason)

    def _remove(self, request_id: str) -> bool:
        entry = self._entries.pop(request_id, None)
        if entry:
            self._bytes -= entry[1]
        return entry is not None


class Job:
    """One request from the cloud, from arrival to its response. The executor calls progress() and
    finish(); it watches `cancel` (a CancelToken: setting it wakes whoever waits on it)."""

    def __init__(self, link: "RelayLink", request_id: str, action: str, params: dict):
        self.id = request_id
        self.action = action
        self.params = params
        self.cancel = CancelToken()
        self.received = time.monotonic()
        self.last_progress = 0.0
        self.console_progress_at = 0.0  # seconds after `received` of the next console progress line
        self._link = link

    def progress(self, done: int, total: int) -> None:
        self._link.job_progress(self, done, total)

    def partial(self, fields: dict) -> None:
        """A v1.1 `partial` frame for this request (e.g. one expiration of a chain): best effort."""
        self._link.job_partial(self, fields)

    def finish(self, data: Optional[dict] = None, error: Optional[AgentError] = None) -> None:
        self._link.job_finish(self, data, error)


def relay_headers(key: str, agent_version: str) -> List[str]:
    """The upgrade's headers (DESIGN.md 4): the key as a bearer token and the agent's version."""
    return [f"Authorization: Bearer {key}", f"X-Agent-Version: {agent_version}"]


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH


def _preview(text: str, limit: int = LOGGED_FRAME_CHARS, masker: Optional[agent_log.Masker] = None) -> str:
    """The start of a frame (or an id) for a log line, with control characters escaped: what the
    cloud sends must not be able to move the cursor or recolour the user's console. The key is
    masked before the cut (agent.log.clip): a cut through it would leave a fragment."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in agent_log.clip(text, limit, masker))


def _describe(exc: Optional[BaseException], masker: Optional[agent_log.Masker] = None) -> str:
    if exc is None:
        return "closed by the server"
    if isinstance(exc, websocket.WebSocketBadStatusException):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate could not be verified: {exc.verify_message}"
    text = agent_log.mask(str(exc), masker) or exc.__class__.__name__
    return agent_log.clip(text.splitlines()[0], 200, masker)


class RelayLink:
    """Connects, says hello, keeps the link alive, and delivers every response at least once.

    executor(job) is called on the reader thread for each new request and must return at once; it
    answers later (or at once) with job.finish(). ib_status() gives the IB object for hello/status.

    A repeated id: still running -> its one response follows; answered and held (not acked) -> the
    held response is sent again; answered and forgotten (acked, or dropped from the outbox) -> an
    `order_actions` id goes to the executor again (the order desk answers it with the original
    outcome, from its store or TWS), any other id is INVALID_REQUEST "already answered".
    """

    def __init__(
        self,
        url: str,
        key: str,
        agent_version: str,
        actions: List[str],
        ib_status: Callable[[], dict],
        executor: Callable[[Job], None],
        timings: LinkTimings = LinkTimings(),
        limits: OutboxLimits = OutboxLimits(),
        order_actions: Iterable[str] = ORDER_ACTIONS,
        hello_fields: Callable[[], dict] = dict,
    ):
        problem = relay_url_problem(url)
        if problem is not None:  # the config refuses it first; this guards every other caller
            raise ValueError(f"relay URL {problem[0]}")
        self.url = url
        self.session = str(uuid.uuid4())
        self._key = key
        self._masker = agent_log.Masker([key])  # for text cut short before logging masks it
        self._agent_version = agent_version
        self._actions = list(actions)
        self._ib_status = ib_status
        self._executor = executor
        self._hello_fields = hello_fields
        self._link_listeners: List[Callable[[bool], None]] = []
        self._order_actions = frozenset(order_actions)
        self._timings = timings
        self._outbox = Outbox(limits)
        self._running: Dict[str, Job] = {}
        self._lock = threading.RLock()  # the one sender; also guards _running and _outbox
        self._open_app: Optional[websocket.WebSocketApp] = None
        self._app: Optional[websocket.WebSocketApp] = None
        self._stopping = threading.Event()
        self._status_due = threading.Event()
        self._threads: List[threading.Thread] = []
        self._last_error: Optional[BaseException] = None
        self._opened_at: Optional[float] = None
        self._offline_since: Optional[float] = None  # set while the link is down, after it first failed
        self._reasons_reported: set = set()  # why dials failed in this outage, each said once
        self._ssl_context, self._tls_roots = tls_context()  # CERT_REQUIRED + hostname check, always
        self._backoff = ReconnectPolicy(timings.backoff_min_s, timings.backoff_max_s, timings.stable_s)

    # ----- public -----

    @property
    def unacked(self) -> int:
        return len(self._outbox)

    def start(self) -> None:
        websocket.setdefaulttimeout(self._timings.io_timeout_s)
        for target, name in ((self._connect_forever, "relay-link"), (self._status_loop, "relay-status")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def push(self, frame: dict) -> bool:
        """Send a frame that belongs to no request's delivery (v1.1 `update`, `event`) now, if the
        link is up; best effort: never kept, never sent again. False when it did not go out."""
        try:
            text = json.dumps(frame, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:  # a bug upstream; the frame is dropped, the link stays
            log.error("A %s frame cannot be sent as JSON: %s", frame.get("type"), exc)
            return False
        with self._lock:
            return self._send_locked(text)

    def add_link_listener(self, fn: Callable[[bool], None]) -> None:
        """fn(True) after each connection's hello (and held responses) went out, fn(False) when a
        connection ends; called on the link's thread, must return at once."""
        self._link_listeners.append(fn)

    def _tell_link_listeners(self, up: bool) -> None:
        for fn in list(self._link_listeners):
            try:
                fn(up)
            except Exception:
                log.exception("Error in a relay link listener")

    def status_changed(self) -> None:
        """IB state changed (any thread, never blocks): a status frame goes out from the status thread."""
        self._status_due.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._status_due.set()
        app = self._app
        if app is not None:
            self._hang_up(app)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    @staticmethod
    def _hang_up(app: websocket.WebSocketApp) -> None:
        """Close frame, then shut the socket down: that wakes the reader thread's select() at once
        (app.close() alone leaves it waiting for the next ping timeout)."""
        app.keep_running = False
        ws = app.sock
        if ws is None:
            return
        try:
            if ws.connected:
                ws.send_close()
            if ws.sock is not None:
                ws.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, websocket.WebSocketException):
            pass  # already gone

    # ----- sending (all frames go through _send_locked) -----

    def _send_locked(self, text: str) -> bool:
        app = self._open_app
        if app is None:
            return False
        try:
            app.send(text)
            return True
        except (websocket.WebSocketException, OSError) as exc:
            log.debug("send failed: %s", _describe(exc, self._masker))
            self._open_app = None  # the reader thread notices the broken socket and reconnects
            return False

    def _send_frame(self, frame: dict) -> bool:
        text = json.dumps(frame, separators=(",", ":"))
        with self._lock:
            return self._send_locked(text)

    def _hello(self) -> dict:
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "agent_version": self._agent_version,
            "session": self.session,
            "actions": self._actions,
            "ib": self._ib_status(),
            **self._hello_fields(),
        }

    # -- what a Job reports (its executor's thread) --
    def job_progress(self, job: Job, done: int, total: int) -> None:
        now = time.monotonic()
        self._console_progress(job, now - job.received, done, total)
        with self._lock:
            if (
                now - job.received < self._timings.progress_after_s
                or now - job.last_progress < self._timings.progress_interval_s
                or job.id not in self._running
            ):
                return
            job.last_progress = now
            self._send_locked(
                json.dumps(
                    {"type": "progress", "id": job.id, "done": int(done), "total": int(total)}, separators=(",", ":")
                )
            )

    def job_partial(self, job: Job, fields: dict) -> None:
        with self._lock:
            running = self._running.get(job.id) is job
        if running:
            self.push({"type": "partial", "id": job.id, **fields})

    def _console_progress(self, job: Job, elapsed: float, done: int, total: int) -> None:
        """One console line per console_progress_s (10 s) of a long request, as far as its progress
        frames say: `fetch-chain SPY: 412/1046 contracts after 20 s`."""
        every = self._timings.console_progress_s
        with self._lock:
            if not job.console_progress_at:
                job.console_progress_at = every
            if elapsed < job.console_progress_at:
                return
            after = int(elapsed // every) * every
            job.console_progress_at = after + every
        ticker = job.params.get("ticker") if isinstance(job.params, dict) else None
        subject = job.action + (f" {ticker.strip().upper()}" if isinstance(ticker, str) else "")
        log.info("%s: %d/%d contracts after %g s", _preview(subject, 80, self._masker), done, total, after)

    def job_finish(self, job: Job, data: Optional[dict], error: Optional[AgentError]) -> None:
        if error is None:
            frame = {"type": "response", "id": job.id, "ok": True, "data": data}
        else:
            frame = {"type": "response", "id": job.id, "ok": False, "error": error.to_dict()}
        try:
            text = json.dumps(frame, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:  # NaN or an object JSON cannot carry: a bug upstream
            log.error("Response to request %s (%s) cannot be sent as JSON: %s", job.id, job.action, exc)
            text = json.dumps(
                {
                    "type": "response",
                    "id": job.id,
                    "ok": False,
                    "error": Internal("the agent produced a response it cannot encode").to_dict(),
                }
            )
        with self._lock:
            if self._running.get(job.id) is job:
                del self._running[job.id]
            self._outbox.put(job.id, text)
            self._send_locked(text)

    # ----- frames from the cloud (reader thread) -----

    def _on_message(self, app: websocket.WebSocketApp, text: Any) -> None:
        try:
            self._handle_frame(text)
        except Exception:  # a bug here must not kill the link; it is logged with its traceback
            log.exception("Failed to handle a frame from the cloud")

    def _handle_frame(self, text: Any) -> None:
        if isinstance(text, bytes):  # a RefusedMessage from BoundedFrameReader (plain bytes cannot get here)
            reason = getattr(text, "reason", f"binary frame, {len(text):,} bytes")
            log.warning(
                "Ignored a frame from the cloud (%s): %s",
                reason,
                _preview(bytes(text).decode("utf-8", "replace"), masker=self._masker),
            )
            return
        try:
            parsed = ParsedFrame(text)
        except (ValueError, TypeError, RecursionError):  # RecursionError: absurdly deep nesting
            parsed = None
        frame = parsed.value if parsed else None
        if not isinstance(frame, dict) or parsed.repeated_id or not _usable_id(frame.get("id")):
            problem = (
                "not a JSON object"
                if not isinstance(frame, dict)
                else "the key id is repeated"
                if parsed.repeated_id
                else "no usable id"
            )
            log.warning("Ignored a frame from the cloud (%s): %s", problem, _preview(str(text), masker=self._masker))
            return
        request_id, kind = frame["id"], frame.get("type")
        if parsed.repeated_path is not None:
            # keys are the cloud's: a path is cut short rather than echoed whole (masked first)
            path = agent_log.clip(parsed.repeated_path, MAX_PATH_CHARS, self._masker, ellipsis="...")
            self._reject(
                request_id, frame.get("action"), f"{path}: repeated key; each key may appear once in a JSON object"
            )
        elif kind == "ack":
            with self._lock:
                self._outbox.ack(request_id)
        elif kind == "cancel":
            self._cancel(request_id)
        elif kind == "request":
            self._accept(request_id, frame)
        else:
            self._reject(request_id, frame.get("action"), "type: must be request, cancel or ack")

    def _cancel(self, request_id: str) -> None:
        with self._lock:
            job = self._running.get(request_id)
        if job is None:
            log.debug("cancel for %s, which is not running", request_id)
            return
        # the request's own line says it ended cancelled (agent.relay.actions): one console line per cancel
        log.debug("request %s %s: cancelled by the web app", job.action, request_id)
        job.cancel.set()

    def _reject(self, request_id: str, action: Any, message: str) -> None:
        """INVALID_REQUEST for a bad frame, unless its id already has an answer coming or given: a
        bad frame must never answer a running request, nor replace a response the cloud has or may
        still ask for again. Then it is only logged, with its id."""
        with self._lock:  # reentrant: finish() takes it again; new ids only arrive on this thread
            if request_id in self._running:
                known = "is running; its own response follows"
            elif self._outbox.get(request_id) is not None or self._outbox.was_answered(request_id):
                known = "was already answered"
            else:
                valid_action = isinstance(action, str) and 1 <= len(action) <= MAX_ACTION_LENGTH
                Job(self, request_id, action if valid_action else "?", {}).finish(error=InvalidRequest(message))
                return
        log.warning(
            "Ignored a frame from the cloud for request %s, which %s (%s)",
            _preview(request_id, MAX_ID_LENGTH, self._masker),
            known,
            _preview(message, 2 * LOGGED_FRAME_CHARS, self._masker),
        )

    def _accept(self, request_id: str, frame: dict) -> None:
        with self._lock:
            if request_id in self._running:
                log.info("request %s arrived again while running; its response follows", request_id)
                return
            stored = self._outbox.get(request_id)
            if stored is not None:
                log.info("request %s arrived again; sending its response again", request_id)
                self._send_locked(stored)
                return
            action, params = frame.get("action"), frame.get("params", {})
            valid_action = isinstance(action, str) and 1 <= len(action) <= MAX_ACTION_LENGTH
            # An order action's repeat goes to the desk, which answers it with the original outcome.
            order_action = valid_action and action in self._order_actions
            answered = self._outbox.was_answered(request_id) and not order_action
            job = Job(self, request_id, action if valid_action else "?", params)
            self._running[request_id] = job
        if answered:
            log.info(
                "request %s arrived again after its response was acknowledged; not run again",
                _preview(request_id, MAX_ID_LENGTH, self._masker),
            )
            job.finish(
                error=InvalidRequest(
                    f"id: request {request_id} was already answered and "
                    "its response acknowledged; a request id is never run "
                    "twice, and that response is no longer held",
                )
            )
        elif not valid_action:
            job.finish(error=InvalidRequest(f"action: must be a string of 1 to {MAX_ACTION_LENGTH} characters"))
        elif not isinstance(params, dict):
            job.finish(error=InvalidRequest("params: must be an object"))
        else:
            try:
                self._executor(job)
            except Exception:  # the request must still get an answer, or its id stays "running" forever
                log.exception("request %s %s could not be started", job.action, request_id)
                job.finish(error=Internal("the agent could not start this request"))

    # ----- connection -----

    def _on_open(self, app: websocket.WebSocketApp) -> None:
        try:
            # Before the dispatcher reads the first frame (see BoundedFrameReader for why this is safe).
            app.sock.frame_buffer = BoundedFrameReader(app.sock.frame_buffer)
            hello = json.dumps(self._hello(), separators=(",", ":"))
            with self._lock:
                self._open_app = app
                if not self._send_locked(hello):
                    return
                for text in self._outbox.texts():
                    self._send_locked(text)
        except Exception:
            log.exception("Failed to start the relay session")
            self._hang_up(app)
            return
        self._opened_at = time.monotonic()
        self._tell_link_listeners(True)
        self._backoff.connected()
        self._reasons_reported.clear()
        if self._offline_since is None:
            log.info("Relay connected")
        else:
            log.info("Relay connected after %.1f s offline", self._opened_at - self._offline_since)
            self._offline_since = None

    def _on_error(self, app: websocket.WebSocketApp, exc: BaseException) -> None:
        self._last_error = exc

    def _connect_once(self) -> float:
        """One connection from dial to close; returns the wait before the next one."""
        if self._stopping.is_set():
            return 0.0
        self._last_error = None
        self._opened_at = None
        app = websocket.WebSocketApp(
            self.url,
            header=relay_headers(self._key, self._agent_version),
            on_open=self._on_open,
            on_message=self._on_message,
            on_error=self._on_error,
        )
        self._app = app
        try:
            if not self._stopping.is_set():
                app.run_forever(
                    sslopt={"context": self._ssl_context},
                    reconnect=0,
                    ping_interval=self._timings.ping_interval_s,
                    ping_timeout=self._timings.ping_timeout_s,
                )
        except Exception as exc:  # run_forever reports through on_error; this is a bug guard
            log.exception("Relay connection crashed")
            self._last_error = exc
        finally:
            with self._lock:
                self._open_app = None
                self._app = None
        if self._opened_at is not None:
            self._tell_link_listeners(False)
        return self._after_connection(self._opened_at is not None)

    def _after_connection(self, opened: bool) -> float:
        """Says why the link is down, each reason once per outage (the console shows why it cannot
        come back, without a line per attempt), and returns the wait before the next dial."""
        if self._stopping.is_set():
            return 0.0
        error = self._last_error
        reason = _describe(error, self._masker)
        if opened:
            log.warning("Relay connection lost (%s); reconnecting", reason)
            self._offline_since = time.monotonic()
            self._backoff.disconnected()
            return self._backoff.next_wait()
        if self._offline_since is None:
            self._offline_since = time.monotonic()
        refused_key = isinstance(error, websocket.WebSocketBadStatusException) and error.status_code in (401, 403)
        if reason in self._reasons_reported:
            log.debug("relay connection attempt failed: %s", reason)
        elif refused_key:
            log.error(
                AUTH_FAILED_HELP.format(status=error.status_code, retry=_seconds_text(self._timings.auth_retry_s))
            )
        elif isinstance(error, ssl.SSLCertVerificationError):
            log.warning(tls_help(error, self._tls_roots, urllib.parse.urlsplit(self.url).hostname))
        else:
            log.warning(CONNECT_FAILED_HELP.format(reason=reason))
        self._reasons_reported.add(reason)
        return self._timings.auth_retry_s if refused_key else self._backoff.next_wait()

    def _connect_forever(self) -> None:
        while not self._stopping.is_set():
            self._stopping.wait(self._connect_once())

    def _status_loop(self) -> None:
        while not self._stopping.is_set():
            self._status_due.wait(self._timings.status_interval_s)
            self._status_due.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                self._outbox.expire()
            try:
                self._send_frame({"type": "status", "ib": self._ib_status()})
            except Exception:
                log.exception("Failed to send a status frame")
