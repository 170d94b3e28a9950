"""OrderEvents (agent/orders/events.py) fed TWS's order callbacks as ibapi builds them, through the
observer hook of a stand-in connection; and the preview answer of an ibapi OrderState. What
counts as a change, what is no order at all, and seq with frames that could not go out."""

from __future__ import annotations

import types
import unittest
from decimal import Decimal

from ibapi.contract import Contract
from ibapi.execution import Execution
from ibapi.order import Order
from ibapi.order_state import OrderState

from agent.errors import ORDER_BLOCKED, AgentError
from agent.orders import events as order_events
from agent.orders.guard import AuditError
from agent.orders.preview import answer_of, blocked, preview_order

CLIENT_ID = 17


class ObservedConnection:
    """What OrderEvents uses of IBConnection: add_observer, and status() for its client id."""

    def __init__(self):
        self.observers = []

    def add_observer(self, names, fn):
        self.observers.append((tuple(names), fn))

    def status(self):
        return {"client_id": CLIENT_ID}

    def tws(self, name, *args):
        for names, fn in self.observers:
            if name in names:
                fn(name, args)


def option() -> Contract:
    contract = Contract()
    contract.conId, contract.symbol, contract.secType = 612947331, "AAPL", "OPT"
    contract.lastTradeDateOrContractMonth, contract.strike, contract.right = "20270115", 200.0, "C"
    contract.multiplier, contract.currency, contract.tradingClass = "100", "USD", "AAPL"
    return contract


def order(what_if: bool = False) -> Order:
    ib_order = Order()
    ib_order.action, ib_order.totalQuantity, ib_order.orderType, ib_order.lmtPrice = "BUY", Decimal(2), "LMT", 4.1
    ib_order.clientId, ib_order.permId, ib_order.account, ib_order.orderRef = CLIENT_ID, 900, "DU1234567", "mat-1"
    ib_order.whatIf = what_if
    return ib_order


def execution(exec_id: str, price: float, cum: int) -> Execution:
    fill = Execution()
    fill.execId, fill.orderId, fill.clientId, fill.permId = exec_id, 7, CLIENT_ID, 900
    fill.side, fill.shares, fill.cumQty, fill.price, fill.avgPrice = "BOT", Decimal(1), Decimal(cum), price, price
    fill.acctNumber, fill.orderRef = "DU1234567", "mat-1"
    return fill


class OrderEventsTest(unittest.TestCase):
    def setUp(self):
        self.conn = ObservedConnection()
        self.frames = []
        self.link_down_for = set()  # seqs whose push finds the relay down
        self.events = order_events.OrderEvents(self.conn, self.push)
        self.addCleanup(self.events.close)

    def push(self, frame) -> bool:
        if frame["seq"] in self.link_down_for:
            return False
        self.frames.append(frame)
        return True

    def settled(self) -> list:
        """The frames pushed, once the sender has pushed everything made so far (close() waits for it)."""
        self.events.close()
        return [f["data"] for f in self.frames]

    def status(self, status, filled=0, remaining=2, avg=0.0, last=0.0, order_id=7):
        self.conn.tws(
            "orderStatus", order_id, status, Decimal(filled), Decimal(remaining), avg, 900, 0, last, CLIENT_ID, "", 0.0
        )

    def test_a_status_a_fill_and_a_rejection_each_push_one_event_with_the_orders_terms(self):
        state = OrderState()
        state.status = "Submitted"
        self.conn.tws("openOrder", 7, option(), order(), state)  # terms only: TWS follows it with the status
        self.status("Submitted")
        self.status("Submitted")  # TWS repeating itself
        self.conn.tws("execDetails", -1, option(), execution("e1", 4.05, 1))
        self.conn.tws("execDetails", -1, option(), execution("e1", 4.05, 1))  # the same execution again
        self.status("Submitted", 1, 1, 4.05, 4.05)  # what the fill already said
        self.conn.tws("execDetails", 5, option(), execution("e0", 3.0, 1))  # reqExecutions' answer: history
        self.conn.tws("error", 7, 161, "Cancel attempted when order is not in a cancellable state")
        self.conn.tws("error", 7, 201, "Order rejected - reason:no margin")
        data = self.settled()
        self.assertEqual(
            [(d["status"], d["filled"], d["remaining"], d["last_fill_price"], d["ib_code"]) for d in data],
            [("Submitted", 0, 2, None, None), ("Submitted", 1, 1, 4.05, None), ("Inactive", 1, 1, 4.05, 201)],
        )
        first = data[0]
        self.assertEqual(
            {k: first[k] for k in ("order_id", "perm_id", "client_id", "account", "action", "quantity")},
            {
                "order_id": 7,
                "perm_id": 900,
                "client_id": CLIENT_ID,
                "account": "DU1234567",
                "action": "BUY",
                "quantity": 2,
            },
        )
        self.assertEqual((first["order_type"], first["limit_price"], first["order_ref"]), ("LMT", 4.1, "mat-1"))
        self.assertEqual(first["contract"]["strike"], 200.0)
        self.assertEqual(data[2]["message"], "Order rejected - reason:no margin")
        self.assertEqual([f["seq"] for f in self.frames], [1, 2, 3])

    def test_previews_and_orders_tws_never_showed_push_nothing(self):
        state = OrderState()
        state.status = "PreSubmitted"
        self.conn.tws("openOrder", 8, option(), order(what_if=True), state)
        self.conn.tws("orderStatus", 8, "PreSubmitted", Decimal(0), Decimal(2), 0.0, 900, 0, 0.0, CLIENT_ID, "", 0.0)
        self.conn.tws("error", 9, 201, "Order rejected - reason:refused at once")  # no order exists
        self.conn.tws("error", 1_000_000_001, 200, "No security definition")  # a request, not an order
        self.assertEqual(self.settled(), [])

    def test_a_frame_that_could_not_go_out_still_uses_its_seq(self):
        self.link_down_for = {2}
        self.status("PreSubmitted")
        self.status("Submitted")
        self.status("Cancelled", remaining=2)
        self.settled()
        self.assertEqual([f["seq"] for f in self.frames], [1, 3])  # the cloud sees 2 is missing

    def test_a_warning_keeps_the_status(self):
        self.status("PreSubmitted")
        self.conn.tws("error", 7, 399, "Order Message: Warning: your order will not be placed until ...")
        data = self.settled()
        self.assertEqual([(d["status"], d["ib_code"]) for d in data], [("PreSubmitted", None), ("PreSubmitted", 399)])


class PreviewAnswerTest(unittest.TestCase):
    def test_unset_figures_are_null_in_every_form_ibapi_gives_them(self):
        state = OrderState()  # as ibapi leaves it: margins "", commission UNSET_DOUBLE
        state.initMarginAfter = "1.7976931348623157E308"  # Double.MAX_VALUE as TWS writes it (text)
        state.initMarginChange, state.commissionAndFees, state.commissionAndFeesCurrency = "1230.5", 0.65, "USD"
        answer = answer_of(state)
        self.assertEqual((answer["allowed"], answer["blocked_by"]), (True, None))
        self.assertEqual((answer["commission"], answer["commission_currency"]), (0.65, "USD"))
        self.assertEqual(answer["init_margin_change"], 1230.5)
        self.assertIsNone(answer["init_margin_after"])
        self.assertIsNone(answer["maint_margin_change"])
        self.assertIsNone(answer["warning"])
        self.assertEqual(set(blocked("a rule")), set(answer))


class UnwritableAudit:
    def __init__(self, fails_check: bool):
        self.fails_check = fails_check

    def check(self):
        if self.fails_check:
            raise AuditError("the order audit log /x/order_audit.jsonl cannot be written (Permission denied)")

    def write(self, *line):
        raise AuditError("the order audit log /x/order_audit.jsonl cannot be written (No space left on device)")


class NoTws:
    def __getattr__(self, name):
        raise AssertionError(f"TWS was asked ({name})")


class PreviewAuditFailsClosedTest(unittest.TestCase):
    params = {"contract": {"ticker": "AAPL", "sec_type": "STK"}, "action": "BUY", "quantity": 1, "order_type": "LMT"}

    def preview(self, fails_check: bool) -> AgentError:
        config = types.SimpleNamespace(allow_orders="off", max_order_quantity=10, max_order_notional=25000.0)
        desk = types.SimpleNamespace(audit=UnwritableAudit(fails_check), config=config, conn=NoTws())
        with self.assertRaises(AgentError) as caught:
            preview_order(desk, "pv-1", dict(self.params, limit_price=100))
        self.assertEqual(caught.exception.code, ORDER_BLOCKED)
        return caught.exception

    def test_an_audit_log_that_cannot_be_written_blocks_the_preview_before_anything(self):
        self.assertIn("Permission denied", self.preview(fails_check=True).message)

    def test_a_preview_whose_line_could_not_be_written_gives_no_answer(self):
        self.assertIn("No space left", self.preview(fails_check=False).message)


if __name__ == "__main__":
    unittest.main()
