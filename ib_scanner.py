"""The scanner: the original public names (`get_available_expirations`, `get_option_data`,
`get_option_data_batch`, `fetch_option_chain`) plus `quote`, `fetch_prices` and `sell_scan`, all
streaming over the one line pool of `ib_lines` (DESIGN.md 4 for the data shapes).

Choices worth knowing:
- The underlying's conId comes from one reqContractDetails (STK SMART USD), cached for the session;
  the option grid from reqSecDefOptParams, cached CHAIN_CACHE_S. Options are then requested fully
  specified (no reqContractDetails per option), so `con_id` of an OPTION is null.
- The grid is a superset. fetch-chain drops the combinations TWS answers NO_SECURITY_DEFINITION for
  (they are not contracts, and the caller asked for "the chain", not for them); fetch-prices and
  get_option_data_batch return one OPTION per requested contract, errors included.
- fetch-chain asks for open interest (a chain view shows it); fetch-prices and sell-scan do not,
  so they finish on bid, ask and model greeks.
- The underlying price (strikes_around, sell-scan OTM band and yields) is the quote's last, else
  its mid, else its close.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ibapi.contract import Contract

from agent_errors import IB_ERROR, NO_SECURITY_DEFINITION, AgentError
from ib_lines import MarketData
from ib_ticks import Instrument

CHAIN_CACHE_S = 300.0
DEFAULT_MULTIPLIER = 100
RIGHTS = ("C", "P")


@dataclass(frozen=True)
class _OptionClass:
    """One tradingClass of an underlying on one exchange (e.g. SPX monthlies vs SPXW weeklies)."""
    name: str
    multiplier: int
    expirations: frozenset
    strikes: frozenset


@dataclass(frozen=True)
class _Chain:
    ticker: str
    exchange: str
    underlying_con_id: int
    classes: Tuple[_OptionClass, ...]
    fetched_at: float

    def data(self) -> dict:
        """The `expirations` action's data."""
        return {"ticker": self.ticker, "underlying_con_id": self.underlying_con_id,
                "multiplier": self.main_class().multiplier,
                "trading_classes": sorted(c.name for c in self.classes),
                "expirations": sorted(set().union(*(c.expirations for c in self.classes))),
                "strikes": sorted(set().union(*(c.strikes for c in self.classes)))}

    def main_class(self) -> _OptionClass:
        return next((c for c in self.classes if c.name == self.ticker), self.classes[0])

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


def strikes_around(strikes: Iterable[float], price: float, count: int) -> List[float]:
    """`count` strikes at or below the price and `count` above it."""
    ordered = sorted(strikes)
    below = [s for s in ordered if s <= price][-count:] if count > 0 else []
    above = [s for s in ordered if s > price][:count]
    return below + above


def sell_metrics(option: dict, price: float, today: dt.date) -> dict:
    """Sell-scan figures for one option with a bid: premium per contract, yield on the money at
    risk (strike for puts, underlying for calls), annualised over the calendar days left (a
    same-day expiration counts as one day)."""
    days = days_to(option["expiration"], today)
    strike, bid = option["strike"], option["bid"]
    if option["right"] == "P":
        otm_pct, basis = (price - strike) / price * 100, strike
    else:
        otm_pct, basis = (strike - price) / price * 100, price
    yield_pct = bid / basis * 100
    return {"days": days, "otm_pct": round(otm_pct, 4), "premium": round(bid * option["multiplier"], 2),
            "yield_pct": round(yield_pct, 4), "annualized_pct": round(yield_pct * 365 / max(days, 1), 4)}


def _public_quote(quote: dict) -> dict:
    """QUOTE without the error the line engine attaches to it."""
    return {k: v for k, v in quote.items() if k != "error"}


def _is_missing_contract(option: dict) -> bool:
    return bool(option["error"]) and option["error"]["code"] == NO_SECURITY_DEFINITION


class Scanner:
    """Everything the relay asks of TWS market data; thread-safe, called from the worker pool."""

    def __init__(self, conn, config, today: Callable[[], dt.date] = dt.date.today,
                 clock: Callable[[], float] = time.monotonic):
        self._conn = conn
        self._timeout_s = config.request_timeout_s
        self.market = MarketData(conn, config)
        self._today = today
        self._clock = clock
        self._lock = threading.Lock()
        self._con_ids: Dict[str, int] = {}
        self._chains: Dict[Tuple[str, str], _Chain] = {}

    # --- contract lookups -------------------------------------------------------------------------

    def _underlying_con_id(self, ticker: str) -> int:
        with self._lock:
            if ticker in self._con_ids:
                return self._con_ids[ticker]
        contract = Contract()
        contract.symbol, contract.secType, contract.exchange, contract.currency = ticker, "STK", "SMART", "USD"
        rows = self._conn.call("reqContractDetails", self._conn.next_req_id(), contract,
                               rows=("contractDetails",), end="contractDetailsEnd", timeout=self._timeout_s)
        if not rows:
            raise AgentError(NO_SECURITY_DEFINITION, f"TWS knows no stock {ticker} (SMART, USD)")
        con_id = rows[0][0].contract.conId
        with self._lock:
            self._con_ids[ticker] = con_id
        return con_id

    def _chain(self, ticker: str, exchange: str) -> _Chain:
        key = (ticker, exchange)
        with self._lock:
            chain = self._chains.get(key)
        if chain is not None and self._clock() - chain.fetched_at < CHAIN_CACHE_S:
            return chain
        con_id = self._underlying_con_id(ticker)
        rows = self._conn.call("reqSecDefOptParams", self._conn.next_req_id(), ticker, "", "STK", con_id,
                               rows=("securityDefinitionOptionParameter",),
                               end="securityDefinitionOptionParameterEnd", timeout=self._timeout_s)
        classes = tuple(
            _OptionClass(trading_class, int(float(multiplier or DEFAULT_MULTIPLIER)),
                         frozenset(expirations), frozenset(float(s) for s in strikes))
            for row_exchange, _con_id, trading_class, multiplier, expirations, strikes in rows
            if row_exchange == exchange)
        if not classes:
            raise AgentError(NO_SECURITY_DEFINITION, f"TWS lists no options for {ticker} on {exchange}")
        chain = _Chain(ticker, exchange, con_id, classes, self._clock())
        with self._lock:
            self._chains[key] = chain
        return chain

    def _cached_chain(self, ticker: str, exchange: str) -> Optional[_Chain]:
        with self._lock:
            return self._chains.get((ticker, exchange))

    def _option_instrument(self, contract: dict) -> Instrument:
        ticker = contract["ticker"].strip().upper()
        exchange = contract.get("exchange") or "SMART"
        expiration, strike, right = str(contract["expiration"]), float(contract["strike"]), contract["right"].upper()
        trading_class = contract.get("trading_class") or ""
        multiplier = DEFAULT_MULTIPLIER
        chain = self._cached_chain(ticker, exchange)     # used when known; never looked up per contract
        if chain is not None:
            option_class = (next((c for c in chain.classes if c.name == trading_class), None)
                            if trading_class else chain.class_for(expiration, strike))
            if option_class is not None:
                trading_class, multiplier = option_class.name, option_class.multiplier
        return Instrument(ticker, "OPT", expiration, strike, right, trading_class, exchange, multiplier)

    # --- public: the original names ------------------------------------------------------------------

    def get_available_expirations(self, ticker: str, exchange: str = "SMART") -> dict:
        return self._chain(ticker.strip().upper(), exchange).data()

    def get_option_data(self, contract: dict) -> dict:
        return self.get_option_data_batch([contract])[0]

    def get_option_data_batch(self, contracts: Sequence[dict], want_open_interest: bool = False,
                              progress=None, cancel=None) -> List[dict]:
        instruments = [self._option_instrument(c) for c in contracts]
        return self.market.fetch(instruments, want_open_interest, progress, cancel)

    def fetch_option_chain(self, ticker: str, filters: Optional[dict] = None, progress=None, cancel=None) -> dict:
        started = self._clock()
        ticker, filters = ticker.strip().upper(), filters or {}
        chain = self._chain(ticker, "SMART")
        today = self._today()
        expirations = self._select_expirations(chain, filters, today)
        underlying = None
        allowed_strikes = set().union(*(c.strikes for c in chain.classes))
        if filters.get("strike_min") is not None:
            allowed_strikes = {s for s in allowed_strikes if s >= filters["strike_min"]}
        if filters.get("strike_max") is not None:
            allowed_strikes = {s for s in allowed_strikes if s <= filters["strike_max"]}
        if filters.get("strikes_around") is not None:
            underlying = self._quote_one(ticker, cancel)
            price = self._require_price(ticker, underlying)
            allowed_strikes = set(strikes_around(allowed_strikes, price, int(filters["strikes_around"])))
        rights = [r.upper() for r in (filters.get("rights") or RIGHTS)]
        instruments = [
            Instrument(ticker, "OPT", expiration, strike, right, option_class.name, "SMART", option_class.multiplier)
            for expiration in expirations
            for option_class in chain.classes if expiration in option_class.expirations
            for strike in sorted(option_class.strikes & allowed_strikes)
            for right in rights]
        if underlying is None:      # no price needed first: the underlying streams with the options
            instruments.append(Instrument(ticker))
        results = self.market.fetch(instruments, True, progress, cancel)
        if underlying is None:
            underlying = results.pop()
        return {"ticker": ticker, "underlying": _public_quote(underlying), "expirations": expirations,
                "options": [o for o in results if not _is_missing_contract(o)],
                "elapsed_ms": int((self._clock() - started) * 1000)}

    # --- public: the other actions ---------------------------------------------------------------------

    def quote(self, tickers: Sequence[str], cancel=None) -> dict:
        """QUOTEs of stocks/ETFs. When every ticker failed, the first error is the answer."""
        names = list(dict.fromkeys(t.strip().upper() for t in tickers))
        results = self.market.fetch([Instrument(t) for t in names], cancel=cancel)
        errors = [r["error"] for r in results if r["error"]]
        if results and len(errors) == len(results):
            raise AgentError(errors[0]["code"], errors[0]["message"], errors[0]["ib_code"])
        return {"quotes": {name: _public_quote(r) for name, r in zip(names, results)}}

    def fetch_prices(self, contracts: Sequence[dict], progress=None, cancel=None) -> dict:
        started = self._clock()
        instruments = [self._option_instrument(c) for c in contracts]
        tickers = list(dict.fromkeys(i.ticker for i in instruments))
        results = self.market.fetch(instruments + [Instrument(t) for t in tickers], False, progress, cancel)
        quotes = results[len(instruments):]
        return {"options": results[:len(instruments)],
                "underlyings": {t: _public_quote(q) for t, q in zip(tickers, quotes)},
                "elapsed_ms": int((self._clock() - started) * 1000)}

    def sell_scan(self, ticker: str, right: str, min_days: int = 0, max_days: int = 60,
                  otm_min_pct: float = 0, otm_max_pct: float = 20, progress=None, cancel=None) -> dict:
        ticker, right = ticker.strip().upper(), right.upper()
        chain = self._chain(ticker, "SMART")
        today = self._today()
        underlying = self._quote_one(ticker, cancel)
        price = self._require_price(ticker, underlying)
        expirations = self._select_expirations(chain, {"min_days": min_days, "max_days": max_days}, today)
        sign = -1 if right == "P" else 1    # OTM puts sit below the price, calls above
        instruments = [
            Instrument(ticker, "OPT", expiration, strike, right, option_class.name, "SMART", option_class.multiplier)
            for expiration in expirations
            for option_class in chain.classes if expiration in option_class.expirations
            for strike in sorted(option_class.strikes)
            if otm_min_pct <= sign * (strike - price) / price * 100 <= otm_max_pct]
        options = self.market.fetch(instruments, False, progress, cancel)
        candidates = [dict(o, **sell_metrics(o, price, today)) for o in options
                      if o["error"] is None and o["bid"] is not None]
        candidates.sort(key=lambda c: c["annualized_pct"], reverse=True)
        return {"underlying": _public_quote(underlying), "candidates": candidates}

    def stats(self) -> dict:
        with self._lock:
            cached = len(self._chains)
        return dict(self.market.stats(), chains_cached=cached)

    def close(self) -> None:
        self.market.close()

    # --- helpers ------------------------------------------------------------------------------------------

    def _quote_one(self, ticker: str, cancel) -> dict:
        return self.market.fetch([Instrument(ticker)], cancel=cancel)[0]

    @staticmethod
    def _require_price(ticker: str, quote: dict) -> float:
        price = underlying_price(quote)
        if price is None:
            error = quote.get("error") or {}
            raise AgentError(error.get("code", IB_ERROR),
                             f"no price for {ticker} from TWS" + (f": {error['message']}" if error else ""),
                             error.get("ib_code"))
        return price

    @staticmethod
    def _select_expirations(chain: _Chain, filters: dict, today: dt.date) -> List[str]:
        listed = set().union(*(c.expirations for c in chain.classes))
        if filters.get("expirations"):
            listed &= {str(e) for e in filters["expirations"]}
        low, high = filters.get("min_days"), filters.get("max_days")
        return sorted(e for e in listed
                      if (low is None or days_to(e, today) >= low) and (high is None or days_to(e, today) <= high))
