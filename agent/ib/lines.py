"""Market-data lines (DESIGN.md 5.2): one pool shared by every request, the bulk sliding window over
it, identical contracts sharing one subscription, and warm subscriptions kept for repeat requests.

How a request runs (`MarketData.fetch`, on the caller's worker thread): every instrument joins the
subscription for it (an existing one is shared: queued, streaming or warm). Whenever the pool has a
free line, the request's next queued subscription takes it and streams (`reqMktData`, never a
snapshot: a snapshot cannot carry open interest and holds its line ~11 s). While several requests
wait for lines, a line that frees up goes to the one streaming the fewest items (`_take_lines`): a
small request gets the next lines instead of waiting out a big one's queue, concurrent ones even
out, and a request alone uses the whole pool. An item finishes as soon as its COMPLETION_RULES
fields are in, or at its deadline (OPTION_TIMEOUT_S after its stream began, `complete: false` with
what arrived), or on its stream's error. A subscription nobody waits for any more is kept warm (when
it streamed data and the warm budget allows) or cancelled, and its line goes to the next queued one.
Lines of warm subscriptions are taken back, least recently used first, whenever a request has more
queued than the pool has room; unused ones expire after WARM_SECONDS. After a 1101 (TWS lost market
data), every stream a request waits on is cancelled (TWS may still hold it) and asked for again at
once; warm ones are forgotten (never served stale) but keep their lines until taken back like that.
After a 1100 (TWS lost IB's servers) every waiting item fails at once with IB_ERROR 1100 and its
line is cancelled, until a 1101/1102. Market data type: the configured one; auto asks frozen and
re-asks a contract TWS says is not subscribed (354/10089/10168) as delayed-frozen, with the other
contracts of its ticker and kind (one reqMarketDataType before the reqMktData that needs another
type than the last). Each quote says what TWS answered in marketDataType. Notices 10090/10091 keep
the stream (no model greeks to wait for); every line is cancelled unless TWS ended its stream.

Pinned lines (agent.ib.subscriptions): a pinned stream stays up with nobody waiting, is never made
warm nor taken back by a request, and is cancelled by `unpin`. Pinned and warm lines share the
WARM_LINES budget (pinning past it is refused; the warm cache shrinks to make room), so requests
always keep IB_MAX_MKT_LINES - WARM_LINES lines. A `fetch` starts a pinned stream like any other;
after a 1101 it is cancelled and queued with nobody waiting, until its owner's next fetch.

Threads: TWS callbacks (reader thread) only update books under the lock and notify; all sending
happens on request threads (and the warm sweeper), never under the lock, because `conn.send`
waits for the pacing limiter and the connection's own locks must never nest inside ours.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ibapi.contract import Contract

from agent.errors import AgentError, Cancelled, IbError, IbNotConnected, InvalidRequest
from agent.ib.codes import MARKET_DATA_TYPE_IDS, MARKET_DATA_TYPE_NAMES, MARKET_DATA_TYPES, error_for
from agent.ib.line_pool import ACTIVE, ENDED, ENDING, QUEUED, FetchItem, FetchRequest, Line, LinePool, LineSubscription
from agent.ib.requests import CancelToken
from agent.ib.ticks import Instrument

# Generic ticks per kind: option volume (100) and open interest (101). Options always ask for
# both, so one stream (shared or warm) serves requests with and without OI. Greeks and the
# option's implied volatility come from tickOptionComputation, without any generic tick (106
# would add tick 24, the underlying's volatility). Delayed data (types 3 and 4) is asked without
# generic ticks: TWS serves only the delayed default ticks there, so no stream waits for OI it
# cannot get.
GENERIC_TICKS_ASKED = {"OPT": "100,101", "STK": "", "IND": ""}
LINE_LIMIT_CODE = 101  # "max number of tickers reached"
# Errors that end a stream (no cancel is sent for it): not subscribed. In auto, the contract is
# asked again as delayed-frozen.
NOT_SUBSCRIBED_CODES = (354, 10089, 10168)
# Notices that do not end a stream: part of the data (the underlying's, so the model greeks) is not
# subscribed; the rest streams on, and the line must still be cancelled when done with.
PARTIAL_DATA_CODES = (10090, 10091)
LIVE, FROZEN = MARKET_DATA_TYPE_IDS["live"], MARKET_DATA_TYPE_IDS["frozen"]
DELAYED, DELAYED_FROZEN = MARKET_DATA_TYPE_IDS["delayed"], MARKET_DATA_TYPE_IDS["delayed-frozen"]
AUTO_TYPE = MARKET_DATA_TYPES["auto"]  # frozen: live while the market is open, the close's values after
DELAYED_TYPES = (DELAYED, DELAYED_FROZEN)
STARTS_PER_ROUND = 8  # bounds how long one round sends before cancel is checked again
IDLE_WAIT_S = 1.0
SWEEPER_IDLE_S = 60.0  # the warm sweeper's nap while nothing is warm (a new one wakes it)


def _fallback_key(instrument: Instrument) -> Tuple[str, str]:
    return instrument.ticker, instrument.sec_type


def contract_for(instrument: Instrument) -> Contract:
    """A contract reqMktData accepts as is: fully specified, so no reqContractDetails per option."""
    contract = Contract()
    contract.symbol = instrument.ticker
    contract.secType = instrument.sec_type
    contract.exchange = instrument.exchange
    contract.currency = "USD"
    contract.conId = instrument.con_id  # when known (listing, contract details): one contract, never ambiguous
    if instrument.is_option:
        contract.lastTradeDateOrContractMonth = instrument.expiration
        contract.strike = instrument.strike
        contract.right = instrument.right
        contract.multiplier = str(instrument.multiplier)
        contract.tradingClass = instrument.trading_class
    return contract


class MarketData:
    """The line pool and everything streaming on it, for all concurrent requests."""

    def __init__(self, conn, config, clock: Callable[[], float] = time.monotonic):
        self._conn = conn
        self._timeout_s = config.option_timeout_s
        self._warm_budget = config.warm_lines if config.warm_seconds > 0 else 0
        self._pin_limit = config.warm_lines  # pinned + warm lines together (see the module doc)
        self._pins: Dict[Instrument, int] = {}  # instrument -> how many subscriptions hold it
        # Set by the subscriptions: fn(instrument) when a pinned stream's book changed (reader
        # thread, under the lock: it may only take note).
        self.pinned_ticked: Callable[[Instrument], None] = lambda instrument: None
        self._warm_seconds = config.warm_seconds
        self._configured_type = config.market_data_type
        self._clock = clock
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)  # a request may have progress to make
        self._warm_changed = threading.Condition(self._mutex)
        self._type_lock = threading.Lock()  # a reqMarketDataType and the reqMktData it is for
        self.pool = LinePool(config.ib_max_mkt_lines, clock)
        self._subs: Dict[Instrument, LineSubscription] = {}  # queued and streaming, by instrument
        # Idle streams holding a line, LRU first; those a 1101 made stale are no longer in _subs.
        self._warm: "OrderedDict[LineSubscription, None]" = OrderedDict()
        self._requests: Dict[FetchRequest, None] = {}  # fetches in progress (ordered set)
        self._stale_ids: List[int] = []  # dead req ids still to unregister
        self._lost_ids: List[int] = []  # req ids a 1101 lost, still to cancel
        self._session = 0  # +1 for every TWS disconnect seen
        self._base_type = AUTO_TYPE if self._configured_type == "auto" else MARKET_DATA_TYPE_IDS[self._configured_type]
        self._type_sent = (0, self._base_type)  # (session, type): agent.ib.connection sends the base on connect
        self._fallback_keys: set = set()  # auto: (ticker, sec_type) TWS said are not subscribed
        self._link_error: Optional[dict] = None  # while TWS has lost IB's servers (1100)
        self._sweeper: Optional[threading.Thread] = None
        self._closed = False
        self._counts = {
            "requests": 0,
            "contracts": 0,
            "shared": 0,
            "warm_hits": 0,
            "line_limit_errors": 0,
            "delayed_fallbacks": 0,
            "partial_notices": 0,
        }
        conn.add_listener("disconnected", self._connection_lost)
        conn.add_listener("resubscribe", self._data_lost)
        conn.add_listener("ib_link", self._link_changed)

    # --- public ---------------------------------------------------------------------------------

    def fetch(
        self,
        instruments: Sequence[Instrument],
        want_open_interest: bool = False,
        progress: Optional[Callable[[int, int], None]] = None,
        cancel: Optional[CancelToken] = None,
        on_result: Optional[Callable[[int, dict], None]] = None,
    ) -> List[dict]:
        """One OPTION / QUOTE per instrument, in order. Raises Cancelled when `cancel`
        is set (its lines are freed first); setting it wakes the request at once. `on_result(index,
        result)` is called on this thread as each one finishes (in the order they finish), for
        callers that pass results on early."""
        option_rule = "option+oi" if want_open_interest else "option"
        with self._mutex:
            now = self._clock()
            request = FetchRequest(self._session)
            self._requests[request] = None
            self._counts["requests"] += 1
            for instrument in instruments:
                self._join(request, instrument, option_rule if instrument.is_option else "stock", now)
        try:
            with cancel.when_set(self._wake) if cancel is not None else contextlib.nullcontext():
                self._run(request, progress, cancel, on_result)
        finally:
            self._leave(request)
        return [item.result for item in request.items]

    def stats(self) -> dict:
        with self._mutex:
            streaming = sum(1 for s in self._subs.values() if s.state == ACTIVE)
            return dict(
                self._counts,
                lines_in_use=self.pool.in_use,
                lines_max=self.pool.size,
                warm_lines=len(self._warm),
                pinned_lines=len(self._pins),
                streaming=streaming,
                market_data_type_requested=MARKET_DATA_TYPE_NAMES[self._base_type],
            )

    def pin(self, instruments: Sequence[Instrument]) -> None:
        """Keep these instruments' streams up for a subscription (started by the next `fetch` of
        them). INVALID_REQUEST naming the limit when all pins together would exceed WARM_LINES."""
        wanted = list(dict.fromkeys(instruments))
        with self._mutex:
            new = [i for i in wanted if i not in self._pins]
            if len(self._pins) + len(new) > self._pin_limit:
                raise InvalidRequest(
                    f"subscriptions hold at most WARM_LINES={self._pin_limit} market-data lines together: "
                    f"{len(self._pins)} are held and this asks {len(new)} more",
                )
            for instrument in wanted:
                self._pins[instrument] = self._pins.get(instrument, 0) + 1
                sub = self._subs.get(instrument)
                if sub is not None and sub in self._warm:
                    del self._warm[sub]  # pinned now: streams on, never taken back
            ends = self._evict_warm(len(self._warm) - self._warm_room())
        self._end_lines(ends)

    def unpin(self, instruments: Sequence[Instrument]) -> None:
        """A subscription let go of these: a stream no other subscription or request holds is cancelled."""
        ends: List[LineSubscription] = []
        with self._mutex:
            for instrument in dict.fromkeys(instruments):
                left = self._pins.get(instrument, 0) - 1
                if left > 0:
                    self._pins[instrument] = left
                    continue
                self._pins.pop(instrument, None)
                sub = self._subs.get(instrument)
                if sub is not None and not sub.items:
                    if sub.state == ACTIVE:
                        self._end(sub, ends)
                    else:
                        self._forget(sub)
                        sub.state = ENDED
        self._end_lines(ends)

    def pinned_results(self, instruments: Sequence[Instrument]) -> List[Optional[dict]]:
        """The OPTION / QUOTE each pinned instrument's stream shows now (None: no stream holds it,
        e.g. before its restart after a TWS reconnect). Reads books only: no TWS message."""
        with self._mutex:
            subs = [self._subs.get(instrument) for instrument in instruments]
            return [
                sub.book.result(sub.book.complete("option" if sub.instrument.is_option else "stock"))
                if sub is not None and sub.state != ENDED and sub.book.has_data()
                else None
                for sub in subs
            ]

    def close(self) -> None:
        """Cancel the warm subscriptions and stop the sweeper."""
        self._conn.remove_listener("disconnected", self._connection_lost)
        self._conn.remove_listener("resubscribe", self._data_lost)
        self._conn.remove_listener("ib_link", self._link_changed)
        with self._mutex:
            self._closed = True
            ends = self._evict_warm(len(self._warm))
            self._warm_changed.notify_all()
        self._end_lines(ends)

    # --- the sliding window (request thread) -----------------------------------------------------

    def _join(self, request: FetchRequest, instrument: Instrument, rule: str, now: float) -> None:
        sub = self._subs.get(instrument)
        if sub is None:
            sub = self._subs[instrument] = LineSubscription(instrument)
        elif sub in self._warm:
            del self._warm[sub]
            self._counts["warm_hits"] += 1
        else:
            self._counts["shared"] += 1
        item = FetchItem(request, sub, rule, now)
        sub.items.append(item)
        request.items.append(item)
        if sub.state == ACTIVE:
            request.waiting[item] = None
        else:
            request.queue.append(item)
        self._counts["contracts"] += 1

    def _run(self, request: FetchRequest, progress, cancel, on_result=None) -> None:
        reported = 0
        total = len(request.items)
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled")
            with self._mutex:
                ends: List[LineSubscription] = []
                self._settle(request, ends)
                starts = self._take_lines(request, ends)
                finished = request.done == total
                dead = self._take_dead_ids()
                if not (ends or starts or dead or finished or request.done > reported):
                    if not (cancel is not None and cancel.is_set()):  # set since: its wake-up came already
                        self._changed.wait(self._wait_s(request))
                    continue
                newly, request.finished = request.finished, []
            self._clear_dead_ids(dead)
            self._end_lines(ends)
            self._start_lines(starts)
            if on_result is not None:
                for index in newly:
                    on_result(index, request.items[index].result)
            if request.done > reported:  # counted with or without progress: else the loop never waits
                reported = request.done
                if progress is not None:
                    progress(reported, total)
            if finished:
                return

    def _settle(self, request: FetchRequest, ends: List[LineSubscription]) -> None:
        """Finish every item whose fields are in, whose deadline passed or whose stream failed."""
        if request.session != self._session:
            lost = IbNotConnected("the TWS connection was lost during the request")
            for item in request.items:
                if item.result is None:
                    self._finish(item, False, lost.to_dict(), ends)
            return
        if self._link_error is not None:  # 1100: nothing will come until TWS is back; fail fast
            for item in request.items:
                if item.result is None:
                    self._finish(item, False, self._link_error, ends, keep_warm=False)
            return
        now = self._clock()
        for item in list(request.waiting):
            sub = item.sub
            if sub.error is not None:
                self._finish(item, False, sub.error, ends)
            elif sub.book.complete(item.rule):
                self._finish(item, True, None, ends)
            elif sub.streaming_since is not None:
                if item.deadline is None:
                    item.deadline = max(sub.streaming_since, item.joined) + self._timeout_s
                if now >= item.deadline:
                    self._finish(item, False, None, ends)

    def _finish(
        self,
        item: FetchItem,
        complete: bool,
        error: Optional[dict],
        ends: List[LineSubscription],
        keep_warm: bool = True,
    ) -> None:
        request, sub = item.request, item.sub
        item.result = sub.book.result(complete, error)
        request.done += 1
        request.finished.append(item.index)
        request.waiting.pop(item, None)
        self._drop_item(item, ends, keep_warm=keep_warm)

    def _drop_item(self, item: FetchItem, ends: List[LineSubscription], keep_warm: bool) -> None:
        sub = item.sub
        sub.items.remove(item)
        if sub.items:
            return
        if sub.state == QUEUED:
            self._forget(sub)
            sub.state = ENDED
        elif sub.state == ACTIVE:
            if sub.instrument in self._pins and sub.error is None and not self._closed:
                return  # a subscription holds it: it streams on
            if (
                keep_warm
                and self._warm_budget
                and not self._closed
                and sub.error is None
                and sub.streaming_since is not None
                and sub.book.has_data()
            ):
                self._make_warm(sub, ends)
            else:
                self._end(sub, ends)

    def _make_warm(self, sub: LineSubscription, ends: List[LineSubscription]) -> None:
        sub.idle_since = self._clock()
        self._warm[sub] = None
        ends.extend(self._evict_warm(len(self._warm) - self._warm_room()))
        self._start_sweeper()
        self._warm_changed.notify_all()

    def _warm_room(self) -> int:
        """Warm lines allowed now: the warm budget less the pinned lines (under the lock)."""
        return max(0, self._warm_budget - len(self._pins))

    def _evict_warm(self, count: int) -> List[LineSubscription]:
        ends: List[LineSubscription] = []
        for _ in range(min(count, len(self._warm))):
            self._end(self._warm.popitem(last=False)[0], ends)
        return ends

    def _end(self, sub: LineSubscription, ends: List[LineSubscription]) -> None:
        """Queue the cancel of a stream; its line counts as used until the cancel is sent."""
        self._forget(sub)
        sub.state = ENDING
        ends.append(sub)

    def _forget(self, sub: LineSubscription) -> None:
        if self._subs.get(sub.instrument) is sub:
            del self._subs[sub.instrument]

    def _take_lines(self, request: FetchRequest, ends: List[LineSubscription]) -> List[LineSubscription]:
        """Give free lines to this request's queued subscriptions, in request order, while no other
        request waiting for lines streams fewer items: lines that free up go to the poorest request
        first, so concurrent requests even out and a small one does not wait for a big one's queue.
        Warm lines are taken back first when the request has more queued than the pool has room for."""
        fewest = min(
            (len(other.waiting) for other in self._requests if other is not request and self._has_queued(other)),
            default=None,
        )
        room = STARTS_PER_ROUND if fewest is None else min(STARTS_PER_ROUND, fewest + 1 - len(request.waiting))
        shortfall = min(len(request.queue), room) - self.pool.free()
        if shortfall > 0:
            ends.extend(self._evict_warm(shortfall))
        starts: List[LineSubscription] = []
        while (
            len(starts) < STARTS_PER_ROUND
            and self.pool.free() > 0
            and (fewest is None or len(request.waiting) <= fewest)
            and self._has_queued(request)
        ):
            sub = request.queue.popleft().sub
            self._activate(sub)
            starts.append(sub)
        if starts and fewest is not None and self.pool.free() > 0:
            self._changed.notify_all()  # the lines left are another request's to take
        return starts

    @staticmethod
    def _has_queued(request: FetchRequest) -> bool:
        """Whether the request still needs a line; drops the queue's leading items that no longer
        do (finished, or their stream was started by another request)."""
        queue = request.queue
        while queue and (queue[0].result is not None or queue[0].sub.state != QUEUED):
            queue.popleft()
        return bool(queue)

    def _activate(self, sub: LineSubscription) -> None:
        self.pool.take()
        sub.state = ACTIVE
        sub.line = Line(self, sub, self._session)
        sub.streaming_since = None
        for item in sub.items:
            item.request.waiting[item] = None
            item.deadline = None

    def _wake(self) -> None:
        """A cancel was set (on the cancelling thread): the request's wait ends now."""
        with self._mutex:
            self._changed.notify_all()

    def _wait_s(self, request: FetchRequest) -> float:
        wait = IDLE_WAIT_S
        deadlines = [item.deadline for item in request.waiting if item.deadline is not None]
        if deadlines:
            wait = min(wait, max(0.0, min(deadlines) - self._clock()) + 0.001)
        return wait

    def _leave(self, request: FetchRequest) -> None:
        """A request that stops early (cancel, error) lets go of what it still waited for."""
        ends: List[LineSubscription] = []
        with self._mutex:
            del self._requests[request]
            for item in request.items:
                if item.result is None and item in item.sub.items:
                    request.waiting.pop(item, None)
                    self._drop_item(item, ends, keep_warm=False)
            self._changed.notify_all()  # lines it would have had next go to the others
        self._end_lines(ends)

    # --- sending (never under the lock) ---------------------------------------------------------

    def _start_lines(self, starts: List[LineSubscription]) -> None:
        with self._mutex:
            wanted = {sub: self._type_for(sub) for sub in starts}
        sent = self._type_sent[1]
        starts = sorted(starts, key=lambda sub: wanted[sub] != sent)  # the fewest reqMarketDataType
        for sub in starts:
            line = sub.line
            if line is None:  # the connection dropped while an earlier start waited on the limiter
                continue
            with self._mutex:
                if self.pool.in_use > self.pool.size and sub.line is line:
                    self._unstart(sub)  # a 101 shrank the pool meanwhile: the rest of this round waits
                    continue
            try:
                with self._type_lock:  # no other thread's reqMarketDataType between the two
                    line.data_type = self._ensure_data_type(wanted[sub])
                    generic = "" if line.data_type in DELAYED_TYPES else GENERIC_TICKS_ASKED[sub.instrument.sec_type]
                    with self._mutex:
                        sub.book.no_open_interest = sub.instrument.is_option and not generic
                    line.req_id = self._conn.next_req_id()
                    self._conn.register(line.req_id, line)
                    self._conn.send("reqMktData", line.req_id, contract_for(sub.instrument), generic, False, False, [])
            except AgentError as exc:
                with self._mutex:
                    self._fail(line, exc.to_dict())
                    self._changed.notify_all()
                if line.req_id is not None:
                    self._conn.unregister(line.req_id)
                continue
            with self._mutex:
                orphan = line.session != self._session  # the connection dropped meanwhile
                if orphan:
                    self._fail(line, IbNotConnected("the TWS connection was lost").to_dict())
                elif sub.line is line:  # else TWS already refused it (error 101...)
                    sub.streaming_since = self._clock()
            if orphan:  # it may have reached the next connection: make sure it does not stay
                self._cancel_stream(line.req_id)

    def _unstart(self, sub: LineSubscription) -> None:
        """Give back the line of a stream never asked for, and queue it again first (under the lock)."""
        self._release(sub)
        sub.state = QUEUED
        for item in sub.items:
            item.request.waiting.pop(item, None)
            item.request.queue.appendleft(item)
        self._changed.notify_all()

    def _cancel_stream(self, req_id: int) -> None:
        try:
            self._conn.send("cancelMktData", req_id)
        except AgentError:
            pass  # not connected: TWS dropped the line with the connection
        self._conn.unregister(req_id)

    def _end_lines(self, ends: List[LineSubscription]) -> None:
        if not ends:
            return
        lines = [sub.line for sub in ends]
        for line in lines:
            if line is not None and line.req_id is not None:
                self._cancel_stream(line.req_id)
        with self._mutex:
            for sub, line in zip(ends, lines):
                if sub.line is line:
                    self._release(sub)
                sub.state = ENDED
            self._changed.notify_all()

    def _type_for(self, sub: LineSubscription) -> int:
        """The market data type one stream is asked with (under the lock): the configured one; in
        auto, delayed-frozen for a contract TWS said is not subscribed, and for the other contracts
        of that ticker and kind once one was (saves a refused request each)."""
        if self._configured_type == "auto" and (sub.fallback or _fallback_key(sub.instrument) in self._fallback_keys):
            return DELAYED_FROZEN
        return self._base_type

    def _ensure_data_type(self, wanted: int) -> int:
        """reqMarketDataType holds for the client's next requests: send it when the type the next
        reqMktData needs differs from the last one sent on this connection (under _type_lock)."""
        session, sent = self._type_sent
        if session != self._session:
            sent = self._base_type  # agent.ib.connection sent the base type on connecting
        if wanted != sent:
            self._conn.send("reqMarketDataType", wanted)
        self._type_sent = (self._session, wanted)
        return wanted

    def _clear_dead_ids(self, dead: Tuple[List[int], List[int]]) -> None:
        """Before any new stream starts: forget ids TWS ended, cancel those a 1101 may have left on TWS."""
        stale, lost = dead
        for req_id in stale:
            self._conn.unregister(req_id)
        for req_id in lost:
            self._cancel_stream(req_id)

    # --- TWS callbacks (reader thread): state only, never a send ---------------------------------

    def on_line_event(self, line: Line, name: str, args: tuple) -> None:
        with self._mutex:
            sub = line.sub
            if sub.line is not line or not sub.book.apply(name, args):
                return
            if sub.instrument in self._pins:
                self.pinned_ticked(sub.instrument)
            if any(sub.book.complete(item.rule) for item in sub.items):
                self._changed.notify_all()

    def on_line_error(self, line: Line, ib_code: int, text: str) -> None:
        if ib_code in PARTIAL_DATA_CODES:  # the stream goes on without model greeks; still cancelled at the end
            with self._mutex:
                if line.sub.line is line:
                    self._counts["partial_notices"] += 1
                    line.sub.book.no_model_greeks = True
                    self._changed.notify_all()
            return
        with self._mutex:
            if line.sub.line is not line:
                return
            if ib_code == LINE_LIMIT_CODE:
                self._counts["line_limit_errors"] += 1
                if self.pool.shrink_after_limit(self._started_after(line)):
                    self._requeue(line)
                    return
            elif (
                ib_code in NOT_SUBSCRIBED_CODES and self._configured_type == "auto" and line.data_type != DELAYED_FROZEN
            ):
                self._counts["delayed_fallbacks"] += 1  # this contract (and its kind) asked again as
                line.sub.fallback = True  # delayed-frozen; each quote says what it got
                self._fallback_keys.add(_fallback_key(line.sub.instrument))
                self._requeue(line)
                return
            self._fail(line, error_for(ib_code, text).to_dict())
            self._changed.notify_all()

    def _started_after(self, line: Line) -> int:
        """Lines taken after this one (asked later, or not asked yet), under the lock."""
        return sum(
            1
            for sub in self._subs.values()
            if sub.state == ACTIVE
            and sub.line is not None
            and sub.line is not line
            and (sub.line.req_id is None or sub.line.req_id > (line.req_id or 0))
        )

    def _connection_lost(self) -> None:
        """Every stream is gone on the TWS side; requests still running on the lost connection
        fail their unfinished items. The next connection starts with the configured data type and
        learns again which contracts need delayed data (the user may have subscribed meanwhile)."""
        with self._mutex:
            self._session += 1
            self._fallback_keys.clear()
            self._link_error = None
            self.pool.reset()
            self._stale_ids += self._lost_ids  # TWS ended them with the connection
            self._lost_ids = []
            lost = IbNotConnected("the TWS connection was lost").to_dict()
            for sub in list(self._subs.values()) + list(self._warm):
                if sub.line is not None:
                    self._fail(sub.line, lost)
            self._changed.notify_all()

    def _link_changed(self, up: bool, ib_code: int, text: str) -> None:
        """TWS lost its link to IB's servers (1100: no data comes until it is back, so every waiting
        market-data item fails at once with IB_ERROR 1100 and its line is cancelled; new requests
        fail the same way) or got it back (1101/1102: requests run again)."""
        with self._mutex:
            self._link_error = (
                None
                if up
                else IbError(
                    f"TWS has lost its connection to IB's servers, so no market data comes until it "
                    f"is back (TWS said: {text})",
                    ib_code,
                ).to_dict()
            )
            self._changed.notify_all()

    def _data_lost(self) -> None:
        """TWS restored its link to IB with market data lost (1101; "resubscribe" listener, supervisor
        thread). IB says the lost requests must be resubmitted; a TWS that still counts them would
        refuse new lines (101). All at once, before anything is sent: every stream a request waits on
        is cancelled and requested again (its items go first in their queues); warm streams are
        forgotten, so no request is answered from their stale books, but keep their lines until
        taken back like any warm one (on demand, least recently used first, or at expiry): their
        cancels never delay the re-requests."""
        with self._mutex:
            for sub in list(self._subs.values()):
                line = sub.line
                if line is None or line.req_id is None:
                    continue  # queued, or its reqMktData goes out after the 1101
                if sub.items or sub.instrument in self._pins:  # pinned: started again by its owner's fetch
                    self._requeue(line, may_still_stream=True)
                elif sub in self._warm:
                    self._forget(sub)

    def _requeue(self, line: Line, may_still_stream: bool = False) -> None:
        """The stream never started on TWS (101, or not subscribed in auto) or TWS lost it (1101):
        ask again, before the request's other queued items. A stream "lost" in a 1101 may still run
        on TWS, holding a line the pool now counts as free (its reqMktData crossed the 1101, or TWS
        kept it): its cancel goes out before the new request, so TWS never counts both."""
        sub = line.sub
        self._release(sub)
        (self._lost_ids if may_still_stream else self._stale_ids).append(line.req_id)
        sub.state = QUEUED
        sub.streaming_since = None
        for item in sub.items:
            item.request.waiting.pop(item, None)
            item.request.queue.appendleft(item)
        self._changed.notify_all()

    def _take_dead_ids(self) -> Tuple[List[int], List[int]]:
        dead = (self._stale_ids, self._lost_ids)
        self._stale_ids, self._lost_ids = [], []
        return dead

    def _fail(self, line: Line, error: dict) -> None:
        """The stream is over on the TWS side (its error, or the connection): no cancel to send."""
        sub = line.sub
        if sub.line is not line:
            return
        self._release(sub)
        if line.req_id is not None:
            self._stale_ids.append(line.req_id)
        sub.error = error
        sub.state = ENDED
        self._forget(sub)
        self._warm.pop(sub, None)

    def _release(self, sub: LineSubscription) -> None:
        if sub.line is not None:
            self.pool.give_back()
            sub.line = None

    # --- warm expiry ------------------------------------------------------------------------------

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, name="warm-lines", daemon=True)
            self._sweeper.start()

    def _sweep(self) -> None:
        """Cancel warm subscriptions WARM_SECONDS after the last request that used them."""
        while True:
            with self._mutex:
                if self._closed:
                    return
                now = self._clock()
                expired = sum(1 for sub in self._warm if sub.idle_since + self._warm_seconds <= now)
                ends = self._evict_warm(expired)
                if not ends:
                    wait = SWEEPER_IDLE_S
                    if self._warm:
                        oldest = min(sub.idle_since for sub in self._warm)
                        wait = max(0.01, oldest + self._warm_seconds - now)
                    self._warm_changed.wait(wait)
                    continue
                dead = self._take_dead_ids()
            self._clear_dead_ids(dead)
            self._end_lines(ends)
