"""OrderDesk against recorded TWS callback sequences (tests/recorded/orders_*.json).

A ReplayConnection stands in for agent.ib.connection.IBConnection: every request the desk sends is
answered by replaying the recorded callbacks for that request, routed the way IBConnection routes
them (id callbacks to the registered handler, else to listeners; errors to on_error).
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import threading
import time
import unittest
from decimal import Decimal
from pathlib import Path
from typing import Tuple
from unittest import mock

import ibapi.errors
from ibapi.contract import Contract, ContractDetails
from ibapi.decoder import Decoder
from ibapi.execution import Execution
from ibapi.message import IN
from ibapi.order import Order
from ibapi.order_state import OrderState
from ibapi.protobuf.Position_pb2 import Position as PositionProto
from ibapi.server_versions import MIN_SERVER_VER_PROTOBUF_ACCOUNTS_POSITIONS
from ibapi.wrapper import EWrapper

from agent.config import Config
from agent.errors import (
    IB_ERROR,
    IB_NOT_CONNECTED,
    INTERNAL,
    INVALID_REQUEST,
    NO_SECURITY_DEFINITION,
    ORDER_BLOCKED,
    READ_ONLY_API,
    TIMEOUT,
    AgentError,
    IbError,
    IbNotConnected,
)
from agent.ib import codes as ib_codes
from agent.ib import connection as ib_connection
from agent.ib import requests as ib_requests
from agent.ib import session as ib_session
from agent.orders import account as order_account
from agent.orders import book as order_book
from agent.orders import desk as ib_orders
from agent.orders import guard as order_guard
from agent.relay import actions as relay_actions
from tests.test_relay_actions import StandInJob

RECORDED = Path(__file__).resolve().parent / "recorded"
PAPER = {
    "connected": True,
    "accounts": ["DU1234567"],
    "account_type": "paper",
    "read_only": None,
    "server_version": 226,
}
LIVE = {"connected": True, "accounts": ["U1234567"], "account_type": "live", "read_only": None}
DOWN = {"connected": False, "accounts": [], "account_type": None, "read_only": None}
IB_CLASSES = {
    "Contract": Contract,
    "ContractDetails": ContractDetails,
    "Order": Order,
    "OrderState": OrderState,
    "Execution": Execution,
}
KEY = "test-key-0123456789"
# What TWS answers a lookup that finds nothing (a scenario that records the request replaces it).
NOTHING_FOUND = {
    "reqAllOpenOrders": [("openOrderEnd", [])],
    "reqCompletedOrders": [("completedOrdersEnd", [])],
    "reqExecutions": [("execDetailsEnd", ["$id"])],
    "reqAccountUpdates": [("accountDownloadEnd", ["DU1234567"])],  # no portfolio rows
}
# In a scenario's answers: the answers that replace others once a placeOrder was sent.
ONCE_PLACED = "once placed"
# What the desk asks TWS before placing a request id it has no finished record of (issue 16).
LOOKUP = ["reqAllOpenOrders", "reqCompletedOrders", "reqExecutions"]


def load(name: str) -> dict:
    with open(RECORDED / f"orders_{name}.json", encoding="utf-8") as fh:
        return json.load(fh)


def build(value, ids: dict, shared: dict):
    """A recorded value as the ibapi decoder would have handed it to the wrapper."""
    if isinstance(value, str):
        if value in ids:
            return ids[value]
        if value.startswith("$") and value[1:] in shared:
            return build(shared[value[1:]], ids, shared)
        return value.replace("$id", str(ids["$id"])) if "$id" in value else value
    if isinstance(value, list):
        return [build(v, ids, shared) for v in value]
    if isinstance(value, dict) and len(value) == 1 and "Decimal" in value:
        return Decimal(value["Decimal"])
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in IB_CLASSES:
        ((kind, attrs),) = value.items()
        obj = IB_CLASSES[kind]()
        for attr, v in attrs.items():
            setattr(obj, attr, build(v, ids, shared))
        return obj
    return value


class ReplayConnection:
    """The IB half interface, answering each request with its recorded callbacks."""

    def __init__(self, status: dict, answers: dict, shared: dict = None, request_ref: str = ""):
        self._status = dict(status)
        self.answers = answers
        self.shared = shared or {}
        self.request_ref = request_ref
        self.sent = []
        self.gate = None  # a threading.Event placeOrder waits on before TWS "answers"
        self.requests = ib_requests.Requests()
        self._listeners = {}
        self._req_id = ib_connection.REQ_ID_FIRST
        self._order_id = 31
        self._lock = threading.Lock()

    # the interface
    def status(self) -> dict:
        return dict(self._status)

    @property
    def ready(self) -> bool:
        return self._status["connected"]

    def next_req_id(self) -> int:
        with self._lock:
            self._req_id += 1
            return self._req_id

    def next_order_id(self) -> int:
        with self._lock:
            self._order_id += 1
            return self._order_id

    def add_listener(self, name, fn):
        self._listeners.setdefault(name, []).append(fn)

    def remove_listener(self, name, fn):
        self._listeners[name] = [f for f in self._listeners.get(name, []) if f is not fn]

    def send(self, method, *args):
        if not self._status["connected"]:
            raise IbNotConnected("Not connected to TWS")
        self.sent.append((method, args))
        if method == "placeOrder" and self.gate is not None:
            self.gate.wait(5)
        ids = {"$id": args[0] if args and isinstance(args[0], int) else -1, "$ref": self.request_ref}
        answers = self.answers
        if ONCE_PLACED in answers and "placeOrder" in self.methods():  # TWS has the order from now on
            answers = dict(answers, **answers[ONCE_PLACED])
        for name, event_args in answers.get(method, NOTHING_FOUND.get(method, [])):
            self.deliver(name, tuple(build(event_args, ids, self.shared)))

    def call(self, method, req_id, *args, rows=(), end, timeout=None):
        request = ib_requests.Request(method, lambda name, _args: name == end)
        with self.requests.pending(req_id, request):
            self.send(method, req_id, *args)
            request.wait(timeout)
            return request.rows(rows)

    # what the reader thread would do
    def deliver(self, name: str, args: tuple) -> None:
        if name == "$disconnect":
            self._status = dict(DOWN)
            self.requests.fail_all()
            for fn in self._listeners.get("disconnected", []):
                fn()
        elif name == "error":
            req_id, code, text = args
            if code in ib_codes.NOTICE_CODES:
                self.requests.notice(req_id, code, text)
                return
            if ib_connection.is_read_only_error(code, text):
                self._status["read_only"] = True
            if not self.requests.error(req_id, code, text):
                for fn in self._listeners.get("error", []):
                    fn(req_id, code, text)
        elif not self.requests.event(args[0] if name in ib_session.ID_CALLBACKS else None, name, args):
            for fn in self._listeners.get(name, []):
                fn(*args)

    def methods(self):
        return [method for method, _ in self.sent]


class DeskTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.place = load("place")

    def config(self, **changes) -> Config:
        values = dict(key=KEY, data_dir=Path(self.dir.name), request_timeout_s=1.0)
        values.update(changes)
        return Config(**values)

    def desk(
        self, scenario=None, status=PAPER, config=None, request_ref=order_guard.order_ref_for("req-1"), answers=None
    ):
        answers = answers if answers is not None else (self.place["scenarios"][scenario] if scenario else {})
        conn = ReplayConnection(status, answers, {"aapl_call": self.place["aapl_call"]}, request_ref)
        return ib_orders.OrderDesk(conn, config or self.config()), conn

    def audit_lines(self):
        path = Path(self.dir.name) / "order_audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def fails(self, code, fn, *args):
        with self.assertRaises(AgentError) as caught:
            fn(*args)
        self.assertEqual(caught.exception.code, code, caught.exception.message)
        return caught.exception


def option_order(**changes):
    order = {
        "contract": {"ticker": "AAPL", "sec_type": "OPT", "expiration": "20300118", "strike": 150, "right": "C"},
        "action": "SELL",
        "quantity": 1,
        "order_type": "LMT",
        "limit_price": 2.5,
    }
    order.update(changes)
    return order


class AccountTest(DeskTestCase):
    def setUp(self):
        super().setUp()
        self.account = load("account")

    def test_positions_skip_closed_and_repeated_rows_and_cancel_the_subscription(self):
        desk, conn = self.desk(answers=self.account["positions"])
        positions = desk.account.positions()["positions"]
        self.assertEqual(conn.methods(), ["reqPositions", "cancelPositions", "reqAccountUpdates", "reqAccountUpdates"])
        self.assertEqual(len(positions), 2)
        stock, call = positions
        self.assertEqual(
            stock,
            {
                "account": "DU1234567",
                "con_id": 265598,
                "ticker": "AAPL",
                "sec_type": "STK",
                "expiration": None,
                "strike": None,
                "right": None,
                "multiplier": 1,
                "quantity": 200,
                "avg_cost": 171.2534,
                "market_price": 182.5,
                "market_value": 36500.0,
                "unrealized_pnl": 2249.32,
                "realized_pnl": 120.4,
            },
        )
        self.assertEqual(
            (call["expiration"], call["strike"], call["right"], call["multiplier"], call["quantity"]),
            ("20300118", 150.0, "C", 100, -2),
        )

    def test_futures_and_futures_options_keep_their_expiration_stocks_and_options_unchanged(self):
        desk, conn = self.desk(answers=self.account["positions_all_types"])
        rows = {row["sec_type"]: row for row in desk.account.positions()["positions"]}
        contract = ("ticker", "sec_type", "expiration", "strike", "right", "multiplier", "quantity")
        self.assertEqual(
            {kind: tuple(row[k] for k in contract) for kind, row in rows.items()},
            {
                "STK": ("AAPL", "STK", None, None, None, 1, 200),
                "OPT": ("AAPL", "OPT", "20300118", 150.0, "C", 100, -2),
                "FUT": ("ES", "FUT", "20300315", None, None, 50, 1),
                "FOP": ("ES", "FOP", "20300315", 5800.0, "P", 50, -3),
            },
        )
        self.assertEqual((rows["FUT"]["con_id"], rows["FOP"]["con_id"]), (620731015, 702418311))

    def test_an_expiration_is_a_date_or_a_contract_month_without_a_time(self):
        for given, expected in (
            ("20300315", "20300315"),
            ("203003", "203003"),
            ("20300315 08:30 US/Central", "20300315"),
            ("", None),
            ("  ", None),
        ):
            contract = Contract()
            contract.symbol, contract.secType, contract.lastTradeDateOrContractMonth = "ES", "FUT", given
            self.assertEqual(order_book.contract_dict(contract)["expiration"], expected, given)
        contract.lastTradeDate = "20300315"  # ibapi 10.4x's protobuf decoder may fill only this one
        self.assertEqual(order_book.contract_dict(contract)["expiration"], "20300315")

    def test_positions_time_out_when_tws_never_ends_them(self):
        desk, conn = self.desk(answers={"reqPositions": self.account["positions"]["reqPositions"][:1]})
        self.fails(TIMEOUT, desk.account.positions)
        self.assertEqual(conn.methods(), ["reqPositions", "cancelPositions"])

    def test_account_summary(self):
        desk, conn = self.desk(answers=self.account["account_summary"])
        accounts = desk.account.summary()["accounts"]
        self.assertEqual(
            accounts,
            {
                "DU1234567": {
                    "net_liquidation": 1012345.67,
                    "total_cash": 987654.32,
                    "buying_power": 4049382.68,
                    "available_funds": 1001234.0,
                    "excess_liquidity": 1003456.1,
                    "currency": "USD",
                }
            },
        )
        method, args = conn.sent[0]
        self.assertEqual((method, args[1]), ("reqAccountSummary", "All"))
        self.assertEqual(set(args[2].split(",")), set(order_account.SUMMARY_TAGS))
        self.assertEqual(conn.sent[1], ("cancelAccountSummary", (args[0],)))

    def test_open_orders_of_all_clients_say_which_client_placed_each(self):
        desk, conn = self.desk(answers=self.account["open_orders"], status=dict(PAPER, client_id=17))
        orders = desk.open_orders()["orders"]
        self.assertEqual(conn.methods(), ["reqAllOpenOrders"])
        mine, manual = orders
        self.assertEqual(
            mine,
            {
                "order_id": 12,
                "perm_id": 1888000012,
                "client_id": 17,
                "account": "DU1234567",
                "contract": {
                    "con_id": 712446551,
                    "ticker": "AAPL",
                    "sec_type": "OPT",
                    "expiration": "20300118",
                    "strike": 150.0,
                    "right": "C",
                    "multiplier": 100,
                    "currency": "USD",
                    "trading_class": "AAPL",
                },
                "action": "SELL",
                "quantity": 1,
                "order_type": "LMT",
                "limit_price": 2.5,
                "tif": "DAY",
                "status": "Submitted",
                "filled": 0,
                "remaining": 1,
                "avg_fill_price": None,
                "order_ref": "req-abc",
                "cancellable": True,
                "warning": None,
                "reason": None,
            },
        )  # placed under this agent's client id 17
        self.assertEqual(
            (
                manual["client_id"],
                manual["order_type"],
                manual["limit_price"],
                manual["status"],
                manual["filled"],
                manual["avg_fill_price"],
                manual["order_ref"],
            ),
            (0, "STP", None, "PreSubmitted", 40, 151.25, None),
        )
        self.assertFalse(manual["cancellable"])  # placed in TWS (client 0): not this agent's to cancel

    def test_open_orders_in_read_only_mode(self):
        desk, _ = self.desk(
            answers={
                "reqAllOpenOrders": [
                    [
                        "error",
                        [
                            -1,
                            321,
                            "Error validating request.-'a0' : cause - "
                            "The API interface is currently in Read-Only mode.",
                        ],
                    ]
                ]
            }
        )
        error = self.fails(READ_ONLY_API, desk.open_orders)
        self.assertIn("Read-Only", error.message)

    def test_a_lost_connection_ends_the_wait_at_once(self):
        desk, _ = self.desk(answers={"reqPositions": [["$disconnect", []]]})
        self.fails(IB_NOT_CONNECTED, desk.account.positions)


CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "tws-captures" / "server_frames.jsonl"


class PositionCallbacks(EWrapper):
    def __init__(self):
        super().__init__()
        self.events = []

    def position(self, account, contract, position, avgCost):
        self.events.append(["position", [account, contract, position, avgCost]])


class PositionsOffTheWireTest(DeskTestCase):
    """The same positions decoded by ibapi from TWS's bytes: the text message (the layout of a real
    capture) below 207, the protobuf message from 207 on; futures keep their expiration on both."""

    FUT = {
        "conId": 620731015,
        "symbol": "ES",
        "secType": "FUT",
        "lastTradeDateOrContractMonth": "20300315",
        "multiplier": "50",
        "exchange": "CME",
        "currency": "USD",
        "localSymbol": "ESH0",
        "tradingClass": "ES",
    }
    FOP = dict(FUT, conId=702418311, secType="FOP", strike=5800.0, right="P", localSymbol="ESH0 P5800")

    def positions(self, events) -> dict:
        desk, _ = self.desk(answers={"reqPositions": events + [["positionEnd", []]]})
        return {row["sec_type"]: row for row in desk.account.positions()["positions"]}

    def test_text_messages_in_the_layout_of_a_real_capture(self):
        if not CAPTURES.exists():
            self.skipTest(f"{CAPTURES} is not there")
        frames = [json.loads(line) for line in CAPTURES.read_text(encoding="utf-8").splitlines() if line.strip()]
        (frame,) = [f for f in frames if f["name"] == "position AMZN STK"]
        captured = base64.b64decode(frame["payload_b64"]).split(b"\0")[1:-1]  # after the id; NUL-ended
        self.assertEqual(len(captured), 15, captured)  # version 3: account, 11 contract fields, position, cost
        callbacks = PositionCallbacks()
        decoder = Decoder(callbacks, frame["server_version"])
        decoder.interpret(captured, frame["msg_id"])
        for spec, quantity, cost in ((self.FUT, b"1", b"291312.5"), (self.FOP, b"-3", b"2140.0")):
            fields = list(captured)
            fields[2:14] = [
                str(spec.get(k, "")).encode()
                for k in (
                    "conId",
                    "symbol",
                    "secType",
                    "lastTradeDateOrContractMonth",
                    "strike",
                    "right",
                    "multiplier",
                    "exchange",
                    "currency",
                    "localSymbol",
                    "tradingClass",
                )
            ] + [quantity]
            fields[14] = cost
            fields[6] = fields[6] or b"0.0"  # strike: TWS writes 0.0 for what has none
            decoder.interpret(fields, frame["msg_id"])
        rows = self.positions(callbacks.events)
        self.assertEqual(
            (rows["STK"]["ticker"], rows["STK"]["expiration"], rows["STK"]["quantity"]), ("AMZN", None, 15)
        )
        self.assertEqual(
            (rows["FUT"]["expiration"], rows["FUT"]["multiplier"], rows["FUT"]["quantity"]), ("20300315", 50, 1)
        )
        self.assertEqual(
            (rows["FOP"]["expiration"], rows["FOP"]["strike"], rows["FOP"]["right"]), ("20300315", 5800.0, "P")
        )

    def test_protobuf_messages(self):
        callbacks = PositionCallbacks()
        decoder = Decoder(callbacks, MIN_SERVER_VER_PROTOBUF_ACCOUNTS_POSITIONS)
        for spec, quantity in ((self.FUT, "1"), (self.FOP, "-3")):
            message = PositionProto(account="DU1234567", position=quantity, avgCost=2140.0)
            fields = dict(spec, multiplier=float(spec["multiplier"]))
            for name, value in fields.items():
                setattr(message.contract, name, value)
            decoder.processProtoBuf(message.SerializeToString(), IN.POSITION_DATA)
        rows = self.positions(callbacks.events)
        self.assertEqual(
            (rows["FUT"]["expiration"], rows["FUT"]["multiplier"], rows["FUT"]["quantity"]), ("20300315", 50, 1)
        )
        self.assertEqual(
            (rows["FOP"]["expiration"], rows["FOP"]["strike"], rows["FOP"]["right"], rows["FOP"]["quantity"]),
            ("20300315", 5800.0, "P", -3),
        )


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


class ExactlyOnceTest(DeskTestCase):
    def test_a_repeated_request_id_in_the_same_process_places_one_order(self):
        desk, conn = self.desk("placed")
        first = desk.place_order("req-1", option_order())
        self.assertEqual(desk.place_order("req-1", option_order()), first)
        self.assertEqual(conn.methods().count("placeOrder"), 1)
        self.assertEqual([line["decision"] for line in self.audit_lines()], ["allowed", "duplicate"])

    def test_concurrent_repeats_wait_for_the_first(self):
        desk, conn = self.desk("placed")
        conn.gate = threading.Event()
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(desk.place_order("req-1", option_order()))) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        conn.gate.set()
        for thread in threads:
            thread.join(10)
        self.assertEqual(len(results), 3)
        self.assertEqual({r["order_id"] for r in results}, {32})
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_a_repeated_request_id_after_an_agent_restart_places_nothing(self):
        desk, _ = self.desk("placed")
        first = desk.place_order("req-1", option_order())
        desk, conn = self.desk("placed")  # a new process: only the files remain
        self.assertEqual(desk.place_order("req-1", option_order()), first)
        self.assertEqual(conn.methods(), LOOKUP)  # only to give the status as it is now (none found: as recorded)

    def test_a_repeat_gets_the_status_as_it_is_now(self):
        desk, _ = self.desk("placed")
        self.assertEqual(desk.place_order("req-1", option_order())["status"], "PreSubmitted")
        desk, conn = self.desk("found_among_completed")
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 32, "status": "Filled"})
        self.assertNotIn("placeOrder", conn.methods())

    def test_a_rejected_request_repeats_its_error_without_sending(self):
        desk, _ = self.desk("rejected")
        self.fails(IB_ERROR, desk.place_order, "req-1", option_order())
        desk, conn = self.desk("placed")
        self.assertEqual(self.fails(IB_ERROR, desk.place_order, "req-1", option_order()).ib_code, 201)
        self.assertEqual(conn.sent, [])

    def test_an_unknown_outcome_is_looked_up_by_order_ref_before_placing_again(self):
        desk, conn = self.desk("no_answer")
        self.fails(TIMEOUT, desk.place_order, "req-1", option_order())
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.SENDING)
        desk, conn = self.desk("found_by_order_ref")
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 31, "status": "Submitted"})
        self.assertEqual(conn.methods(), ["reqAllOpenOrders"])
        self.assertEqual(desk.request_ids.get("req-1")["order_ref"], order_guard.order_ref_for("req-1"))
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.PLACED)
        self.assertEqual(self.audit_lines()[-1]["decision"], "duplicate: found in TWS by orderRef")

    def test_a_lost_connection_while_placing_is_looked_up_among_completed_orders(self):
        desk, conn = self.desk("disconnected_while_placing")
        self.fails(IB_NOT_CONNECTED, desk.place_order, "req-1", option_order())
        desk, conn = self.desk("found_among_completed")
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 32, "status": "Filled"})
        self.assertEqual(conn.methods(), ["reqAllOpenOrders", "reqCompletedOrders"])

    def test_an_order_tws_never_got_is_placed_once_it_is_known_missing(self):
        """Known missing: no record (a new id, or a store lost), or one of an attempt stopped before
        the order was sent; TWS shows no order with its orderRef."""
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.UNKNOWN, order_id=7, maybe_sent=False)
        desk, conn = self.desk("not_found_then_placed")
        self.assertEqual(desk.place_order("req-1", option_order())["status"], "Submitted")
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails", "placeOrder"])

    def test_an_order_that_may_have_reached_tws_is_never_placed_again(self):
        """A "sending" record (a timeout, a lost connection, a crash while placing) and no such order
        in TWS: it may be held behind a precaution dialog. TIMEOUT while recent, then "cannot tell";
        never a second placeOrder (issue 16)."""
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        desk, conn = self.desk("not_found_then_placed")
        error = self.fails(TIMEOUT, desk.place_order, "req-1", option_order())
        self.assertIn("does not show it yet", error.message)
        self.assertIn("order 7 with orderRef mat-9456bdfa12ea76959c94a357", error.message)
        with mock.patch.object(time, "time", return_value=time.time() + ib_orders.RECENTLY_SENT_S + 1):
            error = self.fails(ORDER_BLOCKED, desk.place_order, "req-1", option_order())
        self.assertIn("cannot tell whether order 7 with orderRef mat-", error.message)
        self.assertIn("Check TWS's orders and trades", error.message)
        self.assertEqual(conn.methods(), LOOKUP * 2)
        self.assertEqual([line["decision"].split(":")[0] for line in self.audit_lines()], ["not sent", "refused"])
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.SENDING)

    def test_an_order_filled_on_an_earlier_day_is_found_among_executions(self):
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        execution = {"Execution": {"execId": "0001.01", "orderId": 7, "orderRef": "$ref", "shares": {"Decimal": "1"}}}
        desk, conn = self.desk(
            answers={"reqExecutions": [["execDetails", ["$id", "$aapl_call", execution]], ["execDetailsEnd", ["$id"]]]}
        )
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 7, "status": "Filled"})
        self.assertEqual(conn.methods(), LOOKUP)
        self.assertEqual(conn.sent[2][1][1].lastNDays, 7)

    def test_the_lookup_failing_never_places_blindly(self):
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        desk, conn = self.desk(
            answers={"reqAllOpenOrders": [["error", [-1, 321, "The API interface is currently in Read-Only mode."]]]}
        )
        self.fails(READ_ONLY_API, desk.place_order, "req-1", option_order())
        self.assertNotIn("placeOrder", conn.methods())


class StoreFailureTest(DeskTestCase):
    def test_an_id_store_that_cannot_be_written_sends_no_order(self):
        desk, conn = self.desk("placed")
        desk.request_ids.path = Path(self.dir.name) / "missing-folder" / "order_ids.json"
        error = self.fails("INTERNAL", desk.place_order, "req-1", option_order())
        self.assertIn("the order was not sent", error.message)
        self.assertNotIn("placeOrder", conn.methods())

    def test_an_outcome_that_cannot_be_written_still_answers(self):
        desk, conn = self.desk("placed")
        real_put = desk.request_ids.put

        def put(request_id, state, **fields):
            if state != order_guard.SENDING:
                raise OSError(28, "No space left on device")
            real_put(request_id, state, **fields)

        desk.request_ids.put = put
        with self.assertLogs("ib_data_agent.orders", "ERROR"):
            self.assertEqual(desk.place_order("req-1", option_order())["order_id"], 32)
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.SENDING)


class Boom(RuntimeError):
    """The injected unexpected exception; its text holds the API key, which must never come out."""

    def __init__(self):
        super().__init__(f"injected failure {KEY}")


def failing_send(conn, method, reached_tws: bool, error=None):
    """conn.send raises on its first `method`: after the message went out (it is in conn.sent, TWS
    never answers it) or before anything left."""
    real_send = conn.send
    failed = []

    def send(name, *args):
        if name == method and not failed:
            failed.append(name)
            if reached_tws:
                conn.sent.append((name, args))
            raise error or Boom()
        return real_send(name, *args)

    conn.send = send


class UnexpectedErrorTest(DeskTestCase):
    """An unexpected exception anywhere in an order action: audited (INTERNAL, with the exception's
    class), the id record "unknown" when the order may have reached TWS, one console line, and a
    repeat of the id looks in TWS before placing anything."""

    def setUp(self):
        super().setUp()
        found = self.place["scenarios"]["found_by_order_ref"]["reqAllOpenOrders"]
        # TWS shows the order (as order 31) once a placeOrder reached it: the lookup before placing finds nothing
        self.reaches_tws = dict(self.place["scenarios"]["placed"], **{ONCE_PLACED: {"reqAllOpenOrders": found}})
        self.already_in_tws = dict(self.place["scenarios"]["placed"], reqAllOpenOrders=found)
        self.never_reached = self.place["scenarios"]["not_found_then_placed"]

    def internal(self, fn, *args) -> Tuple[AgentError, logging.LogRecord]:
        with self.assertLogs("ib_data_agent.orders", "WARNING") as logs:
            error = self.fails(INTERNAL, fn, *args)
        (record,) = logs.records  # one console line
        self.assertEqual(record.levelno, logging.ERROR)
        self.assertIsInstance(record.exc_info[1], Exception)  # the traceback goes to the log file
        self.assertNotIn(KEY, error.message)
        self.assertNotIn(KEY, record.getMessage())
        return error, record

    def last_audit(self, decision: str, exception: str = "Boom") -> dict:
        line = self.audit_lines()[-1]
        self.assertEqual(
            (line["decision"], line["outcome"]["error"], line["outcome"]["exception"]),
            (decision, "INTERNAL", exception),
        )
        self.assertNotIn(KEY, (Path(self.dir.name) / "order_audit.jsonl").read_text())
        return line

    def state(self, request_id="req-1"):
        record = self.desk_.request_ids.get(request_id)
        return record and record["state"]

    def test_inside_the_ibapi_call_after_the_order_went_out(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True)
        error, record = self.internal(self.desk_.place_order, "req-1", option_order())
        for words in (
            "(Boom)",
            "order 32 SELL 1 AAPL 20300118 150 C @ 2.5",
            "may have reached TWS",
            "order 32 with orderRef mat-9456bdfa12ea76959c94a357",
            "looks in TWS first",
            "log file",
        ):
            self.assertIn(words, error.message)
        self.assertIn("req-1", record.getMessage())
        self.assertIn("may have reached TWS", record.getMessage())
        line = self.last_audit("allowed")
        self.assertEqual((line["request_id"], line["order_id"]), ("req-1", 32))
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        self.assertEqual(self.desk_.request_ids.get("req-1")["order_id"], 32)

        again = self.desk_.place_order("req-1", option_order())  # the cloud repeats the id
        self.assertEqual(again, {"order_id": 31, "status": "Submitted"})
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails", "placeOrder", "reqAllOpenOrders"])
        self.assertEqual(self.audit_lines()[-1]["decision"], "duplicate: found in TWS by orderRef")
        self.assertEqual(self.state(), order_guard.PLACED)

    def test_an_ibapi_call_that_raised_is_looked_up_after_an_agent_restart_too(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True, error=AttributeError("primaryExchange"))
        self.internal(self.desk_.place_order, "req-1", option_order())
        self.last_audit("allowed", "AttributeError")
        self.desk_, conn = self.desk(answers=self.already_in_tws)  # a new process: only the files remain
        self.assertEqual(self.desk_.place_order("req-1", option_order())["order_id"], 31)
        self.assertEqual(conn.methods(), ["reqAllOpenOrders"])

    def test_ibapi_reporting_its_own_send_failure_is_not_taken_for_tws_rejecting_the_order(self):
        """ibapi 10.4x catches an exception inside placeOrder and calls error(orderId, 512, ...) instead
        of raising: through conn.send (raised) or through the order's handler (delivered)."""
        raised = IbError("Order Sending Error - broken pipe", 512)
        delivered = {"placeOrder": [["error", ["$id", 512, "Order Sending Error - broken pipe"]]]}
        for how, answers in (("raised", self.reaches_tws), ("delivered", dict(self.reaches_tws, **delivered))):
            with self.subTest(how):
                self.desk_, conn = self.desk(answers=answers)
                if how == "raised":
                    failing_send(conn, "placeOrder", reached_tws=True, error=raised)
                error, _ = self.internal(self.desk_.place_order, f"req-{how}", option_order())
                self.assertIn("may have reached TWS", error.message)
                self.last_audit("allowed", "IbapiSendError")
                self.assertEqual(self.state(f"req-{how}"), order_guard.UNKNOWN)  # not "failed"

    def test_the_send_failure_codes_are_the_pinned_ibapis(self):
        self.assertEqual(
            ib_orders.IBAPI_SEND_FAILURES, {ibapi.errors.FAIL_SEND_ORDER.code(), ibapi.errors.FAIL_SEND_CORDER.code()}
        )

    def test_inside_the_ibapi_call_before_anything_went_out(self):
        self.desk_, conn = self.desk(answers=self.never_reached)
        failing_send(conn, "placeOrder", reached_tws=False)
        error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("may have reached TWS", error.message)  # the agent cannot tell where ibapi failed
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        # TWS does not show it: never placed again under this id (it may be behind a precaution dialog)
        self.assertIn(
            "does not show it yet", self.fails(TIMEOUT, self.desk_.place_order, "req-1", option_order()).message
        )
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails"] + LOOKUP)  # (the placeOrder raised)

    def test_after_the_id_was_recorded_but_before_the_order_was_sent(self):
        self.desk_, conn = self.desk(answers=self.never_reached)
        built = ib_orders.limit_order(
            order_guard.order_ref_for("req-1"),
            dict(order_guard.parse_order_params("place-order", option_order()), account="DU1234567"),
        )
        patcher = mock.patch.object(ib_orders, "limit_order", side_effect=[Boom(), built])
        patcher.start()
        self.addCleanup(patcher.stop)
        error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("before the order was sent: nothing reached TWS", error.message)
        self.assertIn("looks in TWS first", error.message)
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails"])
        self.last_audit("not sent: INTERNAL")
        self.assertEqual(self.state(), order_guard.UNKNOWN)  # kept safe: a repeat still looks ...
        self.assertFalse(self.desk_.request_ids.get("req-1")["maybe_sent"])  # ... and may then place it
        self.assertEqual(self.desk_.place_order("req-1", option_order())["status"], "Submitted")
        self.assertEqual(
            conn.methods(), LOOKUP + ["reqContractDetails"] + LOOKUP + ["reqContractDetails", "placeOrder"]
        )

    def test_before_anything_was_sent_or_recorded(self):
        self.desk_, conn = self.desk("placed")
        with mock.patch.object(ib_orders, "qualify_contract", side_effect=Boom()):
            error, record = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn(
            "placing order SELL 1 AAPL 20300118 150 C @ 2.5 LMT DAY before the order was sent: nothing reached TWS",
            error.message,
        )
        self.assertEqual(conn.methods(), LOOKUP)
        self.last_audit("not sent: INTERNAL")
        self.assertIsNone(self.state())  # nothing recorded: the repeat looks in TWS, then places the order once
        self.assertEqual(self.desk_.place_order("req-1", option_order()), {"order_id": 32, "status": "PreSubmitted"})
        self.assertEqual(conn.methods(), LOOKUP * 2 + ["reqContractDetails", "placeOrder"])

    def test_before_sending_a_repeat_of_an_unfinished_id_it_stays_unfinished(self):
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        with mock.patch.object(self.desk_, "_find_in_tws", side_effect=Boom()):
            error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("looks in TWS first", error.message)
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        self.assertNotIn("placeOrder", conn.methods())

    def test_after_tws_answered(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        with mock.patch.object(self.desk_, "_first_status", side_effect=Boom()):
            error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("may have reached TWS", error.message)
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        self.assertEqual(self.desk_.place_order("req-1", option_order())["order_id"], 31)
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_after_the_answer_was_stored_the_answer_stands(self):
        self.desk_, conn = self.desk("placed")
        with mock.patch.object(ib_orders.log, "info", side_effect=Boom()):
            error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("after TWS answered (PreSubmitted)", error.message)
        self.last_audit("allowed")
        self.assertEqual(self.state(), order_guard.PLACED)
        self.assertEqual(self.desk_.place_order("req-1", option_order()), {"order_id": 32, "status": "PreSubmitted"})
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_a_store_that_cannot_record_unknown_still_leaves_the_id_unfinished(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True)
        real_put = self.desk_.request_ids.put

        def put(request_id, state, **fields):
            if state == order_guard.UNKNOWN:
                raise OSError(28, "No space left on device")
            real_put(request_id, state, **fields)

        self.desk_.request_ids.put = put
        with self.assertLogs("ib_data_agent.orders", "ERROR") as logs:
            self.fails(INTERNAL, self.desk_.place_order, "req-1", option_order())
        self.assertEqual(len(logs.records), 2)
        self.assertEqual(self.state(), order_guard.SENDING)
        self.last_audit("allowed")
        self.assertEqual(self.desk_.place_order("req-1", option_order())["order_id"], 31)
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_cancel_inside_the_ibapi_call_and_before_it(self):
        cancel = load("cancel")["scenarios"]["cancelled"]
        desk, conn = self.desk(answers=cancel)
        failing_send(conn, "cancelOrder", reached_tws=True)
        error, _ = self.internal(desk.cancel_order, "c-1", {"order_id": 31})
        self.assertIn(
            "cancelling order 31 while sending it: the cancel may have reached TWS. Check order 31", error.message
        )
        self.assertEqual(self.audit_lines()[-1]["decision"], "allowed")
        with mock.patch.object(order_guard, "account_refusal", side_effect=Boom()):
            error, _ = self.internal(desk.cancel_order, "c-2", {"order_id": 31})
        self.assertIn("before the cancel was sent: nothing reached TWS", error.message)
        lines = self.audit_lines()
        self.assertEqual(
            [(line["request_id"], line["action"], line["order_id"], line["outcome"]["exception"]) for line in lines],
            [("c-1", "cancel-order", 31, "Boom"), ("c-2", "cancel-order", 31, "Boom")],
        )
        self.assertEqual(lines[-1]["decision"], "not sent: INTERNAL")
        self.assertEqual(desk.cancel_order("c-3", {"order_id": 31}), {"order_id": 31, "status": "Cancelled"})

    def test_through_the_worker_lane_the_console_gets_one_line(self):
        desk, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True)
        runner = relay_actions.RequestRunner(conn, scanner=None, desk=desk, workers=1, queue_size=4)
        runner.start()
        self.addCleanup(runner.stop)
        job = StandInJob("place-order", option_order(), "req-1")
        with self.assertLogs(level="DEBUG") as logs:
            runner.submit(job)
            deadline = time.monotonic() + 10  # the runner logs its outcome just after finishing the job
            while not any(r.name == "ib_data_agent.requests" for r in logs.records) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.assertEqual(job.error.code, INTERNAL)
        shown = [r for r in logs.records if r.levelno >= logging.INFO]
        self.assertEqual(len(shown), 1, [r.getMessage() for r in shown])
        self.assertIn("may have reached TWS", shown[0].getMessage())


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
