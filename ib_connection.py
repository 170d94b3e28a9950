"""The agent's one connection to TWS / IB Gateway (DESIGN.md 2, 3, 5.1, 5.2).

Owns the `ibapi` EClient/EWrapper pair, the request registry, the message limiter, port/mode
resolution and reconnecting. The scanner and the order desk use only the interface below.

Callback routing (callbacks arrive on the connection's reader thread and must not block):
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
TWS moving its API port (1300) ends the connection; the next one goes to the port TWS named.
Registrations survive a disconnect (their ids mean nothing on the next connection): the owner
unregisters or re-sends after "ready". Closing the socket makes TWS drop every subscription
of this client, so stop() needs no cancels.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import tenacity
from ibapi import comm, decoder, errors as ibapi_errors, reader
from ibapi.client import EClient
from ibapi.server_versions import MIN_CLIENT_VER
from ibapi.wrapper import EWrapper

import agent_log
from agent_config import Config
from agent_errors import (IB_ERROR, IB_NOT_CONNECTED, MARKET_DATA_NOT_SUBSCRIBED, NO_SECURITY_DEFINITION,
                          READ_ONLY_API, TIMEOUT, AgentError)
from ib_pacing import MessageLimiter
from ib_ports import PortProbe, resolve_port

log = logging.getLogger("ib_data_agent.ib")
logging.getLogger("ibapi").setLevel(logging.WARNING)  # ibapi logs every message sent and received at INFO

# Request ids start far above any order id TWS hands out, so errors (which share one id field)
# can always be told apart.
# The highest TWS server version the agent's tests cover (tests/test_protocol_versions.py runs the
# order, market-data and account suites against the fake TWS at it). The handshake offers
# v100..this, never the pinned ibapi's own maximum: a newer ibapi cannot silently move users to
# a protocol nobody tested (a test fails when ibapi's MAX_CLIENT_VER passes this).
TESTED_MAX_SERVER_VERSION = 226
REQ_ID_FIRST = 1_000_000_000
REQ_ID_LAST = 2**31 - 1
CLIENT_ID_SPARES = 5          # on 326, the next ids tried after IB_CLIENT_ID
CONNECT_TIMEOUT_S = 1.5       # TCP connect per port; a refused port answers at once
HANDSHAKE_TIMEOUT_S = 10.0    # server version, accounts and first order id
BACKOFF_FIRST_S = 0.5         # reconnect: full-jitter exponential backoff ...
BACKOFF_CAP_S = 4.0           # ... capped here: TWS is local, and back within 5 s is the promise
MISMATCH_RETRY_S = 30.0       # only the wrong account type answered: the user must switch logins
STABLE_AFTER_S = 60.0         # a connection that lasted this long resets the backoff
READ_POLL_S = 0.5
HEARTBEAT_S = 30.0            # a connection quiet this long is asked for the time ...
HEARTBEAT_REPLY_S = 10.0      # ... and counts as lost when TWS does not answer within this
# Back-pressure (DESIGN.md 5.2, a hung TWS): at most this many messages go out after the last bytes
# TWS sent; then one reqCurrentTime asks it for a sign of life and sending waits for any answer. A
# TWS that stopped reading so finds at most UNANSWERED_MAX + 1 messages waiting when it resumes, and
# the limiter counts them in its window from then on (MessageLimiter.backlog): never a burst above
# the pacing limit. The socket's own buffers cannot do this: on loopback they hold minutes of requests.
UNANSWERED_MAX = 10
BACKLOG_AFTER_S = 0.25        # a wait this long means TWS read the waiting messages late: re-count them

# auto asks frozen: live while the market is open, the values recorded at the close after it;
# ib_lines falls back to delayed-frozen per contract where TWS says it is not subscribed.
MARKET_DATA_TYPES = {"auto": 2, "live": 1, "frozen": 2, "delayed": 3, "delayed-frozen": 4}
MARKET_DATA_TYPE_NAMES = {1: "live", 2: "frozen", 3: "delayed", 4: "delayed-frozen"}

# Warnings 2100-2199 (farm status etc.), 399 order warnings, 10167 "displaying delayed data".
NOTICE_CODES = frozenset(range(2100, 2200)) | {399, 10167}
TROUBLE_NOTICES = frozenset({2103, 2105, 2110, 2157})  # farm or server link broken: worth a log line
CLIENT_ID_IN_USE = 326
IB_LINK_LOST, IB_LINK_RESTORED_DATA_LOST, IB_LINK_RESTORED = 1100, 1101, 1102
SOCKET_PORT_MOVED = 1300      # "TWS socket port has been reset ... reconnect on the new port - N"
READ_ONLY_CODE = 321
_ERROR_CODES = {
    200: NO_SECURITY_DEFINITION,
    354: MARKET_DATA_NOT_SUBSCRIBED, 10089: MARKET_DATA_NOT_SUBSCRIBED, 10090: MARKET_DATA_NOT_SUBSCRIBED,
    10168: MARKET_DATA_NOT_SUBSCRIBED, 10197: MARKET_DATA_NOT_SUBSCRIBED,
    502: IB_NOT_CONNECTED, 504: IB_NOT_CONNECTED,
}
READ_ONLY_FIX = ("TWS has 'Read-Only API' switched on: uncheck it in File > Global Configuration > API > "
                 "Settings, click Apply, then restart the agent")

# Callbacks whose first argument is a reqId / tickerId / orderId.
ID_CALLBACKS = (
    "marketDataType", "tickPrice", "tickSize", "tickSnapshotEnd", "tickGeneric", "tickString", "tickEFP",
    "tickOptionComputation", "tickReqParams", "tickNews", "tickByTickAllLast", "tickByTickBidAsk",
    "tickByTickMidPoint", "rerouteMktDataReq", "rerouteMktDepthReq", "updateMktDepth", "updateMktDepthL2",
    "orderStatus", "openOrder", "execDetails", "execDetailsEnd",
    "contractDetails", "bondContractDetails", "contractDetailsEnd", "symbolSamples",
    "securityDefinitionOptionParameter", "securityDefinitionOptionParameterEnd", "smartComponents",
    "accountSummary", "accountSummaryEnd", "positionMulti", "positionMultiEnd",
    "accountUpdateMulti", "accountUpdateMultiEnd", "pnl", "pnlSingle",
    "historicalData", "historicalDataEnd", "historicalDataUpdate", "historicalSchedule", "realtimeBar",
    "headTimestamp", "histogramData", "historicalTicks", "historicalTicksBidAsk", "historicalTicksLast",
    "scannerData", "scannerDataEnd", "deltaNeutralValidation", "softDollarTiers",
    "newsArticle", "historicalNews", "historicalNewsEnd", "displayGroupList", "displayGroupUpdated",
    "replaceFAEnd", "wshMetaData", "wshEventData", "userInfo",
)
# Callbacks without an id: listeners only.
PLAIN_CALLBACKS = (
    "openOrderEnd", "orderBound", "completedOrder", "completedOrdersEnd", "commissionAndFeesReport",
    "position", "positionEnd", "updateAccountValue", "updatePortfolio", "updateAccountTime",
    "accountDownloadEnd", "currentTime", "currentTimeInMillis", "updateNewsBulletin", "receiveFA",
    "scannerParameters", "familyCodes", "mktDepthExchanges", "newsProviders", "marketRule",
)
# EClient methods conn.send may call: requests, cancels, orders; never connection management.
_REQUEST_PREFIXES = ("req", "cancel", "place", "exercise", "calculate", "query", "subscribe",
                     "unsubscribe", "updateDisplayGroup", "replaceFA", "requestFA", "verify")
_SENDABLE = frozenset(n for n in vars(EClient) if n.startswith(_REQUEST_PREFIXES))
_CLIENT_ID_TAKEN = "client id in use"
# Codes ibapi reports itself (not TWS): a request it could not validate or send (503, 504, 510..).
CLIENT_ERROR_CODES = frozenset(pair.code() for pair in vars(ibapi_errors).values()
                               if isinstance(pair, ibapi_errors.CodeMsgPair))


def is_read_only_error(ib_code: int, text: str) -> bool:
    return ib_code == READ_ONLY_CODE and "read-only" in (text or "").lower()


REJECT_DETAIL_MAX = 300   # characters of an advancedOrderRejectJson kept in an error message


def with_reject_details(text: str, advanced_reject_json: str) -> str:
    """TWS's error text plus what its advancedOrderRejectJson says (the reason an order was
    rejected often lives only there): the readable strings it holds, else the JSON itself."""
    raw = (advanced_reject_json or "").strip()
    if not raw:
        return text
    try:
        found: List[str] = []
        _strings_in(json.loads(raw), found)
        detail = "; ".join(dict.fromkeys(found)) or raw
    except ValueError:
        detail = raw
    detail = agent_log.clip(detail, REJECT_DETAIL_MAX, ellipsis="...")  # masked before the cut
    return f"{text} (TWS details: {detail})" if text else f"TWS details: {detail}"


def _strings_in(value, found: List[str]) -> None:
    if isinstance(value, str):
        if value.strip():
            found.append(value.strip())
    elif isinstance(value, dict):
        for item in value.values():
            _strings_in(item, found)
    elif isinstance(value, list):
        for item in value:
            _strings_in(item, found)


def error_for(ib_code: int, text: str) -> AgentError:
    """The one table from an IB error code to a relay error code."""
    if is_read_only_error(ib_code, text):
        return AgentError(READ_ONLY_API, f"{READ_ONLY_FIX} (TWS said: {text})", ib_code)
    return AgentError(_ERROR_CODES.get(ib_code, IB_ERROR), text or f"TWS error {ib_code}", ib_code)


class Handler(Protocol):
    def on_event(self, name: str, args: tuple) -> None: ...
    def on_error(self, ib_code: int, text: str) -> None: ...
    def on_disconnect(self) -> None: ...


class _Unavailable(Exception):
    """No usable TWS this attempt; `slow` when only the wrong account type answered."""

    def __init__(self, slow: bool = False):
        super().__init__()
        self.slow = slow


class _TwsSocket:
    """The socket under ibapi's EClient/EReader, in place of ibapi's Connection: sendall instead
    of send (no torn messages), and a close that wakes the reader at once and never races it."""

    def __init__(self, sock: socket.socket, on_close: Callable[[], None]):
        sock.settimeout(READ_POLL_S)
        self._sock = sock
        self._on_close = on_close
        self._send_lock = threading.Lock()
        self._open = True
        self.last_received = time.monotonic()
        self._drained = threading.Condition()    # guards _unanswered / _probe_asked
        self._unanswered = 0                     # messages let out since TWS last sent anything
        self._probe_asked = False

    def wait_drained(self, ask_probe: Callable[[], None]) -> Optional[int]:
        """Take a place among the messages TWS may have unread (back-pressure before the limiter).
        Waits while UNANSWERED_MAX are out and nothing came back since; the first to wait calls
        ask_probe() (a reqCurrentTime sent around this gate). Returns how many messages were out
        when a wait of BACKLOG_AFTER_S or longer ended (TWS read them late), else None. Raises
        OSError when the socket closes meanwhile."""
        with self._drained:
            if self._unanswered < UNANSWERED_MAX:
                self._unanswered += 1
                return None
            started, backlog = time.monotonic(), self._unanswered
            while self._unanswered >= UNANSWERED_MAX and self._open:
                if not self._probe_asked:
                    self._probe_asked = True
                    backlog += 1
                    ask_probe()
                self._drained.wait(READ_POLL_S)
            if not self._open:
                raise OSError("TWS socket is closed")
            self._unanswered += 1
            return backlog if time.monotonic() - started >= BACKLOG_AFTER_S else None

    def _answered(self) -> None:
        with self._drained:
            self._unanswered = 0
            self._probe_asked = False
            self._drained.notify_all()

    def isConnected(self) -> bool:
        return self._open

    def sendMsg(self, msg: bytes) -> int:
        with self._send_lock:
            if not self._open:
                raise OSError("TWS socket is closed")
            try:
                self._sock.sendall(msg)
            except OSError:
                self.disconnect()
                raise
        return len(msg)

    def recvMsg(self) -> bytes:
        try:
            buf = self._sock.recv(65536)
        except socket.timeout:
            return b""
        except OSError:
            buf = b""
        if not buf:
            self.disconnect()
        else:
            self.last_received = time.monotonic()
            self._answered()
        return buf

    def disconnect(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._drained:
            self._drained.notify_all()
        self._on_close()


class _TwsSession(EWrapper, EClient):
    """One socket connection to TWS: ibapi's client and wrapper in one object. Each attempt gets
    a new one, so nothing of a dropped connection (queued messages, ids) leaks into the next."""

    def __init__(self, owner: "IBConnection", host: str, port: int, client_id: int):
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self._owner = owner
        self.address = (host, port)
        self.client_id = client_id
        self.accounts: Tuple[str, ...] = ()
        self.first_order_id: Optional[int] = None
        self.server_version: Optional[int] = None
        self.client_id_in_use = False
        self.closed = threading.Event()
        self._settled = threading.Event()  # accounts and order id in, or 326, or closed
        self._open_lock = threading.Lock()
        self._run_thread: Optional[threading.Thread] = None
        self._request = threading.local()   # the request call() in progress on this thread
        self._bypass = threading.local()    # the probe passes the back-pressure gate
        self._ready_to_gate = False         # the gate starts after the handshake (TWS says little before)

    # -- requests: the only way out to the socket ------------------------------------------------
    def request(self, method: str, *args) -> None:
        """Call an EClient request method and raise what went wrong. ibapi (10.4x on) catches
        every exception inside a request method and reports it through error() with one of its
        own codes (CLIENT_ERROR_CODES), on the calling thread, instead of raising."""
        state = self._request
        state.failure, state.active = None, True
        try:
            getattr(self, method)(*args)
        finally:
            state.active = False
        if state.failure is not None:
            raise state.failure

    def _send_failed(self, failure: AgentError) -> AgentError:
        state = self._request
        if getattr(state, "active", False) and state.failure is None:
            state.failure = failure
        return failure

    def _pace(self) -> None:
        conn = self.conn
        if conn is not None and self._ready_to_gate and not getattr(self._bypass, "on", False):
            try:
                backlog = conn.wait_drained(lambda: self._owner._control.put(("probe", self)))
            except OSError:
                raise self._send_failed(AgentError(IB_NOT_CONNECTED, "The connection to TWS closed")) from None
            if backlog:
                log.warning("TWS read nothing for a while; %s %s waiting for it",
                            agent_log.plural(backlog, "message"), "was" if backlog == 1 else "were")
                self._owner.limiter.backlog(backlog)
        if self._owner.limiter.acquire(self.closed) is None:
            raise self._send_failed(AgentError(IB_NOT_CONNECTED, "The connection to TWS closed"))

    def probe(self) -> None:
        """Ask TWS for the time around the back-pressure gate (supervisor thread): any answer
        proves TWS reads again, and opens the gate."""
        self._bypass.on = True
        try:
            self.request("reqCurrentTime")
        finally:
            self._bypass.on = False

    def sendMsg(self, msgId, msg):
        self._pace()
        try:
            super().sendMsg(msgId, msg)
        except OSError:
            raise self._send_failed(AgentError(IB_NOT_CONNECTED, "The connection to TWS broke while sending"))

    def sendMsgProtoBuf(self, msgId, msg):
        self._pace()
        try:
            super().sendMsgProtoBuf(msgId, msg)
        except OSError:
            raise self._send_failed(AgentError(IB_NOT_CONNECTED, "The connection to TWS broke while sending"))

    # -- connecting ------------------------------------------------------------------------------
    def open(self, connect_timeout: float, handshake_timeout: float) -> Optional[str]:
        """Connect, handshake, startApi, wait for the accounts and the first order id. None when
        TWS answered all of it, else what went wrong (in words for the status line)."""
        deadline = time.monotonic() + handshake_timeout
        try:
            sock = socket.create_connection(self.address, timeout=connect_timeout)
        except ConnectionRefusedError:
            return "not listening"
        except socket.timeout:
            return f"no answer within {connect_timeout:g} s"
        except OSError as exc:
            return f"cannot connect ({exc.strerror or exc})"
        with self._open_lock:
            if self.closed.is_set():
                sock.close()
                return "agent stopping"
            self.conn = _TwsSocket(sock, on_close=self._socket_closed)
        self.host, self.port, self.clientId = self.address[0], self.address[1], self.client_id
        self.setConnState(EClient.CONNECTING)
        try:
            self._pace()
            self.conn.sendMsg(b"API\0" + comm.make_initial_msg(f"v{MIN_CLIENT_VER}..{TESTED_MAX_SERVER_VERSION}"))
            version = self._read_server_version(deadline)
        except (OSError, AgentError):
            version = None
        if version is None:
            self.close()
            return "TWS did not answer the API handshake"
        self.serverVersion_ = self.server_version = version
        self.decoder = decoder.Decoder(self, version)
        self.setConnState(EClient.CONNECTED)
        self.reader = reader.EReader(self.conn, self.msg_queue)
        self.reader.daemon = True
        self.reader.start()
        self._run_thread = threading.Thread(target=self._run_until_closed, daemon=True,
                                            name=f"ib-reader-{self.address[1]}")
        self._run_thread.start()
        try:
            self.request("startApi")
        except (OSError, AgentError):
            pass
        self._settled.wait(max(0.0, deadline - time.monotonic()))
        if self.accounts and self.first_order_id is not None and not self.client_id_in_use:
            self._ready_to_gate = True
            return None
        was_closed = self.closed.is_set()
        self.close()
        if self.client_id_in_use:
            return _CLIENT_ID_TAKEN
        if was_closed:
            return "TWS closed the connection (is this computer allowed under API > Settings > Trusted IPs?)"
        return "TWS did not send its accounts (is a dialog open in TWS?)"

    def _read_server_version(self, deadline: float) -> Optional[int]:
        buf = b""
        while time.monotonic() < deadline and self.conn.isConnected():
            buf += self.conn.recvMsg()
            while True:
                _size, msg, buf = comm.read_msg(buf)
                if not msg:
                    break
                fields = comm.read_fields(msg)
                if len(fields) == 2:  # (version, connection time); TWS sends nothing else before startApi
                    self.connTime = fields[1].decode(errors="replace")
                    try:
                        return int(fields[0])
                    except ValueError:
                        return None
        return None

    def _run_until_closed(self) -> None:
        try:
            self.run()  # ibapi's loop: decodes messages and calls the wrapper, until the socket closes
        except Exception:
            log.exception("The connection to TWS stopped on an unexpected error; reconnecting")
        finally:
            self._socket_closed()
            self._owner._session_closed(self)

    def _socket_closed(self) -> None:
        self.closed.set()
        self._settled.set()

    def close(self, join_timeout: float = 2.0) -> None:
        """Close the socket; the reader thread then drains what was received and ends."""
        with self._open_lock:
            self._socket_closed()
            conn = self.conn
        if conn is not None:
            conn.disconnect()
        thread = self._run_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)

    # -- wrapper callbacks the session keeps for itself ------------------------------------------
    def connectAck(self):
        pass

    def connectionClosed(self):
        self._socket_closed()

    def managedAccounts(self, accountsList: str):
        self.accounts = tuple(a.strip() for a in accountsList.split(",") if a.strip())
        self._check_settled()

    def nextValidId(self, orderId: int):
        if self.first_order_id is None:
            self.first_order_id = orderId
        self._owner._order_id_from_tws(self, orderId)
        self._check_settled()

    def _check_settled(self) -> None:
        if self.accounts and self.first_order_id is not None:
            self._settled.set()

    def error(self, reqId, errorTime, errorCode, errorString, advancedOrderRejectJson=""):
        errorString = with_reject_details(errorString, advancedOrderRejectJson)
        if errorCode in CLIENT_ERROR_CODES and getattr(self._request, "active", False):  # see request()
            self._send_failed(error_for(errorCode, errorString))
            return
        if errorCode == CLIENT_ID_IN_USE:
            self.client_id_in_use = True
            self._settled.set()
        self._owner._route_error(self, reqId, errorCode, errorString)


def _forwarder(name: str, route: str):
    def callback(self: _TwsSession, *args):
        getattr(self._owner, route)(self, name, args)
    callback.__name__ = callback.__qualname__ = name
    return callback


for _name in ID_CALLBACKS:
    setattr(_TwsSession, _name, _forwarder(_name, "_route_by_id"))
for _name in PLAIN_CALLBACKS:
    setattr(_TwsSession, _name, _forwarder(_name, "_route_plain"))


class _Collector:
    """The handler behind call(): gathers row callbacks until the end callback, an error or a drop."""

    def __init__(self, rows: Sequence[str], end: str):
        self._row_names = frozenset(rows)
        self._end = end
        self._rows: List[tuple] = []
        self._error: Optional[AgentError] = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    def on_event(self, name: str, args: tuple) -> None:
        with self._lock:
            if self._done.is_set():
                return
            if name in self._row_names:
                self._rows.append(args[1:])
            if name == self._end:
                self._done.set()

    def _fail(self, error: AgentError) -> None:
        with self._lock:
            if not self._done.is_set():
                self._error = error
                self._done.set()

    def on_error(self, ib_code: int, text: str) -> None:
        self._fail(error_for(ib_code, text))

    def on_disconnect(self) -> None:
        self._fail(AgentError(IB_NOT_CONNECTED, "The connection to TWS was lost while waiting for its answer"))

    def wait(self, timeout: float, what: str) -> List[tuple]:
        if not self._done.wait(timeout):
            raise AgentError(TIMEOUT, f"TWS did not answer {what} within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._rows


class IBConnection:
    """The TWS connection the rest of the agent shares; see docs/ARCHITECTURE.md "IB half"."""

    def __init__(self, config: Config, on_change: Optional[Callable[[], None]] = None, *,
                 candidate_ports: Optional[Dict[str, Sequence[int]]] = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                 backoff: Tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_CAP_S),
                 mismatch_retry_s: float = MISMATCH_RETRY_S):
        self._config = config
        self._on_change = on_change
        self._candidates = candidate_ports  # None: ib_ports.CANDIDATE_PORTS (tests pass ephemeral ports)
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._backoff = tenacity.wait_random_exponential(multiplier=backoff[0], max=backoff[1])
        self._mismatch_retry_s = mismatch_retry_s
        self.limiter = MessageLimiter(config.ib_max_msg_rate)
        self._lock = threading.RLock()
        self._registry: Dict[int, Handler] = {}
        self._listeners: Dict[str, Tuple[Callable, ...]] = {}
        self._session: Optional[_TwsSession] = None
        self._probing: Optional[_TwsSession] = None
        self._ready_event = threading.Event()
        self._read_only_probe = threading.Event()  # clear while the probe after ready awaits its answer
        self._read_only_probe.set()
        self._next_req = REQ_ID_FIRST
        self._next_order: Optional[int] = None
        self._state = {"connected": False, "host": config.ib_host, "port": config.ib_port,
                       "client_id": config.ib_client_id, "accounts": [], "account_type": None,
                       "server_version": None, "market_data_type": None, "read_only": None, "error": None}
        self._published: Optional[dict] = None
        self._control: "queue.Queue[Tuple[str, Optional[_TwsSession]]]" = queue.Queue()
        self._stopping = threading.Event()
        self._supervisor: Optional[threading.Thread] = None
        self._ever_connected = False
        self._logged_failure: Optional[str] = None
        self._port_override: Optional[int] = None    # the port TWS moved to (1300)

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
            raise AgentError(IB_NOT_CONNECTED, f"The connection to TWS broke while sending {method}") from None
        # A reqMarketDataType from ib_lines (delayed-frozen for a contract that is not subscribed, in
        # auto) leaves status.market_data_type alone: that says what the agent asks by default, and
        # each quote's market_data_type what TWS gave it (its marketDataType callback).

    def _ready_session(self) -> _TwsSession:
        with self._lock:
            session = self._session
            if self.ready:
                return session
            error = self._state["error"]
        raise AgentError(IB_NOT_CONNECTED, f"Not connected to TWS. {error}" if error else
                         "Not connected to TWS yet (connecting)")

    def next_req_id(self) -> int:
        with self._lock:
            req_id = self._next_req
            self._next_req = req_id + 1 if req_id < REQ_ID_LAST else REQ_ID_FIRST
            return req_id

    def next_order_id(self) -> int:
        with self._lock:
            if self._next_order is None:
                raise AgentError(IB_NOT_CONNECTED, "Not connected to TWS: no order id yet")
            order_id = self._next_order
            self._next_order += 1
            return order_id

    def _order_id_from_tws(self, session: _TwsSession, order_id: int) -> None:
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

    def call(self, method: str, req_id: int, *args, rows: Sequence[str] = (), end: str,
             timeout: Optional[float] = None) -> List[tuple]:
        """Send one request and wait for its answer: the args tuples (without the reqId) of its
        `rows` callbacks, up to the `end` callback. Raises AgentError; never waits past timeout."""
        collector = _Collector(rows, end)
        self.register(req_id, collector)
        try:
            self.send(method, req_id, *args)
            return collector.wait(self._config.request_timeout_s if timeout is None else timeout, method)
        finally:
            self.unregister(req_id)

    # -- routing (reader thread) -----------------------------------------------------------------
    @staticmethod
    def _deliver(fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("Error in the handler of a TWS callback (%s)", getattr(fn, "__qualname__", fn))

    def _tell_listeners(self, name: str, args: tuple) -> None:
        for fn in self._listeners.get(name, ()):
            self._deliver(fn, *args)

    def _route_by_id(self, session: _TwsSession, name: str, args: tuple) -> None:
        if session is not self._session:
            return
        handler = self._registry.get(args[0])
        if handler is None:
            self._tell_listeners(name, args)
        else:
            self._deliver(handler.on_event, name, args)

    def _route_plain(self, session: _TwsSession, name: str, args: tuple) -> None:
        if session is self._session:
            if name == "openOrderEnd" and not self._read_only_probe.is_set():  # the probe's answer
                self._read_only_probe.set()
                self._set_state(read_only=False)
            self._tell_listeners(name, args)

    def _route_error(self, session: _TwsSession, req_id: int, code: int, text: str) -> None:
        if session is not self._session:
            log.debug("TWS message during connect (port %s): %s %s", session.address[1], code, text)
            return
        read_only = is_read_only_error(code, text)
        if read_only:
            if self._state["read_only"] is not True:
                log.warning("%s", READ_ONLY_FIX)
            self._set_state(read_only=True)
            self._read_only_probe.set()
        if code in NOTICE_CODES:
            log.log(logging.WARNING if code in TROUBLE_NOTICES else logging.DEBUG, "TWS says: %s (notice %s)", text, code)
            self._tell_listeners("notice", (req_id, code, text))
            return
        if code == IB_LINK_LOST:
            log.warning("TWS lost its connection to IB's servers (1100); waiting for TWS to restore it")
            self._set_state(error="TWS has lost its connection to IB's servers (1100)")
            self._tell_listeners("ib_link", (False, code, text))   # market data fails fast meanwhile
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
        handler = self._registry.get(req_id)
        if handler is not None:
            self._deliver(handler.on_error, code, text)
            return
        if not read_only:
            log.log(logging.WARNING if req_id < 0 else logging.DEBUG, "TWS says: %s (error %s%s)", text, code,
                    "" if req_id < 0 else f", request {req_id}")
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
            log.warning("TWS moved its API port to %s (1300); reconnecting there. Set IB_PORT=%s in "
                        "config.env to keep it", port, port)
            with self._lock:
                self._port_override = port
        self._control.put(("moved", session))

    def _session_closed(self, session: _TwsSession) -> None:
        self._control.put(("closed", session))

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
                retry=tenacity.retry_if_exception_type(_Unavailable), wait=self._retry_wait,
                stop=lambda _state: self._stopping.is_set(), sleep=self._stopping.wait, reraise=True)
            try:
                retrying(self._connect_and_serve)
            except _Unavailable:
                break  # stopping
            except Exception:
                log.exception("Connecting to TWS failed on an unexpected error; retrying")
                self._stopping.wait(self._backoff.max)

    def _retry_wait(self, state: tenacity.RetryCallState) -> float:
        if getattr(state.outcome.exception(), "slow", False):
            return self._mismatch_retry_s
        return self._backoff(state)

    def _connect_and_serve(self) -> None:
        """One connection's life. Returns after a stable connection ended (so the backoff starts
        over); raises _Unavailable when TWS could not be used or dropped soon after connecting."""
        if self._stopping.is_set():
            return
        session, account_type = self._resolve()
        if not self._go_ready(session, account_type):
            raise _Unavailable()
        connected_at = time.monotonic()
        self._serve(session)
        self._go_lost(session)
        if not self._stopping.is_set() and time.monotonic() - connected_at < STABLE_AFTER_S:
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
            ib_port = self._port_override or cfg.ib_port     # where TWS said it moved (1300), if it did
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
            self._state.update(connected=True, port=port, client_id=session.client_id,
                               accounts=list(session.accounts), account_type=account_type,
                               server_version=session.server_version,
                               market_data_type=MARKET_DATA_TYPE_NAMES[type_code], error=None)
            self._ready_event.set()
        self._ever_connected = True
        self._logged_failure = None
        client = "" if session.client_id == self._config.ib_client_id else \
            f", client id {session.client_id} ({self._config.ib_client_id} is in use)"
        log.info("Connected to TWS on port %s as %s (%s)%s", port, ", ".join(session.accounts),
                 account_type, client)
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
                    pass        # closed: the "closed" message follows

    def _tws_answers(self, session: _TwsSession) -> bool:
        """A TWS that hangs, or a laptop that slept, can leave the socket open with nobody behind
        it: when the connection has been quiet, ask for the time and wait a little for any answer."""
        quiet_since = session.conn.last_received
        if time.monotonic() - quiet_since < HEARTBEAT_S:
            return True
        try:
            session.probe()     # around the back-pressure gate, which a hung TWS keeps shut
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
            self._state.update(connected=False, port=self._config.ib_port, client_id=self._config.ib_client_id,
                               accounts=[], account_type=None, server_version=None, market_data_type=None,
                               error=None if stopping else f"Lost connection to TWS on port {port}; reconnecting")
        session.close()
        self._read_only_probe.set()
        for handler in handlers:
            self._deliver(handler.on_disconnect)
        self._tell_listeners("disconnected", ())
        if stopping:
            log.info("Disconnected from TWS on port %s", port)
        else:
            log.warning("Lost connection to TWS on port %s; reconnecting...", port)
        self._publish()
