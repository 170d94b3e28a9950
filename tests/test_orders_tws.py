"""OrderDesk on a real IBConnection against the fake TWS: every action, the policy, exactly-once
placement across a repeat, an agent restart and a TWS reconnect, Read-Only API, IB's rejections."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import unittest
from pathlib import Path

from ibapi.order_cancel import OrderCancel

from agent.config import Config
from agent.errors import IB_ERROR, INVALID_REQUEST, ORDER_BLOCKED, READ_ONLY_API, TIMEOUT, AgentError
from agent.ib import connection as ib_connection
from agent.orders import desk as ib_orders
from agent.orders import guard as order_guard
from agent.orders import wait as order_wait
from tests.fake_market import on_tick
from tests.fake_tws import FakeTWS
from tests.fake_tws_account import LOCATE_TEXT
from tests.tws_versions import AtTwsVersion, at_tws_versions

WAIT_S = 20.0


def wait_until(predicate, timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        time.sleep(0.02)


def ticks_away(price: float, tick: float, steps: int) -> float:
    return round(round(price / tick + steps) * tick, 2)


class OrdersOnFakeTws(AtTwsVersion, unittest.TestCase):
    accounts = ("DU1234567",)
    tws_options: dict = {}
    config_changes: dict = {}

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.tws = FakeTWS(port=0, accounts=self.accounts, **self.fake_tws_options(**self.tws_options))
        self.port = self.tws.start()
        self.addCleanup(self.tws.stop)
        self.config = Config(
            key="tws-test-key-42",
            ib_port=self.port,
            data_dir=Path(self.dir.name),
            request_timeout_s=10.0,
            **self.config_changes,
        )
        self.conn, self.desk = self.start_agent()

    def start_agent(self):
        """A new IBConnection and OrderDesk on the same data folder: what an agent restart leaves."""
        conn = ib_connection.IBConnection(self.config, backoff=(0.05, 0.2))
        conn.start()
        self.addCleanup(conn.stop)
        self.assertTrue(conn.wait_ready(WAIT_S), conn.status())
        self.assertEqual(conn.status()["server_version"], self.expected_server_version)
        return conn, ib_orders.OrderDesk(conn, self.config)

    def option(self, marketable: bool = False):
        """A listed AAPL call and a limit price that rests (or fills at once) on the fake's market."""
        market = self.tws.market
        for option in market.options("AAPL"):
            quote = market.quote(option)
            if 0.5 < quote.bid < quote.ask < 20 and on_tick(quote.ask, option.min_tick):
                price = quote.ask if marketable else ticks_away(quote.ask, option.min_tick, 20)
                contract = {
                    "ticker": "AAPL",
                    "sec_type": "OPT",
                    "expiration": option.expiry,
                    "strike": option.strike,
                    "right": option.right,
                }
                return contract, price
        self.fail("the fake market lists no suitable AAPL call")

    def order(self, marketable: bool = False, **changes) -> dict:
        contract, price = self.option(marketable)
        params = {
            "contract": contract,
            "action": "BUY" if marketable else "SELL",
            "quantity": 1,
            "order_type": "LMT",
            "limit_price": price,
        }
        params.update(changes)
        return params

    def placed(self) -> int:
        return self.tws.stats()["orders_placed"]

    def sent(self, request: str) -> int:
        return self.tws.stats()["requests_by_type"].get(request, 0)

    def audit(self) -> list:
        path = self.config.audit_log_file
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def fails(self, code, fn, *args) -> AgentError:
        with self.assertRaises(AgentError) as caught:
            fn(*args)
        self.assertEqual(caught.exception.code, code, caught.exception.message)
        return caught.exception

    def reconnect(self, restart: bool = False) -> None:
        if restart:
            self.tws.restart(down_s=0.3)
        else:
            self.tws.drop_all()
        wait_until(lambda: not self.conn.status()["connected"], what="the agent noticing the drop")
        self.assertTrue(self.conn.wait_ready(WAIT_S), self.conn.status())


class PaperAccountTest(OrdersOnFakeTws):
    def test_each_action_on_a_paper_account(self):
        positions = self.desk.account.positions()["positions"]
        self.assertTrue(positions)
        self.assertEqual({p["account"] for p in positions}, {"DU1234567"})
        self.assertIn(("AAPL", "STK", 100), {(p["ticker"], p["sec_type"], p["quantity"]) for p in positions})
        summary = self.desk.account.summary()["accounts"]["DU1234567"]
        self.assertGreater(summary["net_liquidation"], 0)
        self.assertEqual(summary["currency"], "USD")

        params = self.order()
        result = self.desk.place_order("req-open", params)
        self.assertIn(result["status"], ("PreSubmitted", "Submitted"))
        orders = self.desk.open_orders()["orders"]
        (mine,) = [o for o in orders if o["order_ref"] == order_guard.order_ref_for("req-open")]
        self.assertEqual(
            (
                mine["order_id"],
                mine["client_id"],
                mine["account"],
                mine["action"],
                mine["quantity"],
                mine["limit_price"],
                mine["contract"]["strike"],
            ),
            (
                result["order_id"],
                self.conn.status()["client_id"],
                "DU1234567",
                "SELL",
                1,
                params["limit_price"],
                params["contract"]["strike"],
            ),
        )

        cancelled = self.desk.cancel_order("req-cancel", {"order_id": result["order_id"]})
        self.assertEqual(cancelled, {"order_id": result["order_id"], "status": "Cancelled"})
        self.assertNotIn(mine["order_ref"], [o["order_ref"] for o in self.desk.open_orders()["orders"]])
        self.assertEqual(self.placed(), 1)
        self.assertEqual(
            [(line["action"], line["decision"]) for line in self.audit()],
            [("place-order", "allowed"), ("cancel-order", "allowed")],
        )

    def test_read_only_is_false_once_tws_answers_the_probe(self):
        wait_until(lambda: self.conn.status()["read_only"] is False, what="read_only false")
        self.assertEqual(self.sent("reqOpenOrders"), 1)

    def test_quantity_and_notional_caps_send_nothing(self):
        self.fails(ORDER_BLOCKED, self.desk.place_order, "q", self.order(quantity=11))
        error = self.fails(ORDER_BLOCKED, self.desk.place_order, "n", self.order(quantity=10, limit_price=30.0))
        self.assertIn("MAX_ORDER_NOTIONAL", error.message)
        self.assertEqual((self.placed(), self.sent("reqContractDetails")), (0, 0))
        self.assertEqual(len(self.audit()), 2)

    def test_a_repeated_request_id_places_one_order(self):
        first = self.desk.place_order("dup", self.order())
        self.assertEqual(self.desk.place_order("dup", self.order()), first)
        self.assertEqual(self.placed(), 1)

    def test_a_repeated_request_id_after_an_agent_restart_places_one_order(self):
        first = self.desk.place_order("dup", self.order())
        self.conn.stop()
        conn, desk = self.start_agent()
        self.assertEqual(desk.place_order("dup", self.order()), first)
        self.assertEqual(self.placed(), 1)

    def test_a_repeated_request_id_after_a_tws_reconnect_places_one_order(self):
        first = self.desk.place_order("dup", self.order())
        self.reconnect()
        self.assertEqual(self.desk.place_order("dup", self.order()), first)
        self.assertEqual(self.placed(), 1)

    def test_an_unknown_outcome_is_found_by_order_ref_after_a_tws_restart(self):
        """The answer to placeOrder was lost with the connection: TWS has the order, the store says "sending"."""
        first = self.desk.place_order("lost", self.order())
        self.desk.request_ids.put("lost", order_guard.SENDING, order_id=first["order_id"])
        self.reconnect(restart=True)
        again = self.desk.place_order("lost", self.order())
        self.assertEqual(again["order_id"], first["order_id"])
        self.assertEqual(self.placed(), 1)
        self.assertEqual(self.audit()[-1]["decision"], "duplicate: found in TWS by orderRef")

    def test_a_filled_order_with_an_unknown_outcome_is_found_among_completed_orders(self):
        first = self.desk.place_order("filled", self.order(marketable=True))
        self.desk.request_ids.put("filled", order_guard.SENDING, order_id=first["order_id"])
        conn, desk = self.start_agent()
        again = desk.place_order("filled", self.order(marketable=True))
        self.assertEqual(again["status"], "Filled")
        self.assertEqual(self.placed(), 1)

    def test_orders_rejected_by_ib(self):
        error = self.fails(
            IB_ERROR, self.desk.place_order, "tick", self.order(limit_price=self.order()["limit_price"] + 0.003)
        )
        self.assertEqual(error.ib_code, 110)
        self.assertIn("minimum price variation", error.message)
        error = self.fails(IB_ERROR, self.desk.cancel_order, "c", {"order_id": 987654})
        self.assertEqual(error.ib_code, 10147)
        filled = self.desk.place_order("fill", self.order(marketable=True))
        self.assertEqual(filled["status"], "Filled")
        error = self.fails(IB_ERROR, self.desk.cancel_order, "c2", {"order_id": filled["order_id"]})
        self.assertEqual(error.ib_code, 161)  # "not in a cancellable state", as recorded at 203
        self.assertEqual([line["outcome"].get("ib_code") for line in self.audit()], [110, 10147, None, 161])


class SlowTwsTest(OrdersOnFakeTws):
    """TWS holds the order behind a precaution dialog (--place-delay-ms) past the agent's timeout: the
    first request answers TIMEOUT, a retry before TWS shows the order says so and sends nothing, a
    retry after finds it by orderRef; one placeOrder ever reaches TWS (issue 16)."""

    tws_options = {"place_delay_ms": 2500}

    def test_a_retry_after_a_timeout_never_places_a_second_order(self):
        self.desk = ib_orders.OrderDesk(self.conn, dataclasses.replace(self.config, request_timeout_s=1.0))
        params = self.order()
        self.fails(TIMEOUT, self.desk.place_order, "slow", params)
        error = self.fails(TIMEOUT, self.desk.place_order, "slow", params)
        self.assertIn("TWS does not show it yet", error.message)
        wait_until(lambda: self.placed() == 1, what="the held order accepted")
        again = self.desk.place_order("slow", params)
        self.assertEqual(again["order_id"], self.desk.request_ids.get("slow")["order_id"])
        self.assertEqual((self.placed(), self.sent("placeOrder")), (1, 1))
        self.assertEqual(
            [line["decision"] for line in self.audit()],
            ["allowed", "not sent: TIMEOUT", "duplicate: found in TWS by orderRef"],
        )


class IbRejectsTest(OrdersOnFakeTws):
    config_changes = {"max_order_quantity": 5000, "max_order_notional": 1e9}

    def test_an_order_ib_rejects(self):
        error = self.fails(IB_ERROR, self.desk.place_order, "big", self.order(quantity=1001))
        self.assertEqual(error.ib_code, 201)
        self.assertTrue(error.message.startswith("Order rejected"), error.message)
        self.assertEqual(self.placed(), 0)
        self.assertEqual(self.desk.request_ids.get("big")["state"], order_guard.FAILED)


class WarningsAndLateRejections(OrdersOnFakeTws):
    """IB's 404 (a short sale held while the shares are located) is a warning: the order is live,
    and the answer says so with TWS's text. A rejection (201) after PreSubmitted is the order's
    outcome: the next open-orders and a repeat of the id both show it (issue 16)."""

    def short_sale(self, **changes) -> dict:
        params = {
            "contract": {"ticker": "MRGT", "sec_type": "STK"},
            "action": "SELL",
            "quantity": 10,
            "order_type": "LMT",
            "limit_price": 60.0,
        }
        params.update(changes)
        return params

    def row(self, order_id: int) -> dict:
        (row,) = [o for o in self.desk.open_orders()["orders"] if o["order_id"] == order_id]
        return row

    def test_a_short_sale_held_for_a_locate_is_live_with_the_warning(self):
        placed = self.desk.place_order("short", self.short_sale())
        self.assertEqual(placed, {"order_id": placed["order_id"], "status": "PreSubmitted", "warning": LOCATE_TEXT})
        row = self.row(placed["order_id"])
        self.assertEqual(
            (row["status"], row["warning"], row["reason"], row["cancellable"]),
            ("PreSubmitted", LOCATE_TEXT, None, True),
        )
        self.assertEqual(self.desk.place_order("short", self.short_sale()), placed)  # the repeat: the same
        self.assertEqual(self.placed(), 1)
        self.assertEqual(
            [(a["decision"], a["outcome"]) for a in self.audit()],
            [("allowed", {"status": "PreSubmitted"}), ("duplicate", {"status": "PreSubmitted"})],
        )

    def test_a_rejection_after_presubmitted_shows_in_open_orders_and_on_a_repeat(self):
        self.tws.reject_after_accept("Your account has insufficient funds", after_s=0.2)
        placed = self.desk.place_order("late", self.order())
        self.assertEqual(placed["status"], "PreSubmitted")
        wait_until(lambda: self.desk.request_ids.get("late").get("reason"), what="the rejection noted")
        row = self.row(placed["order_id"])
        self.assertEqual(row["status"], "Inactive")
        self.assertEqual(
            row["reason"],
            "Order rejected - reason:Your account has insufficient funds "
            "(TWS details: Your account has insufficient funds)",
        )
        again = self.desk.place_order("late", self.order())
        self.assertEqual(again, {"order_id": placed["order_id"], "status": "Inactive", "reason": row["reason"]})
        self.assertEqual(self.placed(), 1)


class MarketClosedTest(OrdersOnFakeTws):
    tws_options = {"market_closed": True}

    def test_an_order_for_the_next_session_is_live_with_tws_warning_399(self):
        placed = self.desk.place_order("closed", self.order())
        self.assertEqual(placed["status"], "PreSubmitted")
        self.assertTrue(placed["warning"].startswith("Order Message:\nSELL 1 "), placed)
        self.assertIn("Warning: your order will not be placed at the exchange until ", placed["warning"])
        self.assertEqual(self.placed(), 1)


class AnotherClientsOrder(OrdersOnFakeTws):
    """Order ids are unique per client id and TWS cancels only the asking client's orders: open-orders
    marks which ones this agent can cancel, and cancel-order refuses another client's order, naming
    it, before anything is sent (issue 16)."""

    def other_client(self) -> ib_orders.OrderDesk:
        """Another program on the same TWS, client id 29 (its own data folder)."""
        config = dataclasses.replace(self.config, ib_client_id=29, data_dir=self.config.data_dir / "29")
        config.data_dir.mkdir()
        other = ib_connection.IBConnection(config, backoff=(0.05, 0.2))
        other.start()
        self.addCleanup(other.stop)
        self.assertTrue(other.wait_ready(WAIT_S))
        return ib_orders.OrderDesk(other, config)

    def test_only_orders_of_this_client_id_are_cancellable(self):
        theirs = self.other_client().place_order("theirs", self.order())
        rows = self.desk.open_orders()["orders"]
        self.assertEqual([(o["client_id"], o["cancellable"]) for o in rows], [(29, False)])
        if theirs["order_id"] not in [o["order_id"] for o in rows if o["client_id"] == 17]:
            error = self.fails(INVALID_REQUEST, self.desk.cancel_order, "c-theirs", {"order_id": theirs["order_id"]})
            self.assertIn(f"order {theirs['order_id']} was placed by client id 29", error.message)
            self.assertIn("client id 17", error.message)
        self.assertEqual(self.sent("cancelOrder"), 0)
        self.assertEqual(self.audit()[-1]["decision"], "not sent: INVALID_REQUEST")

        mine = self.desk.place_order("mine", self.order())
        rows = {(o["client_id"], o["order_id"]): o["cancellable"] for o in self.desk.open_orders()["orders"]}
        self.assertEqual(rows, {(29, theirs["order_id"]): False, (17, mine["order_id"]): True})

    def test_tws_answers_a_cancel_of_another_clients_order_not_found(self):
        """What TWS does (the fake models it): the id is looked up among the asking client's orders."""
        placed = self.other_client().place_order("theirs", self.order())  # this client has no order of that id
        pending = order_wait.order_request("the cancel", lambda name, args: False)
        self.conn.requests.add(placed["order_id"], pending)
        self.addCleanup(self.conn.requests.remove, placed["order_id"], pending)
        self.conn.send("cancelOrder", placed["order_id"], OrderCancel())
        with self.assertRaises(AgentError) as caught:
            pending.wait(WAIT_S)
        self.assertEqual(caught.exception.ib_code, 10147)
        self.assertEqual([o.status for o in self.tws.orders.open_orders()], ["Submitted"])


class LiveAccountTest(OrdersOnFakeTws):
    accounts = ("U1234567",)

    def test_the_default_policy_refuses_a_live_account_before_sending_anything(self):
        error = self.fails(ORDER_BLOCKED, self.desk.place_order, "live", self.order())
        self.assertIn("ALLOW_ORDERS=paper: the connected account U1234567 is live", error.message)
        self.fails(ORDER_BLOCKED, self.desk.cancel_order, "live-cancel", {"order_id": 1})
        self.assertEqual((self.placed(), self.sent("reqContractDetails"), self.sent("cancelOrder")), (0, 0, 0))
        self.assertEqual(
            [line["decision"].split(":")[:2] for line in self.audit()], [["refused", " ALLOW_ORDERS=paper"]] * 2
        )
        self.assertTrue(self.desk.account.positions()["positions"])  # reading the account stays allowed


class ReadOnlyTest(OrdersOnFakeTws):
    tws_options = {"read_only": True}

    def test_read_only_is_known_when_the_agent_connects(self):
        """Not at the first order (issue 16): the probe after ready is refused with 321, nothing placed."""
        with self.assertLogs("ib_data_agent.ib", "WARNING") as logs:
            conn, _ = self.start_agent()
            wait_until(lambda: conn.status()["read_only"] is True, what="read_only true")
        self.assertTrue(any(ib_connection.READ_ONLY_FIX in line for line in logs.output), logs.output)
        self.assertEqual((self.placed(), self.audit()), (0, []))
        self.assertEqual(self.sent("reqOpenOrders"), 2)  # one probe per connection, this one and setUp's

    def test_read_only_api(self):
        self.assertTrue(self.desk.account.positions()["positions"])  # market data and positions still work
        error = self.fails(READ_ONLY_API, self.desk.place_order, "ro", self.order())
        self.assertIn("Read-Only", error.message)
        self.assertIn("restart the agent", error.message)
        self.assertTrue(self.conn.status()["read_only"])
        self.fails(READ_ONLY_API, self.desk.open_orders)
        self.fails(READ_ONLY_API, self.desk.cancel_order, "ro-cancel", {"order_id": 1})
        self.assertEqual(self.placed(), 0)
        self.assertEqual([line["outcome"]["error"] for line in self.audit()], [READ_ONLY_API] * 2)


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
