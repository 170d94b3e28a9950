"""OrderDesk placing and cancelling orders against recorded TWS callback sequences (tests.order_replay):
the ALLOW_ORDERS policy and caps, contract qualification, TWS's errors, and the audit log."""

from __future__ import annotations

import json
import unittest
from decimal import Decimal
from pathlib import Path
from unittest import mock

from agent.errors import (
    IB_ERROR,
    IB_NOT_CONNECTED,
    INVALID_REQUEST,
    NO_SECURITY_DEFINITION,
    ORDER_BLOCKED,
    READ_ONLY_API,
    AgentError,
)
from agent.ib import codes as ib_codes
from agent.orders import guard as order_guard
from tests.order_replay import DOWN, KEY, LIVE, LOOKUP, DeskTestCase, load, option_order


class PlaceOrderTest(DeskTestCase):
    def test_a_paper_order_is_looked_up_qualified_then_placed_with_its_order_ref(self):
        desk, conn = self.desk("placed")
        result = desk.place_order("req-1", option_order(account="DU1234567"))
        self.assertEqual(result, {"order_id": 32, "status": "PreSubmitted"})
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails", "placeOrder"])
        conn.sent = conn.sent[len(LOOKUP) :]
        query = conn.sent[0][1][1]
        self.assertEqual(
            (
                query.symbol,
                query.secType,
                query.lastTradeDateOrContractMonth,
                query.strike,
                query.right,
                query.exchange,
            ),
            ("AAPL", "OPT", "20300118", 150.0, "C", "SMART"),
        )
        order_id, contract, order = conn.sent[1][1]
        self.assertEqual((order_id, contract.conId, contract.exchange), (32, 712446551, "SMART"))
        self.assertEqual(
            (
                order.action,
                order.totalQuantity,
                order.orderType,
                order.lmtPrice,
                order.tif,
                order.orderRef,
                order.account,
                order.transmit,
            ),
            ("SELL", Decimal(1), "LMT", 2.5, "DAY", "mat-9456bdfa12ea76959c94a357", "DU1234567", True),
        )
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.PLACED)
        self.assertEqual(desk.request_ids.get("req-1")["order_ref"], "mat-9456bdfa12ea76959c94a357")
        (line,) = self.audit_lines()
        self.assertEqual(
            (line["request_id"], line["decision"], line["order_id"], line["outcome"], line["account"]),
            ("req-1", "allowed", 32, {"status": "PreSubmitted"}, "DU1234567"),
        )

    def test_the_session_account_is_used_when_none_is_named(self):
        desk, conn = self.desk("placed")
        desk.place_order("req-1", option_order())
        self.assertEqual(conn.sent[len(LOOKUP) + 1][1][2].account, "DU1234567")

    def test_an_order_warning_does_not_fail_the_order(self):
        desk, _ = self.desk("placed_with_warning")
        self.assertEqual(desk.place_order("req-1", option_order())["status"], "PreSubmitted")

    def test_default_policy_refuses_a_live_account_before_sending_anything(self):
        desk, conn = self.desk("placed", status=LIVE)
        error = self.fails(ORDER_BLOCKED, desk.place_order, "req-1", option_order())
        self.assertIn("ALLOW_ORDERS=paper", error.message)
        self.assertIn("U1234567 is live", error.message)
        self.assertEqual(conn.sent, [])
        self.assertTrue(self.audit_lines()[0]["decision"].startswith("refused: ALLOW_ORDERS=paper"))

    def test_live_policy_allows_a_live_account(self):
        desk, conn = self.desk("placed", status=LIVE, config=self.config(allow_orders="live"))
        self.assertEqual(desk.place_order("req-1", option_order())["order_id"], 32)

    def test_off_refuses_before_anything_else(self):
        desk, conn = self.desk("placed", status=DOWN, config=self.config(allow_orders="off"))
        error = self.fails(ORDER_BLOCKED, desk.place_order, "req-1", option_order())
        self.assertIn("ALLOW_ORDERS=off", error.message)
        self.assertEqual(conn.sent, [])

    def test_quantity_and_notional_caps_refuse_before_qualification(self):
        desk, conn = self.desk("placed")
        error = self.fails(ORDER_BLOCKED, desk.place_order, "req-q", option_order(quantity=11))
        self.assertIn("MAX_ORDER_QUANTITY=10", error.message)
        error = self.fails(ORDER_BLOCKED, desk.place_order, "req-n", option_order(quantity=10, limit_price=25.5))
        self.assertIn("MAX_ORDER_NOTIONAL=25000", error.message)
        self.assertEqual(conn.sent, [])
        self.assertEqual(
            [line["decision"].split(":")[0:2] for line in self.audit_lines()],
            [["refused", " MAX_ORDER_QUANTITY=10"], ["refused", " MAX_ORDER_NOTIONAL=25000"]],
        )

    def test_notional_is_checked_again_with_the_qualified_multiplier(self):
        desk, conn = self.desk("jumbo_multiplier", config=self.config(max_order_notional=1000))
        error = self.fails(ORDER_BLOCKED, desk.place_order, "req-1", option_order())  # 2.5 x 1 x 100 passes
        self.assertIn("x 1000 = 2500.00", error.message)
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails"])
        self.assertIsNone(desk.request_ids.get("req-1"))

    def test_an_account_of_another_session_or_a_live_account_under_paper_is_refused(self):
        desk, conn = self.desk("placed", status={"connected": True, "accounts": ["DU1", "U2"], "account_type": "paper"})
        self.fails(ORDER_BLOCKED, desk.place_order, "a", option_order(account="DU9"))
        self.fails(ORDER_BLOCKED, desk.place_order, "b", option_order(account="U2"))
        error = self.fails(INVALID_REQUEST, desk.place_order, "c", option_order())
        self.assertIn("params.account", error.message)
        self.assertEqual(conn.sent, [])

    def test_not_connected(self):
        desk, conn = self.desk("placed", status=DOWN)
        self.fails(IB_NOT_CONNECTED, desk.place_order, "req-1", option_order())
        self.assertEqual(self.audit_lines()[0]["decision"], "not sent: IB_NOT_CONNECTED")

    def test_invalid_params_are_audited_as_asked(self):
        desk, conn = self.desk("placed")
        self.fails(INVALID_REQUEST, desk.place_order, "req-1", option_order(order_type="MKT"))
        (line,) = self.audit_lines()
        self.assertEqual(
            (line["decision"], line["side"], line["outcome"]["error"]),
            ("not sent: INVALID_REQUEST", "SELL", "INVALID_REQUEST"),
        )

    def test_an_unknown_or_ambiguous_contract_is_never_guessed(self):
        desk, conn = self.desk("unknown_contract")
        self.fails(NO_SECURITY_DEFINITION, desk.place_order, "req-1", option_order())
        desk, conn = self.desk("ambiguous")
        error = self.fails(INVALID_REQUEST, desk.place_order, "req-2", option_order())
        self.assertIn("ambiguous", error.message)
        self.assertIn("2AAPL", error.message)
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails"])

    def test_ib_order_errors_come_back_with_code_and_text(self):
        for scenario, code in (
            ("rejected", 201),
            ("price_increment", 110),
            ("cancelled_by_price_check", 202),
            ("rejected_after_open_order", 201),
        ):
            desk, conn = self.desk(scenario)
            error = self.fails(IB_ERROR, desk.place_order, f"req-{scenario}", option_order())
            self.assertEqual(error.ib_code, code)
            (error_event,) = [args for name, args in self.place["scenarios"][scenario]["placeOrder"] if name == "error"]
            self.assertEqual(error.message, error_event[2])
            self.assertEqual(desk.request_ids.get(f"req-{scenario}")["state"], order_guard.FAILED)
        self.assertEqual([line["outcome"]["ib_code"] for line in self.audit_lines()], [201, 110, 202, 201])

    def test_a_dead_status_without_a_reason_is_the_answer(self):
        answers = dict(self.place["scenarios"]["placed"])
        answers["placeOrder"] = [
            [
                "orderStatus",
                ["$id", "Inactive", {"Decimal": "0"}, {"Decimal": "1"}, 0.0, 1888000037, 0, 0.0, 17, "", 0.0],
            ]
        ]
        desk, conn = self.desk(answers=answers)
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 32, "status": "Inactive"})

    def test_read_only_api(self):
        desk, conn = self.desk("read_only")
        error = self.fails(READ_ONLY_API, desk.place_order, "req-1", option_order())
        self.assertIn("Read-Only", error.message)
        self.assertIn("restart the agent", error.message)
        self.assertTrue(conn.status()["read_only"])


class CancelOrderTest(DeskTestCase):
    def setUp(self):
        super().setUp()
        self.cancel = load("cancel")["scenarios"]

    def test_cancel_confirmed_by_status_or_by_202(self):
        for scenario in ("cancelled", "confirmed_by_202_only"):
            desk, conn = self.desk(answers=self.cancel[scenario])
            self.assertEqual(
                desk.cancel_order(f"c-{scenario}", {"order_id": 31}), {"order_id": 31, "status": "Cancelled"}
            )
            # open orders first (whose order is 31?): TWS lists none, so the cancel goes out
            (lookup, _), (method, (order_id, _order_cancel)) = conn.sent
            self.assertEqual((lookup, method, order_id), ("reqAllOpenOrders", "cancelOrder", 31))
        self.assertEqual(
            [(line["action"], line["decision"], line["order_id"]) for line in self.audit_lines()],
            [("cancel-order", "allowed", 31)] * 2,
        )

    def test_cancel_errors_come_back_with_code_and_text(self):
        for scenario, code in (("unknown_order", 10147), ("already_filled", 10148)):
            desk, _ = self.desk(answers=self.cancel[scenario])
            error = self.fails(IB_ERROR, desk.cancel_order, f"c-{scenario}", {"order_id": 99})
            self.assertEqual(error.ib_code, code)
            self.assertIn("99", error.message)

    def test_cancels_follow_allow_orders(self):
        desk, conn = self.desk(answers=self.cancel["cancelled"], config=self.config(allow_orders="off"))
        self.assertIn("ALLOW_ORDERS=off", self.fails(ORDER_BLOCKED, desk.cancel_order, "c-1", {"order_id": 31}).message)
        desk, conn2 = self.desk(answers=self.cancel["cancelled"], status=LIVE)
        self.fails(ORDER_BLOCKED, desk.cancel_order, "c-2", {"order_id": 31})
        self.assertEqual(conn.sent + conn2.sent, [])
        self.assertEqual(len(self.audit_lines()), 2)


class AuditTest(DeskTestCase):
    def test_every_request_leaves_one_line_and_none_holds_the_key(self):
        desk, _ = self.desk("placed")
        desk.place_order("r1", option_order())
        desk.place_order("r1", option_order())
        for request in ("r2", "r3"):
            with self.assertRaises(AgentError):
                desk.place_order(request, option_order(quantity=1000))
        with self.assertRaises(AgentError):
            desk.place_order(KEY, {"contract": KEY})
        with self.assertRaises(AgentError):
            desk.cancel_order("c1", {"order_id": 31})
        lines = self.audit_lines()
        self.assertEqual([line["request_id"] for line in lines], ["r1", "r1", "r2", "r3", "****", "c1"])
        for line in lines:
            self.assertEqual(set(line), set(order_guard.AuditLog.FIELDS))
        self.assertNotIn(KEY, (Path(self.dir.name) / "order_audit.jsonl").read_text())


class RejectDetailsKeyAcrossTheCut(unittest.TestCase):
    """An order rejection's advancedOrderRejectJson is cut to REJECT_DETAIL_MAX characters for the
    answer and the log: the running agent's masker runs before the cut (issue 16)."""

    def test_the_key_at_each_cut_point(self):
        from agent import log as agent_log

        limit = ib_codes.REJECT_DETAIL_MAX
        with mock.patch.object(agent_log, "_masker", agent_log.Masker([KEY])):
            for before in range(limit - 3 - len(KEY), limit + 1):
                text = ib_codes.with_reject_details(
                    "Order rejected - reason:", json.dumps({"rejectReason": "x" * before + KEY + "y" * 50})
                )
                self.assertTrue(text.startswith("Order rejected - reason: (TWS details: xxx"), text)
                self.assertFalse(
                    any(KEY[:n] in text or KEY[-n:] in text for n in range(4, len(KEY) + 1)), (before, text)
                )


if __name__ == "__main__":
    unittest.main()
