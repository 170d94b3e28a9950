"""An unexpected exception while placing an order, against the fake TWS: OrderDesk on a real
IBConnection and the real ibapi EClient, the fault injected where the order leaves the agent.

Each case checks the audit line (INTERNAL with the exception's class), the request-id record
("unknown"), and that a repeat of the same request id looks in TWS (open orders, today's completed
orders, then the last 7 days' executions, by orderRef) and never places an order that may have
reached TWS: the fake never counts two orders for one id.
"""

from __future__ import annotations

import contextlib
import unittest
from unittest import mock

from ibapi.client import EClient

from agent.errors import INTERNAL, TIMEOUT
from agent.ib import connection as ib_connection
from agent.ib import session as ib_session
from agent.orders import guard as order_guard
from tests.test_orders_tws import OrdersOnFakeTws
from tests.tws_versions import at_tws_versions

PLACE_ORDER_IDS = (3, 203)  # OUT.PLACE_ORDER as text, and + 200 as a protobuf body (server version >= 203)


class UnexpectedErrorOnFakeTws(OrdersOnFakeTws):
    def setUp(self):
        super().setUp()  # asserts the connection runs at this class's TWS version
        self.sent = []  # what the desk asked the connection to send, in order
        send = self.conn.send
        self.conn.send = lambda method, *args: self.sent.append(method) or send(method, *args)

    def is_place_order(self, msg: bytes) -> bool:
        body = msg[4:]  # after the length prefix
        if self.conn.status()["server_version"] >= 201:  # raw-int message ids
            return int.from_bytes(body[:4], "big") in PLACE_ORDER_IDS
        return body.startswith(b"3\0")

    @contextlib.contextmanager
    def socket_fault(self, after_sending: bool):
        """The agent's socket raises on the placeOrder message, after writing it or before."""
        real_send = ib_session._TwsSocket.sendMsg
        armed = [True]

        def send(sock, msg):
            if armed and self.is_place_order(msg):
                armed.clear()
                if after_sending:
                    real_send(sock, msg)
                raise RuntimeError("injected fault in the socket")
            return real_send(sock, msg)

        with mock.patch.object(ib_session._TwsSocket, "sendMsg", send):
            yield

    def fails_internal(self, request_id: str, params: dict, exception: str) -> dict:
        error = self.fails(INTERNAL, self.desk.place_order, request_id, params)
        self.assertIn("looks in TWS first", error.message)
        line = self.audit()[-1]
        self.assertEqual(
            (line["request_id"], line["decision"], line["outcome"]["error"], line["outcome"]["exception"]),
            (request_id, "allowed", INTERNAL, exception),
        )
        self.assertNotIn(self.config.key, self.config.audit_log_file.read_text())
        self.assertEqual(self.desk.request_ids.get(request_id)["state"], order_guard.UNKNOWN)
        return line

    def repeat(self, request_id: str, params: dict) -> dict:
        self.sent.clear()
        return self.desk.place_order(request_id, params)

    def test_an_exception_after_the_order_went_out_is_found_by_order_ref(self):
        """ibapi 10.4x catches it inside placeOrder and reports error 512: unknown, never "rejected"."""
        params = self.order()
        with self.assertLogs("ib_data_agent.orders", "ERROR"), self.socket_fault(after_sending=True):
            line = self.fails_internal("boom-after", params, "IbapiSendError")
        self.assertIn("may have reached TWS", line["outcome"]["message"])
        order_id = line["order_id"]
        self.assertEqual(self.placed(), 1)
        again = self.repeat("boom-after", params)
        self.assertEqual(again["order_id"], order_id)
        self.assertEqual(self.sent, ["reqAllOpenOrders"])
        self.assertEqual(self.audit()[-1]["decision"], "duplicate: found in TWS by orderRef")
        self.assertEqual(self.desk.request_ids.get("boom-after")["state"], order_guard.PLACED)
        self.assertEqual(self.repeat("boom-after", params), again)
        self.assertEqual(self.placed(), 1)

    def test_an_exception_before_anything_went_out_is_never_placed_blindly(self):
        """The socket failed before writing, but the agent cannot tell where ibapi failed: TWS shows
        no such order, so the repeat says so and places nothing (issue 16: when unsure, refuse)."""
        params = self.order()
        with self.assertLogs("ib_data_agent.orders", "ERROR"), self.socket_fault(after_sending=False):
            self.fails_internal("boom-before", params, "IbapiSendError")
        self.assertEqual(self.placed(), 0)
        self.sent.clear()
        error = self.fails(TIMEOUT, self.desk.place_order, "boom-before", params)
        self.assertIn("TWS does not show it yet", error.message)
        self.assertEqual(self.sent, ["reqAllOpenOrders", "reqCompletedOrders", "reqExecutions"])
        self.assertEqual(self.placed(), 0)
        self.assertEqual(self.desk.request_ids.get("boom-before")["state"], order_guard.UNKNOWN)

    def test_ibapi_raising_out_of_place_order_after_sending(self):
        """What ibapi 10.37.2 did at 203 (raised out of placeOrder), here after the order went out."""

        def place_then_raise(session, *args):
            EClient.placeOrder(session, *args)
            raise KeyError("injected after placeOrder")

        params = self.order(marketable=True)  # fills at once: found among today's completed orders
        with (
            self.assertLogs("ib_data_agent.orders", "ERROR"),
            mock.patch.object(ib_connection._TwsSession, "placeOrder", place_then_raise),
        ):
            line = self.fails_internal("boom-filled", params, "KeyError")
        self.assertEqual(self.placed(), 1)
        again = self.repeat("boom-filled", params)
        self.assertEqual((again["order_id"], again["status"]), (line["order_id"], "Filled"))
        self.assertEqual(self.sent, ["reqAllOpenOrders", "reqCompletedOrders"])
        self.assertEqual(self.placed(), 1)


load_tests = at_tws_versions()  # 200 (placeOrder as text) and the newest (protobuf); TWS_VERSIONS=all adds 176, 203


if __name__ == "__main__":
    unittest.main()
