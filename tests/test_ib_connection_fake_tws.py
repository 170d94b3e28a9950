"""The TWS connection against tests.fake_tws: connecting and calling, port/mode resolution, busy client
ids, a silent port, drops and TWS restarts, and a frozen TWS (the heartbeat)."""

import dataclasses
import os
import signal
import threading
import time
import unittest
from unittest import mock

from ibapi.contract import Contract

from agent.errors import IB_NOT_CONNECTED, NO_SECURITY_DEFINITION, AgentError
from agent.ib import connection as ib_connection
from agent.ib.connection import IBConnection
from agent.ib.session import TESTED_MAX_SERVER_VERSION
from tests.agent_process import ServerProcess
from tests.connection_replay import CONFIG, WAIT_S
from tests.fake_tws import FakeTWS

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
