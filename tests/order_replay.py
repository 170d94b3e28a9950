"""The replay fixture of the OrderDesk tests (test_ib_orders*, test_orders_portfolio), against recorded
TWS callback sequences (tests/recorded/orders_*.json).

A ReplayConnection stands in for agent.ib.connection.IBConnection: every request the desk sends is
answered by replaying the recorded callbacks for that request, routed the way IBConnection routes
them (id callbacks to the registered handler, else to listeners; errors to on_error).
"""

from __future__ import annotations

import json
import tempfile
import threading
import unittest
from decimal import Decimal
from pathlib import Path

from ibapi.contract import Contract, ContractDetails
from ibapi.execution import Execution
from ibapi.order import Order
from ibapi.order_state import OrderState

from agent.config import Config
from agent.errors import AgentError, IbNotConnected
from agent.ib import codes as ib_codes
from agent.ib import connection as ib_connection
from agent.ib import requests as ib_requests
from agent.ib import session as ib_session
from agent.orders import desk as ib_orders
from agent.orders import guard as order_guard

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
