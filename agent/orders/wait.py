"""Waiting on TWS for one order exchange (DESIGN.md 3, 4): the handler a place, cancel or sweep
waits on (_Pending: what ended the wait first decides it, with the order warnings and notices
that never end it), an order id's handler that also feeds a concurrent open-orders sweep
(_Forwarding), and one lock per request id (_KeyedLocks). ib_orders' OrderDesk uses these.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from agent.errors import IB_NOT_CONNECTED, TIMEOUT, AgentError
from agent.ib.codes import error_for

# Order warnings that do not stop the order, beyond ib_connection.NOTICE_CODES (which never reach
# a handler): 10349 "Order TIF was set to DAY based on order preset".
ORDER_NOTICE_CODES = frozenset((10349,))
# Warnings about an order that stays live (DESIGN.md 3): 399 "Order Message: ... Warning: your order
# will not be placed at the exchange until ..." (ib_connection routes it as a notice), 404 "Order
# held while securities are located." (a short sale waiting for a borrow). The answer carries the
# text as `warning`; never a failure.
ORDER_WARNING_CODES = frozenset((399, 404))
# Id-less callbacks and which sweep they feed.
SWEEP_EVENTS = {
    "position": "positions",
    "positionEnd": "positions",
    "openOrder": "orders",
    "orderStatus": "orders",
    "openOrderEnd": "orders",
    "completedOrder": "orders",
    "completedOrdersEnd": "orders",
}


class _Pending:
    """Handler (see ib_connection) for one exchange with TWS: collects events until `finished` says so.

    What ended the wait first decides it: an answer, an error (raised) or the connection's loss.
    """

    def __init__(self, finished: Callable[[str, tuple], bool], success_codes: Iterable[int] = ()):
        self._finished = finished
        self._success_codes = frozenset(success_codes)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._error_seen = threading.Event()
        self._ended_by: Optional[str] = None  # "answer", "error" or "lost"
        self.events: List[Tuple[str, tuple]] = []
        self.error: Optional[Tuple[int, str]] = None

    def _end(self, how: str) -> None:
        with self._lock:
            self._ended_by = self._ended_by or how
        self._done.set()

    def on_event(self, name: str, args: tuple) -> None:
        with self._lock:
            self.events.append((name, args))
        if self._finished(name, args):
            self._end("answer")

    def on_error(self, ib_code: int, text: str) -> None:
        if ib_code in self._success_codes:
            self.on_event("error", (ib_code, text))
        elif ib_code in ORDER_WARNING_CODES:
            self.on_event("warning", (ib_code, text))
        elif ib_code not in ORDER_NOTICE_CODES:
            with self._lock:
                self.error = self.error or (ib_code, text)
            self._error_seen.set()
            self._end("error")

    def on_disconnect(self) -> None:
        self._end("lost")

    def wait(self, timeout: float, what: str) -> List[Tuple[str, tuple]]:
        if not self._done.wait(timeout):
            raise AgentError(TIMEOUT, f"TWS did not answer {what} within {timeout:g} s")
        if self._ended_by == "error":
            raise error_for(*self.error)
        if self._ended_by == "lost":
            raise AgentError(IB_NOT_CONNECTED, f"the connection to TWS was lost during {what}")
        with self._lock:
            return list(self.events)

    def warning(self) -> Optional[str]:
        """The text of the warnings TWS sent about this order (399, 404), if any."""
        with self._lock:
            texts = [args[1] for name, args in self.events if name == "warning"]
        return "\n".join(dict.fromkeys(texts)) or None

    def later_error(self, timeout: float) -> Optional[AgentError]:
        """The error that followed the answer within timeout (e.g. 202 after status Cancelled), if any."""
        if self._error_seen.wait(timeout):
            return error_for(*self.error)
        return None


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
                raise AgentError(TIMEOUT, f"request {key} is still being worked on; ask again later")
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._held[key]


class _Forwarding:
    """An order id's handler: answers its waiter and lets a concurrent open-orders sweep see the order."""

    def __init__(self, pending: _Pending, unrouted: Callable[[str, tuple], None]):
        self._pending = pending
        self._unrouted = unrouted

    def on_event(self, name: str, args: tuple) -> None:
        self._pending.on_event(name, args)
        if name in SWEEP_EVENTS:
            self._unrouted(name, args)

    def on_error(self, ib_code: int, text: str) -> None:
        self._pending.on_error(ib_code, text)

    def on_disconnect(self) -> None:
        self._pending.on_disconnect()
