"""Recorded TWS tick sequences -> OPTION / QUOTE (agent.ib.ticks): live and delayed types, sentinels,
completion rules."""

from __future__ import annotations

import json
import unittest
from decimal import Decimal
from pathlib import Path
from typing import List, Tuple

from ibapi.common import TickAttrib

from agent.ib.ticks import COMPLETION_RULES, Instrument, TickBook, clean_price, clean_size

RECORDED = Path(__file__).resolve().parent / "recorded"

CALL_190 = Instrument("AAPL", "OPT", "20300118", 190.0, "C", "AAPL", "SMART", 100)
PUT_180 = Instrument("AAPL", "OPT", "20300118", 180.0, "P", "AAPL", "SMART", 100)
PUT_60 = Instrument("AAPL", "OPT", "20300118", 60.0, "P", "AAPL", "SMART", 100)
CALL_200 = Instrument("AAPL", "OPT", "20300118", 200.0, "C", "AAPL", "SMART", 100)
AAPL = Instrument("AAPL")

OPTION_KEYS = {
    "ticker",
    "expiration",
    "strike",
    "right",
    "trading_class",
    "multiplier",
    "con_id",
    "adjusted",
    "bid",
    "ask",
    "last",
    "mid",
    "bid_size",
    "ask_size",
    "volume",
    "open_interest",
    "implied_vol",
    "delta",
    "gamma",
    "theta",
    "vega",
    "und_price",
    "market_data_type",
    "complete",
    "error",
}
QUOTE_KEYS = {
    "ticker",
    "sec_type",
    "bid",
    "ask",
    "last",
    "close",
    "mid",
    "bid_size",
    "ask_size",
    "volume",
    "market_data_type",
}


def _decode(value):
    """The recorded files tag ibapi objects: {"Decimal": "12"}, {"TickAttrib": {...}}."""
    if isinstance(value, dict) and "Decimal" in value:
        return Decimal(value["Decimal"])
    if isinstance(value, dict) and "TickAttrib" in value:
        attrib = TickAttrib()
        for key, flag in value["TickAttrib"].items():
            setattr(attrib, key, flag)
        return attrib
    return value


def recorded_events(name: str, req_id: int) -> List[Tuple[str, tuple]]:
    """tests/recorded/ticks_<name>.json as (callback name, full args) with "$id" -> req_id."""
    data = json.loads((RECORDED / f"ticks_{name}.json").read_text(encoding="utf-8"))
    return [(callback, tuple(req_id if a == "$id" else _decode(a) for a in args)) for callback, args in data["events"]]


def book_from(name: str, instrument: Instrument) -> TickBook:
    book = TickBook(instrument)
    for callback, args in recorded_events(name, 7):
        book.apply(callback, args)
    return book


class OptionNormalisationTest(unittest.TestCase):
    def test_market_data_type_is_what_tws_said_for_the_request(self):
        """Frozen data comes in the live tick types and delayed-frozen in the delayed ones: only the
        marketDataType callback tells them apart, so the label is its value, never a guess."""
        for recording, said, label in (
            ("option_live", 2, "frozen"),
            ("option_live", 1, "live"),
            ("option_delayed", 4, "delayed-frozen"),
            ("option_delayed", 3, "delayed"),
        ):
            with self.subTest(said=said):
                book = TickBook(CALL_190)
                for callback, args in recorded_events(recording, 7):
                    book.apply(callback, (7, said) if callback == "marketDataType" else args)
                self.assertEqual(book.option(complete=True)["market_data_type"], label)

    def test_implied_vol_is_the_options_own_model_never_tick_24(self):
        """Tick 24 (generic 106) on an option's stream is the underlying's 30-day volatility."""
        book = TickBook(CALL_190)
        book.apply("tickGeneric", (7, 24, 0.35))
        self.assertIsNone(book.option(complete=False)["implied_vol"])
        for callback, args in recorded_events("option_live", 7):
            book.apply(callback, args)
        book.apply("tickGeneric", (7, 24, 0.35))
        self.assertEqual(book.option(complete=True)["implied_vol"], 0.2751)

    def test_live_call_prefers_model_greeks_and_takes_the_call_open_interest(self):
        option = book_from("option_live", CALL_190).option(complete=True)
        self.assertEqual(set(option), OPTION_KEYS)
        self.assertEqual((option["bid"], option["ask"], option["last"]), (5.15, 5.25, 5.2))
        self.assertAlmostEqual(option["mid"], 5.2)
        self.assertEqual((option["bid_size"], option["ask_size"], option["volume"]), (9, 30, 1523))
        self.assertIsInstance(option["bid_size"], int)
        self.assertEqual(option["open_interest"], 10450)
        self.assertEqual((option["implied_vol"], option["delta"], option["und_price"]), (0.2751, 0.5127, 185.21))
        self.assertEqual((option["gamma"], option["vega"], option["theta"]), (0.031, 0.1903, -0.0527))
        self.assertEqual(option["market_data_type"], "live")
        self.assertEqual(
            (option["ticker"], option["expiration"], option["strike"], option["right"]),
            ("AAPL", "20300118", 190.0, "C"),
        )
        self.assertEqual((option["trading_class"], option["multiplier"], option["con_id"]), ("AAPL", 100, None))
        self.assertIs(option["complete"], True)
        self.assertIsNone(option["error"])

    def test_delayed_put_reads_delayed_tick_types_and_the_put_open_interest(self):
        option = book_from("option_delayed", PUT_180).option(complete=True)
        self.assertEqual((option["bid"], option["ask"], option["last"]), (3.4, 3.55, 3.5))
        self.assertEqual((option["bid_size"], option["ask_size"], option["volume"]), (20, 15, 310))
        self.assertEqual(option["open_interest"], 8122)
        self.assertEqual((option["delta"], option["implied_vol"]), (-0.3716, 0.3017))
        self.assertEqual(option["market_data_type"], "delayed")

    def test_sentinels_become_none_and_a_late_model_computation_wins(self):
        option = book_from("option_sentinels", PUT_60).option(complete=True)
        for field in ("bid", "last", "mid", "volume", "open_interest"):
            self.assertIsNone(option[field], field)
        self.assertEqual((option["ask"], option["bid_size"], option["ask_size"]), (0.05, 0, 250))
        self.assertEqual((option["delta"], option["gamma"], option["und_price"]), (-0.0042, 0.0001, 185.2))

    def test_without_a_model_the_bid_computation_fills_the_greeks(self):
        option = book_from("option_no_model", CALL_200).option(complete=False)
        self.assertEqual((option["delta"], option["implied_vol"], option["theta"]), (0.3011, 0.251, -0.0431))
        self.assertIs(option["complete"], False)

    def test_market_data_type_is_inferred_from_tick_types_without_the_callback(self):
        book = TickBook(PUT_180)
        book.apply("tickPrice", (1, 66, 3.4, TickAttrib()))
        self.assertEqual(book.option(False)["market_data_type"], "delayed")
        live = TickBook(PUT_180)
        live.apply("tickPrice", (1, 1, 3.4, TickAttrib()))
        self.assertEqual(live.option(False)["market_data_type"], "live")
        self.assertIsNone(TickBook(PUT_180).option(False)["market_data_type"])
        live.apply("marketDataType", (1, 2))
        self.assertEqual(live.option(False)["market_data_type"], "frozen")

    def test_ticks_outside_the_tables_change_nothing(self):
        book = TickBook(AAPL)
        self.assertFalse(book.apply("tickPrice", (1, 6, 186.4, TickAttrib())))  # high
        self.assertFalse(book.apply("tickString", (1, 45, "1767890123")))
        self.assertFalse(book.apply("tickReqParams", (1, 0.01, "", 3)))
        self.assertFalse(book.has_data())


class QuoteTest(unittest.TestCase):
    def test_stock_quote(self):
        quote = book_from("stock_live", AAPL).quote()
        self.assertEqual(set(quote) - {"error"}, QUOTE_KEYS)
        self.assertEqual((quote["bid"], quote["ask"], quote["last"], quote["close"]), (185.19, 185.21, 185.2, 184.02))
        self.assertAlmostEqual(quote["mid"], 185.2)
        self.assertEqual((quote["bid_size"], quote["ask_size"], quote["volume"]), (300, 500, 41235780))
        self.assertEqual(quote["market_data_type"], "live")
        self.assertEqual(quote["sec_type"], "STK")

    def test_index_quote_has_last_and_close_and_completes_without_bid_or_ask(self):
        spx = Instrument("SPX", "IND", exchange="CBOE", con_id=416904)
        book = TickBook(spx)
        book.apply("tickPrice", (1, 4, 5210.5, TickAttrib()))
        self.assertFalse(book.complete("stock"))
        book.apply("tickPrice", (1, 9, 5190.25, TickAttrib()))
        self.assertTrue(book.complete("stock"))  # an index streams its value and close only
        quote = book.quote()
        self.assertEqual(
            (quote["sec_type"], quote["last"], quote["close"], quote["bid"], quote["mid"]),
            ("IND", 5210.5, 5190.25, None, None),
        )


class ListedOptionTest(unittest.TestCase):
    def test_con_id_and_adjusted_come_from_the_listing_and_are_not_part_of_the_key(self):
        listed = Instrument(
            "XYZ", "OPT", "20300118", 95.0, "P", "XYZ1", multiplier=150, con_id=600001234, adjusted=True
        )
        option = TickBook(listed).option(False)
        self.assertEqual(
            (option["con_id"], option["adjusted"], option["multiplier"], option["trading_class"]),
            (600001234, True, 150, "XYZ1"),
        )
        self.assertEqual(listed, Instrument("XYZ", "OPT", "20300118", 95.0, "P", "XYZ1", multiplier=150))
        unlisted = TickBook(Instrument("XYZ", "OPT", "20300118", 60.0, "P", "XYZ")).option(False)
        self.assertEqual((unlisted["con_id"], unlisted["adjusted"]), (None, False))


class SentinelTest(unittest.TestCase):
    def test_prices(self):
        for raw in (-1, -1.0, 0, 0.0, 1.7976931348623157e308, float("inf"), float("nan"), None):
            self.assertIsNone(clean_price(raw), raw)
        self.assertEqual(clean_price(0.05), 0.05)

    def test_sizes(self):
        for raw in (-1, Decimal("-1"), Decimal(2**127 - 1), 2**31 - 1, 2**63 - 1, Decimal("NaN"), None):
            self.assertIsNone(clean_size(raw), raw)
        self.assertEqual(clean_size(Decimal("12")), 12)
        self.assertEqual(clean_size(0), 0)

    def test_crossed_market_has_no_mid(self):
        book = TickBook(AAPL)
        book.apply("tickPrice", (1, 1, 10.2, TickAttrib()))
        book.apply("tickPrice", (1, 2, 10.1, TickAttrib()))
        self.assertIsNone(book.quote()["mid"])


class CompletionRuleTest(unittest.TestCase):
    def _after(self, name: str, instrument: Instrument, count: int) -> TickBook:
        book = TickBook(instrument)
        for callback, args in recorded_events(name, 7)[:count]:
            book.apply(callback, args)
        return book

    def _first_complete(self, name: str, instrument: Instrument, rule: str):
        events = recorded_events(name, 7)
        for count in range(len(events) + 1):
            if self._after(name, instrument, count).complete(rule):
                return count
        return None

    def test_option_completes_on_the_model_computation_and_with_oi_on_its_own_right(self):
        events = recorded_events("option_live", 7)
        model = next(i for i, (cb, args) in enumerate(events) if cb == "tickOptionComputation" and args[1] == 13)
        call_oi = next(i for i, (cb, args) in enumerate(events) if cb == "tickSize" and args[1] == 27)
        self.assertEqual(self._first_complete("option_live", CALL_190, "option"), model + 1)
        self.assertEqual(self._first_complete("option_live", CALL_190, "option+oi"), call_oi + 1)

    def test_an_option_without_a_bid_completes_on_ask_and_greeks(self):
        events = recorded_events("option_sentinels", 7)
        computed_model = max(
            i for i, (cb, args) in enumerate(events) if cb == "tickOptionComputation" and args[1] == 13
        )
        self.assertEqual(self._first_complete("option_sentinels", PUT_60, "option"), computed_model + 1)

    def test_no_model_greeks_never_completes(self):
        self.assertIsNone(self._first_complete("option_no_model", CALL_200, "option"))

    def test_delayed_model_counts(self):
        self.assertTrue(book_from("option_delayed", PUT_180).complete("option+oi"))

    def test_stock_needs_bid_ask_last(self):
        self.assertEqual(COMPLETION_RULES["stock"], ("bid", "ask", "last"))
        events = recorded_events("stock_live", 7)
        last = next(i for i, (cb, args) in enumerate(events) if cb == "tickPrice" and args[1] == 4)
        self.assertEqual(self._first_complete("stock_live", AAPL, "stock"), last + 1)


if __name__ == "__main__":
    unittest.main()
