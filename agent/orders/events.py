"""Order events (DESIGN.md 4, v1.1 `event` frames): what TWS tells this client about orders, pushed
to the cloud as {"type":"event","event":"order","seq":n,"data":ORDER_EVENT} when it changes.

Which orders: those TWS reports to this client. That is every order placed under the agent's
client id (whoever asks, TWS sends their status changes and fills to the client that placed them),
the orders TWS lists in answer to the agent's own open-orders requests (all clients' orders, as a
snapshot), and, when the agent's client id is the one set as "Master API client ID" in TWS, status
changes of every client's orders. The agent asks nothing extra for events: reqAutoOpenOrders would
bind orders the trader places in TWS to the API client (client id 0 only), which changes how TWS
treats them, so it is not sent.

What counts as a change, per order (keyed by client id and order id, or by permId for an order
with no order id, e.g. one placed by hand in TWS):
- orderStatus: its status, filled, remaining, average and last fill price differ from the last
  ones seen (TWS repeats identical statuses: those push nothing). The first status the agent sees
  of an order is a change (a new order, or one the agent had not seen before).
- execDetails of a live fill (reqId -1; executions asked for with reqExecutions are history): the
  fill moves filled / average / last fill price (last_fill_price = the execution's price). A fill
  whose orderStatus already said as much pushes nothing.
- errors about a known order: 201 (rejected: status "Inactive", IB's status for a rejected order),
  202 (cancelled: status "Cancelled", its text carries TWS's reason) and the warnings 399 / 404
  (the order stays live; status unchanged): each is an event carrying ib_code and message. Other
  errors about an order id answer a request on it (a cancel of a filled order: 161) and leave the
  order as it is; errors about an id TWS never showed as an order (an order refused at once, a
  what-if preview) push nothing: no order exists, and the request that sent it has the answer.
openOrder only fills in the order's contract and terms (never a status: TWS follows it with the
orderStatus); a what-if openOrder (a preview) is no order at all.

`seq` counts per agent process from 1. Events are best effort (never stored, never sent again):
a frame that cannot go out (the relay link is down, or the send queue is full) still uses its
seq, so the cloud sees the gap and asks open-orders. Callbacks arrive on the TWS reader thread,
which must never wait on the relay: frames are queued and pushed from a thread of their own.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Callable, Dict, Optional, Tuple

from agent import log as agent_log
from agent.ib.connection import REQ_ID_FIRST
from agent.orders.book import contract_dict, number, order_row, quantity
from agent.orders.guard import utc_now_iso
from agent.orders.wait import ORDER_WARNING_CODES

log = agent_log.logger("orders")

OBSERVED = ("openOrder", "orderStatus", "execDetails", "error")
# Errors that end an order, and the status the event gives it.
ENDING_CODES = {201: "Inactive", 202: "Cancelled"}
LIVE_FILL_REQ_ID = -1  # execDetails TWS sends unasked (a fill), as opposed to reqExecutions' answers
MAX_ORDERS = 2000  # orders remembered (least recently changed dropped first): memory stays bounded
MAX_QUEUED = 1000  # frames waiting for the relay; beyond, dropped (their seq still counts)
EXEC_SIDES = {"BOT": "BUY", "SLD": "SELL"}
ORDER_FIELDS = (
    "order_id",
    "perm_id",
    "client_id",
    "account",
    "contract",
    "action",
    "quantity",
    "order_type",
    "limit_price",
    "order_ref",
)
STATE_FIELDS = ("status", "filled", "remaining", "avg_fill_price", "last_fill_price")


def _key(client_id: Optional[int], order_id: Optional[int], perm_id: Optional[int]) -> Tuple:
    return (client_id, order_id) if order_id else ("perm", perm_id)


class OrderEvents:
    """Watches TWS's order callbacks on `conn` (IBConnection.add_observer) and pushes each change
    with push(frame) -> bool (RelayLink.push: False when it did not go out)."""

    def __init__(self, conn, push: Callable[[dict], bool]):
        self._conn = conn
        self._push = push
        self._lock = threading.Lock()
        self._orders: "collections.OrderedDict[Tuple, dict]" = collections.OrderedDict()
        self._fills: Dict[Tuple, set] = {}  # order key -> execIds seen (TWS may repeat one)
        self._previews: "collections.deque[Tuple]" = collections.deque(maxlen=100)  # what-if order keys
        self._seq = 0
        self._queue: "queue.Queue[Optional[dict]]" = queue.Queue(MAX_QUEUED)
        self._reaching = True  # the last push went out (for one console line per outage)
        self._sender = threading.Thread(target=self._send_forever, name="order-events", daemon=True)
        self._sender.start()
        conn.add_observer(OBSERVED, self._observe)

    @property
    def seq(self) -> int:
        """The seq of the last event made (sent or not)."""
        return self._seq

    def close(self) -> None:
        self._queue.put(None)  # waits only while the queue is full, which the sender drains
        self._sender.join(5.0)

    # --- TWS's callbacks (reader thread: nothing here waits) ---

    def _observe(self, name: str, args: tuple) -> None:
        with self._lock:
            getattr(self, f"_on_{name}")(*args)

    def _entry(self, key: Tuple, **known) -> dict:
        entry = self._orders.get(key)
        if entry is None:
            entry = dict.fromkeys(ORDER_FIELDS + STATE_FIELDS)
            entry["contract"] = {}
            self._orders[key] = entry
            while len(self._orders) > MAX_ORDERS:
                dropped, _ = self._orders.popitem(last=False)
                self._fills.pop(dropped, None)
        self._orders.move_to_end(key)
        for field, value in known.items():
            if value is not None and entry[field] in (None, {}):
                entry[field] = value
        return entry

    def _on_openOrder(self, order_id, contract, order, state) -> None:
        key = _key(order.clientId, order_id, order.permId)
        if order.whatIf:
            self._previews.append(key)
            return
        row = order_row(order_id, contract, order, state)
        entry = self._entry(key)
        entry.update({field: row[field] for field in ORDER_FIELDS if row[field] not in (None, {})})

    def _on_orderStatus(self, order_id, status, filled, remaining, avg_price, perm_id, _parent, last, client_id, *_):
        key = _key(client_id, order_id, perm_id)
        if key in self._previews:
            return
        entry = self._entry(key, order_id=order_id or None, perm_id=perm_id or None, client_id=client_id)
        self._change(
            entry,
            status=status or None,
            filled=quantity(filled),
            remaining=quantity(remaining),
            avg_fill_price=number(avg_price) or None,
            last_fill_price=number(last) or None,
        )

    def _on_execDetails(self, req_id, contract, execution) -> None:
        if req_id != LIVE_FILL_REQ_ID:
            return
        key = _key(execution.clientId, execution.orderId, execution.permId)
        seen = self._fills.setdefault(key, set())
        if execution.execId in seen:
            return
        seen.add(execution.execId)
        entry = self._entry(
            key,
            order_id=execution.orderId or None,
            perm_id=execution.permId or None,
            client_id=execution.clientId,
            account=execution.acctNumber or None,
            contract=contract_dict(contract),
            action=EXEC_SIDES.get(execution.side),
            order_ref=execution.orderRef or None,
        )
        filled = quantity(execution.cumQty)
        remaining = entry["remaining"]
        if filled is not None and entry["quantity"] is not None:
            remaining = entry["quantity"] - filled
        self._change(
            entry,
            filled=filled,
            remaining=remaining,
            avg_fill_price=number(execution.avgPrice) or None,
            last_fill_price=number(execution.price) or None,
        )

    def _on_error(self, req_id, ib_code, text) -> None:
        if not 0 < req_id < REQ_ID_FIRST or (ib_code not in ENDING_CODES and ib_code not in ORDER_WARNING_CODES):
            return
        key = (self._conn.status().get("client_id"), req_id)
        entry = self._orders.get(key)
        if entry is None or entry["status"] is None:  # no order TWS showed: nothing changed for the cloud
            return
        self._orders.move_to_end(key)
        entry["status"] = ENDING_CODES.get(ib_code, entry["status"])
        self._emit(entry, ib_code, text)

    def _change(self, entry: dict, **state) -> None:
        state = {field: value for field, value in state.items() if value is not None}  # unknown: kept as it was
        if all(entry[field] == value for field, value in state.items()):
            return  # TWS repeating itself
        entry.update(state)
        self._emit(entry)

    def _emit(self, entry: dict, ib_code: Optional[int] = None, message: Optional[str] = None) -> None:
        """Under the lock: the next seq, and the frame queued for the sender (or dropped: the seq
        is used all the same, so the cloud sees a gap)."""
        self._seq += 1
        data = {field: entry[field] for field in ORDER_FIELDS + STATE_FIELDS}
        data.update(contract=dict(entry["contract"]), ib_code=ib_code, message=message, time=utc_now_iso())
        frame = {"type": "event", "event": "order", "seq": self._seq, "data": data}
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            log.debug("order event %s dropped: %s events wait for the relay", self._seq, MAX_QUEUED)

    # --- the sender thread ---

    def _send_forever(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            sent = False
            try:
                sent = self._push(frame)
            except Exception:
                log.exception("Pushing order event %s failed", frame["seq"])
            if sent != self._reaching:
                self._reaching = sent
                data = frame["data"]
                if sent:
                    log.info("Order events reach the cloud again (from event %s)", frame["seq"])
                else:
                    log.info(
                        "Order event %s (order %s %s) not sent: the relay is not connected; the cloud sees the "
                        "gap in seq and asks open-orders",
                        frame["seq"],
                        data["order_id"] or data["perm_id"],
                        data["status"],
                    )
