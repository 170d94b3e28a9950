"""The market-data line pool's data (DESIGN.md 5.2), kept by agent.ib.lines.MarketData under its lock:
how many lines TWS allows now (`LinePool`, shrunk by a 101, grown back) and the records of what runs on
them: a `Line` per reqMktData, a `LineSubscription` per instrument's stream, a `FetchRequest` per
`MarketData.fetch` and a `FetchItem` per instrument in it."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional

from agent.ib.ticks import Instrument, TickBook

if TYPE_CHECKING:
    from agent.ib.lines import MarketData

GROW_AFTER_LIMIT_S = 2.0  # after a 101, the pool starts growing back once no 101 came for this long,
GROW_STEP_S = 0.1  # ... by one line per freed line, at most one per this

QUEUED, ACTIVE, ENDING, ENDED = "queued", "active", "ending", "ended"  # a LineSubscription's states


class LinePool:
    """Lines this client may hold on TWS at once. Guarded by the MarketData lock.

    A 101 shrinks it to what worked; it grows back as lines are given back, one line at a time
    (GROW_STEP_S apart) once no 101 came for GROW_AFTER_LIMIT_S (the user closed TWS windows, or
    lines TWS still counted were freed): a limit that is still there costs one 101 per
    GROW_AFTER_LIMIT_S, answered by shrinking again."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic):
        self.configured = size
        self.size = size
        self.in_use = 0
        self._clock = clock
        self._limited_at = self._grown_at = float("-inf")

    def free(self) -> int:
        return max(0, self.size - self.in_use)

    def take(self) -> None:
        self.in_use += 1

    def give_back(self) -> None:
        self.in_use -= 1
        now = self._clock()
        if (
            self.size < self.configured
            and now - self._limited_at >= GROW_AFTER_LIMIT_S
            and now - self._grown_at >= GROW_STEP_S
        ):
            self.size += 1
            self._grown_at = now

    def shrink_after_limit(self, started_later: int = 0) -> bool:
        """TWS answered 101 for one of the lines in use: the lines asked for before it are at most
        what works (the user's own TWS windows hold the rest); `started_later` were taken after it.
        False when already down to one line: then the 101 is the request's answer, not a reason
        to retry."""
        self._limited_at = self._clock()
        if self.size <= 1:
            return False
        self.size = max(1, min(self.size - 1, self.in_use - 1 - started_later))
        return True

    def reset(self) -> None:
        self.size = self.configured
        self._limited_at = float("-inf")


class Line:
    """The handler registered for one reqMktData; stale once its subscription moved on."""

    __slots__ = ("market", "sub", "req_id", "session", "data_type")

    def __init__(self, market: "MarketData", sub: "LineSubscription", session: int):
        self.market, self.sub, self.session = market, sub, session
        self.req_id: Optional[int] = None
        self.data_type: Optional[int] = None

    def on_event(self, name: str, args: tuple) -> None:
        """Ticks. "resubscribe" (1101) changes no book: MarketData's listener handles all lines at once."""
        self.market.on_line_event(self, name, args)

    def on_error(self, ib_code: int, text: str) -> None:
        self.market.on_line_error(self, ib_code, text)

    def on_disconnect(self) -> None:
        """Nothing per line: the connection's "disconnected" listener closes every line at once."""


class LineSubscription:
    """One instrument's stream, shared by every unfinished item that asked for it."""

    def __init__(self, instrument: Instrument):
        self.instrument = instrument
        self.book = TickBook(instrument)
        self.state = QUEUED
        self.line: Optional[Line] = None
        self.items: List[FetchItem] = []
        self.streaming_since: Optional[float] = None
        self.error: Optional[dict] = None
        self.idle_since = 0.0
        self.fallback = False  # auto: TWS said not subscribed, so it is asked as delayed-frozen


class FetchItem:
    """One instrument of a fetch: what it waits for (`rule`), its deadline once its stream began, its result."""

    __slots__ = ("request", "sub", "rule", "joined", "deadline", "result", "index")

    def __init__(self, request: "FetchRequest", sub: LineSubscription, rule: str, joined: float):
        self.request, self.sub, self.rule, self.joined = request, sub, rule, joined
        self.index = len(request.items)  # its place in the request (fetch's order)
        self.deadline: Optional[float] = None
        self.result: Optional[dict] = None


class FetchRequest:
    """One `MarketData.fetch` in progress: its items, those still queued for a line, those streaming."""

    def __init__(self, session: int):
        self.session = session
        self.items: List[FetchItem] = []
        self.queue: Deque[FetchItem] = deque()  # items whose subscription still needs a line
        self.waiting: Dict[FetchItem, None] = {}  # items whose subscription streams (ordered set)
        self.done = 0
        self.finished: List[int] = []  # indexes of items finished since the request thread last looked
