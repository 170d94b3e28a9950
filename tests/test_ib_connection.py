"""The TWS connection without a TWS: routing of recorded callback sequences (tests.connection_replay),
call(), errors, backoff, pacing, and the send gate before the limiter."""

import dataclasses
import inspect
import threading
import time
import unittest
from decimal import Decimal
from unittest import mock

from ibapi.contract import Contract
from ibapi.wrapper import EWrapper

from agent.backoff import ReconnectPolicy
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
from agent.ib.session import ID_CALLBACKS, PLAIN_CALLBACKS, _TwsSession
from tests.connection_replay import CONFIG, WAIT_S, FakeSocket, Recorder, Serving, connected, replay


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


if __name__ == "__main__":
    unittest.main()
