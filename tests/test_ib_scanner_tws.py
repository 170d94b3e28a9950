"""The scanner on the real IBConnection against tests.fake_tws: a full chain, a 1,000-contract batch
under TWS's pacing and line limits, concurrent batches, warm repeats, a drop mid-batch, delayed data."""

from __future__ import annotations

import datetime as dt
import threading
import unittest
from typing import List

from agent.config import Config
from agent.errors import IB_NOT_CONNECTED
from agent.ib.connection import IBConnection
from agent.ib.session import TESTED_MAX_SERVER_VERSION
from ib_scanner import Scanner
from tests.fake_tws import FakeTWS
from tests.test_ib_lines import Background
from tests.tws_versions import AtTwsVersion, at_tws_versions

WAIT_S = 20.0


def contract_dicts(instruments) -> List[dict]:
    return [{"ticker": i.symbol, "expiration": i.expiry, "strike": i.strike, "right": i.right} for i in instruments]


class ScannerOnFakeTws(AtTwsVersion, unittest.TestCase):
    def start(self, fake_options: dict = None, **config) -> Scanner:
        self.tws = FakeTWS(port=0, seed=1, **self.fake_tws_options(**(fake_options or {})))
        port = self.tws.start()
        self.addCleanup(self.tws.stop)
        settings = dict(
            ib_port=port, ib_max_msg_rate=45, ib_max_mkt_lines=90, option_timeout_s=5.0, request_timeout_s=10.0
        )
        settings.update(config)
        config = Config(key="test-key-123456", **settings)
        self.conn = IBConnection(config, backoff=(0.05, 0.3), handshake_timeout=5.0)
        self.conn.start()
        self.addCleanup(self.conn.stop)
        self.assertTrue(self.conn.wait_ready(WAIT_S))
        self.assertEqual(self.conn.status()["server_version"], self.expected_server_version)
        scanner = Scanner(self.conn, config)
        self.addCleanup(scanner.close)
        return scanner

    def requests(self, name: str) -> int:
        return self.tws.stats()["requests_by_type"].get(name, 0)

    def assert_limits_kept(self, lines: int):
        stats = self.tws.stats()
        self.assertEqual(stats["pacing_violations"], 0)
        self.assertEqual(stats["line_limit_errors"], 0)
        self.assertLessEqual(stats["max_lines_in_use"], lines)


class ChainTest(ScannerOnFakeTws):
    def test_full_chain_for_a_ticker(self):
        scanner = self.start(fake_options=dict(max_rate=50, pacing="reject"))
        market = self.tws.market
        expirations = scanner.get_available_expirations("AAPL")
        self.assertEqual(expirations["expirations"], sorted(market.expirations("AAPL")))
        self.assertEqual(expirations["strikes"], market.strikes("AAPL"))
        self.assertEqual(expirations["underlying_con_id"], market.stocks["AAPL"].con_id)

        data = scanner.fetch_option_chain("AAPL", {"max_days": 21, "strikes_around": 4})
        today = dt.date.today()
        selected = [
            e for e in market.expirations("AAPL") if (dt.datetime.strptime(e, "%Y%m%d").date() - today).days <= 21
        ]
        self.assertEqual(data["expirations"], selected)
        price = data["underlying"]["last"]
        self.assertIsNotNone(price)
        grid = sorted(market.strikes("AAPL"))
        near = [s for s in grid if s <= price][-4:] + [s for s in grid if s > price][:4]
        listed = {
            (o.expiry, o.strike, o.right) for o in market.options("AAPL") if o.expiry in selected and o.strike in near
        }
        got = {(o["expiration"], o["strike"], o["right"]) for o in data["options"]}
        self.assertEqual(got, listed)  # grid holes (NO_SECURITY_DEFINITION) are left out
        for option in data["options"]:
            self.assertIsNone(option["error"], option)
            self.assertTrue(option["complete"], option)
            self.assertIsNotNone(option["ask"])
            self.assertIsNotNone(option["delta"])
            self.assertIsNotNone(option["open_interest"])
            self.assertEqual(option["market_data_type"], "live")
        self.assert_limits_kept(90)


class BulkTest(ScannerOnFakeTws):
    tws_versions = (TESTED_MAX_SERVER_VERSION,)  # pacing and lines do not depend on the version; 45 s each

    def test_thousand_contracts_at_the_pacing_floor_without_violations(self):
        scanner = self.start(fake_options=dict(max_rate=50, pacing="reject", max_lines=100))
        market = self.tws.market
        options = (market.options("SPY") + market.options("AAPL") + market.options("MSFT"))[:1000]
        self.assertEqual(len(options), 1000)
        progress = []
        results = scanner.get_option_data_batch(contract_dicts(options), progress=lambda d, t: progress.append(d))
        self.assertEqual(
            [(r["ticker"], r["expiration"], r["strike"], r["right"]) for r in results],
            [(o.symbol, o.expiry, o.strike, o.right) for o in options],
        )
        self.assertEqual([r for r in results if r["error"]], [])
        self.assertEqual(sum(1 for r in results if r["complete"]), 1000)
        self.assertEqual(progress[-1], 1000)
        self.assert_limits_kept(90)
        self.assertEqual(self.requests("reqMktData"), 1000)
        self.assertTrue(self.conn.ready)

    def test_two_concurrent_batches_share_the_lines(self):
        scanner = self.start(
            fake_options=dict(max_rate=50, pacing="reject", max_lines=30), ib_max_mkt_lines=25, warm_lines=5
        )
        market = self.tws.market
        spy, msft = market.options("SPY"), market.options("MSFT")
        first = Background(scanner.get_option_data_batch, contract_dicts(spy[:120]))
        second = Background(scanner.get_option_data_batch, contract_dicts(msft[:100] + spy[100:120]))
        for results in (first.join(), second.join()):
            self.assertEqual([r for r in results if r["error"] or not r["complete"]], [])
        self.assert_limits_kept(25)
        self.assertLessEqual(self.requests("reqMktData"), 220)
        self.assertEqual(scanner.stats()["lines_in_use"], scanner.stats()["warm_lines"])


class WarmTest(ScannerOnFakeTws):
    def test_warm_repeat_sends_no_new_market_data_request(self):
        scanner = self.start(warm_lines=40, warm_seconds=60)
        contracts = contract_dicts(self.tws.market.options("MSFT")[:20])
        first = scanner.fetch_prices(contracts)
        requested = self.requests("reqMktData")
        self.assertEqual(requested, 21)  # 20 options and the underlying
        second = scanner.fetch_prices(contracts)
        self.assertEqual(self.requests("reqMktData"), requested)
        self.assertEqual(self.requests("cancelMktData"), 0)
        self.assertTrue(all(o["complete"] and o["error"] is None for o in second["options"]))
        self.assertEqual([o["strike"] for o in second["options"]], [o["strike"] for o in first["options"]])
        self.assertIsNotNone(second["underlyings"]["MSFT"]["last"])
        self.assertEqual(scanner.stats()["warm_hits"], 21)


class DropTest(ScannerOnFakeTws):
    def test_drop_mid_batch_then_the_connection_comes_back(self):
        scanner = self.start(fake_options=dict(tick_delay_ms=(20, 60)), warm_lines=0)
        contracts = contract_dicts(self.tws.market.options("SPY")[:300])
        dropped = threading.Event()

        def progress(done, total):
            if done >= 40 and not dropped.is_set():
                dropped.set()
                self.tws.drop_all()

        results = scanner.get_option_data_batch(contracts, progress=progress)
        self.assertTrue(dropped.is_set())
        finished = [r for r in results if r["error"] is None]
        lost = [r for r in results if r["error"] is not None]
        self.assertGreaterEqual(len(finished), 40)
        self.assertTrue(all(r["complete"] and r["ask"] is not None for r in finished))
        self.assertGreater(len(lost), 0)
        self.assertEqual({r["error"]["code"] for r in lost}, {IB_NOT_CONNECTED})
        self.assertEqual(scanner.stats()["lines_in_use"], 0)
        self.assertTrue(self.conn.wait_ready(WAIT_S))
        again = scanner.get_option_data(contracts[-1])
        self.assertTrue(again["complete"] and again["error"] is None)


class DelayedTest(ScannerOnFakeTws):
    def test_auto_falls_back_to_delayed_data(self):
        scanner = self.start(fake_options=dict(no_live_data=True), market_data_type="auto")
        contracts = contract_dicts(self.tws.market.options("AAPL")[:10])
        results = scanner.get_option_data_batch(contracts)
        self.assertEqual([r for r in results if r["error"] or not r["complete"]], [])
        self.assertEqual({r["market_data_type"] for r in results}, {"delayed"})
        self.assertEqual(self.requests("reqMarketDataType"), 2)  # the connection's frozen, then delayed-frozen
        self.assertEqual(self.conn.status()["market_data_type"], "frozen")  # what the agent asks by default


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
