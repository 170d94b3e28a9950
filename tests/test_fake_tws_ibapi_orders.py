"""The official ibapi client against the fake TWS, end to end: orders (place, cancel, executions,
the precaution-dialog delay, what-if previews), the account reads and read-only mode. The client
and the harness are test_fake_tws_ibapi's."""

from __future__ import annotations

import time
import unittest

from ibapi.execution import ExecutionFilter
from ibapi.order_cancel import OrderCancel
from ibapi.server_versions import MAX_CLIENT_VER

from tests.test_fake_tws_ibapi import CANCEL_BURST, FakeTwsCase, cancel_burst, contract, limit_order


class OrdersTest(FakeTwsCase):
    fake_options = {"accounts": ("DU1234567", "DU7654321")}

    def test_place_see_and_cancel_an_order(self):
        client, other = self.connect(1), self.connect(2)
        option = self.option_contract(self.atm_call())
        client.reqIds(1)
        order_id = client.wait("nextValidId", count=2)[-1][0]
        client.placeOrder(order_id, option, limit_order("BUY", 1, 0.5, orderRef="req-1", account="DU7654321"))
        ((_, _, order, state),) = client.wait("openOrder", lambda a: a[0] == order_id)
        self.assertEqual(
            (order.orderRef, order.clientId, order.account, state.status), ("req-1", 1, "DU7654321", "Submitted")
        )
        status = client.wait("orderStatus", lambda a: a[0] == order_id)[0]
        self.assertEqual((status[1], status[5], status[8]), ("Submitted", order.permId, 1))
        client.reqOpenOrders()
        client.wait("openOrderEnd")
        self.assertEqual(len(client.named("openOrder", lambda a: a[0] == order_id)), 2)
        other.reqOpenOrders()
        other.wait("openOrderEnd")
        self.assertEqual(other.named("openOrder"), [])
        other.reqAllOpenOrders()
        other.wait("openOrderEnd", count=2)
        self.assertEqual(other.named("openOrder")[0][2].orderRef, "req-1")
        client.cancelOrder(order_id, OrderCancel())
        self.assertIn("Order Canceled", client.wait_error(202, order_id)[3])
        self.assertEqual(cancel_burst(client, order_id), CANCEL_BURST)
        client.reqOpenOrders()
        client.wait("openOrderEnd", count=2)
        self.assertEqual(len(client.named("openOrder", lambda a: a[0] == order_id)), 3)  # none after the cancel
        client.cancelOrder(order_id, OrderCancel())
        self.assertEqual(
            client.wait_error(161, order_id)[3],
            f"Cancel attempted when order is not in a cancellable state.  Order permId ={order.permId}",
        )
        client.cancelOrder(999, OrderCancel())
        client.wait_error(10147, 999)
        self.assertEqual(self.tws.stats()["orders_placed"], 1)

    def test_rejections(self):
        client = self.connect()
        option = self.option_contract(self.atm_call())
        client.placeOrder(50, option, limit_order("BUY", 1, 1.005))
        self.assertIn("minimum price variation", client.wait_error(110, 50)[3])
        client.placeOrder(51, option, limit_order("BUY", 5000, 1.0))
        self.assertIn("Order rejected - reason:", client.wait_error(201, 51)[3])
        client.placeOrder(52, option, limit_order("BUY", 1, 1.0, account="U9999999"))
        client.wait_error(201, 52)
        client.placeOrder(53, contract(symbol="NOPE", secType="STK"), limit_order("BUY", 1, 1.0))
        client.wait_error(200, 53)
        self.assertEqual(client.named("openOrder"), [])
        self.assertEqual(self.tws.stats()["orders_placed"], 0)

    def test_marketable_order_fills_and_shows_in_executions_completed_orders_and_positions(self):
        client = self.connect()
        option = self.atm_call()
        client.placeOrder(60, self.option_contract(option), limit_order("BUY", 2, 500.0))
        client.wait("orderStatus", lambda a: a[0] == 60 and a[1] == "Filled")
        self.assertEqual(client.wait("execDetails", lambda a: a[0] == -1)[0][2].orderId, 60)
        client.reqExecutions(61, ExecutionFilter())
        client.wait("execDetailsEnd", lambda a: a[0] == 61)
        self.assertEqual([a[2].orderId for a in client.named("execDetails", lambda a: a[0] == 61)], [60])
        today = ExecutionFilter()
        today.lastNDays = 1  # from server version 200
        client.reqExecutions(62, today)
        client.wait("execDetailsEnd", lambda a: a[0] == 62)
        self.assertEqual([a[2].orderId for a in client.named("execDetails", lambda a: a[0] == 62)], [60])
        client.reqCompletedOrders(False)
        client.wait("completedOrdersEnd")
        self.assertEqual(client.named("completedOrder")[0][2].status, "Filled")
        client.reqPositions()
        client.wait("positionEnd")
        held = [a for a in client.named("position") if a[1].conId == option.con_id]
        self.assertEqual(float(held[0][2]), 2.0)
        client.cancelOrder(60, OrderCancel())
        self.assertIn("not in a cancellable state", client.wait_error(161, 60)[3])
        self.assertEqual(client.named("orderStatus", lambda a: a[0] == 60 and a[1] != "Filled"), [])


class PlaceDelayTest(FakeTwsCase):
    """--place-delay-ms: an order held as behind TWS's precaution dialog."""

    fake_options = {"place_delay_ms": 1500}

    def test_the_order_appears_only_after_the_delay_and_messages_flow_meanwhile(self):
        client = self.connect()
        option = self.option_contract(self.atm_call())
        sent = time.monotonic()
        client.placeOrder(70, option, limit_order("BUY", 1, 0.05, orderRef="slow-1"))
        client.reqCurrentTime()
        client.wait("currentTime")
        client.reqOpenOrders()
        client.wait("openOrderEnd")
        # a what-if is a preview, not held: answered at once
        client.placeOrder(71, option, limit_order("BUY", 1, 0.05, whatIf=True))
        client.wait("openOrder", lambda a: a[0] == 71)
        self.assertEqual(client.named("openOrder", lambda a: a[0] == 70), [])
        self.assertEqual(client.named("orderStatus"), [])
        self.assertEqual(self.tws.stats()["orders_placed"], 0)
        ((_, _, order, state),) = client.wait("openOrder", lambda a: a[0] == 70)
        self.assertGreaterEqual(time.monotonic() - sent, 1.5)
        self.assertEqual((order.orderRef, state.status), ("slow-1", "Submitted"))
        client.wait("orderStatus", lambda a: a[0] == 70 and a[1] == "Submitted")
        client.reqOpenOrders()
        client.wait("openOrderEnd", count=2)
        self.assertEqual(len(client.named("openOrder", lambda a: a[0] == 70)), 2)
        self.assertEqual(self.tws.stats()["orders_placed"], 1)


class WhatIfTest(FakeTwsCase):
    """A what-if placeOrder (order.whatIf): one openOrder with the margin and commission preview in
    its state, no orderStatus, nothing booked, not counted in orders_placed."""

    version = 0

    def setUp(self):
        self.fake_options = {"max_server_version": self.version}
        super().setUp()

    def test_a_what_if_order_gets_its_preview_and_is_never_booked(self):
        v = self.version
        client = self.connect()
        call = self.atm_call()
        client.placeOrder(72, self.option_contract(call), limit_order("BUY", 2, 1.0, whatIf=True))
        ((_, placed, order, state),) = client.wait("openOrder", lambda a: a[0] == 72)
        self.assertEqual((placed.conId, order.whatIf, state.status), (call.con_id, True, "PreSubmitted"))
        # the fake's margin model: initial 30 % of the notional (2 x 1.00 x 100)
        self.assertGreater(float(state.initMarginAfter), 60.0)
        if v >= 142:  # before/change from MIN_SERVER_VER_WHAT_IF_EXT_FIELDS
            self.assertEqual((float(state.initMarginChange), float(state.equityWithLoanChange)), (60.0, -1.3))
            self.assertAlmostEqual(float(state.initMarginAfter) - float(state.initMarginBefore), 60.0, places=6)
        self.assertEqual((state.commissionAndFees, state.commissionAndFeesCurrency), (1.3, "USD"))
        client.placeOrder(73, self.option_contract(call), limit_order("BUY", 2, 500.0, whatIf=True))  # marketable
        client.wait("openOrder", lambda a: a[0] == 73)
        client.reqOpenOrders()
        client.wait("openOrderEnd")
        client.reqPositions()
        client.wait("positionEnd")
        self.assertEqual([a[0] for a in client.named("openOrder")], [72, 73])  # none listed
        self.assertEqual(client.named("orderStatus") + client.named("execDetails"), [])
        self.assertFalse([p for p in client.named("position") if p[1].conId == call.con_id])
        client.cancelOrder(72, OrderCancel())
        client.wait_error(10147, 72)
        self.assertEqual(self.tws.stats()["orders_placed"], 0)


for _version in (130, 200, MAX_CLIENT_VER):
    globals()[f"WhatIf{_version}Test"] = type(f"WhatIf{_version}Test", (WhatIfTest,), {"version": _version})
del WhatIfTest


class AccountTest(FakeTwsCase):
    def test_positions_summary_and_account_updates(self):
        client = self.connect()
        client.reqPositions()
        client.wait("positionEnd")
        positions = client.named("position")
        self.assertEqual({p[1].secType for p in positions}, {"STK", "OPT"})
        self.assertTrue(all(p[0] == "DU1234567" for p in positions))
        tags = ("NetLiquidation", "TotalCashValue", "BuyingPower", "AvailableFunds", "ExcessLiquidity")
        client.reqAccountSummary(40, "All", ",".join(tags))
        client.wait("accountSummaryEnd", lambda a: a[0] == 40)
        rows = client.named("accountSummary", lambda a: a[0] == 40)
        self.assertEqual(sorted(r[2] for r in rows), sorted(tags))
        self.assertTrue(all(r[4] == "USD" and float(r[3]) > 0 for r in rows))
        client.reqAccountUpdates(True, "")
        client.wait("accountDownloadEnd")
        self.assertEqual(len(client.named("updatePortfolio")), len(positions))
        self.assertTrue(client.named("updateAccountValue", lambda a: a[0] == "NetLiquidation"))


class ReadOnlyTest(FakeTwsCase):
    fake_options = {"read_only": True}

    def test_order_actions_get_321_but_data_still_works(self):
        client = self.connect()
        client.placeOrder(70, self.option_contract(self.atm_call()), limit_order("BUY", 1, 1.0))
        self.assertIn("Read-Only", client.wait_error(321, 70)[3])
        client.cancelOrder(70, OrderCancel())
        client.wait_error(321, 70)
        client.reqOpenOrders()
        client.wait("error", lambda a: a[2] == 321 and a[0] == -1)
        client.reqPositions()
        client.wait("positionEnd")
        client.reqContractDetails(71, contract(symbol="MSFT", secType="STK"))
        client.wait("contractDetailsEnd", lambda a: a[0] == 71)
        self.assertEqual(self.tws.stats()["orders_placed"], 0)


if __name__ == "__main__":
    unittest.main()
