"""The scanner's public functions (ib_scanner) on the stand-in connection: expirations and their
caches, chain selection, fetch-prices order, sell-scan math, quotes."""
from __future__ import annotations

import datetime as dt
import unittest

from ibapi.contract import ContractDetails

from agent_errors import NO_SECURITY_DEFINITION, AgentError
from ib_scanner import CHAIN_CACHE_S, Scanner, sell_metrics, strikes_around
from tests.test_ib_lines import StubConnection, StubTws, make_config
from tests.test_ib_ticks import OPTION_KEYS, QUOTE_KEYS

TODAY = dt.date(2030, 1, 1)
MONTHLIES = {"20300118", "20300215", "20300517"}     # 17, 45 and 136 days out
WEEKLIES = {"20300111", "20300125"}                  # 10 and 24 days out
STRIKES = [float(s) for s in range(150, 225, 5)]
AAPL_CON_ID = 265598
PRICE = 185.2     # the last price in tests/recorded/ticks_stock_live.json


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def secdef_rows(_args):
    return [("SMART", AAPL_CON_ID, "AAPL", "100", MONTHLIES, STRIKES),
            ("SMART", AAPL_CON_ID, "AAPLW", "100", WEEKLIES, STRIKES[2:-2]),
            ("CBOE", AAPL_CON_ID, "AAPL", "100", {"20991231"}, [1.0])]


def contract_details(args):
    contract = args[0]
    if contract.symbol != "AAPL":
        return []
    details = ContractDetails()
    details.contract.conId = AAPL_CON_ID
    return [(details,)]


class ScannerTestCase(unittest.TestCase):
    def make(self, tws=None, **config):
        self.clock = FakeClock()
        self.conn = StubConnection(tws or StubTws())
        self.conn.answers = {"reqContractDetails": contract_details, "reqSecDefOptParams": secdef_rows}
        scanner = Scanner(self.conn, make_config(**config), today=lambda: TODAY, clock=self.clock)
        self.addCleanup(scanner.close)
        return scanner


class ExpirationsTest(ScannerTestCase):
    def test_smart_rows_of_every_trading_class_are_merged(self):
        scanner = self.make()
        data = scanner.get_available_expirations("aapl")
        self.assertEqual(data, {"ticker": "AAPL", "underlying_con_id": AAPL_CON_ID, "multiplier": 100,
                                "trading_classes": ["AAPL", "AAPLW"],
                                "expirations": sorted(MONTHLIES | WEEKLIES), "strikes": STRIKES})
        secdef = next(args for name, args in self.conn.sent if name == "reqSecDefOptParams")
        self.assertEqual(secdef[1:], ("AAPL", "", "STK", AAPL_CON_ID))
        details = next(args for name, args in self.conn.sent if name == "reqContractDetails")
        self.assertEqual((details[1].secType, details[1].exchange, details[1].currency), ("STK", "SMART", "USD"))

    def test_chain_is_cached_for_minutes_and_the_con_id_for_the_session(self):
        scanner = self.make()
        scanner.get_available_expirations("AAPL")
        scanner.get_available_expirations("AAPL")
        self.assertEqual((self.conn.count("reqContractDetails"), self.conn.count("reqSecDefOptParams")), (1, 1))
        self.clock.now += CHAIN_CACHE_S + 1
        scanner.get_available_expirations("AAPL")
        self.assertEqual((self.conn.count("reqContractDetails"), self.conn.count("reqSecDefOptParams")), (1, 2))

    def test_unknown_ticker(self):
        scanner = self.make()
        with self.assertRaises(AgentError) as caught:
            scanner.get_available_expirations("NOPE")
        self.assertEqual(caught.exception.code, NO_SECURITY_DEFINITION)


class ChainTest(ScannerTestCase):
    def test_filters_select_expirations_strikes_and_rights(self):
        tws = StubTws({("AAPL", 180.0, "P"): ("error", 200, "No security definition has been found")})
        scanner = self.make(tws, ib_max_mkt_lines=10)
        progress = []
        data = scanner.fetch_option_chain("AAPL", {"min_days": 10, "max_days": 30, "strikes_around": 2,
                                                   "rights": ["P"]}, progress=lambda d, t: progress.append(d))
        self.assertEqual(data["expirations"], ["20300111", "20300118", "20300125"])
        self.assertEqual(data["underlying"]["last"], PRICE)
        self.assertEqual(set(data["underlying"]), QUOTE_KEYS)
        got = [(o["expiration"], o["strike"], o["right"], o["trading_class"]) for o in data["options"]]
        expected = [(e, s, "P", "AAPLW" if e in WEEKLIES else "AAPL")
                    for e in data["expirations"] for s in (180.0, 185.0, 190.0, 195.0)]
        self.assertEqual(sorted(got), sorted(g for g in expected if g[1] != 180.0))   # 180 P does not exist
        self.assertTrue(all(o["complete"] and set(o) == OPTION_KEYS for o in data["options"]))
        self.assertEqual(progress[-1], 12)
        self.assertIsInstance(data["elapsed_ms"], int)

    def test_without_strikes_around_the_underlying_streams_with_the_options(self):
        scanner = self.make(ib_max_mkt_lines=10)
        data = scanner.fetch_option_chain("AAPL", {"expirations": ["20300215", "20991231"],
                                                   "strike_min": 200, "strike_max": 210})
        self.assertEqual(data["expirations"], ["20300215"])
        self.assertEqual(len(data["options"]), 3 * 2)
        self.assertEqual(data["underlying"]["bid"], 185.19)
        self.assertEqual(self.conn.count("reqMktData"), 7)

    def test_open_interest_is_part_of_a_chain(self):
        scanner = self.make(ib_max_mkt_lines=10)
        data = scanner.fetch_option_chain("AAPL", {"expirations": ["20300215"], "strike_min": 200,
                                                   "strike_max": 200, "rights": ["C"]})
        self.assertEqual(data["options"][0]["open_interest"], 10450)


class FetchPricesTest(ScannerTestCase):
    def test_one_option_per_contract_in_request_order_and_a_quote_per_ticker(self):
        tws = StubTws({("AAPL", 999.0, "C"): ("error", 200, "No security definition has been found")})
        scanner = self.make(tws)
        contracts = [{"ticker": "AAPL", "expiration": "20300215", "strike": 190, "right": "P"},
                     {"ticker": "aapl", "expiration": "20300215", "strike": 999, "right": "C"},
                     {"ticker": "MSFT", "expiration": "20300215", "strike": 400, "right": "C"},
                     {"ticker": "AAPL", "expiration": "20300118", "strike": 160, "right": "C"}]
        data = scanner.fetch_prices(contracts)
        self.assertEqual([(o["ticker"], o["strike"], o["right"]) for o in data["options"]],
                         [("AAPL", 190.0, "P"), ("AAPL", 999.0, "C"), ("MSFT", 400.0, "C"), ("AAPL", 160.0, "C")])
        self.assertEqual(data["options"][1]["error"]["code"], NO_SECURITY_DEFINITION)
        self.assertEqual([o["bid"] for o in data["options"]], [1.9, None, 4.0, 1.6])
        self.assertEqual(sorted(data["underlyings"]), ["AAPL", "MSFT"])
        self.assertEqual(set(data["underlyings"]["AAPL"]), QUOTE_KEYS)
        self.assertEqual(self.conn.count("reqSecDefOptParams"), 0)   # no lookups per contract

    def test_trading_class_comes_from_a_cached_chain(self):
        scanner = self.make()
        scanner.get_available_expirations("AAPL")
        option = scanner.get_option_data({"ticker": "AAPL", "expiration": "20300111", "strike": 190, "right": "C"})
        self.assertEqual(option["trading_class"], "AAPLW")
        contract = next(args[1] for name, args in self.conn.sent if name == "reqMktData")
        self.assertEqual(contract.tradingClass, "AAPLW")


class SellScanTest(ScannerTestCase):
    def test_puts_yield_on_strike_sorted_by_annualized(self):
        no_bid = {("AAPL", 165.0, "P"): "option_sentinels"}
        scanner = self.make(StubTws(no_bid), ib_max_mkt_lines=20)
        data = scanner.sell_scan("AAPL", "P", min_days=0, max_days=30, otm_min_pct=5, otm_max_pct=15)
        self.assertEqual(data["underlying"]["last"], PRICE)
        strikes = {c["strike"] for c in data["candidates"]}
        in_band = {s for s in STRIKES if 5 <= (PRICE - s) / PRICE * 100 <= 15}
        self.assertEqual(strikes, in_band - {165.0})          # 165 P has no bid
        annualized = [c["annualized_pct"] for c in data["candidates"]]
        self.assertEqual(annualized, sorted(annualized, reverse=True))
        best = data["candidates"][0]
        days = (dt.date(int(best["expiration"][:4]), int(best["expiration"][4:6]), int(best["expiration"][6:])) - TODAY).days
        self.assertEqual(best["days"], days)
        self.assertAlmostEqual(best["premium"], best["bid"] * 100)
        self.assertAlmostEqual(best["yield_pct"], best["bid"] / best["strike"] * 100, places=4)
        self.assertAlmostEqual(best["annualized_pct"], best["yield_pct"] * 365 / days, places=3)
        self.assertTrue(set(OPTION_KEYS) <= set(best))

    def test_call_metrics_yield_on_the_underlying(self):
        call = {"expiration": "20300131", "strike": 200.0, "right": "C", "bid": 2.0, "multiplier": 100}
        metrics = sell_metrics(call, 190.0, TODAY)
        self.assertEqual(metrics["days"], 30)
        self.assertAlmostEqual(metrics["otm_pct"], 10 / 190 * 100, places=4)
        self.assertEqual(metrics["premium"], 200.0)
        self.assertAlmostEqual(metrics["yield_pct"], 2 / 190 * 100, places=4)
        self.assertAlmostEqual(metrics["annualized_pct"], 2 / 190 * 100 * 365 / 30, places=3)

    def test_same_day_expiration_annualizes_over_one_day(self):
        put = {"expiration": "20300101", "strike": 100.0, "right": "P", "bid": 0.1, "multiplier": 100}
        metrics = sell_metrics(put, 110.0, TODAY)
        self.assertEqual(metrics["days"], 0)
        self.assertAlmostEqual(metrics["annualized_pct"], 0.1 * 365, places=3)

    def test_strikes_around(self):
        self.assertEqual(strikes_around([170, 175, 180, 185, 190, 195], 185.2, 2), [180, 185, 190, 195])
        self.assertEqual(strikes_around([170, 175, 180, 185], 185.0, 1), [185])


class QuoteTest(ScannerTestCase):
    def test_quotes_by_ticker(self):
        scanner = self.make()
        data = scanner.quote(["aapl", "MSFT", "AAPL"])
        self.assertEqual(sorted(data["quotes"]), ["AAPL", "MSFT"])
        self.assertEqual(set(data["quotes"]["AAPL"]), QUOTE_KEYS)
        self.assertEqual(self.conn.count("reqMktData"), 2)

    def test_all_failed_is_an_error(self):
        scanner = self.make(StubTws({"NOPE": ("error", 200, "No security definition has been found")}))
        with self.assertRaises(AgentError) as caught:
            scanner.quote(["NOPE"])
        self.assertEqual(caught.exception.code, NO_SECURITY_DEFINITION)


if __name__ == "__main__":
    unittest.main()
