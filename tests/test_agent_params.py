"""The params checkers on their own: what each accepts, how it normalises, and the words of each refusal."""

from __future__ import annotations

import unittest

from agent.errors import INVALID_REQUEST, AgentError
from agent.relay.params import (
    REQUIRED,
    RIGHT,
    STRIKE,
    TICKER,
    choice,
    date,
    list_of,
    not_above,
    number,
    obj,
    only_for,
    pattern,
    validate,
)


class CheckerCase(unittest.TestCase):
    def refuses(self, check, value, message, path="params.x"):
        with self.assertRaises(AgentError) as caught:
            check(value, path)
        self.assertEqual((caught.exception.code, caught.exception.message), (INVALID_REQUEST, message))


class Pattern(CheckerCase):
    def test_strips_and_upper_cases_what_it_accepts(self):
        self.assertEqual(TICKER(" brk b ", "p"), "BRK B")
        self.assertEqual(pattern(r"[A-Z]{2}", "two letters")("ab", "p"), "AB")

    def test_refuses_other_text_and_non_strings(self):
        for value in ("AAPL; DROP", "", "-X", 42, None, ["AAPL"]):
            with self.subTest(value=value):
                self.refuses(TICKER, value, "params.x: must be a ticker symbol")


class Choice(CheckerCase):
    def test_options_and_aliases(self):
        self.assertEqual(RIGHT("call", "p"), "C")
        self.assertEqual(RIGHT(" p ", "p"), "P")
        self.assertEqual(choice("DAY", "GTC")("gtc", "p"), "GTC")

    def test_the_message_lists_the_options(self):
        self.refuses(RIGHT, "X", 'params.x: must be "C" or "P"')
        self.refuses(RIGHT, 1, 'params.x: must be "C" or "P"')
        self.refuses(choice("LMT"), "MKT", 'params.x: must be "LMT"')
        self.refuses(choice("OPT", "STK", "FUT"), "BOND", 'params.x: must be "OPT", "STK" or "FUT"')

    def test_an_alias_is_not_an_option_of_another_checker(self):
        self.refuses(choice("BUY", "SELL"), "CALL", 'params.x: must be "BUY" or "SELL"')


class Number(CheckerCase):
    def test_whole_numbers_come_back_as_int_and_others_as_float(self):
        whole = number(1, 500, integer=True)
        self.assertEqual((whole(7.0, "p"), type(whole(7.0, "p"))), (7, int))
        self.assertEqual((number(0, 10)(2, "p"), type(number(0, 10)(2, "p"))), (2.0, float))

    def test_bounds_closed_and_open(self):
        self.assertEqual(number(-100, 1000)(-100, "p"), -100.0)
        self.assertEqual(STRIKE(1e7, "p"), 1e7)
        self.refuses(STRIKE, 0, "params.x: must be a number greater than 0 and at most 10000000")
        self.refuses(STRIKE, 1e7 + 1, "params.x: must be a number greater than 0 and at most 10000000")
        self.refuses(number(-100, 1000), -101, "params.x: must be a number from -100 to 1000")

    def test_without_an_upper_bound(self):
        positive = number(0, integer=True, lo_open=True)
        self.assertEqual(positive(10**12, "p"), 10**12)
        self.refuses(positive, 0, "params.x: must be a whole number greater than 0")
        self.refuses(number(0.5), 0.25, "params.x: must be a number at least 0.5")

    def test_refuses_bools_strings_fractions_and_non_finite(self):
        whole = number(1, 500, integer=True)
        for value in (True, "7", 1.5, float("inf"), float("nan"), None):
            with self.subTest(value=value):
                self.refuses(whole, value, "params.x: must be a whole number from 1 to 500")
        self.refuses(number(0, 10), float("nan"), "params.x: must be a number from 0 to 10")

    def test_huge_numbers_are_refused_naming_the_field(self):
        """10**400 cannot become a float: comparing or checking it must not raise (issue 16)."""
        positive = number(0, integer=True, lo_open=True)
        for checker in (positive, number(0), number(0, 10, integer=True)):
            for value in (10**400, -(10**400), 10**16, 1e300, -1e300):
                with self.subTest(value=str(value)[:12]):
                    with self.assertRaises(AgentError) as caught:
                        checker(value, "params.x")
                    self.assertEqual(caught.exception.code, INVALID_REQUEST)
                    self.assertTrue(
                        caught.exception.message.startswith("params.x: is out of range"), caught.exception.message
                    )
        self.assertEqual(positive(10**15, "p"), 10**15)


class Date(CheckerCase):
    def test_a_calendar_date(self):
        self.assertEqual(date(" 20250117 ", "p"), "20250117")

    def test_refuses_other_shapes_and_impossible_days(self):
        for value in ("2025-01-17", "20250230", "2025011", 20250117, None):
            with self.subTest(value=value):
                self.refuses(date, value, "params.x: must be a date YYYYMMDD")


class ListOf(CheckerCase):
    def test_each_item_is_checked_with_its_index_in_the_path(self):
        self.refuses(list_of(TICKER, 5), ["AAPL", 42], "params.x[1]: must be a ticker symbol")

    def test_unique_keeps_the_first_of_each_in_order(self):
        self.assertEqual(list_of(TICKER, 5, unique=True)(["msft", "AAPL", "MSFT"], "p"), ["MSFT", "AAPL"])

    def test_length_bounds_and_non_lists(self):
        check = list_of(TICKER, 2)
        for value in ([], ["A", "B", "C"], "AAPL", {"A": 1}):
            with self.subTest(value=value):
                self.refuses(check, value, "params.x: must be a list of 1 to 2 items")


SCHEMA = {
    "ticker": (TICKER, REQUIRED),
    "rights": (list_of(RIGHT, 2), ("C", "P")),
    "low": (number(0, 9), None),
    "high": (number(0, 9), None),
}


class Validate(CheckerCase):
    def test_defaults_fill_what_is_missing_or_null(self):
        self.assertEqual(
            validate(SCHEMA, {"ticker": "aapl", "low": None}),
            {"ticker": "AAPL", "rights": ["C", "P"], "low": None, "high": None},
        )

    def test_a_default_list_is_a_fresh_copy_each_time(self):
        validate(SCHEMA, {"ticker": "A"})["rights"].append("X")
        self.assertEqual(validate(SCHEMA, {"ticker": "A"})["rights"], ["C", "P"])

    def test_refusals_name_the_field(self):
        check = obj(SCHEMA)
        self.refuses(check, [], "params: must be an object", path="params")
        self.refuses(check, {"ticker": "A", "tickr": "B"}, "params.tickr: unknown parameter", path="params")
        self.refuses(check, {"rights": ["C"]}, "params.ticker: is required", path="params")

    def test_nested_objects_carry_the_whole_path(self):
        contracts = list_of(obj({"strike": (STRIKE, REQUIRED)}), 3)
        self.refuses(
            contracts,
            [{"strike": 1}, {"strike": "x"}],
            "params.x[1].strike: must be a number greater than 0 and at most 10000000",
        )
        self.refuses(contracts, [{"strike": 1}, "x"], "params.x[1]: must be an object")


class Rules(CheckerCase):
    def test_not_above_when_both_are_given(self):
        check = obj(SCHEMA, rules=(not_above("low", "high"),))
        self.assertEqual(check({"ticker": "A", "low": 5, "high": 5}, "p")["low"], 5.0)
        self.assertIsNone(check({"ticker": "A", "low": 5}, "p")["high"])
        self.refuses(check, {"ticker": "A", "low": 5, "high": 4}, "params.x.high: must not be less than low")

    def test_only_for_requires_its_fields_for_the_switch_and_refuses_them_otherwise(self):
        check = obj(
            {"kind": (choice("OPT", "STK"), REQUIRED), "strike": (STRIKE, None), "note": (TICKER, None)},
            rules=(only_for("kind", "OPT", "an option (OPT)", required=("strike",), optional=("note",)),),
        )
        self.assertEqual(check({"kind": "opt", "strike": 5}, "p"), {"kind": "OPT", "strike": 5.0, "note": None})
        self.assertEqual(check({"kind": "OPT", "strike": 5, "note": "W"}, "p")["note"], "W")
        self.assertEqual(check({"kind": "STK"}, "p")["strike"], None)
        self.refuses(check, {"kind": "OPT"}, "params.x.strike: is required for an option (OPT)")
        self.refuses(check, {"kind": "STK", "strike": 5}, "params.x.strike: only for an option (OPT)")
        self.refuses(check, {"kind": "STK", "note": "W"}, "params.x.note: only for an option (OPT)")

    def test_rules_run_only_after_every_field_is_checked(self):
        check = obj(SCHEMA, rules=(not_above("low", "high"),))
        self.refuses(check, {"ticker": "A", "low": 5, "high": "x"}, "params.x.high: must be a number from 0 to 9")


if __name__ == "__main__":
    unittest.main()
