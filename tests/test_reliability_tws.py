"""Reliability, TWS faults (issue 8.2): a restart in the middle of a 1,000-contract batch, TWS
refusing connections for a while, 1100/1101/1102 while streaming, and a client-id collision.
For each: the state the agent reports in `status`, that it comes back by itself, how long that
took after TWS was back (a figure for docs/RELIABILITY.md, never an assertion), and that the
next request succeeds.

CI refuses connections for REFUSE_S; RELIABILITY_FULL=1 for the issue's full minute.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import unittest

from agent.config import DEFAULT_WARM_LINES
from tests.agent_process import AgentStack
from tools.soak import chain_requests, figures, option_contracts, status, wait_status

FULL = os.environ.get("RELIABILITY_FULL") == "1"
BATCH = 1000
RESTART_DOWN_S = 2.0
REFUSE_S = 60.0 if FULL else 12.0
STREAM_CONTRACTS = 200
SLOW_TICKS_S = (0.1, 0.3)
STALE_CONTRACTS = 20  # warm, then a 1101 makes them stale
MAX_REFRESHES = 10
CHAINS = 10
CHAIN_SIZE = 300 if FULL else 40  # contracts per fetch-chain (about)
WARM_CONTRACTS = 40  # refreshed again and again while the chains run (a quick-lane request)
REFRESH_EVERY_S = 1.0  # a Monitor page's pace
WAIT_S = 90.0
LOST = "Connectivity between IB and Trader Workstation has been lost."
RESTORED_DATA_LOST = "Connectivity between IB and Trader Workstation has been restored - data lost."
RESTORED = "Connectivity between IB and Trader Workstation has been restored - data maintained."


class TwsFaults(unittest.TestCase):
    """One agent process for the class; every test starts from a connected agent."""

    @classmethod
    def setUpClass(cls):
        cls.stack = AgentStack(tws_options={"tick_delay_ms": (1, 5)})
        cls.stack.start()
        cls.relay, cls.tws = cls.stack.relay, cls.stack.tws

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def setUp(self):
        self.tws.busy_client_ids = set()
        wait_status(self.relay, lambda s: s["connected"] and s["error"] is None, WAIT_S, "agent connected")

    def tearDown(self):
        self.assertEqual(self.relay.violations, [])
        self.assertIsNone(self.stack.agent.process.poll(), "the agent exited")

    def restart_tws(self, down_s: float) -> threading.Thread:
        """TWS goes away now and listens again after down_s; the thread ends when it does."""
        thread = threading.Thread(target=self.tws.restart, args=(down_s,), name="tws-restart")
        thread.start()
        self.addCleanup(thread.join, down_s + 30)
        return thread

    def recovery_after(self, restarting: threading.Thread) -> tuple:
        """Seconds from TWS listening again to the agent reporting connected; and that status."""
        restarting.join(REFUSE_S + 30)
        self.assertFalse(restarting.is_alive())
        data, seconds = wait_status(self.relay, lambda s: s["connected"], WAIT_S, "reconnected to TWS", poll_s=0.05)
        return seconds, data

    def assert_next_request_succeeds(self) -> None:
        contracts = option_contracts(self.tws.market, 5, tickers=("MSFT",))
        response = self.relay.request("fetch-prices", {"contracts": contracts}, timeout_s=WAIT_S)
        self.assertTrue(response["ok"], response)
        self.assertEqual([o["error"] for o in response["data"]["options"]], [None] * 5)

    def test_restart_in_the_middle_of_a_1000_contract_batch(self):
        contracts = option_contracts(self.tws.market, BATCH)
        batch = self.relay.submit("fetch-prices", {"contracts": contracts}, id="big-batch", timeout_s=300)
        self.relay.wait_until(
            lambda: any(p["done"] >= 50 for p in self.relay.progress.get("big-batch", [])), WAIT_S, "50 contracts done"
        )
        restarting = self.restart_tws(RESTART_DOWN_S)
        down, _ = wait_status(self.relay, lambda s: not s["connected"], WAIT_S, "TWS down reported")
        self.assertTrue(down["error"], down)
        response = batch.result(300)
        self.assertTrue(response["ok"], response)
        options = response["data"]["options"]
        self.assertEqual(len(options), BATCH)
        outcome = collections.Counter(
            o["error"]["code"] if o["error"] else "complete" if o["complete"] else "partial" for o in options
        )
        self.assertEqual(set(outcome) - {"partial"}, {"complete", "IB_NOT_CONNECTED"}, outcome)
        self.assertEqual([(o["strike"], o["right"]) for o in options], [(c["strike"], c["right"]) for c in contracts])
        seconds, _ = self.recovery_after(restarting)
        self.assert_next_request_succeeds()
        figures(
            "TWS restart during a batch",
            contracts=BATCH,
            outcome=dict(outcome),
            down_status=repr(down["error"]),
            down_s=RESTART_DOWN_S,
            recovery_after_tws_back_s=round(seconds, 2),
        )

    def test_tws_refusing_connections_for_a_while(self):
        restarting = self.restart_tws(REFUSE_S)
        down, _ = wait_status(self.relay, lambda s: not s["connected"], WAIT_S, "TWS down reported")
        self.assertTrue(down["error"], down)
        started = time.monotonic()
        refused = self.relay.request("quote", {"tickers": ["AAPL"]}, timeout_s=WAIT_S)
        answered_in = time.monotonic() - started
        self.assertEqual(refused["error"]["code"], "IB_NOT_CONNECTED", refused)
        errors = {down["error"]}
        while restarting.is_alive():
            errors.add(status(self.relay)["error"])
            time.sleep(1)
        seconds, up = self.recovery_after(restarting)
        self.assertIsNone(up["error"])
        self.assertTrue(
            self.relay.wait_until(
                lambda: self.relay.last_status and self.relay.last_status["ib"]["connected"], WAIT_S, "status frame"
            )
        )
        self.assert_next_request_succeeds()
        figures(
            "TWS refusing connections",
            refused_s=REFUSE_S,
            request_answered_in_s=round(answered_in, 3),
            status_errors=sorted(e for e in errors if e),
            recovery_after_tws_back_s=round(seconds, 2),
        )

    def test_1100_fails_streaming_requests_fast_and_1101_1102_resume(self):
        """TWS cut off from IB's servers (1100) sends no data: the requests waiting for it answer at
        once (what arrived, the rest IB_ERROR 1100) instead of waiting out their deadlines, their
        lines are cancelled, new ones fail the same way until 1101/1102 (issue 17)."""
        contracts = option_contracts(self.tws.market, STREAM_CONTRACTS, tickers=("SPY",))
        self.addCleanup(setattr, self.tws, "tick_delay_s", self.tws.tick_delay_s)
        self.tws.tick_delay_s = SLOW_TICKS_S  # streams stay open long enough for the 1100 to find some
        stream = self.relay.submit("fetch-prices", {"contracts": contracts}, id="streaming", timeout_s=300)
        self.relay.wait_until(lambda: self.relay.progress.get("streaming"), WAIT_S, "streaming under way")
        self.tws.broadcast_error(1100, LOST)
        lost_at = time.monotonic()
        response = stream.result(WAIT_S)
        answered_in = time.monotonic() - lost_at
        self.assertTrue(response["ok"], response)
        outcome = collections.Counter(
            o["error"]["ib_code"] if o["error"] else "complete" for o in response["data"]["options"]
        )
        self.assertIn(1100, outcome)
        self.assertLessEqual(set(outcome), {"complete", 1100}, outcome)
        self.assertLess(answered_in, 5.0)
        lost, _ = wait_status(self.relay, lambda s: "1100" in (s["error"] or ""), WAIT_S, "1100 reported")
        self.assertTrue(lost["connected"])
        during = self.relay.request("fetch-prices", {"contracts": contracts[:3]}, timeout_s=WAIT_S)
        self.assertEqual(
            [(o["error"]["code"], o["error"]["ib_code"]) for o in during["data"]["options"]], [("IB_ERROR", 1100)] * 3
        )
        self.tws.broadcast_error(1102, RESTORED)
        wait_status(self.relay, lambda s: s["error"] is None, WAIT_S, "1102 clears the error")
        self.tws.tick_delay_s = (0.001, 0.005)
        self.assert_next_request_succeeds()
        self.tws.broadcast_error(1100, LOST)
        wait_status(self.relay, lambda s: "1100" in (s["error"] or ""), WAIT_S, "1100 again")
        self.tws.broadcast_error(1101, RESTORED_DATA_LOST)
        wait_status(self.relay, lambda s: s["error"] is None, WAIT_S, "1101 clears the error")
        stats = self.tws.stats()
        self.assertEqual((stats["pacing_violations"], stats["line_limit_errors"]), (0, 0))
        # Every line the 1100 took from a request was cancelled: only the agent's warm streams are left.
        deadline = time.monotonic() + WAIT_S
        while self.tws.stats()["lines_in_use"] > DEFAULT_WARM_LINES:
            self.assertLess(time.monotonic(), deadline, "lines the 1100 took left on TWS")
            time.sleep(0.05)
        refreshes = self.warm_data_is_not_served_after_1101()
        self.assert_next_request_succeeds()
        figures(
            "1100/1101/1102 while streaming",
            contracts=STREAM_CONTRACTS,
            status_1100=repr(lost["error"]),
            answered_after_1100_s=round(answered_in, 2),
            outcome=dict(outcome),
            refreshes_until_every_warm_contract_was_asked_again=refreshes,
        )

    def warm_data_is_not_served_after_1101(self) -> int:
        """Contracts just fetched stay warm: fetching them again asks TWS for nothing. After a 1101
        (market data lost) their streams are stale: the next fetch asks TWS again."""
        contracts = option_contracts(self.tws.market, STALE_CONTRACTS, tickers=("MSFT",))

        def requests_for_a_refresh() -> int:
            before = self.tws.stats()["requests_by_type"]["reqMktData"]
            response = self.relay.request("fetch-prices", {"contracts": contracts}, timeout_s=WAIT_S)
            self.assertTrue(response["ok"], response)
            return self.tws.stats()["requests_by_type"]["reqMktData"] - before

        requests_for_a_refresh()
        self.assertLessEqual(requests_for_a_refresh(), 1, "warm contracts were requested again")  # 1: the underlying
        self.tws.broadcast_error(1101, RESTORED_DATA_LOST)
        # The agent handles 1101 on its supervisor thread, every line at once and without a send:
        # the first refresh after that asks for every contract again. Nothing here says when the
        # agent has seen the 1101, so this only bounds it. (At most 1 of a refresh's requests is
        # the underlying's: MAX_REFRESHES stay well below it.)
        asked, refreshes = 0, 0
        while asked < STALE_CONTRACTS:
            self.assertLess(refreshes, MAX_REFRESHES, "warm streams still served long after a 1101")
            time.sleep(0.3)
            asked += requests_for_a_refresh()
            refreshes += 1
        return refreshes

    def test_client_id_collision(self):
        before = status(self.relay)
        self.tws.busy_client_ids = {before["client_id"]}
        started = time.monotonic()
        self.tws.drop_all()
        after, _ = wait_status(
            self.relay,
            lambda s: s["connected"] and s["client_id"] != before["client_id"],
            WAIT_S,
            "connected under another client id",
        )
        seconds = time.monotonic() - started
        self.assert_next_request_succeeds()
        self.stack.agent.wait_for_output(f"\\({before['client_id']} is in use\\)")
        figures(
            "client id collision",
            taken=before["client_id"],
            used=after["client_id"],
            back_after_drop_s=round(seconds, 2),
        )


class PacingUnderLoad(unittest.TestCase):
    """A fake TWS that punishes pacing like the real one (error 100, disconnect on the third)."""

    def test_concurrent_chains_and_warm_refreshes_stay_within_pacing_and_lines(self):
        with AgentStack(tws_options={"pacing": "reject", "max_rate": 50, "max_lines": 100}) as stack:
            relay, tws = stack.relay, stack.tws
            wait_status(relay, lambda s: s["connected"], WAIT_S, "agent connected")
            warm = option_contracts(tws.market, WARM_CONTRACTS, tickers=("MRGT",))
            self.assertTrue(relay.request("fetch-prices", {"contracts": warm}, timeout_s=WAIT_S)["ok"])
            chains = chain_requests(tws.market, CHAINS, CHAIN_SIZE)
            started = time.monotonic()
            running = [relay.submit("fetch-chain", params, timeout_s=600) for params in chains]
            refreshes, refresh_s, next_refresh = [], [], 0.0
            while not all(f.done() for f in running):
                if time.monotonic() < next_refresh:
                    time.sleep(0.05)
                    continue
                refreshed = time.monotonic()
                next_refresh = refreshed + REFRESH_EVERY_S
                refreshes.append(relay.request("fetch-prices", {"contracts": warm}, timeout_s=600))
                refresh_s.append(round(time.monotonic() - refreshed, 1))
            seconds = time.monotonic() - started
            responses = [f.result(0) for f in running]
            stats = tws.stats()
            self.assertEqual(relay.violations, [])
        for response in responses + refreshes:
            self.assertTrue(response["ok"], response)
            self.assertEqual(
                [o["error"] for o in response["data"]["options"]], [None] * len(response["data"]["options"])
            )
        contracts = [len(r["data"]["options"]) for r in responses]
        self.assertTrue(all(contracts), contracts)
        self.assertEqual((stats["pacing_violations"], stats["line_limit_errors"], stats["connections"]), (0, 0, 1))
        complete = sum(o["complete"] for r in responses for o in r["data"]["options"])
        # in the agent: without the wait for a free quick-lane worker that comes first (waits_s, with
        # the relay's round trip)
        fetch_s = [round(r["data"]["elapsed_ms"] / 1000, 1) for r in refreshes]
        waits_s = [round(total - in_agent, 1) for total, in_agent in zip(refresh_s, fetch_s)]
        figures(
            "pacing under load",
            chains=CHAINS,
            contracts=contracts,
            total=sum(contracts),
            complete=complete,
            warm_refreshes=len(refreshes),
            first_refresh_s=refresh_s[:5],
            slowest_refresh_s=max(refresh_s),
            first_refresh_in_agent_s=fetch_s[:5],
            slowest_refresh_in_agent_s=max(fetch_s),
            slowest_wait_for_a_worker_s=max(waits_s),
            seconds=round(seconds, 1),
            messages_in=stats["messages_in"],
            max_lines_in_use=stats["max_lines_in_use"],
            pacing_violations=stats["pacing_violations"],
            line_limit_errors=stats["line_limit_errors"],
        )


if __name__ == "__main__":
    unittest.main()
