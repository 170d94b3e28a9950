"""The IB half's one request layer: every wait on TWS's answer to a request (DESIGN.md 2, 3).

As in ib_async's wrapper (its `_futures`, startReq / _endReq): a request is a `Request` kept in the
connection's `Requests` under its request id (or order id), or under a name for the id-less requests
(POSITIONS, ORDERS, PORTFOLIO: TWS answers them without an id). IBConnection routes to it what TWS sends for
that key, and an error to the request of its id only; a callback that an id-less request collects
(ID_LESS_EVENTS) also reaches that request when it carries an order's id. The connection's loss
fails every pending request at once (Requests.fail_all, called in one place: IBConnection._go_lost).

A `CancelToken` is the cancel flag of a relay request (agent.relay.link.Job.cancel): it wakes whoever
waits on it (a Request's wait, the market-data pool), so nothing polls it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from agent.errors import AgentError, Cancelled, IbNotConnected, RequestTimeout
from agent.ib.codes import error_for

Key = Union[int, str]  # a request or order id; a name for an id-less request
POSITIONS, ORDERS, PORTFOLIO = "positions", "orders", "portfolio"
# The callbacks of the id-less requests, and which request collects them.
ID_LESS_EVENTS = {
    "position": POSITIONS,
    "positionEnd": POSITIONS,
    "openOrder": ORDERS,
    "orderStatus": ORDERS,
    "openOrderEnd": ORDERS,
    "completedOrder": ORDERS,
    "completedOrdersEnd": ORDERS,
    "updatePortfolio": PORTFOLIO,
    "accountDownloadEnd": PORTFOLIO,
}
ANSWER, ERROR, LOST = "answer", "error", "lost"  # what ended a request


class CancelToken:
    """A threading.Event's set / is_set / wait, plus wakers: when_set(fn) calls fn once it is set
    (at once if it already is), so a waiter on a Condition is woken instead of polling the flag."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._wakers: List[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            self._event.set()
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)

    @contextlib.contextmanager
    def when_set(self, wake: Callable[[], None]) -> Iterator[None]:
        """Within the block, `wake` is called (on the cancelling thread) once the token is set."""
        with self._lock:
            now = self._event.is_set()
            if not now:
                self._wakers.append(wake)
        if now:
            wake()
        try:
            yield
        finally:
            with self._lock:
                if wake in self._wakers:
                    self._wakers.remove(wake)


class Request:
    """One request to TWS, waited on: its (callback name, args) events until `finished` says so.

    What ends it first decides it: an answer, an error (raised by wait) or the connection's loss.
    Error codes in `successes` are events ("error", (code, text)) that may answer it, those in
    `warnings` events ("warning", (code, text)); `ignored` ones never end it (order warnings and
    notices, orders.wait). Events go on being collected after the end until it is removed.
    """

    def __init__(
        self,
        what: str,
        finished: Callable[[str, tuple], bool],
        *,
        successes: Iterable[int] = (),
        warnings: Iterable[int] = (),
        ignored: Iterable[int] = (),
        claims: Optional[Callable[[int, str], bool]] = None,
    ):
        self.what = what
        self._finished = finished
        self._successes = frozenset(successes)
        self.warnings = frozenset(warnings)
        self._ignored = frozenset(ignored)
        self.claims = claims  # an id-less request: the errors of no request's id that are its own
        self._changed = threading.Condition(threading.Lock())
        self.ended_by: Optional[str] = None
        self.events: List[Tuple[str, tuple]] = []
        self._answered_at: Optional[int] = None  # len(events) at the answer
        self.error: Optional[Tuple[int, str]] = None

    def _end(self, how: str) -> None:
        with self._changed:
            self.ended_by = self.ended_by or how
            self._changed.notify_all()

    def on_event(self, name: str, args: tuple) -> None:
        finished = self._finished(name, args)
        with self._changed:
            self.events.append((name, args))
            if finished and self.ended_by is None:
                self._answered_at = len(self.events)
        if finished:
            self._end(ANSWER)

    def on_error(self, ib_code: int, text: str) -> None:
        if ib_code in self._successes:
            self.on_event("error", (ib_code, text))
        elif ib_code in self.warnings:
            self.on_event("warning", (ib_code, text))
        elif ib_code not in self._ignored:
            with self._changed:
                self.error = self.error or (ib_code, text)
            self._end(ERROR)

    def on_disconnect(self) -> None:
        self._end(LOST)

    def wait(self, timeout: float, cancel: Optional[CancelToken] = None) -> List[Tuple[str, tuple]]:
        """The events up to the answer; raises the error, IB_NOT_CONNECTED on the connection's loss,
        TIMEOUT, or CANCELLED as soon as `cancel` is set."""
        deadline = time.monotonic() + timeout
        with contextlib.ExitStack() as stack:
            if cancel is not None:
                stack.enter_context(cancel.when_set(self._wake))
            with self._changed:
                while self.ended_by is None and not (cancel is not None and cancel.is_set()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RequestTimeout(f"TWS did not answer {self.what} within {timeout:g} s")
                    self._changed.wait(left)
                ended_by, events = self.ended_by, list(self.events)
        if ended_by is None:
            raise Cancelled("request cancelled")
        if ended_by == ERROR:
            raise error_for(*self.error)
        if ended_by == LOST:
            raise IbNotConnected(f"the connection to TWS was lost during {self.what}")
        return events

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def rows(self, names: Iterable[str]) -> List[tuple]:
        """The args of these callbacks up to the answer, without their request id (an id request's rows)."""
        names = frozenset(names)
        with self._changed:
            return [args[1:] for name, args in self.events[: self._answered_at] if name in names]

    def warning(self) -> Optional[str]:
        """The text of the warnings TWS sent about this request (`warnings` codes), if any."""
        with self._changed:
            texts = [args[1] for name, args in self.events if name == "warning"]
        return "\n".join(dict.fromkeys(texts)) or None

    def later_error(self, timeout: float) -> Optional[AgentError]:
        """The error that followed the answer within timeout (e.g. 202 after status Cancelled), if any."""
        with self._changed:
            if self._changed.wait_for(lambda: self.error is not None, timeout):
                return error_for(*self.error)
        return None


class Requests:
    """The pending requests by key; routing to them runs on the connection's reader thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: Dict[Key, Request] = {}

    def add(self, key: Key, request: Request) -> bool:
        """Keep `request` under `key`; False (and nothing kept) when another request holds the key."""
        with self._lock:
            if self._pending.get(key, request) is not request:
                return False
            self._pending[key] = request
            return True

    def remove(self, key: Key, request: Request) -> None:
        with self._lock:
            if self._pending.get(key) is request:
                del self._pending[key]

    @contextlib.contextmanager
    def pending(self, key: Key, request: Request) -> Iterator[Request]:
        """add(), and remove() when the block ends; a key already held is a bug in the caller."""
        if not self.add(key, request):
            raise RuntimeError(f"request {key!r} is already pending")
        try:
            yield request
        finally:
            self.remove(key, request)

    def get(self, key: Key) -> Optional[Request]:
        return self._pending.get(key)

    def event(self, key: Optional[int], name: str, args: tuple) -> bool:
        """Deliver a callback (key: its id, None for an id-less one); True when a request of its id
        took it. An id-less request's callback also reaches that request whatever its id."""
        own = None if key is None else self._pending.get(key)
        if own is not None:
            own.on_event(name, args)
        named = ID_LESS_EVENTS.get(name)
        collector = None if named is None else self._pending.get(named)
        if collector is not None:
            collector.on_event(name, args)
        return own is not None

    def error(self, key: int, ib_code: int, text: str) -> bool:
        """Deliver an error to the request of its id (True); otherwise to the id-less requests that
        claim it (False: the connection's listeners still hear of it)."""
        own = self._pending.get(key)
        if own is not None:
            own.on_error(ib_code, text)
            return True
        with self._lock:
            claimants = [r for r in self._pending.values() if r.claims is not None and r.claims(ib_code, text)]
        for request in claimants:
            request.on_error(ib_code, text)
        return False

    def notice(self, key: int, ib_code: int, text: str) -> None:
        """A notice (never an error) that is a warning its id's request collects (399 for an order)."""
        own = self._pending.get(key)
        if own is not None and ib_code in own.warnings:
            own.on_error(ib_code, text)

    def fail_all(self) -> None:
        """The connection is lost: every pending request ends at once."""
        with self._lock:
            requests = list(self._pending.values())
        for request in requests:
            request.on_disconnect()
