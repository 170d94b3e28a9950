"""The action table (DESIGN.md 4): each action's params schema, lane and the one function that serves
it, plus the bounded worker pools that run them so the relay's reader thread never waits on IB.

Two lanes, so an order or a quote never waits minutes behind market-data bulk work: "bulk" for work
of unbounded size (chains, scans, big price batches) on AGENT_WORKERS threads, "quick" for the rest
on QUICK_WORKERS threads of its own. Each lane has its own queue of AGENT_QUEUE_SIZE (full: BUSY).

Params are validated here (with agent.relay.params), before any IB call; every failure names the field
("params.tickers[3]: must be a ticker symbol"). The scanner and the order desk raise AgentError
for everything else.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from agent import log as agent_log
from agent.errors import (
    BUSY,
    CANCELLED,
    IB_NOT_CONNECTED,
    AgentError,
    Busy,
    Cancelled,
    IbNotConnected,
    Internal,
    InvalidRequest,
    UnknownAction,
)
from agent.log import plural
from agent.orders import preview as order_preview
from agent.relay.params import (
    EXCHANGE,
    REQUIRED,
    RIGHT,
    STRIKE,
    TICKER,
    TRADING_CLASS,
    Rule,
    Schema,
    boolean,
    date,
    list_of,
    not_above,
    number,
    obj,
    validate,
)

log = agent_log.logger("requests")

MAX_QUOTE_TICKERS = 200
MAX_PRICE_CONTRACTS = 2000
MAX_CHAIN_EXPIRATIONS = 100
SHUTDOWN_MESSAGE = "the agent is shutting down"
BULK, QUICK = "bulk", "quick"
QUICK_WORKERS = 2
BULK_PRICE_CONTRACTS = 100  # a fetch-prices above this goes to the bulk lane; a Monitor page is ~40
MIN_UPDATE_INTERVAL_MS, MAX_UPDATE_INTERVAL_MS = 250, 60000  # subscribe's interval_ms (DESIGN.md 4)

# ----- the fields only the scanner's actions use -----

DAYS = number(0, 3650, integer=True)
PERCENT = number(-100, 1000)


def subscription_id(value: Any, path: str) -> str:
    """The id a subscribe answered with, as given (it is case-sensitive)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not value.isprintable():
        raise InvalidRequest(f"{path}: must be the subscription id a subscribe answered with")
    return value


OPTION_CONTRACT = {
    "ticker": (TICKER, REQUIRED),
    "expiration": (date, REQUIRED),
    "strike": (STRIKE, REQUIRED),
    "right": (RIGHT, REQUIRED),
    "trading_class": (TRADING_CLASS, None),
    "exchange": (EXCHANGE, "SMART"),
}

# ----- the actions -----


def _status(runner: "RequestRunner", job, p: dict) -> dict:
    return dict(
        runner.conn.status(),
        uptime_s=round(runner.uptime_s, 1),
        requests_served=runner.served,
        in_flight=runner.in_flight,
    )


def _expirations(runner: "RequestRunner", job, p: dict) -> dict:
    return runner.scanner.get_available_expirations(p["ticker"], exchange=p["exchange"])


def _quote(runner: "RequestRunner", job, p: dict) -> dict:
    return runner.scanner.quote(p["tickers"], cancel=job.cancel)


def _fetch_chain(runner: "RequestRunner", job, p: dict) -> dict:
    filters = {k: v for k, v in p.items() if k not in ("ticker", "partial")}
    streamed = {}
    if p["partial"]:  # v1.1: a `partial` frame per expiration as soon as all its options are in
        streamed["on_expiration"] = lambda e, options: job.partial({"expiration": e, "options": options})
    return runner.scanner.fetch_option_chain(p["ticker"], filters, progress=job.progress, cancel=job.cancel, **streamed)


def _fetch_prices(runner: "RequestRunner", job, p: dict) -> dict:
    return runner.scanner.fetch_prices(p["contracts"], progress=job.progress, cancel=job.cancel)


def _sell_scan(runner: "RequestRunner", job, p: dict) -> dict:
    return runner.scanner.sell_scan(
        p["ticker"],
        p["right"],
        min_days=p["min_days"],
        max_days=p["max_days"],
        otm_min_pct=p["otm_min_pct"],
        otm_max_pct=p["otm_max_pct"],
        include_adjusted=p["include_adjusted"],
        progress=job.progress,
        cancel=job.cancel,
    )


def _subscribe(runner: "RequestRunner", job, p: dict) -> dict:
    return runner.subscriptions.subscribe(p["contracts"] or [], p["tickers"] or [], p["interval_ms"], cancel=job.cancel)


def _subscribe_answered(runner: "RequestRunner", data: Optional[dict], error: Optional[AgentError]) -> None:
    """Updates start once the first picture went to the link; a subscribe answered with an error
    (cancelled after its picture was taken) leaves nothing behind."""
    if data is None:
        return
    if error is None:
        runner.subscriptions.activate(data["subscription"])
    else:
        runner.subscriptions.unsubscribe(data["subscription"])


def _unsubscribe(runner: "RequestRunner", job, p: dict) -> dict:
    return {"subscription": p["subscription"], "ended": runner.subscriptions.unsubscribe(p["subscription"])}


def _contracts_or_tickers(params: dict, path: str) -> None:
    if not params["contracts"] and not params["tickers"]:
        raise InvalidRequest(f"{path}.contracts: contracts or tickers (or both) are required")


def _subject(action: str, params: Any) -> str:
    """The request as its console lines name it: `fetch-chain AAPL`, `quote AAPL MSFT`,
    `fetch-prices AAPL SPY (40 contracts)` (params checked or not: a failed request names them too)."""
    words = [action]
    if isinstance(params, dict):
        tickers = params.get("tickers") if isinstance(params.get("tickers"), list) else [params.get("ticker")]
        contracts = params.get("contracts") if isinstance(params.get("contracts"), list) else None
        if contracts is not None:
            tickers = [c.get("ticker") for c in contracts if isinstance(c, dict)]
        names = list(dict.fromkeys(t.strip().upper() for t in tickers if isinstance(t, str)))
        words += names[:5] + (["..."] if len(names) > 5 else [])
        if contracts is not None:
            words.append(f"({plural(len(contracts), 'contract')})")
    return agent_log.printable(agent_log.clip(" ".join(words), 160, ellipsis="..."))


@dataclass(frozen=True)
class Action:
    run: Callable[["RequestRunner", Any, dict], dict]
    schema: Optional[Schema] = field(default_factory=dict)  # None: run() checks
    rules: Sequence[Rule] = ()
    summary: Optional[Callable[[dict, dict], str]] = None  # console line after "request "; None: debug only
    needs_ib: bool = True
    inline: bool = False  # cheap and IB-free: answered on the reader thread, even when busy
    needs_desk: bool = False  # served by agent.orders.desk.OrderDesk
    # An order action: the desk audits it, and stops before sending anything when the job is
    # cancelled; once something was sent, its answer is the real outcome, never CANCELLED.
    order: bool = False
    lane: Union[str, Callable[[dict], str]] = QUICK  # BULK or QUICK, or a function of the params
    needs_subscriptions: bool = False  # served by agent.ib.subscriptions.Subscriptions
    # Called with (runner, data, error) once the answer went to the link (subscribe: updates start).
    answered: Optional[Callable[["RequestRunner", Optional[dict], Optional[AgentError]], None]] = None

    def lane_for(self, params: dict) -> str:
        return self.lane(params) if callable(self.lane) else self.lane


ACTIONS: Dict[str, Action] = {
    "status": Action(_status, needs_ib=False, inline=True),
    "expirations": Action(
        _expirations,
        {"ticker": (TICKER, REQUIRED), "exchange": (EXCHANGE, "SMART")},
        summary=lambda p, d: f"expirations {p['ticker']}: {plural(len(d.get('expirations', [])), 'expiration')}",
    ),
    "quote": Action(
        _quote,
        {"tickers": (list_of(TICKER, MAX_QUOTE_TICKERS, unique=True), REQUIRED)},
        summary=lambda p, d: f"{_subject('quote', p)}: {plural(len(d.get('quotes', {})), 'quote')}",
    ),
    "fetch-chain": Action(
        _fetch_chain,
        {
            "ticker": (TICKER, REQUIRED),
            "expirations": (list_of(date, MAX_CHAIN_EXPIRATIONS, unique=True), None),
            "min_days": (DAYS, None),
            "max_days": (DAYS, None),
            "strike_min": (STRIKE, None),
            "strike_max": (STRIKE, None),
            "strikes_around": (number(1, 500, integer=True), None),
            "rights": (list_of(RIGHT, 2, unique=True), ("C", "P")),
            "include_adjusted": (boolean, False),
            "partial": (boolean, False),  # v1.1: a `partial` frame per expiration as it completes
        },
        rules=(not_above("min_days", "max_days"), not_above("strike_min", "strike_max")),
        lane=BULK,
        summary=lambda p, d: f"fetch-chain {p['ticker']}: {plural(len(d.get('options', [])), 'contract')}",
    ),
    "fetch-prices": Action(
        _fetch_prices,
        {"contracts": (list_of(obj(OPTION_CONTRACT), MAX_PRICE_CONTRACTS), REQUIRED)},
        lane=lambda p: BULK if len(p["contracts"]) > BULK_PRICE_CONTRACTS else QUICK,
        summary=lambda p, d: f"fetch-prices: {plural(len(d.get('options', [])), 'contract')}",
    ),
    "sell-scan": Action(
        _sell_scan,
        {
            "ticker": (TICKER, REQUIRED),
            "right": (RIGHT, REQUIRED),
            "min_days": (DAYS, 0),
            "max_days": (DAYS, 60),
            "otm_min_pct": (PERCENT, 0.0),
            "otm_max_pct": (PERCENT, 20.0),
            "include_adjusted": (boolean, False),
        },
        rules=(not_above("min_days", "max_days"), not_above("otm_min_pct", "otm_max_pct")),
        lane=BULK,
        summary=lambda p, d: (
            f"sell-scan {p['ticker']} {p['right']}: {plural(len(d.get('candidates', [])), 'candidate')}"
        ),
    ),
    "subscribe": Action(
        _subscribe,
        {
            "contracts": (list_of(obj(OPTION_CONTRACT), MAX_PRICE_CONTRACTS), None),
            "tickers": (list_of(TICKER, MAX_QUOTE_TICKERS, unique=True), None),
            "interval_ms": (number(MIN_UPDATE_INTERVAL_MS, MAX_UPDATE_INTERVAL_MS, integer=True), 1000),
        },
        rules=(_contracts_or_tickers,),
        lane=lambda p: BULK if len(p["contracts"] or ()) > BULK_PRICE_CONTRACTS else QUICK,
        needs_subscriptions=True,
        answered=_subscribe_answered,
        summary=lambda p, d: (
            f"{_subject('subscribe', p)}: {d['subscription']}, {plural(len(d['options']), 'contract')}"
            f" and {plural(len(d['underlyings']), 'underlying')} every {p['interval_ms']} ms at most"
        ),
    ),
    "unsubscribe": Action(
        _unsubscribe,
        {"subscription": (subscription_id, REQUIRED)},
        needs_ib=False,
        needs_subscriptions=True,
        summary=lambda p, d: f"unsubscribe {p['subscription']}" + ("" if d["ended"] else ": was not live"),
    ),
    "positions": Action(
        lambda runner, job, p: runner.desk.account.positions(),
        needs_desk=True,
        summary=lambda p, d: f"positions: {plural(len(d.get('positions', [])), 'position')}",
    ),
    "account-summary": Action(
        lambda runner, job, p: runner.desk.account.summary(),
        needs_desk=True,
        summary=lambda p, d: f"account-summary: {plural(len(d.get('accounts', {})), 'account')}",
    ),
    "open-orders": Action(
        lambda runner, job, p: runner.desk.open_orders(),
        needs_desk=True,
        summary=lambda p, d: f"open-orders: {plural(len(d.get('orders', [])), 'open order')}",
    ),
    # The desk checks these params itself (agent.orders.guard) and audits every attempt, refused or not.
    "place-order": Action(
        lambda runner, job, p: runner.desk.place_order(job.id, p, cancel=job.cancel),
        schema=None,
        needs_ib=False,
        needs_desk=True,
        order=True,
    ),  # the desk writes each order request's one console line (agent.orders.desk)
    "cancel-order": Action(
        lambda runner, job, p: runner.desk.cancel_order(job.id, p, cancel=job.cancel),
        schema=None,
        needs_ib=False,
        needs_desk=True,
        order=True,
    ),
    # place-order's params, checked and audited by order_preview (its console line too). A read, not
    # an order action: nothing is stored under its id, and a cancel frame after it ran answers CANCELLED.
    "preview-order": Action(
        lambda runner, job, p: order_preview.preview_order(runner.desk, job.id, p, cancel=job.cancel),
        schema=None,
        needs_ib=False,
        needs_desk=True,
    ),
}


class RequestRunner:
    """The bounded worker pools behind RelayLink, one per lane: submit() never blocks (a full queue
    answers BUSY)."""

    def __init__(
        self,
        conn: Any,
        scanner: Any,
        desk: Any = None,
        workers: int = 4,
        queue_size: int = 64,
        actions: Dict[str, Action] = ACTIONS,
        subscriptions: Any = None,
    ):
        self.conn = conn
        self.scanner = scanner
        self.desk = desk
        self.subscriptions = subscriptions
        self._actions = {
            name: a
            for name, a in actions.items()
            if (desk is not None or not a.needs_desk) and (subscriptions is not None or not a.needs_subscriptions)
        }
        self._queues: Dict[str, "queue.Queue"] = {lane: queue.Queue(maxsize=queue_size) for lane in (BULK, QUICK)}
        self._workers = [
            (
                self._queues[lane],
                threading.Thread(target=self._work, args=(self._queues[lane],), name=f"{lane}-{i + 1}", daemon=True),
            )
            for lane, count in ((BULK, workers), (QUICK, QUICK_WORKERS))
            for i in range(count)
        ]
        self._jobs: set = set()  # queued or running in either lane (inline ones never are)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._started = time.monotonic()
        self.served = 0

    @property
    def names(self) -> List[str]:
        return list(self._actions)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        for _, worker in self._workers:
            worker.start()

    def submit(self, job) -> None:
        """Called on the relay's reader thread: everything here is quick and never touches IB."""
        action = self._actions.get(job.action)
        try:
            if action is None:
                raise UnknownAction(f"unknown action {job.action!r}; this agent serves: " + ", ".join(self._actions))
            if self._closing:
                raise Busy(SHUTDOWN_MESSAGE)
            params = job.params if action.schema is None else validate(action.schema, job.params, rules=action.rules)
            if action.needs_ib and not self.conn.ready:
                reason = self.conn.status().get("error")
                raise IbNotConnected("not connected to TWS / IB Gateway" + (f": {reason}" if reason else ""))
        except AgentError as exc:
            self._answer(job, action, None, exc)
            return
        if action.inline:  # answered before submit() returns: never in flight, so status does not count itself
            self._run(job, action, params)
            return
        lane = action.lane_for(params)
        with self._lock:
            self._jobs.add(job)
        try:
            self._queues[lane].put_nowait((job, action, params))
        except queue.Full:
            self._answer(
                job,
                action,
                None,
                Busy(f"{self._queues[lane].maxsize} {lane} requests are already waiting; try again shortly"),
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new requests, cancel the queued and running ones, and wait for their answers."""
        with self._lock:
            self._closing = True
            for job in self._jobs:
                job.cancel.set()
            deadline = time.monotonic() + timeout
            while self._jobs and self._idle.wait(max(0.0, deadline - time.monotonic())):
                pass
            left = len(self._jobs)
        if left:
            log.warning("%s did not finish in time during shutdown", plural(left, "request"))
        for lane, _ in self._workers:  # one stop sign per worker, in its own lane
            try:
                lane.put_nowait(None)
            except queue.Full:
                pass

    def _work(self, lane: "queue.Queue") -> None:
        while True:
            item = lane.get()
            if item is None:
                return
            job, action, params = item
            if job.cancel.is_set():
                self._answer(job, action, None, Cancelled("cancelled before it started: nothing was sent to TWS"))
            else:
                self._run(job, action, params)

    def _run(self, job, action: Action, params: dict) -> None:
        started = time.monotonic()
        data, error = None, None
        try:
            data = action.run(self, job, params)
            if job.cancel.is_set() and not action.order:
                error = Cancelled("cancelled")
        except AgentError as exc:
            error = exc
        except Exception as exc:
            log.exception("request %s %s: unexpected error", job.action, job.id)
            error = Internal(f"unexpected error in the agent ({exc.__class__.__name__}); details are in its log file")
        self._answer(job, action, params, error, data, time.monotonic() - started, ran=True)
        if action.answered is not None:
            try:
                action.answered(self, data, error)
            except Exception:
                log.exception("request %s %s: error after its answer", job.action, job.id)

    def _audit_unserved(self, job, error: AgentError) -> AgentError:
        """Every order request gets its audit line before the answer, also one the desk never saw."""
        try:
            return self.desk.audit_unserved(job.action, job.id, job.params, error)
        except Exception:  # the answer must still go out; the desk's log line says what failed
            log.exception("request %s %s: cannot write its audit line", job.action, job.id)
            return error

    def _answer(
        self,
        job,
        action: Optional[Action],
        params: Optional[dict],
        error: Optional[AgentError],
        data: Optional[dict] = None,
        elapsed: float = 0.0,
        ran: bool = False,
    ) -> None:
        if action is not None and action.order and not ran and error is not None:
            error = self._audit_unserved(job, error)  # BUSY, CANCELLED before it started, shutting down
        try:
            job.finish(data=data, error=error)
        finally:
            with self._lock:
                self._jobs.discard(job)
                self.served += 1
                self._idle.notify_all()
        self._log_outcome(job, action, params, error, data, elapsed)

    @staticmethod
    def _log_outcome(
        job,
        action: Optional[Action],
        params: Optional[dict],
        error: Optional[AgentError],
        data: Optional[dict],
        elapsed: float,
    ) -> None:
        if error is not None:
            expected = (CANCELLED, BUSY, IB_NOT_CONNECTED)  # agent.ib.connection already says why TWS is down
            level = logging.INFO if error.code in expected else logging.WARNING
            if getattr(error, "logged", False):  # the order desk's one console line already said it
                level = logging.DEBUG
            name = job.action if action else agent_log.clip(repr(job.action), 40)
            ib = f", IB error {error.ib_code}" if error.ib_code is not None else ""
            subject = _subject(name, job.params if action else None)
            if error.code == CANCELLED:  # by the web app (a cancel frame) or the agent stopping: not a failure
                detail = "" if error.message in ("cancelled", "request cancelled") else f": {error.message}"
                log.log(level, "request %s cancelled%s", subject, agent_log.printable(detail))
            else:
                log.log(
                    level, "request %s failed: %s (%s%s)", subject, agent_log.printable(error.message), error.code, ib
                )
            log.debug("request %s failed: its id was %s", name, agent_log.printable(agent_log.clip(str(job.id), 130)))
        elif action is not None and action.summary is not None:
            failed = "".join(
                f"; {t} failed: {e['message']} ({e['code']})"  # per ticker (quote)
                for t, e in list((data.get("errors") or {}).items())[:5]
            )
            log.info("request %s in %.1f s%s", action.summary(params, data), elapsed, agent_log.printable(failed))
        else:
            log.debug("request %s %s answered in %.3f s", job.action, job.id, elapsed)
