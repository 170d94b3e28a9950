"""The pinned ibapi writing the agent's orders at the protobuf versions the agent offers.

ibapi 10.37.2 (the previous pin) crashed in its protobuf place-order path (server version >= 203) on a
stock contract with a primary exchange: its createContractProto set `primaryExchange`, and the proto
field is `primaryExch`. A stock `place-order` from a current TWS answered INTERNAL. Here the agent's
own order path runs (OrderDesk -> IBConnection.send -> its _TwsSession, the real ibapi EClient) over a
stand-in socket that answers like TWS, and what went out is decoded with ibapi's own protobuf classes.

Run under ibapi-stable==10.37.2 (protobuf 5.29.3) the stock test fails at 203 and above: the order
answers INTERNAL naming AttributeError ('Protocol message Contract has no "primaryExchange" field'),
audited, its id left "unknown". The option test passes there: it has no primary exchange.

It uses two internals of agent.ib.connection (_TwsSession, _go_ready), as tests/connection_replay.py does.
"""

from __future__ import annotations

import json
import queue
import struct
import tempfile
import threading
import unittest
from decimal import Decimal
from pathlib import Path

from ibapi.contract import Contract, ContractDetails
from ibapi.message import OUT
from ibapi.protobuf.CancelOrderRequest_pb2 import CancelOrderRequest
from ibapi.protobuf.PlaceOrderRequest_pb2 import PlaceOrderRequest
from ibapi.server_versions import MIN_SERVER_VER_PROTOBUF_PLACE_ORDER

from agent.config import Config
from agent.ib import connection as ib_connection
from agent.ib import session as ib_session
from agent.orders import desk as ib_orders
from agent.orders import guard as order_guard

PROTOBUF_MSG_ID = 200  # a protobuf body's message id is the text id + 200 (ibapi.common.PROTOBUF_MSG_ID)
FIRST_ORDER_ID = 448
ACCOUNT = "DU1234567"
KEY = "pin-test-key-0123"
WAIT_S = 10.0


def listed(sec_type: str) -> Contract:
    """The contract reqContractDetails answers with (exchange SMART, the primary exchange filled)."""
    contract = Contract()
    contract.symbol, contract.secType, contract.exchange, contract.currency = "AAPL", sec_type, "SMART", "USD"
    if sec_type == "STK":
        contract.conId, contract.primaryExchange, contract.localSymbol, contract.tradingClass = (
            265598,
            "NASDAQ",
            "AAPL",
            "NMS",
        )
    else:
        contract.conId, contract.lastTradeDateOrContractMonth, contract.strike, contract.right = (
            712446551,
            "20300118",
            150.0,
            "C",
        )
        contract.multiplier, contract.localSymbol, contract.tradingClass = "100", "AAPL  300118C00150000", "AAPL"
    return contract


class TwsSocket:
    """Stands in for the socket under the agent's _TwsSession: keeps every message the EClient wrote
    and answers contract details, orders and cancels the way TWS does, from its own thread."""

    def __init__(self):
        self.messages = []  # (message id, protobuf?, body) of everything written
        self.session = None
        self.contract = None
        self._answers: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._answer, daemon=True, name="tws-stand-in").start()

    def isConnected(self):
        return True

    def disconnect(self):
        self._answers.put(None)

    def sendMsg(self, msg: bytes) -> int:
        (size,) = struct.unpack("!I", msg[:4])
        assert size == len(msg) - 4, "a message's length prefix must match its body"
        msg_id, body = int.from_bytes(msg[4:8], "big"), msg[8:]  # raw-int ids from server version 201 on
        protobuf = msg_id > PROTOBUF_MSG_ID
        msg_id -= PROTOBUF_MSG_ID if protobuf else 0
        self.messages.append((msg_id, protobuf, body))
        if msg_id == OUT.REQ_CONTRACT_DATA and not protobuf:  # text below 205: VERSION, reqId, ...
            req_id = int(body.split(b"\0")[1])
            details = ContractDetails()
            details.contract = self.contract
            self._answers.put(("contractDetails", (req_id, details)))
            self._answers.put(("contractDetailsEnd", (req_id,)))
        elif msg_id == OUT.REQ_CONTRACT_DATA:
            from ibapi.protobuf.ContractDataRequest_pb2 import ContractDataRequest

            request = ContractDataRequest()
            request.ParseFromString(body)
            details = ContractDetails()
            details.contract = self.contract
            self._answers.put(("contractDetails", (request.reqId, details)))
            self._answers.put(("contractDetailsEnd", (request.reqId,)))
        elif msg_id == OUT.PLACE_ORDER and protobuf:
            request = PlaceOrderRequest()
            request.ParseFromString(body)
            self._answers.put(
                (
                    "orderStatus",
                    (
                        request.orderId,
                        "Submitted",
                        Decimal(0),
                        Decimal(request.order.totalQuantity),
                        0.0,
                        1888000448,
                        0,
                        0.0,
                        17,
                        "",
                        0.0,
                    ),
                )
            )
        elif msg_id in (OUT.REQ_OPEN_ORDERS, OUT.REQ_ALL_OPEN_ORDERS):
            # the Read-Only probe after ready, and the desk's look for an earlier order of a request
            # id: a fresh account has none
            self._answers.put(("openOrderEnd", ()))
        elif msg_id == OUT.REQ_COMPLETED_ORDERS:
            self._answers.put(("completedOrdersEnd", ()))
        elif msg_id == OUT.REQ_EXECUTIONS:
            if protobuf:  # from server version 201 on
                from ibapi.protobuf.ExecutionRequest_pb2 import ExecutionRequest

                request = ExecutionRequest()
                request.ParseFromString(body)
                req_id = request.reqId
            else:
                req_id = int(body.split(b"\0")[1])
            self._answers.put(("execDetailsEnd", (req_id,)))
        elif msg_id == OUT.CANCEL_ORDER and protobuf:
            request = CancelOrderRequest()
            request.ParseFromString(body)
            self._answers.put(
                (
                    "orderStatus",
                    (request.orderId, "Cancelled", Decimal(0), Decimal(5), 0.0, 1888000448, 0, 0.0, 17, "", 0.0),
                )
            )
        return len(msg)

    def _answer(self):  # what the EClient's reader thread does with TWS's messages
        while True:
            item = self._answers.get()
            if item is None:
                return
            name, args = item
            getattr(self.session, name)(*args)

    def sent(self, msg_id: int) -> list:
        return [(protobuf, body) for sent_id, protobuf, body in self.messages if sent_id == msg_id]


class OrdersOnTheWire(unittest.TestCase):
    """place-order and cancel-order through the agent's own path, at each protobuf order version it offers."""

    VERSIONS = (MIN_SERVER_VER_PROTOBUF_PLACE_ORDER, ib_session.TESTED_MAX_SERVER_VERSION)

    def setUp(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.config = Config(key=KEY, data_dir=Path(folder.name), request_timeout_s=WAIT_S)

    def agent_at(self, server_version: int):
        """An IBConnection made ready on a session whose socket is the TWS stand-in."""
        conn = ib_connection.IBConnection(self.config)
        session = ib_connection._TwsSession(conn, self.config.ib_host, 7497, self.config.ib_client_id)
        tws = session.conn = TwsSocket()
        tws.session = session
        self.addCleanup(tws.disconnect)
        session.serverVersion_ = session.server_version = server_version
        session.setConnState(session.CONNECTED)
        session.managedAccounts(ACCOUNT)
        session.nextValidId(FIRST_ORDER_ID)
        self.assertTrue(conn._go_ready(session, "paper"))
        return ib_orders.OrderDesk(conn, self.config), tws

    def placed(self, tws: TwsSocket) -> PlaceOrderRequest:
        ((protobuf, body),) = tws.sent(OUT.PLACE_ORDER)
        self.assertTrue(protobuf, "from server version 203 on, placeOrder is a protobuf message")
        request = PlaceOrderRequest()
        request.ParseFromString(body)
        return request

    def audit(self) -> list:
        path = self.config.audit_log_file
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def test_a_stock_order_with_a_primary_exchange(self):
        for version in self.VERSIONS:
            with self.subTest(server_version=version):
                desk, tws = self.agent_at(version)
                tws.contract = listed("STK")
                params = {
                    "contract": {"ticker": "AAPL", "sec_type": "STK"},
                    "action": "BUY",
                    "quantity": 5,
                    "order_type": "LMT",
                    "limit_price": 190.5,
                }
                request_id = f"pin-stk-{version}"
                self.assertEqual(
                    desk.place_order(request_id, params), {"order_id": FIRST_ORDER_ID, "status": "Submitted"}
                )
                request = self.placed(tws)
                contract, order = request.contract, request.order
                self.assertEqual(
                    (
                        request.orderId,
                        contract.conId,
                        contract.symbol,
                        contract.secType,
                        contract.exchange,
                        contract.primaryExch,
                        contract.currency,
                    ),
                    (FIRST_ORDER_ID, 265598, "AAPL", "STK", "SMART", "NASDAQ", "USD"),
                )
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
                    ("BUY", "5", "LMT", 190.5, "DAY", order_guard.order_ref_for(request_id), ACCOUNT, True),
                )
                self.assertEqual(desk.request_ids.get(request_id)["state"], order_guard.PLACED)
                # looked for an earlier order of this id first (a fresh account: none), in the
                # form this version wants
                self.assertEqual(
                    [len(tws.sent(m)) for m in (OUT.REQ_ALL_OPEN_ORDERS, OUT.REQ_COMPLETED_ORDERS, OUT.REQ_EXECUTIONS)],
                    [1, 1, 1],
                )
                self.assertEqual(tws.sent(OUT.REQ_EXECUTIONS)[0][0], True)

                cancelled = desk.cancel_order(f"pin-cancel-{version}", {"order_id": FIRST_ORDER_ID})
                self.assertEqual(cancelled, {"order_id": FIRST_ORDER_ID, "status": "Cancelled"})
                ((protobuf, body),) = tws.sent(OUT.CANCEL_ORDER)
                cancel = CancelOrderRequest()
                cancel.ParseFromString(body)
                self.assertEqual((protobuf, cancel.orderId), (True, FIRST_ORDER_ID))
        self.assertEqual(
            [(line["action"], line["decision"], line["outcome"]) for line in self.audit()],
            [("place-order", "allowed", {"status": "Submitted"}), ("cancel-order", "allowed", {"status": "Cancelled"})]
            * len(self.VERSIONS),
        )

    def test_an_option_order(self):
        for version in self.VERSIONS:
            with self.subTest(server_version=version):
                desk, tws = self.agent_at(version)
                tws.contract = listed("OPT")
                params = {
                    "contract": {
                        "ticker": "AAPL",
                        "sec_type": "OPT",
                        "expiration": "20300118",
                        "strike": 150,
                        "right": "C",
                    },
                    "action": "SELL",
                    "quantity": 1,
                    "order_type": "LMT",
                    "limit_price": 2.5,
                }
                self.assertEqual(desk.place_order(f"pin-opt-{version}", params)["status"], "Submitted")
                contract = self.placed(tws).contract
                self.assertEqual(
                    (
                        contract.conId,
                        contract.secType,
                        contract.lastTradeDateOrContractMonth,
                        contract.strike,
                        contract.right,
                        contract.multiplier,
                        contract.exchange,
                    ),
                    (712446551, "OPT", "20300118", 150.0, "C", 100.0, "SMART"),
                )


if __name__ == "__main__":
    unittest.main()
