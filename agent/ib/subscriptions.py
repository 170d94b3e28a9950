"""Relay subscriptions (DESIGN.md 4, v1.1 `subscribe` / `unsubscribe` / `update`).

A subscription is a set of option contracts and underlyings whose market-data lines stay up
(MarketData.pin: pinned lines count against WARM_LINES with the warm cache, and no request ever
takes them back). Its first picture is an ordinary fetch of them (so it reads exactly like
fetch-prices); after that, `update` frames come from the streams' ticks, never from a TWS message:
the TWS reader thread only marks the subscriptions that hold a ticking instrument dirty, and one
thread ("subscriptions") builds each due subscription's OPTION / QUOTE objects from the books,
sends the ones that differ from what the cloud was last told (whole objects), at most one frame
per interval_ms, none when nothing changed. A change after a quiet spell goes out BURST_S after
its first tick (the rest of TWS's burst for it joins the same frame).

- seq counts per subscription from 1 and only for frames that went out (RelayLink.push said so).
- After each relay reconnect, the next update of every subscription is full (every OPTION and
  QUOTE). A relay down for relay_grace_s ends every subscription (its lines are cancelled).
- TWS reconnects ("ready"), 1101 ("resubscribe") and 1101/1102 ("ib_link" up) start a restore:
  one fetch of every pinned instrument, which joins the streams still up (no message) and asks
  again for those TWS lost; their new ticks then flow into updates as usual.
- unsubscribe, the agent stopping, or the relay grace running out: every line no other
  subscription or request holds is cancelled at TWS.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from agent import log as agent_log
from agent.errors import AgentError, Busy
from agent.ib.scanner import as_listed, public_quote
from agent.ib.ticks import Instrument
from agent.log import plural

log = agent_log.logger("requests")

RELAY_GRACE_S = 60.0  # subscriptions end when the relay has been down this long (DESIGN.md 4)
IDLE_WAIT_S = 60.0  # the thread's nap while nothing is due
# TWS sends one change of a contract as a burst of ticks (bid, ask, sizes, model greeks) within a
# few ms: an update waits this long after the first of them, so one change is one update, not a
# half-changed quote now and the rest an interval later.
BURST_S = 0.01


class Subscription:
    """One subscription's contracts and what the cloud was last told about them: the diff and the
    throttle (its state is the subscriptions thread's, apart from the flags under the registry lock)."""

    def __init__(self, sub_id: str, wanted: Sequence, underlyings: Dict[str, Instrument], interval_s: float):
        self.id = sub_id
        self.wanted = list(wanted)  # per requested contract: its Instrument, or its OPTION already answered
        self.underlyings = dict(underlyings)  # ticker -> Instrument
        self.options = list(dict.fromkeys(w for w in wanted if isinstance(w, Instrument)))  # streamed, distinct
        self.interval_s = interval_s
        self.sent_options: Dict[Instrument, dict] = {}
        self.sent_quotes: Dict[str, dict] = {}
        self.seq = 0
        self.active = False  # its first picture went out: updates may follow
        self.dirty = False  # a tick touched one of its streams since the last update was built
        self.dirty_since = 0.0  # when the first of those ticks came
        self.synced_epoch = 0  # relay connection of its last full picture (another one: a full update is owed)
        self.last_push = 0.0

    @property
    def instruments(self) -> List[Instrument]:
        return self.options + list(self.underlyings.values())

    def due_at(self, epoch: int) -> Optional[float]:
        """When its next update may go out; None when none is owed."""
        if not self.active or not (self.dirty or self.synced_epoch != epoch):
            return None
        return max(self.last_push + self.interval_s, self.dirty_since + BURST_S if self.dirty else 0.0)

    def current(self, results: Sequence[Optional[dict]]) -> Tuple[Dict[Instrument, dict], Dict[str, dict]]:
        """OPTION per streamed option and QUOTE per ticker, from one result per `instruments` (None:
        no stream shows it now, so what was last sent stands)."""
        found = dict(zip(self.instruments, results))
        options = {i: as_listed(i, found.get(i) or self.sent_options[i]) for i in self.options}
        quotes = {}
        for ticker, instrument in self.underlyings.items():
            result = found.get(instrument)
            quote = public_quote(result) if result is not None else self.sent_quotes.get(ticker)
            if quote is not None:
                quotes[ticker] = quote
        return options, quotes

    def picture(self, options: Dict[Instrument, dict]) -> List[dict]:
        """Every OPTION in request order (a contract asked twice is there twice, as in fetch-prices)."""
        return [options[w] if isinstance(w, Instrument) else w for w in self.wanted]

    def update(self, results: Sequence[Optional[dict]], full: bool) -> Optional[Tuple[dict, dict, dict]]:
        """(frame, options, quotes) for these results: everything when `full`, else only the OPTIONs
        and QUOTEs that differ from what was last sent (each once); None when nothing did. Nothing
        is remembered until `sent` says the frame went out."""
        options, quotes = self.current(results)
        if full:
            listed = self.picture(options)
        else:
            options = {i: o for i, o in options.items() if o != self.sent_options.get(i)}
            quotes = {t: q for t, q in quotes.items() if q != self.sent_quotes.get(t)}
            if not options and not quotes:
                return None
            listed = list(options.values())
        frame = {
            "type": "update",
            "subscription": self.id,
            "seq": self.seq + 1,
            "options": listed,
            "underlyings": quotes,
        }
        return frame, options, quotes

    def sent(self, options: Dict[Instrument, dict], quotes: Dict[str, dict], seq: int) -> None:
        """These went out (the first picture: seq 0): they are what the cloud knows now."""
        self.sent_options.update(options)
        self.sent_quotes.update(quotes)
        self.seq = seq


class Subscriptions:
    """The live subscriptions of this agent, their updates and their lines."""

    relay_grace_s = RELAY_GRACE_S  # a class attribute so tests can shorten it

    def __init__(self, scanner, conn, clock: Callable[[], float] = time.monotonic):
        self._scanner = scanner
        self._market = scanner.market
        self._conn = conn
        self._clock = clock
        self._push: Callable[[dict], bool] = lambda frame: False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._subs: Dict[str, Subscription] = {}
        self._holders: Dict[Instrument, List[Subscription]] = {}
        self._relay_up = False
        self._epoch = 0  # +1 for every relay connection
        self._relay_down_since: Optional[float] = None
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._restorer: Optional[threading.Thread] = None
        self._restore_due = False
        self._market.pinned_ticked = self._ticked
        conn.add_listener("ready", self._tws_back)
        conn.add_listener("resubscribe", self._tws_back)
        conn.add_listener("ib_link", self._ib_link)

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, link) -> None:
        """Updates go out through link.push; its up/down listener drives full updates and the grace."""
        self._push = link.push
        link.add_link_listener(self._relay_changed)

    def hello_fields(self) -> dict:
        with self._lock:
            return {"subscriptions": list(self._subs)}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="subscriptions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """The agent stops: every subscription ends and its lines are cancelled."""
        self._conn.remove_listener("ready", self._tws_back)
        self._conn.remove_listener("resubscribe", self._tws_back)
        self._conn.remove_listener("ib_link", self._ib_link)
        with self._changed:
            self._closed = True
            ended = self._take_all()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
        self._market.unpin([i for sub in ended for i in sub.instruments])

    # --- actions --------------------------------------------------------------------------------

    def subscribe(self, contracts: Sequence[dict], tickers: Sequence[str], interval_ms: int, cancel=None) -> dict:
        """Pin the lines, fetch the first picture (as fetch-prices does) and register the
        subscription; its updates start once `activate` says the picture went out."""
        wanted, underlyings = self._scanner.price_instruments(contracts, tickers)
        sub = Subscription("sub-" + uuid.uuid4().hex[:12], wanted, underlyings, interval_ms / 1000.0)
        instruments = sub.instruments
        self._market.pin(instruments)  # INVALID_REQUEST over WARM_LINES
        try:
            with self._lock:
                if self._closed:
                    raise Busy("the agent is shutting down")
            options, quotes = sub.current(self._market.fetch(instruments, cancel=cancel))
            sub.sent(options, quotes, 0)
            with self._changed:
                if self._closed:
                    raise Busy("the agent is shutting down")
                sub.synced_epoch = self._epoch
                self._subs[sub.id] = sub
                for instrument in instruments:
                    self._holders.setdefault(instrument, []).append(sub)
        except BaseException:
            self._market.unpin(instruments)
            raise
        return {"subscription": sub.id, "options": sub.picture(options), "underlyings": quotes}

    def activate(self, sub_id: str) -> None:
        """The first picture went to the link: updates may follow, the first one interval_ms later."""
        with self._changed:
            sub = self._subs.get(sub_id)
            if sub is not None:
                sub.active = True
                sub.last_push = self._clock()
                self._changed.notify_all()

    def unsubscribe(self, sub_id: str) -> bool:
        """False when no such subscription is live (ended already, or never was)."""
        with self._changed:
            sub = self._subs.pop(sub_id, None)
            if sub is not None:
                self._drop_holder(sub)
        if sub is None:
            return False
        self._market.unpin(sub.instruments)
        log.info("subscription %s ended (unsubscribe)", sub_id)
        return True

    # --- listeners (must return at once) ----------------------------------------------------------

    def _ticked(self, instrument: Instrument) -> None:
        """A pinned stream's book changed (TWS reader thread, under the MarketData lock)."""
        with self._changed:
            wake = False
            for sub in self._holders.get(instrument, ()):
                if not sub.dirty:
                    sub.dirty = wake = True
                    sub.dirty_since = self._clock()
            if wake:
                self._changed.notify_all()

    def _relay_changed(self, up: bool) -> None:
        with self._changed:
            self._relay_up = up
            if up:
                self._epoch += 1  # every subscription owes a full update on this connection
                self._relay_down_since = None
            else:
                self._relay_down_since = self._clock()
            self._changed.notify_all()

    def _ib_link(self, up: bool, ib_code: int, text: str) -> None:
        if up:
            self._tws_back()

    def _tws_back(self) -> None:
        """TWS (re)connected, or restored its link to IB: make sure every pinned stream runs."""
        with self._changed:
            if self._closed or not self._subs:
                return
            self._restore_due = True
            if self._restorer is None:
                self._restorer = threading.Thread(target=self._restore, name="subscriptions-restore", daemon=True)
                self._restorer.start()

    def _restore(self) -> None:
        while True:
            with self._changed:
                if self._closed or not self._restore_due:
                    self._restorer = None
                    return
                self._restore_due = False
                instruments = list(dict.fromkeys(i for sub in self._subs.values() for i in sub.instruments))
            try:  # joins the streams still up (no message) and asks again for those TWS lost
                self._market.fetch(instruments)
            except AgentError as exc:
                log.warning("subscriptions: could not restart their market data (%s)", exc.message)
            except Exception:
                log.exception("subscriptions: could not restart their market data")

    # --- the updates thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                now = self._clock()
                ended: List[Subscription] = []
                if (
                    self._subs
                    and self._relay_down_since is not None
                    and now - self._relay_down_since >= self.relay_grace_s
                ):
                    ended = self._take_all()
                    log.warning(
                        "%s ended: the relay has been down for %g s",
                        plural(len(ended), "subscription"),
                        self.relay_grace_s,
                    )
                due = []
                waits = []
                for sub in self._subs.values() if self._relay_up else ():
                    at = sub.due_at(self._epoch)
                    if at is None:
                        continue
                    if at <= now:
                        due.append((sub, sub.synced_epoch != self._epoch, self._epoch))
                        sub.dirty = False  # a tick from now on makes it dirty again
                    else:
                        waits.append(at - now)
                if not due and not ended:
                    if self._subs and self._relay_down_since is not None:
                        waits.append(self._relay_down_since + self.relay_grace_s - now)
                    self._changed.wait(max(0.001, min(waits, default=IDLE_WAIT_S)))
                    continue
            if ended:
                self._market.unpin([i for sub in ended for i in sub.instruments])
            for sub, full, epoch in due:
                self._send(sub, full, epoch)

    def _send(self, sub: Subscription, full: bool, epoch: int) -> None:
        built = sub.update(self._market.pinned_results(sub.instruments), full)
        if built is None:
            return
        frame, options, quotes = built
        pushed = self._push(frame)
        with self._changed:
            sub.last_push = self._clock()  # a frame that did not go out is retried after interval_ms
            if not pushed:
                sub.dirty, sub.dirty_since = True, sub.last_push
                return
            sub.sent(options, quotes, frame["seq"])
            if full:
                sub.synced_epoch = epoch

    def _take_all(self) -> List[Subscription]:
        """End every subscription (under the lock); their lines are the caller's to unpin."""
        ended = list(self._subs.values())
        self._subs.clear()
        self._holders.clear()
        return ended

    def _drop_holder(self, sub: Subscription) -> None:
        for instrument in sub.instruments:
            holders = [s for s in self._holders.get(instrument, ()) if s is not sub]
            if holders:
                self._holders[instrument] = holders
            else:
                self._holders.pop(instrument, None)
