"""The TWS connection: routing of recorded callback sequences, call(), errors, pacing, and (against
tests.fake_tws) connecting, port/mode resolution, busy client ids, drops and TWS restarts."""

import dataclasses
import inspect
import json
import os
import signal
import threading
import time
import unittest
from decimal import Decimal
from pathlib import Path
from unittest import mock

from ibapi.common import TickAttrib
from ibapi.contract import Contract, ContractDetails
from ibapi.execution import Execution
from ibapi.wrapper import EWrapper

from agent.backoff import ReconnectPolicy
from agent.config import Config
from agent.errors import (
    IB_ERROR,
    IB_NOT_CONNECTED,
    MARKET_DATA_NOT_SUBSCRIBED,
    NO_SECURITY_DEFINITION,
    READ_ONLY_API,
    TIMEOUT,
    AgentError,
)
from agent.ib import connection as ib_connection
from agent.ib import session as ib_session
from agent.ib.codes import NOTICE_CODES, error_for, with_reject_details
from agent.ib.connection import REQ_ID_FIRST, IBConnection
from agent.ib.session import ID_CALLBACKS, PLAIN_CALLBACKS, TESTED_MAX_SERVER_VERSION, _TwsSession

RECORDED = json.loads((Path(__file__).parent / "recorded" / "connection_callbacks.json").read_text())
TAGGED = {"Contract": Contract, "ContractDetails": ContractDetails, "TickAttrib": TickAttrib, "Execution": Execution}
CONFIG = Config(key="test-key")
WAIT_S = 10.0


def decode(value, req_id):
    """Recorded JSON -> the objects ibapi passes: tagged dicts become ibapi objects, "$id" the id."""
    if value == "$id":
        return req_id
    if isinstance(value, list):
        return [decode(v, req_id) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "Decimal":
            return Decimal(body)
        obj = TAGGED[tag]()
        for name, field in body.items():
            setattr(obj, name, decode(field, req_id))
        return obj
    return value


def replay(session, sequence, req_id=None):
    for name, args in RECORDED[sequence]:
        getattr(session, name)(*decode(args, req_id))


class Recorder:
    """A registry handler that keeps everything it is told."""

    def __init__(self):
        self.events, self.errors, self.disconnects = [], [], 0

    def on_event(self, name, args):
        self.events.append((name, args))

    def on_error(self, ib_code, text):
        self.errors.append((ib_code, text))

    def on_disconnect(self):
        self.disconnects += 1


def connected(config=CONFIG, sequence="handshake", account_type="paper"):
    """An IBConnection whose current session got `sequence` (a stand-in socket records what is sent)."""
    changes = []
    conn = IBConnection(config, on_change=lambda: changes.append(conn.status()))
    session = _TwsSession(conn, config.ib_host, 7497, config.ib_client_id)
    session.conn, session.serverVersion_ = FakeSocket(), 176
    session.setConnState(session.CONNECTED)
    replay(session, sequence)
    assert conn._go_ready(session, account_type)
    return conn, session, changes


class Serving:
    """Runs the supervisor's serve loop for a session (resubscribe and drop handling)."""

    def __init__(self, conn, session):
        self.conn = conn
        self.thread = threading.Thread(target=conn._serve, args=(session,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.conn._control.put(("stop", None))
        self.thread.join(WAIT_S)


class CallbackTables(unittest.TestCase):
    def test_id_callbacks_start_with_an_id_and_plain_ones_do_not(self):
        id_names = {"reqId", "tickerId", "orderId", "requestId", "id"}
        for name in ID_CALLBACKS + PLAIN_CALLBACKS:
            with self.subTest(name):
                params = list(inspect.signature(getattr(EWrapper, name)).parameters)[1:]
                self.assertEqual(bool(params) and params[0] in id_names, name in ID_CALLBACKS)

    def test_every_data_callback_of_ewrapper_is_routed(self):
        kept = {"error", "winError", "connectAck", "connectionClosed", "nextValidId", "managedAccounts"}
        callbacks = {
            n
            for n, f in vars(EWrapper).items()
            if callable(f) and not n.startswith("_") and not n.endswith("ProtoBuf") and not n.startswith("verify")
        }
        self.assertEqual(callbacks - kept - set(ID_CALLBACKS) - set(PLAIN_CALLBACKS), set())


class ErrorTable(unittest.TestCase):
    def test_codes(self):
        cases = [
            (200, "No security definition has been found for the request", NO_SECURITY_DEFINITION),
            (354, "Requested market data is not subscribed.", MARKET_DATA_NOT_SUBSCRIBED),
            (10089, "Requested market data requires additional subscription", MARKET_DATA_NOT_SUBSCRIBED),
            (10090, "Part of requested market data is not subscribed", MARKET_DATA_NOT_SUBSCRIBED),
            (10168, "Delayed market data is not enabled", MARKET_DATA_NOT_SUBSCRIBED),
            (10197, "No market data during competing live session", MARKET_DATA_NOT_SUBSCRIBED),
            (321, "The API interface is currently in Read-Only mode.", READ_ONLY_API),
            (321, "Error validating request: missing field", IB_ERROR),
            (504, "Not connected", IB_NOT_CONNECTED),
            (162, "Historical Market Data Service error message", IB_ERROR),
        ]
        for ib_code, text, code in cases:
            with self.subTest(ib_code=ib_code, text=text):
                error = error_for(ib_code, text)
                self.assertIsInstance(error, AgentError)
                self.assertEqual((error.code, error.ib_code), (code, ib_code))
                self.assertIn(text, error.message)
        self.assertIn("uncheck", error_for(321, "Read-Only mode").message)

    def test_notices_are_not_failures(self):
        for code in (2104, 2106, 2107, 2108, 2158, 2119, 10167):
            self.assertIn(code, NOTICE_CODES)
        for code in (200, 354, 10168, 321, 1100, 326):
            self.assertNotIn(code, NOTICE_CODES)


class Replayed(unittest.TestCase):
    def test_handshake_makes_ready_with_the_exact_status(self):
        conn, session, changes = connected()
        self.assertTrue(conn.ready)
        self.assertTrue(conn.wait_ready(0))
        self.assertEqual(
            conn.status(),
            {
                "connected": True,
                "host": "127.0.0.1",
                "port": 7497,
                "client_id": 17,
                "accounts": ["DU1234567"],
                "account_type": "paper",
                "server_version": None,
                "market_data_type": "frozen",
                "read_only": None,
                "error": None,
            },
        )
        self.assertEqual(changes[-1], conn.status(), "on_change was told")
        self.assertEqual([conn.next_order_id(), conn.next_order_id()], [1, 2])

    def test_order_ids_follow_a_later_next_valid_id(self):
        conn, session, _ = connected()
        conn.next_order_id()
        session.nextValidId(50)
        self.assertEqual(conn.next_order_id(), 50)
        session.nextValidId(3)
        self.assertEqual(conn.next_order_id(), 51, "never goes back")

    def test_market_data_type_setting(self):
        for setting, name in [
            ("auto", "frozen"),
            ("live", "live"),
            ("frozen", "frozen"),
            ("delayed", "delayed"),
            ("delayed-frozen", "delayed-frozen"),
        ]:
            with self.subTest(setting):
                conn, session, _ = connected(dataclasses.replace(CONFIG, market_data_type=setting))
                self.assertEqual(conn.status()["market_data_type"], name)

    def test_request_ids_never_meet_order_ids(self):
        conn, _, _ = connected()
        ids = [conn.next_req_id() for _ in range(3)]
        self.assertEqual(ids, [REQ_ID_FIRST, REQ_ID_FIRST + 1, REQ_ID_FIRST + 2])
        conn._next_req = ib_connection.REQ_ID_LAST
        self.assertEqual([conn.next_req_id(), conn.next_req_id()], [ib_connection.REQ_ID_LAST, REQ_ID_FIRST])

    def answering(self, session, method, sequence):
        """Make `method` on the session answer with a recorded sequence instead of sending."""
        sent = []

        def answer(req_id, *args):
            sent.append((req_id,) + args)
            if sequence:
                replay(session, sequence, req_id)

        setattr(session, method, answer)
        return sent

    def test_call_returns_rows_without_the_id_and_ignores_notices(self):
        conn, session, _ = connected()
        sent = self.answering(session, "reqContractDetails", "contract_details_aapl")
        req_id = conn.next_req_id()
        rows = conn.call(
            "reqContractDetails",
            req_id,
            Contract(),
            rows=("contractDetails",),
            end="contractDetailsEnd",
            timeout=WAIT_S,
        )
        self.assertEqual(len(sent), 1)
        self.assertEqual([len(r) for r in rows], [1, 1])
        self.assertEqual([r[0].contract.conId for r in rows], [265598, 38708077])
        self.assertIsNone(conn.requests.get(req_id), "unregistered after the answer")

    def test_call_raises_the_routed_error(self):
        for sequence, code, ib_code in [
            ("no_security_definition", NO_SECURITY_DEFINITION, 200),
            ("not_subscribed", MARKET_DATA_NOT_SUBSCRIBED, 354),
        ]:
            with self.subTest(sequence):
                conn, session, changes = connected()
                self.answering(session, "reqContractDetails", sequence)
                with self.assertRaises(AgentError) as caught:
                    conn.call(
                        "reqContractDetails",
                        conn.next_req_id(),
                        Contract(),
                        rows=("contractDetails",),
                        end="contractDetailsEnd",
                        timeout=WAIT_S,
                    )
                self.assertEqual((caught.exception.code, caught.exception.ib_code), (code, ib_code))
                self.assertEqual(conn._registry, {})
                self.assertIsNone(conn.status()["read_only"])

    def test_read_only_fails_the_call_and_shows_in_the_status_with_the_fix(self):
        conn, session, changes = connected()
        self.answering(session, "placeOrder", "read_only")
        with self.assertRaises(AgentError) as caught, self.assertLogs("ib_data_agent.ib", "WARNING") as logs:
            conn.call("placeOrder", 7, Contract(), None, end="orderStatus", timeout=WAIT_S)
        self.assertEqual((caught.exception.code, caught.exception.ib_code), (READ_ONLY_API, 321))
        self.assertIn("uncheck", caught.exception.message)
        self.assertEqual(len(logs.output), 1)
        self.assertTrue(conn.status()["read_only"])
        self.assertTrue(changes[-1]["read_only"], "on_change was told")

    def test_an_error_goes_only_to_its_request(self):
        conn, session, _ = connected()
        failing, other = Recorder(), Recorder()
        conn.register(REQ_ID_FIRST, failing)
        conn.register(REQ_ID_FIRST + 1, other)
        replay(session, "no_security_definition", REQ_ID_FIRST)
        self.assertEqual(failing.errors, [(200, "No security definition has been found for the request")])
        self.assertEqual(other.errors, [])

    def test_notices_never_reach_a_request_and_events_keep_their_id(self):
        conn, session, _ = connected()
        handler, notices = Recorder(), []
        conn.add_listener("notice", lambda *args: notices.append(args))
        conn.register(REQ_ID_FIRST, handler)
        replay(session, "delayed_market_data", REQ_ID_FIRST)
        self.assertEqual(handler.errors, [])
        self.assertEqual(
            [name for name, _ in handler.events],
            ["marketDataType", "tickPrice", "tickPrice", "tickSize", "tickSnapshotEnd"],
        )
        self.assertEqual(handler.events[0][1], (REQ_ID_FIRST, 3))
        self.assertEqual(handler.events[1][1][:3], (REQ_ID_FIRST, 66, 1.23))
        self.assertEqual([n[:2] for n in notices], [(REQ_ID_FIRST, 10167)])

    def test_id_less_and_unclaimed_callbacks_go_to_listeners(self):
        conn, session, _ = connected()
        seen = []
        for name in ("position", "positionEnd", "execDetails", "error"):
            conn.add_listener(name, lambda *args, name=name: seen.append((name, args)))
        replay(session, "unsolicited")
        self.assertEqual([name for name, _ in seen], ["position", "positionEnd", "execDetails", "error"])
        self.assertEqual(seen[0][1][0], "DU1234567")
        self.assertEqual(seen[0][1][2], Decimal("200"))
        self.assertEqual(seen[3][1], (12, 202, "Order Canceled - reason:"))

    def test_a_failing_handler_does_not_stop_routing(self):
        conn, session, _ = connected()
        boom = mock.Mock(side_effect=RuntimeError("handler bug"))
        conn.add_listener("position", boom)
        seen = []
        conn.add_listener("positionEnd", lambda: seen.append("end"))
        with self.assertLogs("ib_data_agent.ib", "ERROR"):
            replay(session, "unsolicited")
        self.assertEqual(seen, ["end"])

    def test_ib_link_lost_then_restored_with_data_lost_asks_to_resubscribe(self):
        conn, session, changes = connected()
        handler, resubscribed = Recorder(), threading.Event()
        conn.register(REQ_ID_FIRST, handler)
        conn.add_listener("resubscribe", resubscribed.set)
        with Serving(conn, session), self.assertLogs("ib_data_agent.ib", "INFO") as logs:
            replay(session, "ib_link_lost_and_restored_data_lost")
            self.assertTrue(resubscribed.wait(WAIT_S))
        self.assertEqual([line.split(":")[0] for line in logs.output], ["WARNING", "WARNING", "INFO"])
        self.assertIn(("resubscribe", ()), handler.events)
        self.assertEqual(handler.errors, [])
        lost = [c for c in changes if c["error"]]
        self.assertIn("1100", lost[0]["error"])
        self.assertTrue(lost[0]["connected"], "still connected to TWS while TWS is cut off from IB")
        self.assertIsNone(conn.status()["error"])

    def test_ib_link_restored_with_data_maintained_needs_nothing(self):
        conn, session, _ = connected()
        handler = Recorder()
        conn.register(REQ_ID_FIRST, handler)
        with Serving(conn, session):
            replay(session, "ib_link_restored_data_maintained")
        self.assertEqual((handler.events, handler.errors), ([], []))

    def test_client_id_in_use_is_noticed_by_the_session(self):
        conn = IBConnection(CONFIG)
        session = _TwsSession(conn, "127.0.0.1", 7497, 17)
        replay(session, "client_id_in_use")
        self.assertTrue(session.client_id_in_use)
        self.assertTrue(session._settled.is_set())

    def test_client_id_in_use_tries_the_next_ids(self):
        conn = IBConnection(CONFIG)
        tried = []

        def fake_open(session, connect_timeout, handshake_timeout):
            tried.append(session.client_id)
            if session.client_id < 19:
                replay(session, "client_id_in_use")
                return ib_connection._CLIENT_ID_TAKEN
            replay(session, "handshake")
            return None

        with mock.patch.object(_TwsSession, "open", fake_open):
            session, failure = conn._open_port(7497)
        self.assertEqual((tried, session.client_id, failure), ([17, 18, 19], 19, None))

        with mock.patch.object(_TwsSession, "open", lambda *a: ib_connection._CLIENT_ID_TAKEN):
            session, failure = conn._open_port(7497)
        self.assertIsNone(session)
        self.assertIn("client ids 17 to 22", failure)

    def test_session_reads_a_live_handshake(self):
        conn = IBConnection(CONFIG)
        session = _TwsSession(conn, "127.0.0.1", 7497, 17)
        replay(session, "handshake_live_two_accounts")
        self.assertEqual((session.accounts, session.first_order_id), (("U1234567", "U7654321"), 4711))
        self.assertTrue(session._settled.is_set())


class NotConnected(unittest.TestCase):
    def test_requests_are_refused_at_once(self):
        conn = IBConnection(CONFIG)
        self.assertFalse(conn.ready)
        self.assertFalse(conn.wait_ready(0))
        for attempt in (
            lambda: conn.send("reqCurrentTime"),
            lambda: conn.call("reqContractDetails", 5, Contract(), end="contractDetailsEnd"),
            conn.next_order_id,
        ):
            with self.assertRaises(AgentError) as caught:
                attempt()
            self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)
        self.assertEqual(conn._registry, {})
        self.assertEqual(conn.status()["connected"], False)

    def test_send_takes_only_request_methods(self):
        conn, _, _ = connected()
        for method in ("disconnect", "connect", "run", "sendMsg", "nonsense"):
            with self.assertRaises(ValueError):
                conn.send(method)


class DropsAndTimeouts(unittest.TestCase):
    def test_a_drop_fails_the_waiting_call_at_once_and_refuses_new_ones(self):
        conn, session, changes = connected()
        sent, bystander = threading.Event(), Recorder()
        conn.register(REQ_ID_FIRST + 99, bystander)
        session.reqContractDetails = lambda *args: sent.set()

        def dropper():
            sent.wait(WAIT_S)
            conn._go_lost(session)

        threading.Thread(target=dropper, daemon=True).start()
        with self.assertRaises(AgentError) as caught, self.assertLogs("ib_data_agent.ib", "INFO") as logs:
            conn.call(
                "reqContractDetails",
                conn.next_req_id(),
                Contract(),
                rows=("contractDetails",),
                end="contractDetailsEnd",
                timeout=60,
            )
        self.assertEqual(logs.output, ["WARNING:ib_data_agent.ib:Lost connection to TWS on port 7497; reconnecting..."])
        self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)
        self.assertEqual(bystander.disconnects, 1)
        self.assertFalse(conn.ready)
        status = conn.status()
        self.assertEqual((status["connected"], status["accounts"], status["account_type"]), (False, [], None))
        self.assertIn("Lost connection to TWS on port 7497", status["error"])
        self.assertEqual(changes[-1], status)
        with self.assertRaises(AgentError) as caught:
            conn.send("reqCurrentTime")
        self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)

    def test_a_silent_tws_times_out_and_unregisters(self):
        conn, session, _ = connected()
        session.reqContractDetails = lambda *args: None
        with self.assertRaises(AgentError) as caught:
            conn.call("reqContractDetails", conn.next_req_id(), Contract(), end="contractDetailsEnd", timeout=0.2)
        self.assertEqual(caught.exception.code, TIMEOUT)
        self.assertEqual(conn._registry, {})


class Backoff(unittest.TestCase):
    def attempt_state(self, attempt, error):
        return mock.Mock(attempt_number=attempt, outcome=mock.Mock(exception=lambda: error))

    def test_waits_grow_with_full_jitter_up_to_the_cap_and_a_mismatch_waits_long(self):
        conn = IBConnection(CONFIG, backoff=(0.5, 10.0), mismatch_retry_s=30.0)
        for attempt, high in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (40, 10.0)]:
            waits = [conn._retry_wait(self.attempt_state(attempt, ib_connection._Unavailable())) for _ in range(200)]
            self.assertTrue(all(0 <= w <= high for w in waits), (attempt, max(waits)))
            self.assertGreater(max(waits), high / 2, "jitter spreads over the whole window")
        self.assertEqual(conn._retry_wait(self.attempt_state(1, ib_connection._Unavailable(slow=True))), 30.0)

    def test_the_supervisor_uses_the_shared_policy_with_its_own_figures(self):
        policy = IBConnection(CONFIG)._reconnect
        self.assertIsInstance(policy, ReconnectPolicy)
        self.assertEqual((policy.first_s, policy.cap_s, policy.stable_after_s), (0.5, 4.0, 60.0))

    def test_only_a_stable_connection_resets_the_backoff(self):
        conn, session, _ = connected()
        conn._resolve = lambda: (session, "paper")
        conn._go_ready = lambda *args: True
        conn._serve = lambda s: None  # the connection drops at once
        with self.assertLogs("ib_data_agent.ib", "WARNING"), self.assertRaises(ib_connection._Unavailable):
            conn._connect_and_serve()
        with self.assertLogs("ib_data_agent.ib", "WARNING"), mock.patch.object(conn._reconnect, "stable_after_s", 0):
            self.assertIsNone(conn._connect_and_serve())


class FakeSocket:
    def __init__(self):
        self.sent = []

    def isConnected(self):
        return True

    def sendMsg(self, msg):
        self.sent.append(msg)
        return len(msg)

    def disconnect(self):
        pass


class ClientSideErrors(unittest.TestCase):
    """ibapi 10.4x+ reports a request it cannot send through error() instead of raising."""

    def test_a_request_ibapi_refuses_raises_at_once_and_is_not_logged_as_a_tws_error(self):
        conn, session, _ = connected()
        contract = Contract()
        contract.symbol, contract.secType, contract.exchange = "AAPL\u00e9", "STK", "SMART"  # not ASCII
        session.conn.sent.clear()
        with self.assertRaises(AgentError) as caught, self.assertNoLogs("ib_data_agent.ib", "WARNING"):
            conn.send("reqMktData", conn.next_req_id(), contract, "", False, False, [])
        self.assertEqual(caught.exception.code, IB_ERROR)
        self.assertIn("invalid symbol", str(caught.exception).lower())
        self.assertEqual(session.conn.sent, [], "nothing reached TWS")

    def test_a_tws_error_replayed_during_the_send_still_goes_to_its_request(self):
        conn, session, _ = connected()
        recorder, req_id = Recorder(), conn.next_req_id()
        conn.register(req_id, recorder)
        session.reqContractDetails = lambda *args: session.error(req_id, 0, 200, "No security definition", "")
        conn.send("reqContractDetails", req_id, Contract())
        self.assertEqual(recorder.errors, [(200, "No security definition")])


class RejectDetails(unittest.TestCase):
    def test_the_reason_in_advanced_order_reject_json_reaches_the_message(self):
        text = with_reject_details("Order rejected - reason:", '{"rejectReason": "Insufficient margin", "code": 201}')
        self.assertEqual(text, "Order rejected - reason: (TWS details: Insufficient margin)")

    def test_nested_lists_unparseable_json_and_long_details(self):
        self.assertEqual(with_reject_details("x", '[{"a": "one"}, {"b": ["two", "one"]}]'), "x (TWS details: one; two)")
        self.assertEqual(with_reject_details("x", "not json"), "x (TWS details: not json)")
        self.assertEqual(with_reject_details("x", '{"n": 3}'), 'x (TWS details: {"n": 3})')
        self.assertEqual(with_reject_details("x", ""), "x")
        long = with_reject_details("x", '{"r": "%s"}' % ("y" * 1000))
        self.assertLess(len(long), 330)
        self.assertTrue(long.endswith("...)"))

    def test_the_session_folds_the_details_into_the_routed_error(self):
        conn, session, _ = connected()
        recorder = Recorder()
        conn.register(42, recorder)
        session.error(42, 0, 201, "Order rejected - reason:", '{"rejectReason": "Short sale not allowed"}')
        self.assertEqual(recorder.errors, [(201, "Order rejected - reason: (TWS details: Short sale not allowed)")])


class Pacing(unittest.TestCase):
    def test_every_message_takes_a_token(self):
        conn, session, _ = connected()
        acquired = []
        conn.limiter = mock.Mock(acquire=lambda interrupt=None: acquired.append(interrupt) or 0.0)
        session.conn, session.serverVersion_ = FakeSocket(), 176
        session.setConnState(session.CONNECTED)
        session.clientId = 17
        session.startApi()
        conn.send("reqCurrentTime")
        contract = Contract()
        contract.symbol, contract.secType, contract.exchange, contract.currency = "AAPL", "STK", "SMART", "USD"
        conn.send("reqMktData", conn.next_req_id(), contract, "", False, False, [])
        conn.send("cancelMktData", REQ_ID_FIRST)
        self.assertEqual(len(session.conn.sent), 4)
        self.assertEqual(len(acquired), 4)
        self.assertTrue(all(a is session.closed for a in acquired), "a closed connection ends the wait")

    def test_a_closed_connection_gives_up_the_wait(self):
        conn, session, _ = connected()
        conn.limiter = mock.Mock(acquire=lambda interrupt=None: None)
        session.conn, session.serverVersion_ = FakeSocket(), 176
        session.setConnState(session.CONNECTED)
        with self.assertRaises(AgentError) as caught:
            conn.send("reqCurrentTime")
        self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)
        self.assertEqual(session.conn.sent, [])


# ---- against tests.fake_tws ---------------------------------------------------------------------

from tests.agent_process import ServerProcess  # noqa: E402
from tests.fake_tws import FakeTWS  # noqa: E402

FAST_BACKOFF = (0.05, 0.3)
DROP_WAIT_S = 20.0  # the fake may take a few seconds to notice its own drop_all


def free_port():
    """A loopback port with nobody listening (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stock(symbol):
    contract = Contract()
    contract.symbol, contract.secType, contract.exchange, contract.currency = symbol, "STK", "SMART", "USD"
    return contract


class StatusLog:
    """Every status on_change reported, with a way to wait for one."""

    def __init__(self):
        self.seen = []
        self.changed = threading.Condition()
        self.conn = None

    def __call__(self):
        with self.changed:
            self.seen.append(self.conn.status())
            self.changed.notify_all()

    def wait_for(self, predicate, timeout=WAIT_S):
        with self.changed:
            return self.changed.wait_for(lambda: any(predicate(s) for s in self.seen), timeout)


class WithFakeTWS(unittest.TestCase):
    def fake(self, **options):
        tws = FakeTWS(port=0, tick_delay_ms=(1, 5), **options)
        port = tws.start()
        self.addCleanup(tws.stop)
        return tws, port

    def connection(self, candidates=None, handshake_timeout=5.0, **settings):
        statuses = StatusLog()
        config = dataclasses.replace(CONFIG, **settings)
        conn = IBConnection(
            config,
            on_change=statuses,
            candidate_ports=candidates,
            backoff=FAST_BACKOFF,
            handshake_timeout=handshake_timeout,
        )
        statuses.conn = conn
        conn.start()
        self.addCleanup(conn.stop)
        return conn, statuses


class ConnectAndCall(WithFakeTWS):
    def test_connects_reports_status_and_answers_contract_details(self):
        tws, port = self.fake()
        conn, statuses = self.connection(ib_port=port, market_data_type="delayed")
        self.assertTrue(conn.wait_ready(WAIT_S))
        self.assertEqual(
            conn.status(),
            {
                "connected": True,
                "host": "127.0.0.1",
                "port": port,
                "client_id": 17,
                "accounts": ["DU1234567"],
                "account_type": "paper",
                "server_version": TESTED_MAX_SERVER_VERSION,
                "market_data_type": "delayed",
                "read_only": None,
                "error": None,
            },
        )
        self.assertTrue(statuses.wait_for(lambda s: s["connected"]))
        rows = conn.call(
            "reqContractDetails",
            conn.next_req_id(),
            stock("AAPL"),
            rows=("contractDetails",),
            end="contractDetailsEnd",
            timeout=WAIT_S,
        )
        self.assertGreaterEqual(len(rows), 1)
        self.assertEqual(rows[0][0].contract.symbol, "AAPL")
        with self.assertRaises(AgentError) as caught:
            conn.call(
                "reqContractDetails",
                conn.next_req_id(),
                stock("NOSUCHTHING"),
                rows=("contractDetails",),
                end="contractDetailsEnd",
                timeout=WAIT_S,
            )
        self.assertEqual((caught.exception.code, caught.exception.ib_code), (NO_SECURITY_DEFINITION, 200))
        self.assertEqual(tws.stats()["requests_by_type"].get("reqMarketDataType"), 1)

    def test_busy_client_ids_are_skipped(self):
        _, port = self.fake(busy_client_ids=(17, 18))
        conn, _ = self.connection(ib_port=port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        self.assertEqual(conn.status()["client_id"], 19)

    def test_read_only_tws_shows_in_the_status(self):
        _, port = self.fake(read_only=True)
        conn, statuses = self.connection(ib_port=port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        self.assertIsNone(conn.status()["read_only"])
        with self.assertLogs("ib_data_agent.ib", "WARNING") as logs:
            conn.send("reqAllOpenOrders")
            self.assertTrue(statuses.wait_for(lambda s: s["read_only"] is True))
        self.assertEqual(len(logs.output), 1)
        self.assertIn("Read-Only API", logs.output[0])

    def test_messages_are_paced_below_tws_limit(self):
        tws, port = self.fake(max_rate=50, pacing="reject")
        conn, _ = self.connection(ib_port=port, ib_max_msg_rate=45)
        self.assertTrue(conn.wait_ready(WAIT_S))

        def burst():
            for _ in range(40):
                conn.send("reqCurrentTime")

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # the fake handles one connection's messages in order: once this is answered, all are counted
        conn.call("reqContractDetails", conn.next_req_id(), stock("AAPL"), end="contractDetailsEnd", timeout=WAIT_S)
        stats = tws.stats()
        self.assertEqual(stats["requests_by_type"].get("reqCurrentTime"), 160)
        self.assertEqual(stats["pacing_violations"], 0)
        self.assertTrue(conn.ready)

    def test_stop_ends_every_thread(self):
        _, port = self.fake()
        conn, statuses = self.connection(ib_port=port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        conn.stop()
        self.assertFalse(conn.ready)
        self.assertEqual([t.name for t in threading.enumerate() if t.name.startswith("ib-") and t.is_alive()], [])
        self.assertFalse(statuses.seen[-1]["connected"])


class SilentServer(WithFakeTWS):
    """Something listens on the port but never answers the API handshake."""

    def setUp(self):
        import socket

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.addCleanup(self.listener.close)
        self.port = self.listener.getsockname()[1]

    def test_a_silent_port_is_reported_not_waited_on_forever(self):
        with self.assertLogs("ib_data_agent.ib", "WARNING"):
            conn, statuses = self.connection(ib_port=self.port, handshake_timeout=0.3)
            self.assertTrue(statuses.wait_for(lambda s: s["error"]))
        self.assertIn(f"port {self.port}: TWS did not answer the API handshake", conn.status()["error"])

    def test_stop_interrupts_a_handshake_in_progress(self):
        conn, _ = self.connection(ib_port=self.port, handshake_timeout=60.0)
        deadline = time.monotonic() + WAIT_S
        while conn._probing is None and time.monotonic() < deadline:
            time.sleep(0.01)
        conn.stop(timeout=WAIT_S)
        self.assertFalse(conn._supervisor.is_alive())


class PortsAndModes(WithFakeTWS):
    """DESIGN.md 5.1 with two fakes; the candidate table is replaced by their ephemeral ports."""

    def setUp(self):
        self.live, self.live_port = self.fake(accounts=("U1234567",))
        self.paper, self.paper_port = self.fake(accounts=("DU1234567",))
        self.down_port = free_port()

    def used(self, tws):
        """Requests the agent sent on that fake beyond the handshake."""
        return {k: v for k, v in tws.stats()["requests_by_type"].items() if k != "startApi"}

    def test_paper_mode_skips_the_live_port(self):
        table = {"paper": (self.down_port, self.live_port, self.paper_port), "live": ()}
        conn, _ = self.connection(candidates=table)
        self.assertTrue(conn.wait_ready(WAIT_S))
        self.assertEqual((conn.status()["port"], conn.status()["account_type"]), (self.paper_port, "paper"))
        self.assertEqual(self.used(self.live), {}, "the live port is never used")

    def test_live_mode_takes_the_live_port(self):
        table = {"paper": (), "live": (self.paper_port, self.live_port)}
        conn, _ = self.connection(candidates=table, ib_mode="live", ib_mode_explicit=True)
        self.assertTrue(conn.wait_ready(WAIT_S))
        self.assertEqual((conn.status()["port"], conn.status()["accounts"]), (self.live_port, ["U1234567"]))
        self.assertEqual(self.used(self.paper), {})

    def test_nothing_matching_says_what_each_port_has(self):
        table = {"paper": (self.down_port, self.live_port), "live": ()}
        with self.assertLogs("ib_data_agent.ib", "WARNING") as logs:
            conn, statuses = self.connection(candidates=table)
            self.assertTrue(statuses.wait_for(lambda s: s["error"]))
        self.assertFalse(conn.ready)
        error = conn.status()["error"]
        self.assertEqual(logs.output, [f"WARNING:ib_data_agent.ib:{error}; retrying"])
        self.assertIn(f"port {self.down_port}: not listening", error)
        self.assertIn(f"port {self.live_port}: TWS logged into LIVE account U1234567, but IB_MODE=paper", error)
        with self.assertRaises(AgentError) as caught:
            conn.send("reqCurrentTime")
        self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)
        self.assertIn("LIVE account U1234567", caught.exception.message)
        self.assertEqual(self.used(self.live), {})

    def test_ib_port_and_ib_mode_disagreeing_is_refused(self):
        with self.assertLogs("ib_data_agent.ib", "WARNING"):
            conn, statuses = self.connection(ib_port=self.live_port, ib_mode="paper", ib_mode_explicit=True)
            self.assertTrue(statuses.wait_for(lambda s: s["error"]))
        self.assertFalse(conn.ready)
        self.assertIn(
            f"port {self.live_port}: TWS logged into LIVE account U1234567, but IB_MODE=paper", conn.status()["error"]
        )
        self.assertEqual(self.used(self.live), {})

    def test_ib_port_alone_connects_and_reports_the_type(self):
        conn, _ = self.connection(ib_port=self.live_port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        self.assertEqual(conn.status()["account_type"], "live")


class DropsAndRestarts(WithFakeTWS):
    def test_drop_during_a_call_fails_it_and_reconnects(self):
        tws, port = self.fake()
        conn, statuses = self.connection(ib_port=port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        streaming = threading.Timer(0.3, tws.drop_all)
        streaming.start()
        self.addCleanup(streaming.cancel)
        with self.assertRaises(AgentError) as caught, self.assertLogs("ib_data_agent.ib", "INFO"):
            # a streaming request never ends by itself
            conn.call(
                "reqMktData",
                conn.next_req_id(),
                stock("AAPL"),
                "",
                False,
                False,
                [],
                rows=("tickPrice",),
                end="tickSnapshotEnd",
                timeout=DROP_WAIT_S,
            )
        self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)
        self.assertTrue(statuses.wait_for(lambda s: not s["connected"] and "Lost connection" in (s["error"] or "")))
        self.assertTrue(conn.wait_ready(DROP_WAIT_S))
        self.assertTrue(
            conn.call(
                "reqContractDetails",
                conn.next_req_id(),
                stock("MSFT"),
                rows=("contractDetails",),
                end="contractDetailsEnd",
                timeout=WAIT_S,
            )
        )

    def test_tws_restart_comes_back_by_itself_with_one_line_each_way(self):
        tws, port = self.fake()
        conn, statuses = self.connection(ib_port=port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        with self.assertLogs("ib_data_agent.ib", "INFO") as logs:
            tws.restart(down_s=1.0)
            self.assertTrue(statuses.wait_for(lambda s: not s["connected"], DROP_WAIT_S))
            self.assertTrue(conn.wait_ready(DROP_WAIT_S))
        self.assertEqual(len(logs.output), 2, logs.output)
        self.assertIn(f"Lost connection to TWS on port {port}; reconnecting...", logs.output[0])
        self.assertIn(f"Connected to TWS on port {port} as DU1234567 (paper)", logs.output[1])
        self.assertEqual(conn.status()["error"], None)

    def test_data_lost_notice_asks_to_resubscribe(self):
        tws, port = self.fake()
        conn, _ = self.connection(ib_port=port)
        self.assertTrue(conn.wait_ready(WAIT_S))
        resubscribed = threading.Event()
        conn.add_listener("resubscribe", resubscribed.set)
        tws.broadcast_error(1101, "Connectivity between IB and Trader Workstation has been restored - data lost.")
        self.assertTrue(resubscribed.wait(WAIT_S))
        self.assertTrue(conn.ready)


class BackPressure(unittest.TestCase):
    """The gate before the limiter (a TWS that stops reading): at most UNANSWERED_MAX messages after
    the last bytes TWS sent, then one probe is asked for and sending waits for any answer."""

    def test_the_gate_shuts_after_unanswered_messages_and_opens_on_any_bytes(self):
        import socket as socket_module

        ours, theirs = socket_module.socketpair()
        self.addCleanup(theirs.close)
        tws_socket = ib_session._TwsSocket(ours, on_close=lambda: None)
        self.addCleanup(tws_socket.disconnect)
        probes = []
        for _ in range(ib_session.UNANSWERED_MAX):
            self.assertIsNone(tws_socket.wait_drained(lambda: probes.append(1)))
        outcome = []
        waiter = threading.Thread(target=lambda: outcome.append(tws_socket.wait_drained(lambda: probes.append(1))))
        with mock.patch.object(ib_session, "BACKLOG_AFTER_S", 0.2):
            waiter.start()
            time.sleep(0.4)
            self.assertTrue(waiter.is_alive(), "the 11th message waits")
            self.assertEqual(probes, [1], "one probe asked for")
            theirs.sendall(b"\x00\x00\x00\x02" + b"49")  # TWS answers something
            self.assertEqual(tws_socket.recvMsg()[-2:], b"49")
            waiter.join(WAIT_S)
        self.assertEqual(outcome, [ib_session.UNANSWERED_MAX + 1], "the backlog TWS found when it read again")
        self.assertIsNone(tws_socket.wait_drained(lambda: probes.append(1)))

    def test_a_closed_socket_opens_the_gate_with_an_error(self):
        import socket as socket_module

        ours, theirs = socket_module.socketpair()
        self.addCleanup(theirs.close)
        tws_socket = ib_session._TwsSocket(ours, on_close=lambda: None)
        for _ in range(ib_session.UNANSWERED_MAX):
            tws_socket.wait_drained(lambda: None)
        threading.Timer(0.2, tws_socket.disconnect).start()
        with self.assertRaises(OSError):
            tws_socket.wait_drained(lambda: None)


class Heartbeat(WithFakeTWS):
    """A TWS that stops answering without closing the socket (hung, or the laptop slept)."""

    def test_frozen_tws_counts_as_lost_and_the_agent_comes_back_when_it_answers_again(self):
        tws = ServerProcess("tests.fake_tws", ["--tick-delay-ms", "1,5"])
        port = tws.start()
        self.addCleanup(tws.stop)
        with (
            mock.patch.object(ib_connection, "HEARTBEAT_S", 0.5),
            mock.patch.object(ib_connection, "HEARTBEAT_REPLY_S", 0.5),
        ):
            conn, statuses = self.connection(ib_port=port)
            self.assertTrue(conn.wait_ready(WAIT_S))
            time.sleep(1.5)  # quiet but answering: stays connected
            self.assertTrue(conn.ready)
            os.kill(tws.pid, signal.SIGSTOP)
            try:
                self.assertTrue(statuses.wait_for(lambda s: not s["connected"]), "frozen TWS not noticed")
            finally:
                os.kill(tws.pid, signal.SIGCONT)
            self.assertTrue(conn.wait_ready(WAIT_S))


if __name__ == "__main__":
    unittest.main()
