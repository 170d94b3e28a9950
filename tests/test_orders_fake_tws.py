"""The fake TWS's order behaviours that issue 16's agent tests rest on, driven by the official ibapi
client at a text version (200) and the newest protobuf one: executions filtered by lastNDays
(today's only without it), the warnings that leave an order live (399 with the market closed, 404
for a short sale that needs a locate), a rejection after PreSubmitted, and a cancel of another
client's order (TWS looks the id up among the asking client's orders: 10147)."""

from __future__ import annotations

import dataclasses
import time
import unittest

from ibapi.execution import ExecutionFilter
from ibapi.order_cancel import OrderCancel
from ibapi.server_versions import MAX_CLIENT_VER

from tests.fake_tws_account import LOCATE_TEXT
from tests.fake_tws_formats import tws_time
from tests.test_fake_tws_ibapi import FakeTwsCase, contract, limit_order

VERSIONS = (200, MAX_CLIENT_VER)


class OrderBehaviour(FakeTwsCase):
    version = MAX_CLIENT_VER
    extra: dict = {}

    def setUp(self):
        self.fake_options = dict(self.extra, max_server_version=self.version)
        super().setUp()

    def order_ids(self, client, n: int = 1) -> int:
        client.reqIds(n)
        return client.wait("nextValidId", count=2)[-1][0]

    def statuses(self, client, order_id: int) -> list:
        return [a[1] for a in client.named("orderStatus", lambda a: a[0] == order_id)]


class Executions(OrderBehaviour):
    def executions(self, client, req_id: int, last_n_days=None) -> list:
        execution_filter = ExecutionFilter()
        if last_n_days is not None:
            execution_filter.lastNDays = last_n_days
        client.reqExecutions(req_id, execution_filter)
        client.wait("execDetailsEnd", lambda a: a[0] == req_id)
        return [a[2].orderId for a in client.named("execDetails", lambda a: a[0] == req_id)]

    def test_last_n_days_reaches_back_and_without_it_today_only(self):
        client = self.connect()
        order_id = self.order_ids(client)
        option = self.option_contract(self.atm_call())
        client.placeOrder(order_id, option, limit_order("BUY", 1, 500.0))
        client.wait("orderStatus", lambda a: a[0] == order_id and a[1] == "Filled")
        self.assertEqual(self.executions(client, 70), [order_id])  # today's
        with self.tws.lock:  # three days pass
            book = self.tws.orders
            book.executions[:] = [
                dataclasses.replace(e, time=tws_time(time.time() - 3 * 86400)) for e in book.executions
            ]
        self.assertEqual(self.executions(client, 71), [])  # no lastNDays: today only
        self.assertEqual(self.executions(client, 72, 2), [])  # two days: today and yesterday
        self.assertEqual(self.executions(client, 73, 7), [order_id])  # the agent's look-back


class Warnings(OrderBehaviour):
    def test_a_short_sale_of_shares_to_locate_is_held_with_404_before_its_messages(self):
        client = self.connect()
        order_id = self.order_ids(client, 2)
        stock = contract(symbol="MRGT", secType="STK")
        client.placeOrder(order_id, stock, limit_order("SELL", 10, 60.0))
        self.assertEqual(client.wait_error(404, order_id)[3], LOCATE_TEXT)
        client.wait("orderStatus", lambda a: a[0] == order_id)
        self.assertEqual(self.statuses(client, order_id), ["PreSubmitted"])
        about = [n for n, a in client.events if n in ("error", "openOrder", "orderStatus") and a[0] == order_id]
        self.assertEqual(about[0], "error")  # the warning came first
        client.placeOrder(order_id + 1, stock, limit_order("BUY", 10, 40.0))  # a buy needs no locate
        client.wait("orderStatus", lambda a: a[0] == order_id + 1)
        self.assertEqual([a for a in client.named("error") if a[0] == order_id + 1], [])
        self.assertEqual(self.tws.stats()["orders_placed"], 2)


class MarketClosed(OrderBehaviour):
    extra = {"market_closed": True}

    def test_an_order_waits_for_the_next_session_with_399_and_does_not_fill(self):
        client = self.connect()
        order_id = self.order_ids(client)
        client.placeOrder(order_id, self.option_contract(self.atm_call()), limit_order("BUY", 1, 500.0))
        text = client.wait_error(399, order_id)[3]
        self.assertRegex(
            text,
            r"^Order Message:\nBUY 1 AAPL .+ SMART\nWarning: your order will not be placed at the "
            r"exchange until \d{4}-\d\d-\d\d 09:30:00 US/Eastern$",
        )
        client.wait("orderStatus", lambda a: a[0] == order_id)
        self.assertEqual(self.statuses(client, order_id), ["PreSubmitted"])  # marketable, but not filled


class LateRejection(OrderBehaviour):
    def test_accepted_then_inactive_with_201_and_still_listed(self):
        client = self.connect()
        order_id = self.order_ids(client)
        self.tws.reject_after_accept("Your account has insufficient funds", after_s=0.1)
        client.placeOrder(order_id, self.option_contract(self.atm_call()), limit_order("BUY", 1, 0.5))
        self.assertIn("Your account has insufficient funds", client.wait_error(201, order_id)[3])
        self.assertEqual(self.statuses(client, order_id), ["PreSubmitted", "Inactive"])
        client.reqAllOpenOrders()
        client.wait("openOrderEnd")
        listed = client.named("openOrder", lambda a: a[0] == order_id)
        self.assertEqual(listed[-1][3].status, "Inactive")


class AnotherClientsCancel(OrderBehaviour):
    def test_a_cancel_of_another_clients_order_is_not_found_and_changes_nothing(self):
        mine, other = self.connect(1), self.connect(2)
        order_id = self.order_ids(mine)
        mine.placeOrder(order_id, self.option_contract(self.atm_call()), limit_order("BUY", 1, 0.5))
        mine.wait("orderStatus", lambda a: a[0] == order_id)
        other.cancelOrder(order_id, OrderCancel())
        self.assertIn(
            f"OrderId {order_id} that needs to be cancelled is not found", other.wait_error(10147, order_id)[3]
        )
        self.assertEqual([o.status for o in self.tws.orders.open_orders()], ["Submitted"])
        self.assertEqual(self.statuses(mine, order_id), ["Submitted"])


def load_tests(loader, standard_tests, pattern):
    suite = unittest.TestSuite()
    for case in (Executions, Warnings, MarketClosed, LateRejection, AnotherClientsCancel):
        for version in VERSIONS:
            at = type(f"{case.__name__}_v{version}", (case,), {"version": version})
            suite.addTests(loader.loadTestsFromTestCase(at))
    return suite


if __name__ == "__main__":
    unittest.main()
