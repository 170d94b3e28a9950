"""Account and order actions end to end: fake cloud -> the agent process -> fake TWS.

The agent runs as `python ib_data_agent.py`, as a user runs it; the fake TWS's stats count the
orders that really reached it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from pathlib import Path

from agent.orders.guard import order_ref_for
from tests.agent_process import AgentProcess, AgentStack
from tests.fake_market import on_tick
from tests.tws_versions import AtTwsVersion, at_tws_versions

WAIT_S = 30.0


class OrdersEndToEnd(AtTwsVersion, unittest.TestCase):
    accounts = ("DU1234567",)
    tws_options: dict = {}

    def setUp(self):
        self.stack = AgentStack(tws_options=self.fake_tws_options(**self.tws_options, accounts=self.accounts))
        self.stack.start()
        self.addCleanup(self.stack.stop)
        self.relay, self.tws = self.stack.relay, self.stack.tws
        self.wait_tws_connected()
        self.assertEqual(self.ib()["server_version"], self.expected_server_version)

    def ib(self) -> dict:
        frame = self.relay.last_status or {}
        return frame.get("ib") or {}

    def wait_tws_connected(self, connected: bool = True) -> None:
        self.relay.wait_until(
            lambda: self.ib().get("connected") is connected, WAIT_S, f"the agent reporting connected={connected}"
        )

    def request(self, action: str, params: dict, id: str = None) -> dict:
        return self.relay.request(action, params, id=id, timeout_s=WAIT_S)

    def ok(self, action: str, params: dict = None, id: str = None) -> dict:
        response = self.request(action, params or {}, id)
        self.assertTrue(response["ok"], response)
        return response["data"]

    def error(self, action: str, params: dict, code: str, id: str = None) -> dict:
        response = self.request(action, params, id)
        self.assertFalse(response["ok"], response)
        self.assertEqual(response["error"]["code"], code, response)
        return response["error"]

    def order(self, **changes) -> dict:
        market = self.tws.market
        for option in market.options("AAPL"):
            quote = market.quote(option)
            if 0.5 < quote.bid < quote.ask < 20 and on_tick(quote.ask, option.min_tick):
                params = {
                    "contract": {
                        "ticker": "AAPL",
                        "sec_type": "OPT",
                        "expiration": option.expiry,
                        "strike": option.strike,
                        "right": option.right,
                    },
                    "action": "SELL",
                    "quantity": 1,
                    "order_type": "LMT",
                    "limit_price": round(quote.ask + 20 * option.min_tick, 2),
                }
                params.update(changes)
                return params
        self.fail("the fake market lists no suitable AAPL call")

    def placed(self) -> int:
        return self.tws.stats()["orders_placed"]

    def audit(self, data_dir: Path = None) -> list:
        path = (data_dir or self.stack.agent.data_dir) / "order_audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class PaperEndToEndTest(OrdersEndToEnd):
    def assert_repeat_answered(self, first: dict, request_id: str = "e2e-dup") -> None:
        """A repeated order id gets the original outcome (the same order, its status now), acked or
        not: the fake relay acks every response, so the repeat goes to the order desk (issue 16)."""
        response = self.request("place-order", self.order(), id=request_id)
        self.assertTrue(response["ok"], response)
        self.assertEqual(response["data"], first)
        self.assertEqual(self.audit()[-1]["request_id"], request_id)
        self.assertEqual(self.audit()[-1]["decision"], "duplicate")  # the desk answered, not the link

    def test_a_repeat_after_the_ack_gets_the_same_order_and_a_repeated_cancel_its_answer(self):
        first = self.ok("place-order", self.order(), id="e2e-acked")
        self.assertTrue(self.ok("status"))  # frames are read in order: the ack before this, before the repeat
        self.assert_repeat_answered(first, "e2e-acked")
        cancelled = self.ok("cancel-order", {"order_id": first["order_id"]}, id="e2e-cancel")
        self.assertEqual(cancelled, {"order_id": first["order_id"], "status": "Cancelled"})
        self.assertEqual(self.ok("cancel-order", {"order_id": first["order_id"]}, id="e2e-cancel"), cancelled)
        self.assertEqual(
            self.ok("place-order", self.order(), id="e2e-acked"), {"order_id": first["order_id"], "status": "Cancelled"}
        )  # its status now
        self.assertEqual(self.placed(), 1)
        self.assertEqual(self.tws.stats()["requests_by_type"].get("cancelOrder"), 1)

    def test_each_action_through_the_relay(self):
        self.assertTrue(self.ok("positions")["positions"])
        self.assertIn("DU1234567", self.ok("account-summary")["accounts"])
        placed = self.ok("place-order", self.order(), id="e2e-place-1")
        self.assertEqual(set(placed), {"order_id", "status"})
        orders = self.ok("open-orders")["orders"]
        self.assertIn(
            (order_ref_for("e2e-place-1"), placed["order_id"]), [(o["order_ref"], o["order_id"]) for o in orders]
        )
        self.assertEqual(
            self.ok("cancel-order", {"order_id": placed["order_id"]}),
            {"order_id": placed["order_id"], "status": "Cancelled"},
        )
        self.assertEqual(self.placed(), 1)
        lines = self.audit()
        self.assertEqual(
            [(line["action"], line["decision"]) for line in lines],
            [("place-order", "allowed"), ("cancel-order", "allowed")],
        )
        self.assertNotIn(self.stack.key, (self.stack.agent.data_dir / "order_audit.jsonl").read_text())

    def test_caps_and_ib_rejections(self):
        self.assertIn(
            "MAX_ORDER_QUANTITY", self.error("place-order", self.order(quantity=11), "ORDER_BLOCKED")["message"]
        )
        self.assertIn(
            "MAX_ORDER_NOTIONAL",
            self.error("place-order", self.order(quantity=10, limit_price=30), "ORDER_BLOCKED")["message"],
        )
        off_tick = self.order()
        off_tick["limit_price"] += 0.003
        self.assertEqual(self.error("place-order", off_tick, "IB_ERROR")["ib_code"], 110)
        self.assertEqual(self.error("cancel-order", {"order_id": 987654}, "IB_ERROR")["ib_code"], 10147)
        self.assertEqual(self.placed(), 0)
        self.assertEqual(len(self.audit()), 4)

    def test_a_repeated_request_id_gives_one_order_across_a_tws_reconnect_and_an_agent_restart(self):
        first = self.ok("place-order", self.order(), id="e2e-dup")
        self.assert_repeat_answered(first)
        self.tws.drop_all()
        self.wait_tws_connected(False)
        self.wait_tws_connected(True)
        self.assert_repeat_answered(first)
        self.assertEqual(self.placed(), 1)

        old = self.stack.agent
        self.assertEqual(old.stop(), 0)
        data_dir = Path(tempfile.mkdtemp(prefix="agent-restart-"))
        self.addCleanup(shutil.rmtree, data_dir, True)
        shutil.copytree(old.data_dir, data_dir, dirs_exist_ok=True)  # what the restarted agent finds
        connections = self.relay.connections
        self.stack.agent = AgentProcess(self.stack.key, self.relay.url, self.stack.ib_port, data_dir=data_dir)
        self.stack.agent.start()
        old.cleanup()
        self.relay.wait_hello(WAIT_S, connections=connections + 1)
        self.relay.wait_until(
            lambda: (
                self.relay.hello.get("session") and self.ib().get("connected") and self.relay.connections > connections
            ),
            WAIT_S,
            "the restarted agent on TWS",
        )
        self.wait_tws_connected(True)
        self.assertEqual(self.ok("place-order", self.order(), id="e2e-dup"), first)
        self.assertEqual(self.placed(), 1)
        self.assertIn("duplicate", self.audit(data_dir)[-1]["decision"])


class CancelFrameRacesPlaceOrder(OrdersEndToEnd):
    """A `cancel` frame for a place-order, in both orders of arrival against the order going out
    (DESIGN.md 4, issue 16): before anything reached TWS it stops it (CANCELLED, audited, and a
    repeat of the id gets CANCELLED again, never a late order); once placeOrder was sent it is too
    late, and the answer is the order's real outcome. TWS holds each order 1.5 s (a precaution
    dialog), so the second case has time to cancel while the order is on its way."""

    tws_options = {"place_delay_ms": 1500}

    def sent(self, request: str) -> int:
        return self.tws.stats()["requests_by_type"].get(request, 0)

    def test_a_cancel_arriving_before_the_order_is_sent_stops_it(self):
        # The request and its cancel back to back: the desk looks in TWS for the id (three round
        # trips) before it would send, so the cancel is there first (on a loaded machine it can even
        # come before a worker takes the request: agent.relay.actions then answers it, in its own words).
        pending = self.relay.submit("place-order", self.order(), id="race-early", timeout_s=WAIT_S)
        self.relay.cancel("race-early")
        response = pending.result(WAIT_S)
        self.assertEqual(response["error"]["code"], "CANCELLED", response)
        self.assertRegex(response["error"]["message"], "nothing (reached|was sent to) TWS")
        again = self.request("place-order", self.order(), id="race-early")
        self.assertEqual(again["error"], response["error"])
        self.assertEqual((self.placed(), self.sent("placeOrder")), (0, 0))
        self.assertEqual(
            [(line["request_id"], line["decision"], line["outcome"].get("error")) for line in self.audit()],
            [("race-early", "not sent: CANCELLED", "CANCELLED"), ("race-early", "duplicate", "CANCELLED")],
        )

    def test_a_cancel_arriving_after_the_order_was_sent_gets_its_real_outcome(self):
        pending = self.relay.submit("place-order", self.order(), id="race-late", timeout_s=WAIT_S)
        self.relay.wait_until(lambda: self.sent("placeOrder") == 1, WAIT_S, "placeOrder at TWS")
        self.relay.cancel("race-late")
        response = pending.result(WAIT_S)
        self.assertTrue(response["ok"], response)
        self.assertEqual(response["data"]["status"], "Submitted")
        order_ids = [
            o["order_id"] for o in self.ok("open-orders")["orders"] if o["order_ref"] == order_ref_for("race-late")
        ]
        self.assertEqual(order_ids, [response["data"]["order_id"]])  # live at TWS, and said so
        self.assertEqual(self.placed(), 1)
        self.assertEqual(
            [(line["request_id"], line["decision"], line["outcome"]) for line in self.audit()],
            [("race-late", "allowed", {"status": "Submitted"})],
        )


class LiveEndToEndTest(OrdersEndToEnd):
    accounts = ("U1234567",)

    def test_the_default_policy_refuses_a_live_account(self):
        error = self.error("place-order", self.order(), "ORDER_BLOCKED")
        self.assertIn("ALLOW_ORDERS=paper", error["message"])
        self.assertEqual(self.placed(), 0)
        self.assertTrue(self.audit()[0]["decision"].startswith("refused: ALLOW_ORDERS=paper"))


class ReadOnlyEndToEndTest(OrdersEndToEnd):
    tws_options = {"read_only": True}

    def test_read_only_api(self):
        self.assertTrue(self.ok("positions")["positions"])
        error = self.error("place-order", self.order(), "READ_ONLY_API")
        self.assertIn("Read-Only", error["message"])
        self.relay.wait_until(lambda: self.ib().get("read_only") is True, WAIT_S, "status read_only true")
        self.assertEqual(self.placed(), 0)


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
