"""The one pacing gate for messages to TWS (DESIGN.md 5.2).

TWS allows 50 messages a second and drops a client that keeps exceeding it; `ibapi` has no
throttle, so every message the agent sends takes a slot here first (see `agent.ib.connection`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

WINDOW_S = 1.0


class MessageLimiter:
    """Smooth, thread-safe pacing: slots spaced 1/rate apart, handed out in the order callers ask.

    Besides the spacing, at most floor(rate) slots fall in any 1 s window, so neither float
    rounding nor a fractional rate can let one message too many through.
    """

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ):
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._recent = deque(maxlen=max(1, int(rate)))  # the last floor(rate) slots
        self._next_slot = float("-inf")
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def _reserve(self) -> float:
        with self._lock:
            slot = max(self._clock(), self._next_slot)
            if len(self._recent) == self._recent.maxlen:
                slot = max(slot, self._recent[0] + WINDOW_S)
            self._recent.append(slot)
            self._next_slot = slot + self._interval
            return slot

    def backlog(self, count: int) -> None:
        """`count` messages sent a while ago reach TWS only now (it stopped reading, and resumed):
        they count in the 1 s window from now, so TWS never gets more than the rate in a second."""
        with self._lock:
            stamp = max([self._clock()] + list(self._recent)[-1:])  # keeps the window in order
            for _ in range(min(count, self._recent.maxlen)):
                self._recent.append(stamp)
            self._next_slot = max(self._next_slot, stamp + self._interval)

    def acquire(self, interrupt: Optional[threading.Event] = None) -> Optional[float]:
        """Block until the caller's slot and return its time (on the limiter's clock).

        With `interrupt`, the wait ends early when that event is set (the connection closed):
        then the slot is given up and None is returned.
        """
        slot = self._reserve()
        delay = slot - self._clock()
        if delay > 0:
            if interrupt is None:
                self._sleep(delay)
            elif interrupt.wait(delay):
                return None
        if interrupt is not None and interrupt.is_set():
            return None
        return slot
