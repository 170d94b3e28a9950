"""The scanner's public functions (ib_scanner) on the stand-in connection: expirations and their
caches, chain selection, fetch-prices order, sell-scan math, quotes."""

from __future__ import annotations

import datetime as dt
import unittest
from zoneinfo import ZoneInfo

from ibapi.contract import ContractDetails

from agent.errors import NO_SECURITY_DEFINITION, AgentError
from ib_scanner import CHAIN_CACHE_S, Scanner, is_adjusted_class, new_york_date, sell_metrics, strikes_around
from tests.test_ib_lines import StubConnection, StubTws, make_config
from tests.test_ib_ticks import OPTION_KEYS, QUOTE_KEYS

TODAY = dt.date(2030, 1, 1)
MONTHLIES = {"20300118", "20300215", "20300517"}  # 17, 45 and 136 days out
WEEKLIES = {"20300111", "20300125"}  # 10 and 24 days out
STRIKES = [float(s) for s in range(150, 225, 5)]
AAPL_CON_ID = 265598
PRICE = 185.2  # the last price in tests/recorded/ticks_stock_live.json


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def secdef_rows(_args):
    return [
        ("SMART", AAPL_CON_ID, "AAPL", "100", MONTHLIES, STRIKES),
        ("SMART", AAPL_CON_ID, "AAPLW", "100", WEEKLIES, STRIKES[2:-2]),
        ("CBOE", AAPL_CON_ID, "AAPL", "100", {"20991231"}, [1.0]),
    ]


UNLISTED = {(180.0, "P")}  # a hole in every expiration's listing


def listed_aapl(expiration: str = "", right: str = "", trading_class: str = ""):
    """What TWS lists for AAPL options (the rows reqContractDetails answers per expiration)."""
    con_id = 700_000_000
    for name, expirations, strikes in (("AAPL", MONTHLIES, STRIKES), ("AAPLW", WEEKLIES, STRIKES[2:-2])):
        for expiry in sorted(expirations):
            for strike in strikes:
                for side in ("C", "P"):
                    con_id += 1
                    if (
                        (strike, side) in UNLISTED
                        or (expiration and expiry != expiration)
                        or (right and side != right)
                        or (trading_class and name != trading_class)
                    ):
                        continue
                    details = ContractDetails()
                    c = details.contract
                    c.conId, c.symbol, c.secType, c.exchange, c.currency = con_id, "AAPL", "OPT", "SMART", "USD"
                    c.lastTradeDateOrContractMonth, c.strike, c.right = expiry, strike, side
                    c.multiplier, c.tradingClass = "100", name
                    yield details


def contract_details(args):
    contract = args[0]
    if contract.symbol != "AAPL" or contract.secType not in ("STK", "OPT"):
        return []
    if contract.secType == "OPT":
        return [(d,) for d in listed_aapl(contract.lastTradeDateOrContractMonth, contract.right, contract.tradingClass)]
    details = ContractDetails()
    details.contract.conId = AAPL_CON_ID
    details.contract.primaryExchange = "NASDAQ"
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
        self.assertEqual(
            data,
            {
                "ticker": "AAPL",
                "underlying_con_id": AAPL_CON_ID,
                "multiplier": 100,
                "sec_type": "STK",
                "trading_classes": ["AAPL", "AAPLW"],
                "underlying_contract": {
                    "con_id": AAPL_CON_ID,
                    "sec_type": "STK",
                    "exchange": "SMART",
                    "primary_exchange": "NASDAQ",
                    "ambiguous": False,
                },
                "expirations": sorted(MONTHLIES | WEEKLIES),
                "strikes": STRIKES,
                "adjusted_classes": [],
            },
        )
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
        scanner = self.make(ib_max_mkt_lines=10)
        progress = []
        data = scanner.fetch_option_chain(
            "AAPL",
            {"min_days": 10, "max_days": 30, "strikes_around": 2, "rights": ["P"]},
            progress=lambda d, t: progress.append(d),
        )
        self.assertEqual(data["expirations"], ["20300111", "20300118", "20300125"])
        self.assertEqual(data["underlying"]["last"], PRICE)
        self.assertEqual(set(data["underlying"]), QUOTE_KEYS)
        got = [(o["expiration"], o["strike"], o["right"], o["trading_class"]) for o in data["options"]]
        expected = [
            (e, s, "P", "AAPLW" if e in WEEKLIES else "AAPL")
            for e in data["expirations"]
            for s in (180.0, 185.0, 190.0, 195.0)
        ]
        self.assertEqual(sorted(got), sorted(g for g in expected if g[1] != 180.0))  # 180 P is not listed
        self.assertTrue(all(o["complete"] and set(o) == OPTION_KEYS for o in data["options"]))
        self.assertTrue(all(o["con_id"] and o["adjusted"] is False for o in data["options"]))
        self.assertEqual(progress[-1], 9)  # 3 expirations x 4 strikes, 180 P not listed
        self.assertIsInstance(data["elapsed_ms"], int)
        listings = [
            args[1] for name, args in self.conn.sent if name == "reqContractDetails" and args[1].secType == "OPT"
        ]
        self.assertEqual(
            sorted((c.lastTradeDateOrContractMonth, c.right, c.tradingClass) for c in listings),
            [("20300111", "P", "AAPLW"), ("20300118", "P", "AAPL"), ("20300125", "P", "AAPLW")],
        )
        self.assertEqual(self.conn.count("reqMktData"), 1 + 9)  # never a contract that is not listed

    def test_without_strikes_around_the_underlying_streams_with_the_options(self):
        scanner = self.make(ib_max_mkt_lines=10)
        data = scanner.fetch_option_chain(
            "AAPL", {"expirations": ["20300215", "20991231"], "strike_min": 200, "strike_max": 210}
        )
        self.assertEqual(data["expirations"], ["20300215"])
        self.assertEqual(len(data["options"]), 3 * 2)
        self.assertEqual(data["underlying"]["bid"], 185.19)
        self.assertEqual(self.conn.count("reqMktData"), 7)

    def test_open_interest_is_part_of_a_chain(self):
        scanner = self.make(ib_max_mkt_lines=10)
        data = scanner.fetch_option_chain(
            "AAPL", {"expirations": ["20300215"], "strike_min": 200, "strike_max": 200, "rights": ["C"]}
        )
        self.assertEqual(data["options"][0]["open_interest"], 10450)


class FetchPricesTest(ScannerTestCase):
    def test_one_option_per_contract_in_request_order_and_a_quote_per_ticker(self):
        tws = StubTws({("AAPL", 999.0, "C"): ("error", 200, "No security definition has been found")})
        scanner = self.make(tws)
        contracts = [
            {"ticker": "AAPL", "expiration": "20300215", "strike": 190, "right": "P"},
            {"ticker": "aapl", "expiration": "20300215", "strike": 999, "right": "C"},
            {"ticker": "MSFT", "expiration": "20300215", "strike": 400, "right": "C"},
            {"ticker": "AAPL", "expiration": "20300118", "strike": 160, "right": "C"},
        ]
        data = scanner.fetch_prices(contracts)
        self.assertEqual(
            [(o["ticker"], o["strike"], o["right"]) for o in data["options"]],
            [("AAPL", 190.0, "P"), ("AAPL", 999.0, "C"), ("MSFT", 400.0, "C"), ("AAPL", 160.0, "C")],
        )
        self.assertEqual(data["options"][1]["error"]["code"], NO_SECURITY_DEFINITION)
        self.assertEqual([o["bid"] for o in data["options"]], [1.9, None, 4.0, 1.6])
        self.assertEqual(sorted(data["underlyings"]), ["AAPL", "MSFT"])
        self.assertEqual(set(data["underlyings"]["AAPL"]), QUOTE_KEYS)
        self.assertEqual(self.conn.count("reqSecDefOptParams"), 0)  # no lookups per contract

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
        self.assertEqual(strikes, in_band - {165.0})  # 165 P has no bid
        annualized = [c["annualized_pct"] for c in data["candidates"]]
        self.assertEqual(annualized, sorted(annualized, reverse=True))
        best = data["candidates"][0]
        days = (
            dt.date(int(best["expiration"][:4]), int(best["expiration"][4:6]), int(best["expiration"][6:])) - TODAY
        ).days
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


class ListingTest(ScannerTestCase):
    def test_a_contract_missing_from_a_known_listing_costs_no_market_data(self):
        scanner = self.make()
        scanner.fetch_option_chain("AAPL", {"expirations": ["20300215"], "strike_min": 180, "strike_max": 180})
        sent = self.conn.count("reqMktData")
        options = scanner.fetch_prices(
            [
                {"ticker": "AAPL", "expiration": "20300215", "strike": 180, "right": "P"},
                {"ticker": "AAPL", "expiration": "20300215", "strike": 180, "right": "C"},
            ]
        )
        missing, listed = options["options"]
        self.assertEqual(
            (missing["error"]["code"], missing["error"]["ib_code"], missing["con_id"]),
            (NO_SECURITY_DEFINITION, 200, None),
        )
        self.assertEqual(set(missing), OPTION_KEYS)
        self.assertIsNone(listed["error"])
        self.assertTrue(listed["con_id"])
        self.assertEqual(self.conn.count("reqMktData"), sent + 2)  # the listed call and the underlying
        self.assertEqual(scanner.stats()["unlisted_answered"], 1)

    def test_listings_are_cached_for_the_new_york_day(self):
        day = [TODAY]
        self.clock = FakeClock()
        self.conn = StubConnection(StubTws())
        self.conn.answers = {"reqContractDetails": contract_details, "reqSecDefOptParams": secdef_rows}
        scanner = Scanner(self.conn, make_config(), today=lambda: day[0], clock=self.clock)
        self.addCleanup(scanner.close)

        def listings() -> int:
            return sum(1 for name, args in self.conn.sent if name == "reqContractDetails" and args[1].secType == "OPT")

        scanner.sell_scan("AAPL", "P", max_days=30)
        self.assertEqual(listings(), 3)
        scanner.sell_scan("AAPL", "P", max_days=30)
        scanner.fetch_option_chain("AAPL", {"max_days": 30, "rights": ["P"]})
        self.assertEqual(listings(), 3)
        day[0] = TODAY + dt.timedelta(days=1)  # midnight in New York
        scanner.sell_scan("AAPL", "P", max_days=30)
        self.assertEqual(listings(), 6)


class NewYorkDateTest(unittest.TestCase):
    # 2030-01-02 03:30 UTC: already January 2 on a PC in UTC or Tokyo, still January 1 in New York
    INSTANT = dt.datetime(2030, 1, 2, 3, 30, tzinfo=dt.timezone.utc).timestamp()

    def test_days_count_on_the_new_york_date_not_the_pcs(self):
        self.assertEqual(dt.datetime.fromtimestamp(self.INSTANT, ZoneInfo("Asia/Tokyo")).date(), dt.date(2030, 1, 2))
        self.assertEqual(new_york_date(self.INSTANT), dt.date(2030, 1, 1))
        conn = StubConnection(StubTws())
        conn.answers = {"reqContractDetails": contract_details, "reqSecDefOptParams": secdef_rows}
        scanner = Scanner(conn, make_config(ib_max_mkt_lines=20), wall_clock=lambda: self.INSTANT)
        self.addCleanup(scanner.close)
        data = scanner.sell_scan("AAPL", "P", min_days=10, max_days=10, otm_max_pct=30)
        self.assertEqual({c["expiration"] for c in data["candidates"]}, {"20300111"})
        self.assertEqual({c["days"] for c in data["candidates"]}, {10})


class UnderlyingTest(unittest.TestCase):
    @staticmethod
    def details(con_id: int, primary: str) -> ContractDetails:
        details = ContractDetails()
        details.contract.conId, details.contract.primaryExchange = con_id, primary
        details.contract.exchange = "SMART"
        return details

    def test_an_ambiguous_stock_resolves_to_its_us_primary_listing_and_says_so(self):
        picked = Scanner._pick_listing("TWIN", "STK", [self.details(900004, "PINK"), self.details(900003, "NYSE")])
        self.assertEqual(
            picked.describe(),
            {"con_id": 900003, "sec_type": "STK", "exchange": "SMART", "primary_exchange": "NYSE", "ambiguous": True},
        )
        self.assertEqual(picked.instrument().con_id, 900003)

    def test_adjusted_classes(self):
        self.assertTrue(is_adjusted_class("XYZ", "XYZ1", 100))
        self.assertTrue(is_adjusted_class("XYZ", "XYZ", 150))
        self.assertFalse(is_adjusted_class("SPX", "SPXW", 100))
        self.assertFalse(is_adjusted_class("AAPL", "AAPL", 100))

    def test_an_adjusted_call_yields_on_its_deliverable(self):
        call = {
            "expiration": "20300131",
            "strike": 100.0,
            "right": "C",
            "bid": 3.0,
            "multiplier": 150,
            "adjusted": True,
        }
        metrics = sell_metrics(call, 64.0, TODAY)  # 150 shares of 64: 96 per unit of the deliverable
        self.assertAlmostEqual(metrics["otm_pct"], (100 - 96) / 96 * 100, places=4)
        self.assertAlmostEqual(metrics["yield_pct"], 3 / 96 * 100, places=4)
        self.assertEqual(metrics["premium"], 450.0)


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
        self.assertEqual(
            (caught.exception.message, caught.exception.ib_code), ("TWS knows no stock, ETF or index NOPE (USD)", 200)
        )  # names the ticker

    def test_an_unknown_ticker_among_others_is_its_own_error_never_an_all_null_quote(self):
        scanner = self.make(StubTws({"NOPE": ("error", 200, "No security definition has been found")}))
        data = scanner.quote(["AAPL", "NOPE"])
        self.assertEqual(list(data["quotes"]), ["AAPL"])
        self.assertIsNotNone(data["quotes"]["AAPL"]["bid"])
        self.assertEqual(
            data["errors"],
            {
                "NOPE": {
                    "code": NO_SECURITY_DEFINITION,
                    "ib_code": 200,
                    "message": "TWS knows no stock, ETF or index NOPE (USD)",
                }
            },
        )
        self.assertEqual(scanner.quote(["AAPL"])["errors"], {})

    def test_fetch_chain_of_an_unknown_ticker_names_it(self):
        scanner = self.make()
        with self.assertRaises(AgentError) as caught:
            scanner.fetch_option_chain("NOPE")
        self.assertEqual(
            (caught.exception.code, caught.exception.message, caught.exception.ib_code),
            (NO_SECURITY_DEFINITION, "TWS knows no stock, ETF or index NOPE (USD)", 200),
        )


if __name__ == "__main__":
    unittest.main()
