"""Order events and order previews end to end (issue 19; DESIGN.md 4 `event` frames, ORDER_EVENT,
`preview-order`): fake cloud -> the agent process -> fake TWS.

Events: what TWS tells the agent about its orders reaches the cloud as `event` frames whose seq
grows by one per event, and a frame lost while the relay was down shows as a gap. Previews: the
local policy first (a refusal never reaches TWS), then TWS's what-if, which books nothing.
"""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

from ibapi.order_cancel import OrderCancel

from agent.config import Config
from agent.ib.connection import IBConnection
from agent.orders.guard import order_ref_for
from tests.fake_market import on_tick
from tests.fake_relay import FakeRelay
from tests.test_orders_e2e import WAIT_S, OrdersEndToEnd
from tests.tws_versions import at_tws_versions

ORDER_EVENT = {
    "order_id",
    "perm_id",
    "client_id",
    "account",
    "contract",
    "action",
    "quantity",
    "order_type",
    "limit_price",
    "status",
    "filled",
    "remaining",
    "avg_fill_price",
    "last_fill_price",
    "order_ref",
    "ib_code",
    "message",
    "time",
}
PREVIEW = {
    "allowed",
    "blocked_by",
    "commission",
    "commission_currency",
    "init_margin_change",
    "maint_margin_change",
    "equity_with_loan_change",
    "init_margin_after",
    "maint_margin_after",
    "warning",
}


class EventsAndPreviews(OrdersEndToEnd):
    def marketable(self) -> dict:
        """A BUY at the ask: the fake fills it at once (fake_market.fill_price)."""
        market = self.tws.market
        for option in market.options("AAPL"):
            quote = market.quote(option)
            if 0.5 < quote.bid < quote.ask < 20 and on_tick(quote.ask, option.min_tick):
                contract = {
                    "ticker": "AAPL",
                    "sec_type": "OPT",
                    "expiration": option.expiry,
                    "strike": option.strike,
                    "right": option.right,
                }
                return self.order(contract=contract, action="BUY", limit_price=quote.ask)
        self.fail("the fake market lists no suitable AAPL call")

    def events_of(self, order_id: int, relay: FakeRelay = None) -> list:
        return [e["data"] for e in (relay or self.relay).events if e["data"]["order_id"] == order_id]

    def wait_event(self, order_id: int, status: str, relay: FakeRelay = None) -> dict:
        relay = relay or self.relay
        relay.wait_until(
            lambda: any(d["status"] == status for d in self.events_of(order_id, relay)),
            WAIT_S,
            f"an event of order {order_id} {status}",
        )
        return [d for d in self.events_of(order_id, relay) if d["status"] == status][-1]

    def seqs(self, relay: FakeRelay = None) -> list:
        return [e["seq"] for e in (relay or self.relay).events]


class OrderEventsTest(EventsAndPreviews):
    def test_place_fill_and_cancel_each_push_an_event(self):
        resting = self.ok("place-order", self.order(), id="ev-rest")
        submitted = self.wait_event(resting["order_id"], "Submitted")
        self.assertEqual(set(submitted), ORDER_EVENT)
        self.assertEqual(
            (submitted["order_ref"], submitted["action"], submitted["quantity"], submitted["order_type"]),
            (order_ref_for("ev-rest"), "SELL", 1, "LMT"),
        )
        self.assertEqual(submitted["contract"]["ticker"], "AAPL")
        self.assertEqual((submitted["filled"], submitted["remaining"], submitted["last_fill_price"]), (0, 1, None))
        self.assertEqual(submitted["client_id"], self.ib()["client_id"])

        filled = self.ok("place-order", self.marketable(), id="ev-fill")
        self.assertEqual(filled["status"], "Filled")
        event = self.wait_event(filled["order_id"], "Filled")
        price = self.tws.orders.executions[-1].price
        self.assertEqual((event["filled"], event["remaining"], event["last_fill_price"]), (1, 0, price))
        self.assertEqual(event["avg_fill_price"], price)

        self.ok("cancel-order", {"order_id": resting["order_id"]}, id="ev-cancel")
        cancelled = self.wait_event(resting["order_id"], "Cancelled")
        self.assertEqual(cancelled["order_ref"], order_ref_for("ev-rest"))  # the order's terms stay known

        seqs = self.seqs()
        self.assertEqual(seqs, sorted(set(seqs)))  # strictly growing ...
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))  # ... by one: nothing was lost
        self.assertEqual(self.relay.violations, [])
        statuses = [d["status"] for d in self.events_of(resting["order_id"])]
        self.assertEqual(statuses.count("Submitted"), 1)  # TWS's repeats of a status push nothing more
        self.assertEqual(self.placed(), 2)

    def test_a_gap_in_seq_shows_the_cloud_it_missed_events_while_the_relay_was_down(self):
        resting = self.ok("place-order", self.order(), id="gap-rest")
        self.wait_event(resting["order_id"], "Submitted")
        last_seen = self.seqs()[-1]

        port = self.relay.port
        self.relay.stop()  # the cloud is gone; meanwhile another program cancels every order
        self.stack.agent.wait_for_output("Relay connection lost")
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        config = Config(key="other-key-1234", ib_port=self.stack.ib_port, ib_client_id=29, data_dir=Path(folder.name))
        other = IBConnection(config, backoff=(0.05, 0.2))
        other.start()
        self.addCleanup(other.stop)
        self.assertTrue(other.wait_ready(WAIT_S))
        other.send("reqGlobalCancel", OrderCancel())
        self.stack.agent.wait_for_output(r"Order event \d+ \(order \d+ \w+\) not sent: the relay is not connected")

        self.relay = self.stack.relay = FakeRelay(port=port, key=self.stack.key)
        self.relay.start()
        self.relay.wait_hello(WAIT_S)
        placed = self.ok("place-order", self.order(), id="gap-next")
        self.wait_event(placed["order_id"], "Submitted")
        first_after = self.seqs()[0]
        self.assertGreater(first_after, last_seen + 1)  # the cancel's events died with the link: a gap
        self.assertEqual(self.relay.violations, [])


class PreviewTest(EventsAndPreviews):
    def test_an_allowed_preview_gives_tws_figures_and_places_nothing(self):
        params = self.order()
        preview = self.ok("preview-order", params, id="pv-1")
        self.assertEqual(set(preview), PREVIEW)
        self.assertEqual((preview["allowed"], preview["blocked_by"]), (True, None))
        # The fake's what-if model (fake_tws_account._what_if): 0.65 a contract, initial margin 30 %
        # and maintenance 25 % of the notional.
        notional = params["limit_price"] * 100
        self.assertEqual((preview["commission"], preview["commission_currency"]), (0.65, "USD"))
        self.assertEqual(preview["init_margin_change"], round(0.3 * notional, 2))
        self.assertEqual(preview["maint_margin_change"], round(0.25 * notional, 2))
        self.assertEqual(preview["equity_with_loan_change"], -0.65)
        self.assertIsNotNone(preview["init_margin_after"])
        self.assertEqual(self.placed(), 0)
        self.assertEqual(self.tws.stats()["requests_by_type"].get("placeOrder"), 1)  # the what-if
        self.assertEqual(self.ok("open-orders")["orders"], [])
        line = self.audit()[-1]
        self.assertEqual((line["action"], line["request_id"], line["decision"]), ("preview-order", "pv-1", "preview"))
        self.assertEqual(line["outcome"]["commission"], 0.65)
        self.assertEqual([e for e in self.relay.events], [])  # a preview is no order: no event

    def test_a_preview_the_policy_refuses_never_reaches_tws(self):
        preview = self.ok("preview-order", self.order(quantity=11), id="pv-cap")
        self.assertFalse(preview["allowed"])
        self.assertIn("MAX_ORDER_QUANTITY", preview["blocked_by"])
        self.assertIsNone(preview["commission"])
        self.assertEqual(self.tws.stats()["requests_by_type"].get("placeOrder", 0), 0)
        self.assertEqual(self.placed(), 0)
        line = self.audit()[-1]
        self.assertEqual(line["action"], "preview-order")
        self.assertTrue(line["decision"].startswith("refused: MAX_ORDER_QUANTITY"), line)

    def test_tws_refusing_the_what_if_is_the_usual_error(self):
        off_tick = self.order()
        off_tick["limit_price"] += 0.003
        self.assertEqual(self.error("preview-order", off_tick, "IB_ERROR")["ib_code"], 110)
        self.error("preview-order", {"action": "BUY"}, "INVALID_REQUEST")
        self.assertEqual(self.placed(), 0)
        self.assertEqual(
            [(line["decision"], line["outcome"].get("error")) for line in self.audit()],
            [("preview", "IB_ERROR"), ("not sent: INVALID_REQUEST", "INVALID_REQUEST")],
        )


class ReadOnlyPreviewTest(EventsAndPreviews):
    tws_options = {"read_only": True}

    def test_read_only_api_answers_a_preview(self):
        error = self.error("preview-order", self.order(), "READ_ONLY_API")
        self.assertIn("Read-Only", error["message"])
        self.assertEqual(self.placed(), 0)
        self.assertEqual(self.audit()[-1]["decision"], "preview")


class PositionsPnlTest(EventsAndPreviews):
    """v1.1 `positions` through the cloud: a filled order's position carries TWS's market price,
    value and P&L (the fake's portfolio rows), and avg_cost stays per share."""

    def test_a_filled_order_shows_in_positions_with_its_market_value_and_pnl(self):
        params = self.marketable()
        filled = self.ok("place-order", params, id="pnl-fill")
        self.assertEqual(filled["status"], "Filled")
        price = self.tws.orders.executions[-1].price
        rows = [
            row
            for row in self.ok("positions")["positions"]
            if (row["sec_type"], row["expiration"], row["strike"], row["right"])
            == ("OPT", params["contract"]["expiration"], params["contract"]["strike"], params["contract"]["right"])
        ]
        self.assertEqual(len(rows), 1, rows)
        (row,) = rows
        self.assertEqual(row["quantity"], 1)
        # Per share, not per contract (TWS's avgCost may include the commission: 0.65 / 100 a share).
        self.assertAlmostEqual(row["avg_cost"], price, delta=0.01)
        for field in ("market_price", "market_value", "unrealized_pnl", "realized_pnl"):
            self.assertIsInstance(row[field], float, (field, row))
        self.assertAlmostEqual(row["market_value"], row["market_price"] * row["multiplier"], places=2)
        self.assertAlmostEqual(row["unrealized_pnl"], row["market_value"] - price * row["multiplier"], delta=1.0)


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
