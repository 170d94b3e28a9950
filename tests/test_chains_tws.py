"""Chains from what is listed (issue 17), on the real IBConnection against tests.fake_tws: SPY's
daily expirations (each lists part of the strike union), SPX as an index with two trading classes,
XYZ with an adjusted class, and TWIN, a symbol ambiguous as a stock."""

from __future__ import annotations

import datetime as dt
import threading
import time
import unittest

from ibapi.contract import Contract

from agent.config import Config
from agent.errors import NO_SECURITY_DEFINITION
from ib_scanner import Scanner, days_to, new_york_date
from tests.test_ib_scanner_tws import ScannerOnFakeTws
from tests.tws_versions import at_tws_versions

FAST = dict(
    fake_options=dict(max_rate=2000, pacing="queue", max_lines=100, tick_delay_ms=(2, 10)),
    ib_max_msg_rate=1000,
    ib_max_mkt_lines=90,
)


class ChainsTestCase(ScannerOnFakeTws):
    def start(self, fake_options: dict = None, **config):
        settings = dict(FAST, **config)
        return super().start(
            fake_options=fake_options or settings.pop("fake_options"),
            **{k: v for k, v in settings.items() if k != "fake_options"},
        )

    def errors_sent(self, code: int) -> int:
        return self.tws.stats()["errors_sent"].get(str(code), 0)

    def listed(self, symbol: str, expirations, classes=None) -> dict:
        """(expiration, strike, right, trading class) -> conId of what the fake lists."""
        return {
            (o.expiry, o.strike, o.right, o.trading_class): o.con_id
            for o in self.tws.market.options(symbol)
            if o.expiry in expirations and (classes is None or o.trading_class in classes)
        }

    @staticmethod
    def got(options) -> dict:
        return {(o["expiration"], o["strike"], o["right"], o["trading_class"]): o["con_id"] for o in options}


class ListedChainTest(ChainsTestCase):
    def test_spy_30_days_spends_market_data_only_on_listed_contracts(self):
        scanner = self.start()
        data = scanner.fetch_option_chain("SPY", {"max_days": 30})
        today = new_york_date(time.time())
        selected = [e for e in self.tws.market.expirations("SPY") if days_to(e, today) <= 30]
        self.assertEqual(data["expirations"], selected)
        self.assertGreater(len(selected), 10)  # the dailies are in
        self.assertEqual(self.got(data["options"]), self.listed("SPY", selected))  # conIds included
        self.assertTrue(
            all(
                o["error"] is None and o["complete"] and o["multiplier"] == 100 and o["adjusted"] is False
                for o in data["options"]
            )
        )
        self.assertLessEqual(self.requests("reqMktData"), len(data["options"]) + 3)
        self.assertEqual(self.errors_sent(200), 0)
        self.assertEqual(self.requests("reqContractDetails"), 1 + len(selected))  # the stock, one per expiration
        self.assertEqual(data["underlying_contract"]["con_id"], self.tws.market.stocks["SPY"].con_id)

        again = scanner.sell_scan("SPY", "P", max_days=30, otm_max_pct=3)  # the listings are cached today
        self.assertTrue(again["candidates"])
        self.assertEqual(self.requests("reqContractDetails"), 1 + len(selected))
        self.assertEqual(self.errors_sent(200), 0)
        self.assert_limits_kept(90)

    def test_fetch_prices_of_a_contract_that_is_not_listed(self):
        scanner = self.start(warm_lines=0)  # every request below streams afresh: counted
        market = self.tws.market
        expiry = next(
            e
            for e in market.expirations("SPY")
            if len(market.find(symbol="SPY", sec_type="OPT", expiry=e)) < 2 * len(market.strikes("SPY"))
        )
        listed = {o.strike for o in market.find(symbol="SPY", sec_type="OPT", expiry=expiry)}
        hole = next(s for s in market.strikes("SPY") if s not in listed)
        contract = {"ticker": "SPY", "expiration": expiry, "strike": hole, "right": "C"}

        cold = scanner.fetch_prices([contract])["options"][0]  # listing unknown: TWS says so
        self.assertEqual((cold["error"]["code"], cold["error"]["ib_code"]), (NO_SECURITY_DEFINITION, 200))
        self.assertEqual(self.errors_sent(200), 1)

        scanner.fetch_option_chain("SPY", {"expirations": [expiry], "strikes_around": 1})
        before = self.requests("reqMktData")
        known = scanner.fetch_prices([contract, dict(contract, strike=sorted(listed)[0])])["options"]
        self.assertEqual((known[0]["error"]["code"], known[0]["error"]["ib_code"]), (NO_SECURITY_DEFINITION, 200))
        self.assertIsNone(known[1]["error"])
        self.assertTrue(known[1]["con_id"])
        self.assertEqual(self.requests("reqMktData"), before + 2)  # the listed one and SPY, not the hole
        self.assertEqual(self.errors_sent(200), 1)


class NewYorkDateTest(ChainsTestCase):
    def test_days_count_on_the_new_york_date_while_the_pc_is_already_on_the_next_day(self):
        self.start()
        market = self.tws.market
        # 02:00 UTC on the fake's today: a PC in UTC (or east of it) is on that date, New York is
        # still on the day before. The clock source is patched, not the machine.
        instant = dt.datetime.combine(market.today, dt.time(2), dt.timezone.utc).timestamp()
        scanner = Scanner(
            self.conn,
            Config(
                key="test-key-123456",
                ib_port=self.tws.port,
                ib_max_msg_rate=1000,
                request_timeout_s=10.0,
                option_timeout_s=5.0,
            ),
            wall_clock=lambda: instant,
        )
        self.addCleanup(scanner.close)
        first = market.expirations("SPY")[0]
        new_york_days = (dt.datetime.strptime(first, "%Y%m%d").date() - market.today).days + 1
        data = scanner.sell_scan("SPY", "P", min_days=new_york_days, max_days=new_york_days, otm_max_pct=2)
        self.assertTrue(data["candidates"])
        self.assertEqual({(c["expiration"], c["days"]) for c in data["candidates"]}, {(first, new_york_days)})


class IndexTest(ChainsTestCase):
    def test_spx_chain_and_quote(self):
        scanner = self.start()
        market = self.tws.market
        expirations = scanner.get_available_expirations("SPX")
        self.assertEqual((expirations["sec_type"], expirations["trading_classes"]), ("IND", ["SPX", "SPXW"]))
        self.assertEqual(expirations["underlying_contract"]["exchange"], "CBOE")

        started = time.monotonic()
        quote = scanner.quote(["SPX"])["quotes"]["SPX"]
        self.assertLess(time.monotonic() - started, 3.0)  # complete on last+close, no wait for a bid
        self.assertEqual(quote["sec_type"], "IND")
        self.assertIsNotNone(quote["last"])
        self.assertIsNotNone(quote["close"])
        self.assertEqual((quote["bid"], quote["ask"]), (None, None))

        monthly = next(
            e
            for e in market.expirations("SPX")
            if len({o.trading_class for o in market.find(symbol="SPX", sec_type="OPT", expiry=e)}) == 2
        )
        data = scanner.fetch_option_chain("SPX", {"expirations": [monthly], "strikes_around": 2})
        self.assertEqual(data["underlying"]["sec_type"], "IND")
        self.assertEqual({o["trading_class"] for o in data["options"]}, {"SPX", "SPXW"})  # AM and PM settled
        self.assertEqual(len(data["options"]), 2 * 2 * 4)
        expected = {k: v for k, v in self.listed("SPX", [monthly]).items()}
        self.assertTrue(set(self.got(data["options"]).items()) <= set(expected.items()))
        self.assertTrue(all(o["complete"] and o["error"] is None for o in data["options"]))
        self.assertEqual(self.errors_sent(200), 0)

    def test_spxw_names_the_weekly_class_of_spx(self):
        scanner = self.start()
        market = self.tws.market
        expirations = scanner.get_available_expirations("SPXW")
        self.assertEqual((expirations["sec_type"], expirations["trading_classes"]), ("IND", ["SPXW"]))
        weekly = next(
            e
            for e in market.expirations("SPX")
            if {o.trading_class for o in market.find(symbol="SPX", sec_type="OPT", expiry=e)} == {"SPXW"}
        )
        self.assertEqual(
            expirations["expirations"], sorted({o.expiry for o in market.options("SPX") if o.trading_class == "SPXW"})
        )
        data = scanner.fetch_option_chain("SPXW", {"strikes_around": 1, "max_days": 60})
        self.assertTrue(data["options"])
        self.assertEqual({(o["ticker"], o["trading_class"]) for o in data["options"]}, {("SPX", "SPXW")})
        self.assertIn(weekly, data["expirations"])
        option = data["options"][0]
        prices = scanner.fetch_prices(
            [
                {
                    "ticker": "SPXW",
                    "expiration": option["expiration"],
                    "strike": option["strike"],
                    "right": option["right"],
                }
            ]
        )
        self.assertEqual((prices["options"][0]["con_id"], prices["options"][0]["error"]), (option["con_id"], None))
        self.assertEqual(prices["underlyings"]["SPX"]["sec_type"], "IND")
        self.assertEqual(self.errors_sent(200), 0)

    def test_other_index_underlyings(self):
        scanner = self.start()
        for index, exchange in (("XSP", "CBOE"), ("NDX", "NASDAQ"), ("RUT", "RUSSELL"), ("VIX", "CBOE")):
            with self.subTest(index=index):
                data = scanner.sell_scan(index, "P", max_days=60, otm_max_pct=10)
                self.assertEqual(data["underlying"]["sec_type"], "IND")
                self.assertEqual(data["underlying_contract"]["exchange"], exchange)
                self.assertTrue(all(c["con_id"] for c in data["candidates"]))
        self.assertEqual(self.errors_sent(200), 0)


class AdjustedTest(ChainsTestCase):
    def test_xyz_without_and_with_its_adjusted_class(self):
        scanner = self.start()
        market = self.tws.market
        expirations = scanner.get_available_expirations("XYZ")
        standard = next(c for c in market.chain_classes("XYZ") if c[0] == "XYZ")
        self.assertEqual((expirations["trading_classes"], expirations["multiplier"]), (["XYZ"], 100))
        self.assertEqual(expirations["strikes"], standard[3])  # not XYZ1's strikes
        self.assertEqual(
            [(c["trading_class"], c["multiplier"]) for c in expirations["adjusted_classes"]], [("XYZ1", 150)]
        )

        monthly = sorted(market.expirations("XYZ"))[2]
        plain = scanner.fetch_option_chain("XYZ", {"expirations": [monthly]})
        self.assertEqual({o["trading_class"] for o in plain["options"]}, {"XYZ"})
        self.assertTrue(all(o["adjusted"] is False for o in plain["options"]))
        with_adjusted = scanner.fetch_option_chain("XYZ", {"expirations": [monthly], "include_adjusted": True})
        adjusted = [o for o in with_adjusted["options"] if o["trading_class"] == "XYZ1"]
        self.assertTrue(adjusted)
        self.assertTrue(all(o["adjusted"] and o["multiplier"] == 150 and o["con_id"] for o in adjusted))
        self.assertEqual(self.got(with_adjusted["options"]), self.listed("XYZ", [monthly]))

        scan = scanner.sell_scan("XYZ", "C", max_days=90, otm_max_pct=15, include_adjusted=True)
        price = scan["underlying"]["last"]
        flagged = [c for c in scan["candidates"] if c["adjusted"]]
        self.assertTrue(flagged)
        for candidate in flagged:  # measured on its own deliverable: 150 shares
            unit = price * 1.5
            self.assertAlmostEqual(candidate["otm_pct"], (candidate["strike"] - unit) / unit * 100, places=3)
            self.assertAlmostEqual(candidate["premium"], round(candidate["bid"] * 150, 2))
            self.assertLessEqual(candidate["otm_pct"], 15)
        self.assertFalse([c for c in scanner.sell_scan("XYZ", "C", max_days=90)["candidates"] if c["adjusted"]])
        self.assertEqual(self.errors_sent(200), 0)


class AmbiguousTest(ChainsTestCase):
    def test_an_ambiguous_symbol_resolves_to_its_us_listing_and_the_answer_says_which(self):
        scanner = self.start()
        nyse = self.tws.market.stocks["TWIN"]
        self.assertEqual(self._stock_error("TWIN"), (200, "The contract description specified for TWIN is ambiguous."))
        answer = scanner.quote(["TWIN"])
        self.assertEqual(
            answer["underlying_contracts"]["TWIN"],
            {
                "con_id": nyse.con_id,
                "sec_type": "STK",
                "exchange": "SMART",
                "primary_exchange": "NYSE",
                "ambiguous": True,
            },
        )
        self.assertIsNotNone(answer["quotes"]["TWIN"]["bid"])
        chain = scanner.fetch_option_chain("TWIN", {"max_days": 20})
        self.assertEqual(chain["underlying_contract"]["con_id"], nyse.con_id)
        self.assertTrue(chain["options"])
        self.assertIsNotNone(chain["underlying"]["last"])
        self.assertEqual(self.errors_sent(200), 1)  # only the probe above

    def _stock_error(self, symbol: str):
        """What TWS answers market data for the symbol as a stock on SMART, without a conId."""
        got, done = [], threading.Event()

        class Handler:
            def on_event(self, name, args):
                pass

            def on_error(self, code, text):
                got.append((code, text))
                done.set()

            def on_disconnect(self):
                done.set()

        contract = Contract()
        contract.symbol, contract.secType, contract.exchange, contract.currency = symbol, "STK", "SMART", "USD"
        req_id = self.conn.next_req_id()
        self.conn.register(req_id, Handler())
        self.conn.send("reqMktData", req_id, contract, "", False, False, [])
        self.assertTrue(done.wait(5))
        self.conn.unregister(req_id)
        return got[0]


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
