"""Market data that is honest about what it is (issue 17), on the real IBConnection + Scanner against
tests.fake_tws: frozen data after the close, notices that keep a stream, a 101-shrunk pool growing
back, implied volatility from the option's own model, 1100 failing fast, 1300 moving the port, and
a TWS that stops reading mid-batch (SIGSTOP of a fake TWS process) under --pacing reject."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import unittest
from pathlib import Path
from typing import List

from agent.config import Config
from agent.ib import line_pool
from agent.ib.connection import IBConnection
from agent.ib.session import TESTED_MAX_SERVER_VERSION
from ib_scanner import Scanner
from tests.agent_process import ServerProcess
from tests.fake_tws import FakeTWS
from tests.test_ib_lines import Background
from tests.tws_versions import AtTwsVersion, at_tws_versions

WAIT_S = 20.0
LOST = "Connectivity between IB and Trader Workstation has been lost."
RESTORED = "Connectivity between IB and Trader Workstation has been restored - data maintained."
STALL_S = float(os.environ.get("STALL_S", "3"))  # the benchmark stalls TWS for 20 s


def contract_dicts(instruments) -> List[dict]:
    return [{"ticker": i.symbol, "expiration": i.expiry, "strike": i.strike, "right": i.right} for i in instruments]


def wait_until(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class OnFakeTws(AtTwsVersion, unittest.TestCase):
    def start(self, fake_options: dict = None, **config) -> Scanner:
        self.tws = FakeTWS(port=0, seed=1, **self.fake_tws_options(**(fake_options or {})))
        return self.connect(self.tws.start(), **config)

    def connect(self, port: int, **config) -> Scanner:
        settings = dict(
            ib_port=port,
            ib_max_msg_rate=45,
            ib_max_mkt_lines=90,
            option_timeout_s=5.0,
            request_timeout_s=10.0,
            warm_lines=0,
            warm_seconds=0,
        )
        settings.update(config)
        self.config = Config(key="test-key-123456", **settings)
        if hasattr(self, "tws"):
            self.addCleanup(self.tws.stop)
        self.conn = IBConnection(self.config, backoff=(0.05, 0.3), handshake_timeout=5.0)
        self.conn.start()
        self.addCleanup(self.conn.stop)
        self.assertTrue(self.conn.wait_ready(WAIT_S))
        scanner = Scanner(self.conn, self.config)
        self.addCleanup(scanner.close)
        return scanner

    def options(self, ticker: str, count: int) -> List[dict]:
        return contract_dicts(self.tws.market.options(ticker)[:count])

    def assert_lines_freed(self) -> None:
        wait_until(lambda: self.tws.stats()["lines_in_use"] == 0, "every line freed at TWS")


class MarketClosedTest(OnFakeTws):
    def test_a_sell_scan_after_the_close_finds_candidates_labelled_frozen(self):
        scanner = self.start(fake_options=dict(market_closed=True))
        data = scanner.sell_scan("AAPL", "P", max_days=60, otm_max_pct=20)
        self.assertGreater(len(data["candidates"]), 0)
        self.assertEqual({c["market_data_type"] for c in data["candidates"]}, {"frozen"})
        self.assertTrue(all(c["bid"] and c["delta"] is not None for c in data["candidates"]))
        self.assertEqual(self.conn.status()["market_data_type"], "frozen")
        self.assert_lines_freed()

    def test_live_data_after_the_close_has_no_bid_and_says_live(self):
        scanner = self.start(fake_options=dict(market_closed=True), market_data_type="live", option_timeout_s=0.5)
        results = scanner.get_option_data_batch(self.options("MSFT", 4))
        self.assertEqual(
            {(r["bid"], r["ask"], r["delta"], r["market_data_type"]) for r in results}, {(None, None, None, "live")}
        )
        self.assertEqual({r["complete"] for r in results}, {False})
        self.assert_lines_freed()

    def test_no_subscription_after_the_close_gets_delayed_frozen(self):
        scanner = self.start(fake_options=dict(market_closed=True, no_live_data=True))
        results = scanner.get_option_data_batch(self.options("MSFT", 6), want_open_interest=True)
        self.assertEqual([r for r in results if r["error"] or not r["complete"]], [])
        self.assertEqual({r["market_data_type"] for r in results}, {"delayed-frozen"})
        # refused frozen requests (those sent before the first refusal came back), then delayed-frozen;
        # the ticker is learnt: its next contracts cost one request each
        asked = self.tws.stats()["requests_by_type"]["reqMktData"]
        self.assertLessEqual(asked, 12)
        more = scanner.get_option_data_batch(contract_dicts(self.tws.market.options("MSFT")[6:10]))
        self.assertEqual({r["market_data_type"] for r in more}, {"delayed-frozen"})
        self.assertEqual(self.tws.stats()["requests_by_type"]["reqMktData"], asked + 4)
        self.assert_lines_freed()


class StreamNoticeTest(OnFakeTws):
    def test_a_notice_keeps_the_stream_and_its_data_and_the_line_is_cancelled(self):
        for code in (10091, 10090):
            with self.subTest(code):
                scanner = self.start(fake_options=dict(stream_notices=(code,)), option_timeout_s=5.0)
                results = scanner.get_option_data_batch(self.options("AAPL", 12))
                # complete: no option waited out its deadline for greeks that cannot come
                self.assertEqual([r for r in results if r["error"] or not r["complete"]], [])
                self.assertTrue(all(r["ask"] is not None for r in results))
                self.assertEqual({r["delta"] for r in results}, {None})
                self.assertEqual(scanner.stats()["lines_in_use"], 0)
                self.assert_lines_freed()  # cancelled at TWS: the notice did not end the streams
                self.assertEqual(self.tws.stats()["requests_by_type"]["cancelMktData"], 12)
                self.doCleanups()


class LinePoolTest(OnFakeTws):
    tws_versions = (TESTED_MAX_SERVER_VERSION,)  # the line pool does not depend on the version; 14 s

    def test_after_a_101_the_pool_shrinks_and_grows_back_as_lines_free_up(self):
        for name, value in (("GROW_AFTER_LIMIT_S", 1.0), ("GROW_STEP_S", 0.02)):
            self.addCleanup(setattr, line_pool, name, getattr(line_pool, name))
            setattr(line_pool, name, value)
        scanner = self.start(fake_options=dict(max_lines=20, tick_delay_ms=(1000, 1200)), ib_max_mkt_lines=20)
        with self.tws.lock:
            self.tws.lines_in_use += 8  # the user's own TWS windows hold 8 lines
        batch = Background(scanner.get_option_data_batch, self.options("AAPL", 60))
        smallest = 20
        while batch._thread.is_alive():
            smallest = min(smallest, scanner.stats()["lines_max"])
            time.sleep(0.01)
        first = batch.join()
        self.assertEqual([r for r in first if r["error"] or not r["complete"]], [])
        self.assertLessEqual(smallest, 12)  # shrunk to what TWS allowed
        # Not a 101 per contract (48 here): a probe now and then while lines were short.
        self.assertIn(self.tws.stats()["line_limit_errors"], range(1, 16))
        with self.tws.lock:
            self.tws.lines_in_use -= 8  # ... and closes those windows
        time.sleep(1.1)
        errors = self.tws.stats()["line_limit_errors"]
        second = scanner.get_option_data_batch(self.options("MSFT", 80))
        self.assertEqual([r for r in second if r["error"] or not r["complete"]], [])
        self.assertEqual(scanner.stats()["lines_max"], 20)
        self.assertEqual(self.tws.stats()["line_limit_errors"], errors)
        self.assertEqual(self.tws.stats()["max_lines_in_use"], 20)
        self.assert_lines_freed()


class ImpliedVolTest(OnFakeTws):
    def test_implied_vol_is_the_options_own_model_not_the_underlyings(self):
        scanner = self.start()
        market = self.tws.market
        spot = market.spot("AAPL")
        far_put = min((o for o in market.options("AAPL") if o.right == "P"), key=lambda o: abs(o.strike - 0.85 * spot))
        (result,) = scanner.get_option_data_batch(contract_dicts([far_put]))
        model = market.implied_vol(far_put, market.spot("AAPL"))
        self.assertAlmostEqual(result["implied_vol"], model, delta=0.005)
        self.assertGreater(abs(result["implied_vol"] - market.specs["AAPL"].vol), 0.01)


class IbLinkTest(OnFakeTws):
    def test_1100_fails_waiting_market_data_fast_and_1102_resumes(self):
        scanner = self.start(fake_options=dict(tick_delay_ms=(3000, 4000)), option_timeout_s=30.0)
        contracts = self.options("AAPL", 10)
        waiting = Background(scanner.get_option_data_batch, contracts)
        wait_until(lambda: self.tws.stats()["lines_in_use"] == 10, "ten streams open")
        self.tws.broadcast_error(1100, LOST)
        results = waiting.join()  # before the ticks (3-4 s away) could have answered: each says 1100
        self.assertEqual({(r["error"]["code"], r["error"]["ib_code"]) for r in results}, {("IB_ERROR", 1100)})
        self.assert_lines_freed()
        self.assertIn("1100", self.conn.status()["error"])
        self.tws.broadcast_error(1102, RESTORED)
        wait_until(lambda: self.conn.status()["error"] is None, "1102 seen")
        self.tws.tick_delay_s = (0.005, 0.03)
        again = scanner.get_option_data_batch(contracts[:2])
        self.assertEqual([r["error"] for r in again], [None, None])


class PortMovedTest(OnFakeTws):
    def test_1300_reconnects_on_the_new_port(self):
        scanner = self.start()
        old_port = self.tws.port
        new_port = self.tws.move_port()
        self.assertNotEqual(new_port, old_port)
        wait_until(lambda: self.conn.ready and self.conn.status()["port"] == new_port, "connected on the new port")
        (result,) = scanner.get_option_data_batch(self.options("AAPL", 1))
        self.assertIsNone(result["error"])
        self.assertEqual(self.tws.stats()["connections"], 2)


class StallTest(OnFakeTws):
    """A TWS that stops reading (SIGSTOP) in the middle of a batch: the agent stops sending, and when
    TWS resumes it never gets more than its pacing limit in a second (--pacing reject disconnects
    after 3 violations)."""

    tws_versions = (TESTED_MAX_SERVER_VERSION,)  # pacing does not depend on the version; 11 s

    def test_a_stalled_tws_mid_batch_gets_no_burst_and_the_batch_is_answered(self):
        stats_file = Path(tempfile.mkdtemp(prefix="stall-")) / "stats.json"
        version = [] if self.tws_version is None else ["--max-server-version", str(self.tws_version)]
        fake = ServerProcess(
            "tests.fake_tws",
            ["--pacing", "reject", "--tick-delay-ms", "1,5", "--stats-file", str(stats_file), *version],
        )
        port = fake.start()
        self.addCleanup(fake.stop)
        scanner = self.connect(port, option_timeout_s=30.0)
        from tests.fake_market import Market

        contracts = contract_dicts(Market(1).options("AAPL")[:160])
        batch = Background(scanner.get_option_data_batch, contracts)
        time.sleep(1.5)
        os.kill(fake.pid, signal.SIGSTOP)
        try:
            time.sleep(STALL_S)
        finally:
            os.kill(fake.pid, signal.SIGCONT)
        results = batch.join(60)
        self.assertEqual(len(results), len(contracts))
        self.assertEqual([r for r in results if r["error"]], [])
        fake.stop()
        stats = json.loads(stats_file.read_text())
        self.assertEqual((stats["pacing_violations"], stats["connections"]), (0, 1), stats)


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
