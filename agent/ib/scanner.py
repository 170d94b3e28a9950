"""The scanner: the original public names (`get_available_expirations`, `get_option_data`,
`get_option_data_batch`, `fetch_option_chain`) plus `quote`, `fetch_prices` and `sell_scan`, all
streaming over the one line pool of `agent.ib.lines` (DESIGN.md 4 for the data shapes).

Choices worth knowing:
- Underlyings are stocks, ETFs and indexes. One reqContractDetails per ticker and session finds it:
  STK on SMART first (an index name, KNOWN_INDEXES, tries IND first), then the other; an index is
  quoted on the exchange its contract details name (CBOE, NASDAQ...). A symbol TWS lists more than
  once as a USD stock (ambiguous: TWS refuses market data for it without a conId) resolves to the
  listing on a US primary exchange; every answer that resolved an underlying says which
  (`underlying_contract`), and its market data goes by that conId.
- The chain's classes come from reqSecDefOptParams (cached CHAIN_CACHE_S): the union of expirations
  and of strikes per trading class, a superset. The contracts of each selected expiration are then
  exactly what one reqContractDetails {symbol, OPT, expiration, right?, tradingClass?} lists,
  cached for the trading day (the New York date), so no market-data request is spent on a contract
  that does not exist and every OPTION has its con_id, trading_class and multiplier.
- Adjusted classes (deliverable other than 100 shares: a multiplier other than the standard one,
  or the symbol followed by digits, like XYZ1) are left out unless include_adjusted; included, they
  are flagged `adjusted` and their OTM distance and call yields use the deliverable's value
  (underlying price x multiplier / 100), never the 100-share formula.
- fetch-prices and get_option_data_batch return one OPTION per requested contract, errors
  included; a contract missing from a listing already cached today is answered
  NO_SECURITY_DEFINITION without a market-data request.
- fetch-chain asks for open interest (a chain view shows it); fetch-prices and sell-scan do not,
  so they finish on bid, ask and model greeks.
- The underlying price (strikes_around, sell-scan OTM band and yields) is the quote's last, else
  its mid, else its close. Days to expiration count on the New York calendar date.
- fetch-chain streams its options nearest expiration first (the line pool starts them in request
  order), so with `on_expiration` (the v1.1 `partial` frames) the nearest expiration is complete
  early; an expiration finished before an earlier one is held back until that one went
  (ExpirationRelease).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from zoneinfo import ZoneInfo

from ibapi.contract import Contract

from agent.errors import IB_ERROR, NO_SECURITY_DEFINITION, AgentError, NoSecurityDefinition
from agent.ib.lines import MarketData
from agent.ib.ticks import Instrument, TickBook

CHAIN_CACHE_S = 300.0
DEFAULT_MULTIPLIER = 100
RIGHTS = ("C", "P")
KNOWN_INDEXES = frozenset(("SPX", "XSP", "NDX", "RUT", "VIX", "DJX", "OEX", "XEO"))
# Index option classes traders name like tickers: that class of the index's chain only.
CLASS_TICKERS = {"SPXW": "SPX", "NDXP": "NDX", "RUTW": "RUT", "VIXW": "VIX"}
# Where a US stock or ETF has its primary listing (an ambiguous symbol resolves to the one listed there)
US_PRIMARY_EXCHANGES = ("NYSE", "NASDAQ", "ARCA", "AMEX", "BATS", "IEX")
MISSING_TEXT = "No security definition has been found for the request"
PRICE_FIELDS = ("bid", "ask", "last", "close")  # a quote with none of these and an error failed
LOOKUP_THREADS = 4  # contract lookups (underlyings, listings) of one request in flight at once


# The exchange's calendar. tzdata (a pinned requirement) supplies the zone where the OS has no
# time zone database (Windows, the bundled Python).
NEW_YORK = ZoneInfo("America/New_York")


def new_york_date(now: float) -> dt.date:
    """The calendar date in New York at epoch second `now` (the exchange's date, not the PC's)."""
    return dt.datetime.fromtimestamp(now, NEW_YORK).date()


@dataclass(frozen=True)
class _Underlying:
    """The one contract a ticker resolved to."""

    ticker: str
    con_id: int
    sec_type: str  # "STK" | "IND"
    exchange: str  # where it is quoted: SMART for a stock, its own for an index
    primary_exchange: str
    listings: int  # how many contracts TWS listed for the symbol (> 1: ambiguous)

    def instrument(self) -> Instrument:
        return Instrument(self.ticker, self.sec_type, exchange=self.exchange, con_id=self.con_id)

    def describe(self) -> dict:
        return {
            "con_id": self.con_id,
            "sec_type": self.sec_type,
            "exchange": self.exchange,
            "primary_exchange": self.primary_exchange or None,
            "ambiguous": self.listings > 1,
        }


@dataclass(frozen=True)
class _OptionClass:
    """One tradingClass of an underlying on one exchange (e.g. SPX monthlies vs SPXW weeklies)."""

    name: str
    multiplier: int
    expirations: frozenset
    strikes: frozenset
    adjusted: bool = False


def is_adjusted_class(symbol: str, name: str, multiplier: int) -> bool:
    """An adjusted class (after a split, merger, special dividend): its own name, the symbol and a
    digit (XYZ1), and/or a deliverable other than the standard 100 shares."""
    return multiplier != DEFAULT_MULTIPLIER or re.fullmatch(re.escape(symbol) + r"\d+", name) is not None


@dataclass(frozen=True)
class _Chain:
    underlying: _Underlying
    exchange: str
    classes: Tuple[_OptionClass, ...]
    fetched_at: float

    @property
    def ticker(self) -> str:
        return self.underlying.ticker

    def selected(self, include_adjusted: bool) -> Tuple[_OptionClass, ...]:
        return tuple(c for c in self.classes if include_adjusted or not c.adjusted)

    def data(self, only: Optional[Sequence[_OptionClass]] = None) -> dict:
        """The `expirations` action's data: the standard classes (or `only` those); adjusted ones
        only named."""
        standard = tuple(only or ()) or self.selected(False) or self.classes
        return {
            "ticker": self.ticker,
            "underlying_con_id": self.underlying.con_id,
            "sec_type": self.underlying.sec_type,
            "underlying_contract": self.underlying.describe(),
            "multiplier": self.main_class(only).multiplier,
            "trading_classes": sorted(c.name for c in standard),
            "expirations": sorted(set().union(*(c.expirations for c in standard))),
            "strikes": sorted(set().union(*(c.strikes for c in standard))),
            "adjusted_classes": [
                {"trading_class": c.name, "multiplier": c.multiplier, "expirations": sorted(c.expirations)}
                for c in self.classes
                if c.adjusted and c not in standard
            ],
        }

    def main_class(self, only: Optional[Sequence[_OptionClass]] = None) -> _OptionClass:
        standard = tuple(only or ()) or self.selected(False) or self.classes
        return next((c for c in standard if c.name == self.ticker), standard[0])

    def class_named(self, name: str) -> Optional[_OptionClass]:
        return next((c for c in self.classes if c.name == name), None)

    def class_for(self, expiration: str, strike: float) -> Optional[_OptionClass]:
        """The class a contract given without one belongs to; None when TWS has to decide."""
        listing = [c for c in self.classes if expiration in c.expirations and strike in c.strikes]
        if len(listing) == 1:
            return listing[0]
        return next((c for c in listing if c.name == self.ticker), None)


def days_to(expiration: str, today: dt.date) -> int:
    """Calendar days from today to an expiration (YYYYMMDD)."""
    return (dt.date(int(expiration[:4]), int(expiration[4:6]), int(expiration[6:8])) - today).days


def underlying_price(quote: Optional[dict]) -> Optional[float]:
    if not quote:
        return None
    for field in ("last", "mid", "close"):
        if quote.get(field) is not None:
            return quote[field]
    return None


def unit_price(price: float, multiplier: int, adjusted: bool) -> float:
    """What one unit of an option's deliverable is worth: the underlying's price for a standard
    contract; for an adjusted one, its multiplier in shares per 100 (150 shares: 1.5 x the price)."""
    return price * multiplier / DEFAULT_MULTIPLIER if adjusted else price


def strikes_around(strikes: Iterable[float], price: float, count: int) -> List[float]:
    """`count` strikes at or below the price and `count` above it."""
    ordered = sorted(strikes)
    below = [s for s in ordered if s <= price][-count:] if count > 0 else []
    above = [s for s in ordered if s > price][:count]
    return below + above


def sell_metrics(option: dict, price: float, today: dt.date) -> dict:
    """Sell-scan figures for one option with a bid: premium per contract, yield on the money at
    risk (strike for puts, the deliverable's value for calls), annualised over the calendar days
    left (a same-day expiration counts as one day). An adjusted contract is measured against its
    own deliverable (unit_price), never against 100 shares."""
    days = days_to(option["expiration"], today)
    strike, bid = option["strike"], option["bid"]
    unit = unit_price(price, option["multiplier"], bool(option.get("adjusted")))
    if option["right"] == "P":
        otm_pct, basis = (unit - strike) / unit * 100, strike
    else:
        otm_pct, basis = (strike - unit) / unit * 100, unit
    yield_pct = bid / basis * 100
    return {
        "days": days,
        "otm_pct": round(otm_pct, 4),
        "premium": round(bid * option["multiplier"], 2),
        "yield_pct": round(yield_pct, 4),
        "annualized_pct": round(yield_pct * 365 / max(days, 1), 4),
    }


def public_quote(quote: dict) -> dict:
    """QUOTE without the error the line engine attaches to it."""
    return {k: v for k, v in quote.items() if k != "error"}


def as_listed(instrument: Instrument, option: dict) -> dict:
    """The OPTION with the listing's facts (a shared stream may have been started without them)."""
    if instrument.con_id:
        option["con_id"], option["adjusted"] = instrument.con_id, instrument.adjusted
    return option


def _is_missing_contract(option: dict) -> bool:
    return bool(option["error"]) and option["error"]["code"] == NO_SECURITY_DEFINITION


def _missing(instrument: Instrument, why: str) -> dict:
    """The OPTION TWS's error 200 would have given, answered from a listing already known."""
    error = NoSecurityDefinition(f"{MISSING_TEXT} ({why})", 200)
    return TickBook(instrument).option(False, error.to_dict())


def _in_parallel(fn: Callable, items: Sequence) -> list:
    """[fn(item) ...] in order, up to LOOKUP_THREADS at a time; the first exception is raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(LOOKUP_THREADS, len(items)), thread_name_prefix="lookup") as pool:
        return list(pool.map(fn, items))


class ExpirationRelease:
    """Hands each expiration's options on as soon as all of them are in, nearest expiration first:
    one that finished early waits until every earlier one has gone. `slots[n]` is the expiration
    (its position in `expirations`) of option n; `send(expiration, options)` gets them in option
    order, once per expiration, also for one with no options (nothing to wait for)."""

    def __init__(self, expirations: Sequence[str], slots: Sequence[int], send: Callable[[str, List[dict]], None]):
        self._expirations = list(expirations)
        self._slots = list(slots)
        self._members: List[List[int]] = [[] for _ in self._expirations]
        for n, slot in enumerate(self._slots):
            self._members[slot].append(n)
        self._left = [len(m) for m in self._members]
        self._results: Dict[int, dict] = {}
        self._next = 0  # the first expiration not sent yet
        self._send = send
        self._release()

    def done(self, n: int, option: dict) -> None:
        """Option n is in (complete or not: finished)."""
        if n in self._results:
            return
        self._results[n] = option
        self._left[self._slots[n]] -= 1
        self._release()

    def _release(self) -> None:
        while self._next < len(self._expirations) and self._left[self._next] == 0:
            slot, self._next = self._next, self._next + 1
            self._send(self._expirations[slot], [self._results[n] for n in self._members[slot]])


def _right(value: str) -> str:
    return {"CALL": "C", "PUT": "P"}.get(value.upper(), value.upper())


class Scanner:
    """Everything the relay asks of TWS market data; thread-safe, called from the worker pool."""

    def __init__(
        self,
        conn,
        config,
        today: Optional[Callable[[], dt.date]] = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._conn = conn
        self._timeout_s = config.request_timeout_s
        self.market = MarketData(conn, config)
        self._today = today or (lambda: new_york_date(wall_clock()))
        self._clock = clock
        self._lock = threading.Lock()
        self._underlyings: Dict[str, _Underlying] = {}
        self._chains: Dict[Tuple[str, str], _Chain] = {}
        # (ticker, exchange, expiration, trading class filter, right filter) -> (NY date, listed contracts)
        self._listings: Dict[Tuple[str, str, str, str, str], Tuple[dt.date, Tuple[Instrument, ...]]] = {}
        self._counts = {"listing_requests": 0, "listing_hits": 0, "unlisted_answered": 0}

    # --- contract lookups -------------------------------------------------------------------------

    def _contract_details(self, contract: Contract) -> list:
        """TWS's contract details rows for `contract`; none when it has no such contract (error 200)."""
        try:
            return self._conn.call(
                "reqContractDetails",
                self._conn.next_req_id(),
                contract,
                rows=("contractDetails",),
                end="contractDetailsEnd",
                timeout=self._timeout_s,
            )
        except AgentError as exc:
            if exc.code != NO_SECURITY_DEFINITION:
                raise
            return []

    def _underlying(self, ticker: str) -> _Underlying:
        """The stock, ETF or index a ticker names (cached for the session: a conId never changes)."""
        with self._lock:
            if ticker in self._underlyings:
                return self._underlyings[ticker]
        found = None
        for sec_type in ("IND", "STK") if ticker in KNOWN_INDEXES else ("STK", "IND"):
            contract = Contract()
            contract.symbol, contract.secType, contract.currency = ticker, sec_type, "USD"
            contract.exchange = "SMART" if sec_type == "STK" else ""
            rows = self._contract_details(contract)
            if rows:
                found = self._pick_listing(ticker, sec_type, [row[0] for row in rows])
                break
        if found is None:
            raise NoSecurityDefinition(f"TWS knows no stock, ETF or index {ticker} (USD)", 200)
        with self._lock:
            self._underlyings[ticker] = found
        return found

    @staticmethod
    def _pick_listing(ticker: str, sec_type: str, details: list) -> _Underlying:
        """One contract of those TWS listed: for an ambiguous stock, the one on a US primary exchange."""

        def rank(d) -> int:
            primary = d.contract.primaryExchange
            return US_PRIMARY_EXCHANGES.index(primary) if primary in US_PRIMARY_EXCHANGES else len(US_PRIMARY_EXCHANGES)

        chosen = min(details, key=rank).contract
        exchange = "SMART" if sec_type == "STK" else (chosen.exchange or chosen.primaryExchange)
        return _Underlying(
            ticker,
            chosen.conId,
            sec_type,
            exchange,
            chosen.primaryExchange or "",
            len({d.contract.conId for d in details}),
        )

    def _chain(self, ticker: str, exchange: str) -> _Chain:
        key = (ticker, exchange)
        with self._lock:
            chain = self._chains.get(key)
        if chain is not None and self._clock() - chain.fetched_at < CHAIN_CACHE_S:
            return chain
        underlying = self._underlying(ticker)
        rows = self._conn.call(
            "reqSecDefOptParams",
            self._conn.next_req_id(),
            ticker,
            "",
            underlying.sec_type,
            underlying.con_id,
            rows=("securityDefinitionOptionParameter",),
            end="securityDefinitionOptionParameterEnd",
            timeout=self._timeout_s,
        )
        classes = []
        for row_exchange, _con_id, trading_class, multiplier, expirations, strikes in rows:
            if row_exchange == exchange:
                multiplier = int(float(multiplier or DEFAULT_MULTIPLIER))
                classes.append(
                    _OptionClass(
                        trading_class,
                        multiplier,
                        frozenset(expirations),
                        frozenset(float(s) for s in strikes),
                        is_adjusted_class(ticker, trading_class, multiplier),
                    )
                )
        if not classes:
            raise NoSecurityDefinition(f"TWS lists no options for {ticker} on {exchange}")
        chain = _Chain(underlying, exchange, tuple(classes), self._clock())
        with self._lock:
            self._chains[key] = chain
        return chain

    def _chain_for(self, ticker: str, exchange: str, include_adjusted: bool) -> Tuple[_Chain, Tuple[_OptionClass, ...]]:
        """The chain a ticker names and its classes to use: SPXW is SPX's chain, class SPXW only."""
        root = CLASS_TICKERS.get(ticker, ticker)
        chain = self._chain(root, exchange)
        if root == ticker:
            return chain, chain.selected(include_adjusted)
        classes = tuple(c for c in chain.classes if c.name == ticker)
        if not classes:
            raise NoSecurityDefinition(f"TWS lists no {ticker} options for {root} on {exchange}")
        return chain, classes

    def _cached_chain(self, ticker: str, exchange: str) -> Optional[_Chain]:
        with self._lock:
            return self._chains.get((ticker, exchange))

    def _listing(self, chain: _Chain, expiration: str, right: str, classes: Sequence[_OptionClass]) -> List[Instrument]:
        """Exactly the contracts TWS lists for one expiration of these classes (and right, "" for
        both): one reqContractDetails, or none when today's cache covers it."""
        names = {c.name for c in classes}
        class_filter = next(iter(names)) if len(names) == 1 else ""
        cached = self._cached_listing(chain.ticker, chain.exchange, expiration, class_filter, right)
        if cached is None:
            contract = Contract()
            contract.symbol, contract.secType, contract.currency = chain.ticker, "OPT", "USD"
            contract.exchange, contract.lastTradeDateOrContractMonth = chain.exchange, expiration
            contract.right, contract.tradingClass = right, class_filter
            with self._lock:
                self._counts["listing_requests"] += 1
            rows = self._contract_details(contract)  # none: nothing listed (any more) for that expiration
            cached = tuple(
                sorted(
                    (self._listed(chain, row[0].contract) for row in rows),
                    key=lambda i: (i.trading_class, i.strike, i.right),
                )
            )
            with self._lock:
                self._listings[(chain.ticker, chain.exchange, expiration, class_filter, right)] = (
                    self._today(),
                    cached,
                )
        return [i for i in cached if i.trading_class in names and (not right or i.right == right)]

    def _listings_of(
        self, chain: _Chain, expirations: Sequence[str], right: str, classes: Sequence[_OptionClass]
    ) -> List[List[Instrument]]:
        """The listing of each expiration, in order; the lookups run side by side (each is one
        paced message, but TWS takes a moment to answer one for a big expiration)."""
        return _in_parallel(
            lambda e: self._listing(chain, e, right, [c for c in classes if e in c.expirations]), expirations
        )

    def _listed(self, chain: _Chain, c: Contract) -> Instrument:
        multiplier = int(float(c.multiplier or DEFAULT_MULTIPLIER))
        option_class = chain.class_named(c.tradingClass)
        adjusted = (
            option_class.adjusted if option_class else is_adjusted_class(chain.ticker, c.tradingClass, multiplier)
        )
        return Instrument(
            chain.ticker,
            "OPT",
            c.lastTradeDateOrContractMonth[:8],
            float(c.strike),
            _right(c.right),
            c.tradingClass,
            chain.exchange,
            multiplier,
            con_id=c.conId,
            adjusted=adjusted,
        )

    def _cached_listing(
        self, ticker: str, exchange: str, expiration: str, class_filter: str, right: str
    ) -> Optional[Tuple[Instrument, ...]]:
        """Today's listing that covers this class and right filter (a wider one does), else None."""
        today = self._today()
        with self._lock:
            for key in {(class_filter, right), (class_filter, ""), ("", right), ("", "")}:
                entry = self._listings.get((ticker, exchange, expiration) + key)
                if entry is not None and entry[0] == today:
                    self._counts["listing_hits"] += 1
                    return entry[1]
        return None

    def _option_instrument(self, contract: dict):
        """The Instrument to stream for a requested contract, or its OPTION already answered
        (NO_SECURITY_DEFINITION) when a listing cached today shows it does not exist."""
        ticker = contract["ticker"].strip().upper()
        exchange = contract.get("exchange") or "SMART"
        expiration, strike, right = str(contract["expiration"]), float(contract["strike"]), _right(contract["right"])
        trading_class = contract.get("trading_class") or ""
        if ticker in CLASS_TICKERS:  # SPXW 20300118 5000 P: SPX's option of class SPXW
            ticker, trading_class = CLASS_TICKERS[ticker], trading_class or ticker
        multiplier, adjusted = DEFAULT_MULTIPLIER, False
        chain = self._cached_chain(ticker, exchange)  # used when known; never looked up per contract
        if chain is not None:
            option_class = chain.class_named(trading_class) if trading_class else chain.class_for(expiration, strike)
            if option_class is not None:
                trading_class, multiplier, adjusted = option_class.name, option_class.multiplier, option_class.adjusted
        instrument = Instrument(
            ticker, "OPT", expiration, strike, right, trading_class, exchange, multiplier, adjusted=adjusted
        )
        listed = self._cached_listing(ticker, exchange, expiration, trading_class, right)
        if listed is None:
            return instrument
        matches = [
            i
            for i in listed
            if abs(i.strike - strike) < 1e-9
            and i.right == right
            and (not trading_class or i.trading_class == trading_class)
        ]
        if not matches:
            with self._lock:
                self._counts["unlisted_answered"] += 1
            return _missing(
                instrument,
                f"TWS lists no {ticker} {expiration} {strike:g} {right}"
                + (f" in class {trading_class}" if trading_class else ""),
            )
        return next((i for i in matches if i.trading_class == ticker), matches[0]) if len(matches) > 1 else matches[0]

    def _underlying_instrument(self, ticker: str) -> Instrument:
        """The underlying to quote. One that could not be looked up (unknown, or the lookup failed)
        is still asked as a stock: its own error then answers it, and a batch never fails for it."""
        return self._looked_up(ticker)[0]

    def _looked_up(self, ticker: str) -> Tuple[Instrument, Optional[AgentError]]:
        """_underlying_instrument, with the lookup's error when it failed (it names the ticker)."""
        try:
            return self._underlying(ticker).instrument(), None
        except AgentError as exc:
            return Instrument(ticker), exc

    # --- public: the original names ------------------------------------------------------------------

    def get_available_expirations(self, ticker: str, exchange: str = "SMART") -> dict:
        ticker = ticker.strip().upper()
        chain, classes = self._chain_for(ticker, exchange, False)
        return chain.data(classes if ticker in CLASS_TICKERS else None)

    def get_option_data(self, contract: dict) -> dict:
        return self.get_option_data_batch([contract])[0]

    def get_option_data_batch(
        self, contracts: Sequence[dict], want_open_interest: bool = False, progress=None, cancel=None
    ) -> List[dict]:
        return self._fetch_options(
            [self._option_instrument(c) for c in contracts], [], want_open_interest, progress, cancel
        )[0]

    def fetch_option_chain(
        self,
        ticker: str,
        filters: Optional[dict] = None,
        progress=None,
        cancel=None,
        on_expiration: Optional[Callable[[str, List[dict]], None]] = None,
    ) -> dict:
        """The chain (DESIGN.md 4 fetch-chain). `on_expiration(expiration, options)` is called on
        this thread once per expiration, nearest first, as soon as all its options are in, with
        the OPTIONs the response will list for it (best effort: the response still has them all)."""
        started = self._clock()
        ticker, filters = ticker.strip().upper(), filters or {}
        chain, classes = self._chain_for(ticker, "SMART", bool(filters.get("include_adjusted")))
        today = self._today()
        expirations = self._select_expirations(classes, filters, today)
        underlying = None
        price = None
        if filters.get("strikes_around") is not None:
            underlying = self._quote_one(chain.underlying.instrument(), cancel)
            price = self._require_price(ticker, underlying)
        allowed = {}
        for option_class in classes:
            strikes = set(option_class.strikes)
            if filters.get("strike_min") is not None:
                strikes = {s for s in strikes if s >= filters["strike_min"]}
            if filters.get("strike_max") is not None:
                strikes = {s for s in strikes if s <= filters["strike_max"]}
            if price is not None:
                unit = unit_price(price, option_class.multiplier, option_class.adjusted)
                strikes = set(strikes_around(strikes, unit, int(filters["strikes_around"])))
            allowed[option_class.name] = strikes
        rights = [_right(r) for r in (filters.get("rights") or RIGHTS)]
        listings = self._listings_of(chain, expirations, rights[0] if len(rights) == 1 else "", classes)
        instruments, slots = [], []  # nearest expiration first: the order lines are given out in
        for slot, listing in enumerate(listings):
            for i in listing:
                if i.strike in allowed[i.trading_class] and i.right in rights:
                    instruments.append(i)
                    slots.append(slot)
        on_option = None
        if on_expiration is not None:
            release = ExpirationRelease(
                expirations,
                slots,
                lambda e, found: on_expiration(e, [o for o in found if not _is_missing_contract(o)]),
            )
            on_option = release.done
        extra = [] if underlying is not None else [chain.underlying.instrument()]  # streams with the options
        options, quotes = self._fetch_options(instruments, extra, True, progress, cancel, on_option)
        if underlying is None:
            underlying = quotes[0]
        return {
            "ticker": ticker,
            "underlying": public_quote(underlying),
            "underlying_contract": chain.underlying.describe(),
            "expirations": expirations,
            "options": [o for o in options if not _is_missing_contract(o)],
            "elapsed_ms": int((self._clock() - started) * 1000),
        }

    # --- public: the other actions ---------------------------------------------------------------------

    def quote(self, tickers: Sequence[str], cancel=None) -> dict:
        """QUOTEs of stocks, ETFs and indexes. A ticker that failed with no price at all (unknown:
        NO_SECURITY_DEFINITION naming it) is in `errors`, never an all-null quote; the others still
        answer. When every ticker failed, the first error is the answer."""
        names = list(dict.fromkeys(t.strip().upper() for t in tickers))
        looked_up = _in_parallel(self._looked_up, names)
        results = self.market.fetch([instrument for instrument, _ in looked_up], cancel=cancel)
        quotes, errors = {}, {}
        for name, (_, lookup_error), result in zip(names, looked_up, results):
            if result["error"] and not any(result.get(k) is not None for k in PRICE_FIELDS):
                error = dict(result["error"])
                if lookup_error is not None and lookup_error.code == error["code"]:
                    error["message"] = lookup_error.message  # it says which ticker
                errors[name] = error
            else:
                quotes[name] = public_quote(result)
        if errors and not quotes:
            first = next(iter(errors.values()))
            raise AgentError.of(first["code"], first["message"], first["ib_code"])
        with self._lock:
            resolved = {t: self._underlyings[t].describe() for t in names if t in self._underlyings}
        return {"quotes": quotes, "errors": errors, "underlying_contracts": resolved}

    def price_instruments(
        self, contracts: Sequence[dict], tickers: Sequence[str] = ()
    ) -> Tuple[list, Dict[str, Instrument]]:
        """What fetch-prices (and a subscription) streams: per contract its Instrument, or its OPTION
        already answered (not listed); and the underlyings by ticker, the contracts' then `tickers`."""
        wanted = [self._option_instrument(c) for c in contracts]
        names = [CLASS_TICKERS.get(t, t) for t in (c["ticker"].strip().upper() for c in contracts)]
        names = list(dict.fromkeys(names + [t.strip().upper() for t in tickers]))
        return wanted, dict(zip(names, _in_parallel(self._underlying_instrument, names)))

    def fetch_prices(self, contracts: Sequence[dict], progress=None, cancel=None) -> dict:
        started = self._clock()
        wanted, underlyings = self.price_instruments(contracts)
        tickers = list(underlyings)
        options, quotes = self._fetch_options(wanted, list(underlyings.values()), False, progress, cancel)
        return {
            "options": options,
            "underlyings": {t: public_quote(q) for t, q in zip(tickers, quotes)},
            "elapsed_ms": int((self._clock() - started) * 1000),
        }

    def sell_scan(
        self,
        ticker: str,
        right: str,
        min_days: int = 0,
        max_days: int = 60,
        otm_min_pct: float = 0,
        otm_max_pct: float = 20,
        progress=None,
        cancel=None,
        include_adjusted: bool = False,
    ) -> dict:
        ticker, right = ticker.strip().upper(), _right(right)
        chain, classes = self._chain_for(ticker, "SMART", include_adjusted)
        today = self._today()
        underlying = self._quote_one(chain.underlying.instrument(), cancel)
        price = self._require_price(ticker, underlying)
        expirations = self._select_expirations(classes, {"min_days": min_days, "max_days": max_days}, today)
        sign = -1 if right == "P" else 1  # OTM puts sit below the price, calls above

        def in_band(i: Instrument) -> bool:
            unit = unit_price(price, i.multiplier, i.adjusted)
            return otm_min_pct <= sign * (i.strike - unit) / unit * 100 <= otm_max_pct

        instruments = [
            i for listing in self._listings_of(chain, expirations, right, classes) for i in listing if in_band(i)
        ]
        options, _ = self._fetch_options(instruments, [], False, progress, cancel)
        candidates = [
            dict(o, **sell_metrics(o, price, today)) for o in options if o["error"] is None and o["bid"] is not None
        ]
        candidates.sort(key=lambda c: c["annualized_pct"], reverse=True)
        return {
            "underlying": public_quote(underlying),
            "underlying_contract": chain.underlying.describe(),
            "candidates": candidates,
        }

    def stats(self) -> dict:
        with self._lock:
            cached = len(self._chains)
            counts = dict(self._counts, listings_cached=len(self._listings))
        return dict(self.market.stats(), chains_cached=cached, **counts)

    def close(self) -> None:
        self.market.close()

    # --- helpers ------------------------------------------------------------------------------------------

    def _fetch_options(
        self,
        wanted: Sequence,
        extra: Sequence[Instrument],
        want_open_interest: bool,
        progress,
        cancel,
        on_option: Optional[Callable[[int, dict], None]] = None,
    ) -> Tuple[List[dict], List[dict]]:
        """Stream the wanted options (Instruments; an OPTION already answered stays as it is) and
        the extra instruments after them: (OPTIONs in order, results of the extras).
        `on_option(n, OPTION)` is called as wanted[n] is done (an answered one at once)."""
        streamed = [n for n, w in enumerate(wanted) if isinstance(w, Instrument)]
        if on_option is not None:
            for n, w in enumerate(wanted):
                if not isinstance(w, Instrument):
                    on_option(n, w)

        def finished(k: int, result: dict) -> None:
            if k < len(streamed):  # the extras after the options are nobody's OPTION
                on_option(streamed[k], as_listed(wanted[streamed[k]], result))

        results = self.market.fetch(
            [wanted[n] for n in streamed] + list(extra),
            want_open_interest,
            progress,
            cancel,
            on_result=finished if on_option is not None else None,
        )
        options = list(wanted)
        for k, n in enumerate(streamed):
            options[n] = as_listed(wanted[n], results[k])
        return options, results[len(streamed) :]

    def _quote_one(self, instrument: Instrument, cancel) -> dict:
        return self.market.fetch([instrument], cancel=cancel)[0]

    @staticmethod
    def _require_price(ticker: str, quote: dict) -> float:
        price = underlying_price(quote)
        if price is None:
            error = quote.get("error") or {}
            raise AgentError.of(
                error.get("code", IB_ERROR),
                f"no price for {ticker} from TWS" + (f": {error['message']}" if error else ""),
                error.get("ib_code"),
            )
        return price

    @staticmethod
    def _select_expirations(classes: Sequence[_OptionClass], filters: dict, today: dt.date) -> List[str]:
        listed = set().union(*(c.expirations for c in classes))
        if filters.get("expirations"):
            listed &= {str(e) for e in filters["expirations"]}
        low, high = filters.get("min_days"), filters.get("max_days")
        return sorted(
            e
            for e in listed
            if (low is None or days_to(e, today) >= low) and (high is None or days_to(e, today) <= high)
        )
