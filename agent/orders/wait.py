"""Waiting on TWS for orders (DESIGN.md 3, 4), on agent.ib.requests' one request layer: the request a
place or cancel waits on (order_request: the order warnings and notices never end it), the id-less
sweeps (positions, open and completed orders, an account's portfolio: one of a kind at a time), and
one lock per request id (_KeyedLocks). agent.orders.desk's OrderDesk, its OrderBook and Account use these.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Iterable, Iterator

from agent.errors import RequestTimeout
from agent.ib.codes import is_read_only_error
from agent.ib.requests import ORDERS, PORTFOLIO, POSITIONS, Request

# Order warnings that do not stop the order, beyond agent.ib.connection.NOTICE_CODES (which never reach
# a handler): 10349 "Order TIF was set to DAY based on order preset".
ORDER_NOTICE_CODES = frozenset((10349,))
# Warnings about an order that stays live (DESIGN.md 3): 399 "Order Message: ... Warning: your order
# will not be placed at the exchange until ..." (agent.ib.connection routes it as a notice), 404 "Order
# held while securities are located." (a short sale waiting for a borrow). The answer carries the
# text as `warning`; never a failure.
ORDER_WARNING_CODES = frozenset((399, 404))


def order_request(what: str, finished: Callable[[str, tuple], bool], successes: Iterable[int] = ()) -> Request:
    """The request a place or cancel waits on, keyed by its order id."""
    return Request(what, finished, successes=successes, warnings=ORDER_WARNING_CODES, ignored=ORDER_NOTICE_CODES)


class Sweeps:
    """The id-less requests (reqPositions, reqAllOpenOrders...): one of a kind at a time, since TWS's
    answers carry no id to tell two apart. conn is the IBConnection; timeout() the seconds to wait."""

    def __init__(self, conn, timeout: Callable[[], float]):
        self._conn = conn
        self._timeout = timeout
        self._locks = {POSITIONS: threading.Lock(), ORDERS: threading.Lock(), PORTFOLIO: threading.Lock()}

    @contextlib.contextmanager
    def open(self, kind: str, what: str, end: str, end_args: tuple = ()) -> Iterator[Request]:
        """The pending request of this kind, answered by the `end` callback (whose first arguments
        are `end_args`, when given). Read-Only API answers the id-less order requests with an error
        of id -1: an orders sweep claims it."""
        with self._locks[kind]:
            probe = getattr(self._conn, "wait_read_only_probe", None)
            if kind == ORDERS and probe is not None:  # its openOrderEnd must not end this sweep
                probe(self._timeout())
            request = Request(
                what,
                lambda name, args: name == end and args[: len(end_args)] == end_args,
                claims=is_read_only_error if kind == ORDERS else None,
            )
            with self._conn.requests.pending(kind, request):
                yield request


class _KeyedLocks:
    """One lock per request id, so a repeated id waits for the first attempt instead of racing it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: Dict[str, list] = {}

    @contextlib.contextmanager
    def hold(self, key: str, timeout: float):
        with self._lock:
            entry = self._held.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=timeout):
                raise RequestTimeout(f"request {key} is still being worked on; ask again later")
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._held[key]
