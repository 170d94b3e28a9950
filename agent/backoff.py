"""The one reconnect policy (DESIGN.md 2): capped exponential backoff with full jitter, through
tenacity. The TWS supervisor (agent.ib.connection) and the relay link (agent.relay.link) each build one with
their own figures and keep their own logging; the policy only says how long to wait.
"""

from __future__ import annotations

import random
import time
import types
from typing import Callable, Optional

import tenacity

MAX_FAILURES = 64  # counted no further: the window reached its cap long before


class ReconnectPolicy(tenacity.wait_random_exponential):
    """The wait before dialling again: tenacity's full jitter (a random point in a window, so a fleet
    dropped at once does not come back at once). The window is first_s after the first failure,
    doubles with every failure after it and is capped at cap_s.

    As a tenacity wait strategy (`wait=policy`), the retry's attempt number is the failure count. A
    loop without a tenacity Retrying calls next_wait() after each failure instead, and connected() /
    disconnected() around each connection: one that lasted stable_after_s starts the window over; a
    shorter one does not, so the next_wait() after it counts it as a failure (a peer that accepts and
    drops at once is not dialled in a tight loop; the cap keeps a flapping link from staying offline
    long). A dial that failed never resets, however long it took.

    `rand` (uniform in [0, 1)) and `clock` are injectable so tests can pin the jitter and the time.
    """

    def __init__(
        self,
        first_s: float,
        cap_s: float,
        stable_after_s: float,
        *,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(multiplier=first_s, max=cap_s)
        self.first_s = first_s
        self.cap_s = cap_s
        self.stable_after_s = stable_after_s
        self._rand = rand
        self._clock = clock
        self._failures = 0  # failures since the last stable connection
        self._connected_at: Optional[float] = None

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """tenacity's full jitter, random.uniform(0, window), with the draw taken from `rand`."""
        window = tenacity.wait_exponential.__call__(self, retry_state)  # first_s * 2**(n-1), capped
        return window * self._rand()

    def wait(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        return self(types.SimpleNamespace(attempt_number=failures))

    def next_wait(self) -> float:
        """Counts one more failure (a failed dial or a connection shorter than stable_after_s) and
        returns the wait before the next dial."""
        self._failures = min(self._failures + 1, MAX_FAILURES)
        return self.wait(self._failures)

    def connected(self) -> None:
        self._connected_at = self._clock()

    def disconnected(self) -> bool:
        """The connection connected() started ended. True (and the window starts over) when it
        lasted stable_after_s."""
        connected_at, self._connected_at = self._connected_at, None
        if connected_at is None or self._clock() - connected_at < self.stable_after_s:
            return False
        self._failures = 0
        return True
