"""One socket connection to TWS (DESIGN.md 5.2): the socket under ibapi's reader (_TwsSocket, with
the back-pressure gate) and ibapi's client and wrapper in one object (_TwsSession: the handshake,
pacing every message out, turning ibapi's swallowed request errors into raised ones, and forwarding
every callback to its owner IBConnection). agent.ib.connection owns the registry, routing and reconnecting.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Optional, Protocol, Tuple

from ibapi import comm, decoder, reader
from ibapi.client import EClient
from ibapi.server_versions import MIN_CLIENT_VER
from ibapi.wrapper import EWrapper

from agent import log as agent_log
from agent.errors import AgentError, IbNotConnected
from agent.ib.codes import CLIENT_ERROR_CODES, CLIENT_ID_IN_USE, error_for, with_reject_details
from agent.ib.pacing import MessageLimiter

log = agent_log.logger("ib")

# The highest TWS server version the agent's tests cover (tests/test_protocol_versions.py runs the
# order, market-data and account suites against the fake TWS at it). The handshake offers
# v100..this, never the pinned ibapi's own maximum: a newer ibapi cannot silently move users to
# a protocol nobody tested (a test fails when ibapi's MAX_CLIENT_VER passes this).
TESTED_MAX_SERVER_VERSION = 226
READ_POLL_S = 0.5
# Back-pressure (DESIGN.md 5.2, a hung TWS): at most this many messages go out after the last bytes
# TWS sent; then one reqCurrentTime asks it for a sign of life and sending waits for any answer. A
# TWS that stopped reading so finds at most UNANSWERED_MAX + 1 messages waiting when it resumes, and
# the limiter counts them in its window from then on (MessageLimiter.backlog): never a burst above
# the pacing limit. The socket's own buffers cannot do this: on loopback they hold minutes of requests.
UNANSWERED_MAX = 10
BACKLOG_AFTER_S = 0.25  # a wait this long means TWS read the waiting messages late: re-count them

# Callbacks whose first argument is a reqId / tickerId / orderId.
ID_CALLBACKS = (
    "marketDataType",
    "tickPrice",
    "tickSize",
    "tickSnapshotEnd",
    "tickGeneric",
    "tickString",
    "tickEFP",
    "tickOptionComputation",
    "tickReqParams",
    "tickNews",
    "tickByTickAllLast",
    "tickByTickBidAsk",
    "tickByTickMidPoint",
    "rerouteMktDataReq",
    "rerouteMktDepthReq",
    "updateMktDepth",
    "updateMktDepthL2",
    "orderStatus",
    "openOrder",
    "execDetails",
    "execDetailsEnd",
    "contractDetails",
    "bondContractDetails",
    "contractDetailsEnd",
    "symbolSamples",
    "securityDefinitionOptionParameter",
    "securityDefinitionOptionParameterEnd",
    "smartComponents",
    "accountSummary",
    "accountSummaryEnd",
    "positionMulti",
    "positionMultiEnd",
    "accountUpdateMulti",
    "accountUpdateMultiEnd",
    "pnl",
    "pnlSingle",
    "historicalData",
    "historicalDataEnd",
    "historicalDataUpdate",
    "historicalSchedule",
    "realtimeBar",
    "headTimestamp",
    "histogramData",
    "historicalTicks",
    "historicalTicksBidAsk",
    "historicalTicksLast",
    "scannerData",
    "scannerDataEnd",
    "deltaNeutralValidation",
    "softDollarTiers",
    "newsArticle",
    "historicalNews",
    "historicalNewsEnd",
    "displayGroupList",
    "displayGroupUpdated",
    "replaceFAEnd",
    "wshMetaData",
    "wshEventData",
    "userInfo",
)
# Callbacks without an id: listeners only.
PLAIN_CALLBACKS = (
    "openOrderEnd",
    "orderBound",
    "completedOrder",
    "completedOrdersEnd",
    "commissionAndFeesReport",
    "position",
    "positionEnd",
    "updateAccountValue",
    "updatePortfolio",
    "updateAccountTime",
    "accountDownloadEnd",
    "currentTime",
    "currentTimeInMillis",
    "updateNewsBulletin",
    "receiveFA",
    "scannerParameters",
    "familyCodes",
    "mktDepthExchanges",
    "newsProviders",
    "marketRule",
)
_CLIENT_ID_TAKEN = "client id in use"


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
        self._drained = threading.Condition()  # guards _unanswered / _probe_asked
        self._unanswered = 0  # messages let out since TWS last sent anything
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


class SessionOwner(Protocol):
    """What a session tells its owner (agent.ib.connection.IBConnection); callbacks on the reader thread."""

    limiter: MessageLimiter  # paces every message of every session

    def route_by_id(self, session: "_TwsSession", name: str, args: tuple) -> None: ...
    def route_plain(self, session: "_TwsSession", name: str, args: tuple) -> None: ...
    def route_error(self, session: "_TwsSession", req_id: int, code: int, text: str) -> None: ...
    def order_id_from_tws(self, session: "_TwsSession", order_id: int) -> None: ...
    def session_closed(self, session: "_TwsSession") -> None: ...
    def probe_wanted(self, session: "_TwsSession") -> None: ...


class _TwsSession(EWrapper, EClient):
    """One socket connection to TWS: ibapi's client and wrapper in one object. Each attempt gets
    a new one, so nothing of a dropped connection (queued messages, ids) leaks into the next."""

    def __init__(self, owner: SessionOwner, host: str, port: int, client_id: int):
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
        self._request = threading.local()  # the request call() in progress on this thread
        self._bypass = threading.local()  # the probe passes the back-pressure gate
        self._ready_to_gate = False  # the gate starts after the handshake (TWS says little before)

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
                backlog = conn.wait_drained(lambda: self._owner.probe_wanted(self))
            except OSError:
                raise self._send_failed(IbNotConnected("The connection to TWS closed")) from None
            if backlog:
                log.warning(
                    "TWS read nothing for a while; %s %s waiting for it",
                    agent_log.plural(backlog, "message"),
                    "was" if backlog == 1 else "were",
                )
                self._owner.limiter.backlog(backlog)
        if self._owner.limiter.acquire(self.closed) is None:
            raise self._send_failed(IbNotConnected("The connection to TWS closed"))

    def probe(self) -> None:
        """Ask TWS for the time around the back-pressure gate (supervisor thread): any answer
        proves TWS reads again, and opens the gate."""
        self._bypass.on = True
        try:
            self.request("reqCurrentTime")
        finally:
            self._bypass.on = False

    def sendMsg(self, msgId, msg):
        self._paced_send(super().sendMsg, msgId, msg)

    def sendMsgProtoBuf(self, msgId, msg):
        self._paced_send(super().sendMsgProtoBuf, msgId, msg)

    def _paced_send(self, send, msgId, msg) -> None:
        """The one way out to the socket, text or protobuf: a limiter token, then the bytes."""
        self._pace()
        try:
            send(msgId, msg)
        except OSError:
            raise self._send_failed(IbNotConnected("The connection to TWS broke while sending")) from None

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
        self._run_thread = threading.Thread(
            target=self._run_until_closed, daemon=True, name=f"ib-reader-{self.address[1]}"
        )
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
            self._owner.session_closed(self)

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
        self._owner.order_id_from_tws(self, orderId)
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
        self._owner.route_error(self, reqId, errorCode, errorString)


def _forwarder(name: str, route: str):
    def callback(self: _TwsSession, *args):
        getattr(self._owner, route)(self, name, args)

    callback.__name__ = callback.__qualname__ = name
    return callback


for _name in ID_CALLBACKS:
    setattr(_TwsSession, _name, _forwarder(_name, "route_by_id"))
for _name in PLAIN_CALLBACKS:
    setattr(_TwsSession, _name, _forwarder(_name, "route_plain"))
