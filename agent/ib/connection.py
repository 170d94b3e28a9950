"""The agent's one connection to TWS / IB Gateway (DESIGN.md 2, 3, 5.1, 5.2).

Owns the `ibapi` EClient/EWrapper pair, the request registry, the message limiter, port/mode
resolution and reconnecting. The scanner and the order desk use only the interface below. The socket
session itself (handshake, back-pressure, pacing each message) is agent.ib.session's; IB's code tables agent.ib.codes'.

Callback routing (callbacks arrive on the connection's reader thread and must not block):
- A request waited on (call(), an order's placement or cancel, an id-less sweep) is a Request in
  `conn.requests` (agent.ib.requests): what TWS sends for its id or name goes to it first, errors of its
  id to it only, and the connection's loss fails every pending one at once.
- ID_CALLBACKS carry a reqId / tickerId / orderId first. They go to the handler registered for
  that id as `handler.on_event(name, args)`, args being the callback's full argument tuple, id
  included; for an id nobody registered, to the listeners of that name as `fn(*args)`.
- PLAIN_CALLBACKS carry no id and go to the listeners of that name as `fn(*args)`.
- error(): for a registered id, `handler.on_error(ib_code, text)`; notices (NOTICE_CODES) never
  reach a handler: they go to "notice" listeners as fn(req_id, ib_code, text), and errors for
  unregistered ids to "error" listeners the same way.
Listener-only events, called on the supervisor thread (which may send):
  "ready"() once connected and ready (also after every reconnect), "disconnected"() after the
  handlers got on_disconnect, "resubscribe"() when TWS restored its link to IB with market data
  lost (1101); registered handlers also get on_event("resubscribe", ()). On the reader thread:
  "ib_link"(up, ib_code, text) when TWS lost (1100) or got back (1101/1102) its link to IB's servers.
Observers (add_observer) see callbacks of the names they asked for, and errors and notices as
"error"(req_id, ib_code, text), before any of the routing above and whoever it goes to.
TWS moving its API port (1300) ends the connection; the next one goes to the port TWS named.
Registrations survive a disconnect (their ids mean nothing on the next connection): the owner
unregisters or re-sends after "ready". Closing the socket makes TWS drop every subscription
of this client, so stop() needs no cancels.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple

import tenacity
from ibapi.client import EClient

from agent import log as agent_log
from agent.backoff import ReconnectPolicy
from agent.config import Config
from agent.errors import AgentError, IbNotConnected
from agent.ib.codes import (
    IB_LINK_LOST,
    IB_LINK_RESTORED,
    IB_LINK_RESTORED_DATA_LOST,
    MARKET_DATA_TYPE_NAMES,
    MARKET_DATA_TYPES,
    NOTICE_CODES,
    READ_ONLY_FIX,
    SOCKET_PORT_MOVED,
    TROUBLE_NOTICES,
    is_read_only_error,
)
from agent.ib.pacing import MessageLimiter
from agent.ib.ports import PortProbe, resolve_port
from agent.ib.requests import Request, Requests
from agent.ib.session import (
    _CLIENT_ID_TAKEN,
    _TwsSession,
)

log = agent_log.logger("ib")

# Request ids start far above any order id TWS hands out, so errors (which share one id field)
# can always be told apart.
REQ_ID_FIRST = 1_000_000_000
REQ_ID_LAST = 2**31 - 1
CLIENT_ID_SPARES = 5  # on 326, the next ids tried after IB_CLIENT_ID
CONNECT_TIMEOUT_S = 1.5  # TCP connect per port; a refused port answers at once
HANDSHAKE_TIMEOUT_S = 10.0  # server version, accounts and first order id
BACKOFF_FIRST_S = 0.5  # reconnect: full-jitter exponential backoff ...
BACKOFF_CAP_S = 4.0  # ... capped here: TWS is local, and back within 5 s is the promise
MISMATCH_RETRY_S = 30.0  # only the wrong account type answered: the user must switch logins
STABLE_AFTER_S = 60.0  # a connection that lasted this long resets the backoff
HEARTBEAT_S = 30.0  # a connection quiet this long is asked for the time ...
HEARTBEAT_REPLY_S = 10.0  # ... and counts as lost when TWS does not answer within this

# EClient methods conn.send may call: requests, cancels, orders; never connection management.
_REQUEST_PREFIXES = (
    "req",
    "cancel",
    "place",
    "exercise",
    "calculate",
    "query",
    "subscribe",
    "unsubscribe",
    "updateDisplayGroup",
    "replaceFA",
    "requestFA",
    "verify",
)
_SENDABLE = frozenset(n for n in vars(EClient) if n.startswith(_REQUEST_PREFIXES))


class Handler(Protocol):
    def on_event(self, name: str, args: tuple) -> None: ...
    def on_error(self, ib_code: int, text: str) -> None: ...
    def on_disconnect(self) -> None: ...


class _Unavailable(Exception):
    """No usable TWS this attempt; `slow` when only the wrong account type answered."""

    def __init__(self, slow: bool = False):
        super().__init__()
        self.slow = slow


class IBConnection:
    """The TWS connection the rest of the agent shares; see docs/ARCHITECTURE.md "IB half"."""

    def __init__(
        self,
        config: Config,
        on_change: Optional[Callable[[], None]] = None,
        *,
        candidate_ports: Optional[Dict[str, Sequence[int]]] = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        backoff: Tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_CAP_S),
        mismatch_retry_s: float = MISMATCH_RETRY_S,
    ):
        self._config = config
        self._on_change = on_change
        self._candidates = candidate_ports  # None: agent.ib.ports.CANDIDATE_PORTS (tests pass ephemeral ports)
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._reconnect = ReconnectPolicy(backoff[0], backoff[1], STABLE_AFTER_S)
        self._mismatch_retry_s = mismatch_retry_s
        self.limiter = MessageLimiter(config.ib_max_msg_rate)
        self._lock = threading.RLock()
        self._registry: Dict[int, Handler] = {}
        self.requests = Requests()  # the requests waited on (agent.ib.requests); streams are in _registry
        self._listeners: Dict[str, Tuple[Callable, ...]] = {}
        self._observers: Dict[str, Tuple[Callable, ...]] = {}
        self._session: Optional[_TwsSession] = None
        self._probing: Optional[_TwsSession] = None
        self._ready_event = threading.Event()
        self._read_only_probe = threading.Event()  # clear while the probe after ready awaits its answer
        self._read_only_probe.set()
        self._next_req = REQ_ID_FIRST
        self._next_order: Optional[int] = None
        self._state = {
            "connected": False,
            "host": config.ib_host,
            "port": config.ib_port,
            "client_id": config.ib_client_id,
            "accounts": [],
            "account_type": None,
            "server_version": None,
            "market_data_type": None,
            "read_only": None,
            "error": None,
        }
        self._published: Optional[dict] = None
        self._control: "queue.Queue[Tuple[str, Optional[_TwsSession]]]" = queue.Queue()
        self._stopping = threading.Event()
        self._supervisor: Optional[threading.Thread] = None
        self._ever_connected = False
        self._logged_failure: Optional[str] = None
        self._port_override: Optional[int] = None  # the port TWS moved to (1300)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="ib-supervisor", daemon=True)
            self._supervisor.start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready_event.wait(timeout) and self.ready

    @property
    def ready(self) -> bool:
        session = self._session
        return session is not None and self._ready_event.is_set() and not session.closed.is_set()

    def status(self) -> dict:
        with self._lock:
            status = dict(self._state)
        status["accounts"] = list(status["accounts"])
        return status

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._control.put(("stop", None))
        with self._lock:
            probing = self._probing
        if probing is not None:
            probing.close()
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    # -- sending ---------------------------------------------------------------------------------
    def send(self, method: str, *args) -> None:
        """Call an EClient request method on the live connection (paced by the limiter)."""
        if method not in _SENDABLE:
            raise ValueError(f"{method!r} is not an EClient request method")
        session = self._ready_session()
        try:
            session.request(method, *args)
        except OSError:
            raise IbNotConnected(f"The connection to TWS broke while sending {method}") from None
        # A reqMarketDataType from agent.ib.lines (delayed-frozen for a contract that is not subscribed, in
        # auto) leaves status.market_data_type alone: that says what the agent asks by default, and
        # each quote's market_data_type what TWS gave it (its marketDataType callback).

    def _ready_session(self) -> _TwsSession:
        with self._lock:
            session = self._session
            if self.ready:
                return session
            error = self._state["error"]
        raise IbNotConnected(f"Not connected to TWS. {error}" if error else "Not connected to TWS yet (connecting)")

    def next_req_id(self) -> int:
        with self._lock:
            req_id = self._next_req
            self._next_req = req_id + 1 if req_id < REQ_ID_LAST else REQ_ID_FIRST
            return req_id

    def next_order_id(self) -> int:
        with self._lock:
            if self._next_order is None:
                raise IbNotConnected("Not connected to TWS: no order id yet")
            order_id = self._next_order
            self._next_order += 1
            return order_id

    def order_id_from_tws(self, session: _TwsSession, order_id: int) -> None:
        with self._lock:
            if session is self._session and self._next_order is not None:
                self._next_order = max(self._next_order, order_id)

    # -- registry and listeners ------------------------------------------------------------------
    def register(self, req_id: int, handler: Handler) -> None:
        with self._lock:
            current = self._registry.get(req_id)
            if current is not None and current is not handler:
                raise ValueError(f"request id {req_id} is already registered")
            self._registry[req_id] = handler

    def unregister(self, req_id: int) -> None:
        with self._lock:
            self._registry.pop(req_id, None)

    def add_listener(self, name: str, fn: Callable) -> None:
        with self._lock:
            self._listeners[name] = self._listeners.get(name, ()) + (fn,)

    def remove_listener(self, name: str, fn: Callable) -> None:
        with self._lock:
            self._listeners[name] = tuple(f for f in self._listeners.get(name, ()) if f is not fn)

    def add_observer(self, names: Iterable[str], fn: Callable[[str, tuple], None]) -> None:
        """fn(name, args) for every callback of these names on the live connection ("error": every
        error and notice, args (req_id, ib_code, text)), before it is routed: it sees what a registered
        handler gets too, and takes nothing away from it. Reader thread: fn must return at once."""
        with self._lock:
            for name in names:
                self._observers[name] = self._observers.get(name, ()) + (fn,)

    def call(
        self, method: str, req_id: int, *args, rows: Sequence[str] = (), end: str, timeout: Optional[float] = None
    ) -> List[tuple]:
        """Send one request and wait for its answer: the args tuples (without the reqId) of its
        `rows` callbacks, up to the `end` callback. Raises AgentError; never waits past timeout."""
        request = Request(method, lambda name, _args: name == end)
        with self.requests.pending(req_id, request):
            self.send(method, req_id, *args)
            request.wait(self._config.request_timeout_s if timeout is None else timeout)
            return request.rows(rows)

    # -- routing (reader thread) -----------------------------------------------------------------
    @staticmethod
    def _deliver(fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("Error in the handler of a TWS callback (%s)", getattr(fn, "__qualname__", fn))

    def _observe(self, name: str, args: tuple) -> None:
        for fn in self._observers.get(name, ()):
            self._deliver(fn, name, args)

    def _tell_listeners(self, name: str, args: tuple) -> None:
        for fn in self._listeners.get(name, ()):
            self._deliver(fn, *args)

    # The session's owner interface (agent.ib.session calls these on its reader thread).
    def route_by_id(self, session: _TwsSession, name: str, args: tuple) -> None:
        if session is not self._session:
            return
        self._observe(name, args)  # before routing: observers see what a pending request takes too
        if self.requests.event(args[0], name, args):
            return
        handler = self._registry.get(args[0])
        if handler is None:
            self._tell_listeners(name, args)
        else:
            self._deliver(handler.on_event, name, args)

    def route_plain(self, session: _TwsSession, name: str, args: tuple) -> None:
        if session is self._session:
            self._observe(name, args)
            if name == "openOrderEnd" and not self._read_only_probe.is_set():  # the probe's answer
                self._read_only_probe.set()
                self._set_state(read_only=False)
            self.requests.event(None, name, args)
            self._tell_listeners(name, args)

    def route_error(self, session: _TwsSession, req_id: int, code: int, text: str) -> None:
        if session is not self._session:
            log.debug("TWS message during connect (port %s): %s %s", session.address[1], code, text)
            return
        self._observe("error", (req_id, code, text))
        read_only = is_read_only_error(code, text)
        if read_only:
            if self._state["read_only"] is not True:
                log.warning("%s", READ_ONLY_FIX)
            self._set_state(read_only=True)
            self._read_only_probe.set()
        if code in NOTICE_CODES:
            log.log(
                logging.WARNING if code in TROUBLE_NOTICES else logging.DEBUG, "TWS says: %s (notice %s)", text, code
            )
            self.requests.notice(req_id, code, text)
            self._tell_listeners("notice", (req_id, code, text))
            return
        if code == IB_LINK_LOST:
            log.warning("TWS lost its connection to IB's servers (1100); waiting for TWS to restore it")
            self._set_state(error="TWS has lost its connection to IB's servers (1100)")
            self._tell_listeners("ib_link", (False, code, text))  # market data fails fast meanwhile
            return
        if code in (IB_LINK_RESTORED, IB_LINK_RESTORED_DATA_LOST):
            log.info("TWS restored its connection to IB's servers (%s)", code)
            self._set_state(error=None)
            self._tell_listeners("ib_link", (True, code, text))
            if code == IB_LINK_RESTORED_DATA_LOST:
                self._control.put(("resubscribe", session))
            return
        if code == SOCKET_PORT_MOVED:
            self._port_moved(session, text)
            return
        if self.requests.error(req_id, code, text):
            return
        handler = self._registry.get(req_id)
        if handler is not None:
            self._deliver(handler.on_error, code, text)
            return
        if not read_only:
            log.log(
                logging.WARNING if req_id < 0 else logging.DEBUG,
                "TWS says: %s (error %s%s)",
                text,
                code,
                "" if req_id < 0 else f", request {req_id}",
            )
        self._tell_listeners("error", (req_id, code, text))

    def _port_moved(self, session: _TwsSession, text: str) -> None:
        """1300: the API port was changed in TWS's settings; TWS drops this connection and listens on
        the port its text names ("... reconnect on the new port - 7499"). The agent reconnects there
        (and stays with it for this run), however it found the old one."""
        found = re.search(r"(\d+)\D*$", text or "")
        port = int(found.group(1)) if found else None
        if port is None or not 0 < port < 65536:
            log.warning("TWS moved its API port but did not say where (1300: %s); reconnecting", text)
        else:
            log.warning(
                "TWS moved its API port to %s (1300); reconnecting there. Set IB_PORT=%s in config.env to keep it",
                port,
                port,
            )
            with self._lock:
                self._port_override = port
        self._control.put(("moved", session))

    def session_closed(self, session: _TwsSession) -> None:
        self._control.put(("closed", session))

    def probe_wanted(self, session: _TwsSession) -> None:
        """The session's send gate has waited long on TWS: the supervisor asks TWS for the time."""
        self._control.put(("probe", session))

    # -- status ----------------------------------------------------------------------------------
    def _set_state(self, **changes) -> None:
        with self._lock:
            self._state.update(changes)
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            status = self.status()
            if status == self._published:
                return
            self._published = status
        if self._on_change is not None:
            self._deliver(self._on_change)

    # -- supervisor thread -----------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set():
            retrying = tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_Unavailable),
                wait=self._retry_wait,
                stop=lambda _state: self._stopping.is_set(),
                sleep=self._stopping.wait,
                reraise=True,
            )
            try:
                retrying(self._connect_and_serve)
            except _Unavailable:
                break  # stopping
            except Exception:
                log.exception("Connecting to TWS failed on an unexpected error; retrying")
                self._stopping.wait(self._reconnect.cap_s)

    def _retry_wait(self, state: tenacity.RetryCallState) -> float:
        if getattr(state.outcome.exception(), "slow", False):
            return self._mismatch_retry_s
        return self._reconnect(state)

    def _connect_and_serve(self) -> None:
        """One connection's life. Returns after a stable connection ended (so the backoff starts
        over); raises _Unavailable when TWS could not be used or dropped soon after connecting."""
        if self._stopping.is_set():
            return
        session, account_type = self._resolve()
        if not self._go_ready(session, account_type):
            raise _Unavailable()
        self._reconnect.connected()
        self._serve(session)
        self._go_lost(session)
        if not self._reconnect.disconnected() and not self._stopping.is_set():
            raise _Unavailable()

    def _resolve(self) -> Tuple[_TwsSession, Optional[str]]:
        opened: Dict[int, _TwsSession] = {}

        def probe(port: int) -> PortProbe:
            session, failure = self._open_port(port)
            if session is None:
                return PortProbe(port, failure=failure)
            opened[port] = session
            return PortProbe(port, accounts=session.accounts)

        cfg = self._config
        with self._lock:
            ib_port = self._port_override or cfg.ib_port  # where TWS said it moved (1300), if it did
        decision = resolve_port(ib_port, cfg.ib_mode, cfg.ib_mode_explicit, probe, self._candidates)
        for port, session in opened.items():
            if port != decision.port:
                session.close()
        if decision.port is not None:
            return opened[decision.port], decision.account_type
        if self._stopping.is_set():
            raise _Unavailable()
        self._report_failure(decision.message, decision.mismatch)
        raise _Unavailable(slow=decision.mismatch)

    def _open_port(self, port: int) -> Tuple[Optional[_TwsSession], Optional[str]]:
        first = self._config.ib_client_id
        for client_id in range(first, first + CLIENT_ID_SPARES + 1):
            with self._lock:
                if self._stopping.is_set():
                    return None, "agent stopping"
                session = self._probing = _TwsSession(self, self._config.ib_host, port, client_id)
            try:
                failure = session.open(self._connect_timeout, self._handshake_timeout)
            finally:
                with self._lock:
                    self._probing = None
            if failure is None:
                return session, None
            if failure != _CLIENT_ID_TAKEN:
                return None, failure
            log.debug("Client id %s is in use on port %s", client_id, port)
        return None, f"client ids {first} to {first + CLIENT_ID_SPARES} are all in use in TWS (error 326)"

    def _report_failure(self, message: str, mismatch: bool) -> None:
        # In the original README's words: its Troubleshooting entry of that name has the fixes.
        text = f"Failed to connect to IB TWS: {message}"
        if text != self._logged_failure and (mismatch or not self._ever_connected):
            log.warning("%s; retrying", text)
        else:
            log.debug("%s; retrying", text)
        self._logged_failure = text
        self._set_state(error=text)

    def _go_ready(self, session: _TwsSession, account_type: Optional[str]) -> bool:
        type_code = MARKET_DATA_TYPES[self._config.market_data_type]
        try:
            session.request("reqMarketDataType", type_code)  # before ready, so every request gets this type
        except (OSError, AgentError):
            session.close()
            return False
        port = session.address[1]
        with self._lock:
            self._session = session
            self._next_order = session.first_order_id
            self._state.update(
                connected=True,
                port=port,
                client_id=session.client_id,
                accounts=list(session.accounts),
                account_type=account_type,
                server_version=session.server_version,
                market_data_type=MARKET_DATA_TYPE_NAMES[type_code],
                error=None,
            )
            self._ready_event.set()
        self._ever_connected = True
        self._logged_failure = None
        client = (
            ""
            if session.client_id == self._config.ib_client_id
            else f", client id {session.client_id} ({self._config.ib_client_id} is in use)"
        )
        log.info("Connected to TWS on port %s as %s (%s)%s", port, ", ".join(session.accounts), account_type, client)
        self._publish()
        self._tell_listeners("ready", ())
        self._probe_read_only(session)
        return True

    def _probe_read_only(self, session: _TwsSession) -> None:
        """Ask once, right after ready, for this client's open orders: TWS refuses that with error 321
        "Read-Only" when its Read-Only API setting is on (it hides order information), and answers
        openOrderEnd otherwise. Nothing changes at TWS. So status.read_only is known (and the console
        says how to fix it) from the start, not at the first order."""
        self._read_only_probe.clear()
        try:
            session.request("reqOpenOrders")
        except (OSError, AgentError):
            self._read_only_probe.set()

    def wait_read_only_probe(self, timeout: float) -> bool:
        """Waits until the probe after ready was answered (order sweeps wait, so the probe's
        openOrderEnd never ends one of theirs early). False when it was not within timeout."""
        return self._read_only_probe.wait(timeout)

    def _serve(self, session: _TwsSession) -> None:
        while True:
            try:
                kind, subject = self._control.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                if not self._tws_answers(session):
                    log.warning("TWS on port %s stopped answering", session.address[1])
                    return
                continue
            if kind == "stop":
                return
            if subject is not session:
                continue  # left over from an earlier connection
            if kind in ("closed", "moved"):
                return
            if kind == "resubscribe":
                self._resubscribe()
            elif kind == "probe":
                try:
                    session.probe()
                except (OSError, AgentError):
                    pass  # closed: the "closed" message follows

    def _tws_answers(self, session: _TwsSession) -> bool:
        """A TWS that hangs, or a laptop that slept, can leave the socket open with nobody behind
        it: when the connection has been quiet, ask for the time and wait a little for any answer."""
        quiet_since = session.conn.last_received
        if time.monotonic() - quiet_since < HEARTBEAT_S:
            return True
        try:
            session.probe()  # around the back-pressure gate, which a hung TWS keeps shut
        except (OSError, AgentError):
            return False
        deadline = time.monotonic() + HEARTBEAT_REPLY_S
        while time.monotonic() < deadline and not self._stopping.is_set():
            if session.conn.last_received > quiet_since:
                return True
            if session.closed.wait(0.1):
                return False
        return self._stopping.is_set()

    def _resubscribe(self) -> None:
        with self._lock:
            handlers = list({id(h): h for h in self._registry.values()}.values())
        for handler in handlers:
            self._deliver(handler.on_event, "resubscribe", ())
        self._tell_listeners("resubscribe", ())

    def _go_lost(self, session: _TwsSession) -> None:
        port = session.address[1]
        stopping = self._stopping.is_set()
        with self._lock:
            self._session = None
            self._ready_event.clear()
            self._next_order = None
            handlers = list({id(h): h for h in self._registry.values()}.values())
            self._state.update(
                connected=False,
                port=self._config.ib_port,
                client_id=self._config.ib_client_id,
                accounts=[],
                account_type=None,
                server_version=None,
                market_data_type=None,
                error=None if stopping else f"Lost connection to TWS on port {port}; reconnecting",
            )
        session.close()
        self._read_only_probe.set()
        self.requests.fail_all()
        for handler in handlers:
            self._deliver(handler.on_disconnect)
        self._tell_listeners("disconnected", ())
        if stopping:
            log.info("Disconnected from TWS on port %s", port)
        else:
            log.warning("Lost connection to TWS on port %s; reconnecting...", port)
        self._publish()
