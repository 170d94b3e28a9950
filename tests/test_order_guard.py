"""The pure order safeguards: params shapes, the local policy, the audit log, the request-id store."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import unittest
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

from agent.config import Config
from agent.errors import INVALID_REQUEST, AgentError, Internal, InvalidRequest
from agent.log import Masker
from agent.orders import guard as order_guard

PAPER = {"connected": True, "accounts": ["DU1234567"], "account_type": "paper"}
LIVE = {"connected": True, "accounts": ["U1234567"], "account_type": "live"}


def option_order(**changes):
    order = {
        "contract": {"ticker": "AAPL", "sec_type": "OPT", "expiration": "20300118", "strike": 150.0, "right": "C"},
        "action": "SELL",
        "quantity": 1,
        "order_type": "LMT",
        "limit_price": 2.5,
    }
    order.update(changes)
    return order


def config(**changes):
    return Config(key="secret-key-123", **changes)


class ParamsTest(unittest.TestCase):
    def invalid(self, params, field, action="place-order"):
        with self.assertRaises(AgentError) as caught:
            order_guard.parse_order_params(action, params)
        self.assertEqual(caught.exception.code, INVALID_REQUEST)
        expected = field if field == "params" else "params." + field
        self.assertTrue(caught.exception.message.startswith(expected + ":"), caught.exception.message)

    def test_a_valid_option_order_is_normalised(self):
        raw = option_order(action="sell")
        raw["contract"] = dict(raw["contract"], ticker=" aapl", right="put")
        raw["quantity"] = 2.0
        parsed = order_guard.parse_order_params("place-order", raw)
        self.assertEqual(parsed["contract"]["ticker"], "AAPL")
        self.assertEqual((parsed["contract"]["right"], parsed["contract"]["exchange"]), ("P", "SMART"))
        self.assertEqual(parsed["quantity"], 2)
        self.assertIsInstance(parsed["quantity"], int)
        self.assertEqual(parsed["action"], "SELL")
        self.assertEqual(parsed["tif"], "DAY")
        self.assertIsNone(parsed["account"])
        self.assertEqual(order_guard.parse_order_params("place-order", parsed), parsed)

    def test_a_stock_order_needs_no_option_fields(self):
        parsed = order_guard.parse_order_params(
            "place-order", option_order(contract={"ticker": "MSFT", "sec_type": "STK"}, tif="gtc", account="du1234567")
        )
        self.assertEqual((parsed["tif"], parsed["account"]), ("GTC", "DU1234567"))

    def test_each_bad_field_is_named(self):
        self.invalid(option_order(quantity=0), "quantity")
        self.invalid(option_order(quantity=1.5), "quantity")
        self.invalid(option_order(quantity=True), "quantity")
        self.invalid(option_order(limit_price=-1), "limit_price")
        self.invalid(option_order(limit_price="2.5"), "limit_price")
        self.invalid(option_order(order_type="MKT"), "order_type")
        self.invalid(option_order(action="SHORT"), "action")
        self.invalid(option_order(tif="IOC"), "tif")
        self.invalid(option_order(qty=1), "qty")
        self.invalid(option_order(contract="AAPL"), "contract")
        self.invalid(option_order(contract={"ticker": "AAPL", "sec_type": "FUT"}), "contract.sec_type")
        self.invalid(
            option_order(contract={"ticker": "AAPL", "sec_type": "STK", "exchange": "CBOE"}), "contract.exchange"
        )
        self.invalid(
            option_order(contract={"ticker": "AAPL", "sec_type": "OPT", "strike": 1.0, "right": "C"}),
            "contract.expiration",
        )
        self.invalid(option_order(contract={"ticker": "AAPL", "sec_type": "STK", "strike": 1.0}), "contract.strike")
        self.invalid(
            option_order(
                contract={"ticker": "AAPL", "sec_type": "OPT", "expiration": "2030-01-18", "strike": 1.0, "right": "C"}
            ),
            "contract.expiration",
        )
        self.invalid({k: v for k, v in option_order().items() if k != "limit_price"}, "limit_price")
        self.invalid(
            option_order(
                contract={"ticker": "AAPL", "sec_type": "OPT", "expiration": "20300231", "strike": 1.0, "right": "C"}
            ),
            "contract.expiration",
        )
        self.invalid(
            option_order(contract={"ticker": "AAPL", "sec_type": "STK", "trading_class": "AAPL"}),
            "contract.trading_class",
        )
        self.invalid([], "params")
        self.invalid({"order_id": "7"}, "order_id", action="cancel-order")
        self.invalid({"order_id": 0}, "order_id", action="cancel-order")
        self.invalid({}, "order_id", action="cancel-order")

    def test_the_order_rules_in_words(self):
        stock = {"ticker": "AAPL", "sec_type": "STK"}
        cases = [
            (option_order(contract=dict(stock, strike=150)), "params.contract.strike: only for an option (OPT)"),
            (
                option_order(contract={"ticker": "AAPL", "sec_type": "OPT", "expiration": "20300118", "strike": 1}),
                "params.contract.right: is required for an option (OPT)",
            ),
            (option_order(contract=dict(stock, exchange="CBOE")), 'params.contract.exchange: must be "SMART"'),
            (option_order(order_type="MKT"), 'params.order_type: must be "LMT"'),
            (option_order(tif="IOC"), 'params.tif: must be "DAY" or "GTC"'),
            (option_order(quantity=1.5), "params.quantity: must be a whole number greater than 0"),
            (option_order(limit_price=0), "params.limit_price: must be a number greater than 0"),
            (option_order(account="DU-1"), "params.account: must be an account id such as DU1234567"),
            (option_order(qty=1), "params.qty: unknown parameter"),
        ]
        for params, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(AgentError) as caught:
                    order_guard.parse_order_params("place-order", params)
                self.assertEqual((caught.exception.code, caught.exception.message), (INVALID_REQUEST, message))

    def test_a_large_quantity_is_left_to_the_policy(self):
        """The shape has no upper bound: MAX_ORDER_QUANTITY refuses it (ORDER_BLOCKED), not the schema."""
        self.assertEqual(order_guard.parse_order_params("place-order", option_order(quantity=10**6))["quantity"], 10**6)


class PolicyTest(unittest.TestCase):
    def test_default_policy_allows_a_paper_account_and_refuses_a_live_one(self):
        self.assertIsNone(order_guard.account_refusal(config(), PAPER, None))
        refusal = order_guard.account_refusal(config(), LIVE, None)
        self.assertIn("ALLOW_ORDERS=paper", refusal)
        self.assertIn("U1234567 is live", refusal)
        self.assertIsNone(order_guard.account_refusal(config(allow_orders="live"), LIVE, None))

    def test_off_refuses_everything(self):
        for status in (PAPER, LIVE):
            self.assertIn("ALLOW_ORDERS=off", order_guard.account_refusal(config(allow_orders="off"), status, None))
        self.assertIn("ALLOW_ORDERS=off", order_guard.order_refusal(config(allow_orders="off"), option_order(), 100))

    def test_named_account_must_belong_to_the_session_and_be_paper_under_paper(self):
        mixed = {"connected": True, "accounts": ["DU1", "U2"], "account_type": "paper"}
        self.assertIsNone(order_guard.account_refusal(config(), mixed, "DU1"))
        self.assertIn("not a paper account", order_guard.account_refusal(config(), mixed, "U2"))
        self.assertIn(
            "not an account of this TWS session", order_guard.account_refusal(config(allow_orders="live"), mixed, "DU9")
        )

    def test_unknown_account_type_is_refused_under_paper(self):
        unknown = {"connected": False, "accounts": [], "account_type": None}
        self.assertIn("ALLOW_ORDERS=paper", order_guard.account_refusal(config(), unknown, None))

    def test_quantity_cap(self):
        self.assertIsNone(order_guard.order_refusal(config(), option_order(quantity=10), 1))
        refusal = order_guard.order_refusal(config(), option_order(quantity=11), 1)
        self.assertTrue(refusal.startswith("MAX_ORDER_QUANTITY=10"), refusal)

    def test_notional_cap_uses_price_quantity_and_multiplier(self):
        order = option_order(quantity=10, limit_price=25.0)  # 25 x 10 x 100 = 25000: at the cap
        self.assertIsNone(order_guard.order_refusal(config(), order, 100))
        refusal = order_guard.order_refusal(config(), option_order(quantity=10, limit_price=25.01), 100)
        self.assertTrue(refusal.startswith("MAX_ORDER_NOTIONAL=25000"), refusal)
        self.assertIn("25010.00", refusal)
        self.assertIsNone(order_guard.order_refusal(config(), option_order(quantity=10, limit_price=25.01), 10))


class AuditLogTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "audit.jsonl"

    def tearDown(self):
        self.dir.cleanup()

    def lines(self):
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    def test_one_line_per_request_with_every_field(self):
        audit = order_guard.AuditLog(self.path)
        audit.write("place-order", "r1", option_order(account="DU1"), "allowed", 5, {"status": "Submitted"})
        audit.write(
            "cancel-order", "r2", {"order_id": 5}, "refused: ALLOW_ORDERS=off", None, {"error": "ORDER_BLOCKED"}
        )
        first, second = self.lines()
        self.assertEqual(set(first), set(order_guard.AuditLog.FIELDS))
        self.assertEqual(
            (first["request_id"], first["side"], first["quantity"], first["limit_price"]), ("r1", "SELL", 1, 2.5)
        )
        self.assertEqual(first["contract"]["strike"], 150.0)
        self.assertEqual((first["order_id"], first["account"]), (5, "DU1"))
        self.assertTrue(first["time"].endswith("Z"))
        self.assertEqual((second["order_id"], second["decision"]), (5, "refused: ALLOW_ORDERS=off"))

    def test_appends_and_never_truncates(self):
        self.path.write_text('{"earlier": true}\n', encoding="utf-8")
        order_guard.AuditLog(self.path).write("place-order", "r", "not a dict", "refused: x", None, {})
        self.assertEqual(len(self.lines()), 2)

    def test_masks_the_key_and_bounds_hostile_values(self):
        audit = order_guard.AuditLog(self.path, mask=Masker(["secret-key-123"]))
        audit.write(
            "place-order",
            "id-secret-key-123",
            {"contract": {"ticker": "x" * 10000}, "quantity": float("nan")},
            "refused",
            None,
            {},
        )
        self.assertEqual(self.lines()[0]["quantity"], "nan")
        text = self.path.read_text(encoding="utf-8")
        self.assertNotIn("secret-key-123", text)
        self.assertLess(len(text), 2000)

    def test_a_failed_write_is_logged_and_raised(self):
        """Fails closed (issue 16): the caller must know; the log file keeps the line."""
        audit = order_guard.AuditLog(Path(self.dir.name) / "missing-folder" / "audit.jsonl")
        with self.assertLogs("ib_data_agent.orders", "ERROR") as logs, self.assertRaises(order_guard.AuditError):
            audit.write("place-order", "r1", {}, "allowed", 5, {"status": "Submitted"})
        self.assertIn('"request_id":"r1"', logs.output[0])

    def test_check_says_when_a_line_cannot_be_written(self):
        self.path.mkdir()  # a folder where the file should be
        with self.assertRaises(order_guard.AuditError) as caught:
            order_guard.AuditLog(self.path).check()
        self.assertIn(f"the order audit log {self.path} cannot be written", str(caught.exception))
        self.path.rmdir()
        order_guard.AuditLog(self.path).check()
        with mock.patch("shutil.disk_usage", return_value=shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096)):
            with self.assertRaises(order_guard.AuditError) as caught:
                order_guard.AuditLog(self.path).check()
        self.assertIn("is full (4 KB free)", str(caught.exception))

    def test_rolls_over_into_dated_files_never_truncating(self):
        now = [datetime(2026, 3, 2, 12, tzinfo=timezone.utc).timestamp()]
        audit = order_guard.AuditLog(self.path, roll_bytes=600, clock=lambda: now[0])
        audit.write("place-order", "day1-a", {}, "allowed", 1, {})
        os.utime(self.path, (now[0], now[0]))
        now[0] += 86400  # the next UTC day: yesterday's lines move to their dated file
        audit.write("place-order", "day2-a", {}, "allowed", 2, {})
        for n in range(6):  # over roll_bytes: today's file rolls to a second dated name
            audit.write("place-order", f"day2-{n}", {}, "allowed", 3, {})
            os.utime(self.path, (now[0], now[0]))
        names = sorted(os.listdir(self.dir.name))
        self.assertEqual(names[:2], ["audit-20260302.jsonl", "audit-20260303.jsonl"])
        self.assertIn("audit.jsonl", names)
        ids = [
            json.loads(line)["request_id"]
            for name in names
            for line in (Path(self.dir.name) / name).read_text().splitlines()
        ]
        self.assertEqual(sorted(ids), sorted(["day1-a", "day2-a"] + [f"day2-{n}" for n in range(6)]))

    def test_the_key_is_masked_before_a_value_is_cut(self):
        key = "secret-key-123"
        audit = order_guard.AuditLog(self.path, mask=Masker([key]))
        audit.write("place-order", "x" * 120 + key, {"account": "y" * 195 + key}, "refused", None, {})
        text = self.path.read_text(encoding="utf-8")
        self.assertNotIn("secret", text)
        self.assertIn("x" * 120 + "****", text)

    def test_the_outcome_of_an_unexpected_error_names_its_class(self):
        error = Internal("unexpected error in the agent (KeyError) ...")
        self.assertEqual(
            order_guard.outcome_of_error(error, "KeyError"),
            {"error": "INTERNAL", "ib_code": None, "message": error.message, "exception": "KeyError"},
        )
        self.assertNotIn("exception", order_guard.outcome_of_error(InvalidRequest("x")))

    def test_concurrent_writers_give_whole_lines(self):
        audit = order_guard.AuditLog(self.path)
        threads = [
            threading.Thread(
                target=lambda i=i: [audit.write("place-order", f"r{i}-{j}", {}, "allowed", j, {}) for j in range(20)]
            )
            for i in range(5)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(len(self.lines()), 100)


class RequestIdStoreTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "order_ids.json"
        self.now = 1_000_000.0

    def tearDown(self):
        self.dir.cleanup()

    def store(self):
        return order_guard.RequestIdStore(self.path, clock=lambda: self.now)

    def test_records_survive_a_restart(self):
        self.store().put("r1", order_guard.SENDING, order_id=7)
        self.assertEqual(self.store().get("r1")["state"], order_guard.SENDING)
        store = self.store()
        store.put("r1", order_guard.PLACED, status="Submitted")
        again = self.store().get("r1")
        self.assertEqual((again["state"], again["order_id"], again["status"]), ("placed", 7, "Submitted"))
        self.assertIsNone(self.store().get("r2"))

    def test_an_unknown_outcome_survives_a_restart_with_its_order_id_and_stays_unfinished(self):
        self.store().put("r1", order_guard.SENDING, order_id=7)
        self.store().put("r1", order_guard.UNKNOWN, exception="AttributeError")
        again = self.store().get("r1")
        self.assertEqual((again["state"], again["order_id"], again["exception"]), ("unknown", 7, "AttributeError"))
        self.assertEqual(order_guard.UNFINISHED, {order_guard.SENDING, order_guard.UNKNOWN})
        self.assertFalse({order_guard.PLACED, order_guard.FAILED} & order_guard.UNFINISHED)

    def test_keeps_ids_at_least_30_days_then_forgets(self):
        self.store().put("old", order_guard.PLACED, order_id=1)
        self.now += 30 * 24 * 3600
        self.assertIsNotNone(self.store().get("old"))
        self.now += 6 * 24 * 3600
        self.assertIsNone(self.store().get("old"))

    def test_writes_atomically_leaving_no_tmp_file(self):
        self.store().put("r1", order_guard.SENDING, order_id=7)
        self.assertEqual(os.listdir(self.dir.name), ["order_ids.json"])
        self.assertEqual(json.loads(self.path.read_text())["requests"]["r1"]["order_id"], 7)

    def test_an_unreadable_file_is_moved_aside_not_lost(self):
        self.store().put("r1", order_guard.PLACED, order_id=7)
        whole = self.path.read_bytes()
        damaged = {
            "torn": whole[: len(whole) // 2],
            "not utf-8": b"\xff" + whole,
            "edited": whole.replace(b'"placed"', b'"done"'),
            "another file": b'{"requests": []}',
            "empty": b"",
        }
        for what, content in damaged.items():
            with self.subTest(what):
                self.path.write_bytes(content)
                with self.assertLogs("ib_data_agent.orders", "ERROR") as logs:
                    store = self.store()
                aside = self.path.with_name(f"order_ids.json.unreadable-{int(self.now)}")
                self.assertEqual(aside.read_bytes(), content)  # kept for the user, as it was
                self.assertIn(str(aside), logs.output[0])  # one line that says where
                self.assertEqual(len(logs.output), 1)
                self.assertIn("looked up in TWS", logs.output[0])
                self.assertIsNone(store.get("r1"))
                self.assertIn("was damaged", store.lost)  # "unknown", not "empty"
                store.put("r2", order_guard.SENDING, order_id=8)  # a new store beside the one kept aside
                self.assertEqual(self.store().get("r2")["order_id"], 8)
                self.assertIsNone(self.store().lost)
                aside.unlink()

    def test_a_damaged_file_that_cannot_be_moved_aside_is_never_written_over(self):
        self.path.write_text("{not json", encoding="utf-8")
        with (
            mock.patch("os.replace", side_effect=PermissionError(13, "Permission denied")),
            self.assertLogs("ib_data_agent.orders", "ERROR"),
        ):
            store = self.store()
        with self.assertRaises(OSError):
            store.put("r1", order_guard.SENDING, order_id=7)
        self.assertEqual(self.path.read_text(), "{not json")


class OrderRefTest(unittest.TestCase):
    def test_a_short_protocol_safe_derivation_of_the_request_id(self):
        ids = ["req-1", "x" * 128, "with\x00nul|and,separators;", "ключ-🔑", "\ud800", ""]
        refs = [order_guard.order_ref_for(request_id) for request_id in ids]
        for ref in refs:
            self.assertRegex(ref, r"^mat-[0-9a-f]{24}$")
        self.assertEqual(len(set(refs)), len(ids))
        self.assertEqual(order_guard.order_ref_for("req-1"), order_guard.order_ref_for("req-1"))
        self.assertEqual(order_guard.order_ref_for("req-1"), "mat-9456bdfa12ea76959c94a357")  # stable across versions


if __name__ == "__main__":
    unittest.main()
