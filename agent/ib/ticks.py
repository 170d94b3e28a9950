"""Tick type tables, and turning what one market-data subscription streamed into an OPTION or QUOTE.

IB's sentinels never leave this module (DESIGN.md 4: missing numbers are null):
- prices: -1 ("no quote"), 0, anything negative, UNSET_DOUBLE (1.79e308), inf/nan -> None. An
  option or stock never trades at 0, and TWS sends a bid of -1 or 0 (size 0) when there is none,
  so a bid/ask/last/close of 0 means "no market" too: `mid` and sell-scan premiums never see it.
- sizes: -1, UNSET_DECIMAL / UNSET_INTEGER / UNSET_LONG -> None; Decimal sizes -> int.
- greeks: implied vol < 0, delta outside [-1, 1] (the -2 sentinel), gamma/vega < 0, theta -2,
  und price <= 0 -> None (ibapi already turns some of these into None; both forms are handled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Dict, Optional, Tuple

from ibapi.const import UNSET_DOUBLE

DATA_TYPE_NAMES = {1: "live", 2: "frozen", 3: "delayed", 4: "delayed-frozen"}
DATA_TYPE_IDS = {name: number for number, name in DATA_TYPE_NAMES.items()}

# tickPrice type -> field; the delayed twin of a tick feeds the same field.
PRICE_TICKS = {1: "bid", 2: "ask", 4: "last", 9: "close", 66: "bid", 67: "ask", 68: "last", 75: "close"}
# tickSize type -> field. 27-30 are the option's open interest / volume (generic ticks 101 / 100),
# sent as a call and a put figure: the one matching the option's right is the option's own.
SIZE_TICKS = {
    0: "bid_size",
    3: "ask_size",
    8: "volume",
    69: "bid_size",
    70: "ask_size",
    74: "volume",
    27: "call_open_interest",
    28: "put_open_interest",
    29: "call_volume",
    30: "put_volume",
}
# tickGeneric types kept: none for now. Tick 24 (generic tick 106) is the *underlying's* 30-day
# implied volatility even on an option's stream, so an OPTION's implied_vol never comes from it:
# it comes from the option's own model computation (tickOptionComputation 13 / delayed 83).
GENERIC_TICKS: Dict[int, str] = {}
# tickOptionComputation types, best first: TWS's model, then the computations from bid, ask, last.
COMPUTATION_PRIORITY = (13, 83, 10, 80, 11, 81, 12, 82)
MODEL_COMPUTATIONS = (13, 83)
DELAYED_TICKS = frozenset((66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 80, 81, 82, 83))

# What "its fields are in" means for each kind of request (DESIGN.md 5.2). A name is in once its
# tick has arrived, even carrying a "no quote" sentinel, so an option with no bid finishes on
# bid(-1) + ask + model greeks instead of waiting for its deadline.
COMPLETION_RULES = {
    "option": ("bid", "ask", "model_greeks"),
    "option+oi": ("bid", "ask", "model_greeks", "open_interest"),
    "stock": ("bid", "ask", "last"),
    "index": ("last", "close"),  # an index has a value and a close, never a bid or an ask
}

_UNSET_SIZES = (2**31 - 1, 2**63 - 1, 2**127 - 1, -(2**63))


@dataclass(frozen=True)
class Instrument:
    """One thing a market-data line can stream; also the key shared and warm subscriptions go by."""

    ticker: str
    sec_type: str = "STK"  # "STK", "IND" (exchange: the index's own, e.g. CBOE) or "OPT"
    expiration: str = ""  # YYYYMMDD (options)
    strike: float = 0.0
    right: str = ""  # "C" / "P"
    trading_class: str = ""
    exchange: str = "SMART"
    multiplier: int = 100  # options only
    # Known from contract details (0 = not looked up). Not part of the key: the other fields name
    # the same contract, so a request with and one without the conId share one subscription.
    con_id: int = field(default=0, compare=False)
    adjusted: bool = field(default=False, compare=False)  # an adjusted class (deliverable not 100 shares)

    @property
    def is_option(self) -> bool:
        return self.sec_type == "OPT"


def clean_price(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value <= 0 or value >= UNSET_DOUBLE:
        return None
    return value


def clean_size(value: Any) -> Optional[int]:
    if value is None:
        return None
    try:
        if isinstance(value, Decimal) and not value.is_finite():
            return None
        number = int(value)
    except (ValueError, OverflowError):
        return None
    if number < 0 or number in _UNSET_SIZES:
        return None
    return number


def _finite(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or abs(value) >= UNSET_DOUBLE:
        return None
    return value


def _non_negative(value: Any) -> Optional[float]:
    value = _finite(value)
    return value if value is not None and value >= 0 else None


def _delta(value: Any) -> Optional[float]:
    value = _finite(value)
    return value if value is not None and -1.0 <= value <= 1.0 else None


def _theta(value: Any) -> Optional[float]:
    value = _finite(value)
    return None if value == -2 else value


# tickOptionComputation argument (after reqId, tickType, tickAttrib) -> (field, cleaner)
_COMPUTATION_ARGS = (
    ("implied_vol", _non_negative),
    ("delta", _delta),
    (None, None),
    (None, None),
    ("gamma", _non_negative),
    ("vega", _non_negative),
    ("theta", _theta),
    ("und_price", clean_price),
)


def _mid(bid: Optional[float], ask: Optional[float]) -> Optional[float]:
    if bid is None or ask is None or ask < bid:
        return None
    return round((bid + ask) / 2, 6)


class TickBook:
    """What one subscription has streamed so far. Fed from the TWS reader thread under the caller's
    lock; read by building OPTION / QUOTE snapshots."""

    def __init__(self, instrument: Instrument):
        self.instrument = instrument
        self.fields: Dict[str, Any] = {}  # field -> cleaned value; None = arrived, no value
        self.computations: Dict[int, Dict[str, Optional[float]]] = {}
        self.data_type: Optional[int] = None  # from the marketDataType callback
        # Set by the line's owner when TWS will not send these on this stream: no model greeks after
        # a 10090/10091 notice (the underlying's data is not subscribed), no open interest when the
        # stream was asked without generic ticks (delayed data takes none). Completion then waits no more.
        self.no_model_greeks = False
        self.no_open_interest = False
        self.saw_delayed = False
        self.saw_live = False

    def apply(self, name: str, args: Tuple) -> bool:
        """One EWrapper callback (args include the reqId first). True when it changed the book."""
        handler = _HANDLERS.get(name)
        return bool(handler and handler(self, args[1:]))

    def _tick_price(self, args: Tuple) -> bool:
        return self._store(PRICE_TICKS, args[0], clean_price(args[1]))

    def _tick_size(self, args: Tuple) -> bool:
        return self._store(SIZE_TICKS, args[0], clean_size(args[1]))

    def _tick_generic(self, args: Tuple) -> bool:
        return self._store(GENERIC_TICKS, args[0], _non_negative(args[1]))

    def _store(self, table: Dict[int, str], tick_type: int, value: Any) -> bool:
        field = table.get(tick_type)
        if field is None:
            return False
        self._note_tick_type(tick_type)
        self.fields[field] = value
        return True

    def _tick_option_computation(self, args: Tuple) -> bool:
        tick_type = args[0]
        if tick_type not in COMPUTATION_PRIORITY:
            return False
        self._note_tick_type(tick_type)
        values = {}
        for (name, clean), raw in zip(_COMPUTATION_ARGS, args[2:]):
            if name:
                values[name] = clean(raw)
        self.computations[tick_type] = values
        return True

    def _market_data_type(self, args: Tuple) -> bool:
        self.data_type = int(args[0])
        return True

    def _note_tick_type(self, tick_type: int) -> None:
        if tick_type in DELAYED_TICKS:
            self.saw_delayed = True
        else:
            self.saw_live = True

    # --- reading -------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        """Whether one COMPLETION_RULES name is in."""
        if name == "model_greeks":
            if self.no_model_greeks:
                return True
            return any(self.computations.get(t, {}).get("delta") is not None for t in MODEL_COMPUTATIONS)
        if name == "open_interest":
            if self.no_open_interest:
                return True
            return self._by_right("open_interest") in self.fields
        return name in self.fields

    def complete(self, rule: str) -> bool:
        if rule == "stock" and self.instrument.sec_type == "IND":
            rule = "index"
        return all(self.has(name) for name in COMPLETION_RULES[rule])

    def has_data(self) -> bool:
        return bool(self.fields or self.computations)

    def _by_right(self, field: str) -> str:
        return ("call_" if self.instrument.right == "C" else "put_") + field

    def market_data_type(self) -> Optional[str]:
        if self.data_type in DATA_TYPE_NAMES:
            return DATA_TYPE_NAMES[self.data_type]
        if self.saw_delayed:
            return "delayed"
        return "live" if self.saw_live else None

    def greek(self, field: str) -> Optional[float]:
        for tick_type in COMPUTATION_PRIORITY:
            value = self.computations.get(tick_type, {}).get(field)
            if value is not None:
                return value
        return None

    def quote(self, error: Optional[dict] = None) -> dict:
        """QUOTE (DESIGN.md 4) plus `error`, which the scanner reads and takes off before answering
        (the QUOTE shape has no error: a failed quote is all nulls)."""
        f = self.fields
        return {
            "ticker": self.instrument.ticker,
            "sec_type": self.instrument.sec_type,
            "bid": f.get("bid"),
            "ask": f.get("ask"),
            "last": f.get("last"),
            "close": f.get("close"),
            "mid": _mid(f.get("bid"), f.get("ask")),
            "bid_size": f.get("bid_size"),
            "ask_size": f.get("ask_size"),
            "volume": f.get("volume"),
            "market_data_type": self.market_data_type(),
            "error": error,
        }

    def option(self, complete: bool, error: Optional[dict] = None) -> dict:
        """OPTION (DESIGN.md 4)."""
        inst, f = self.instrument, self.fields
        volume = f.get("volume")
        if volume is None:
            volume = f.get(self._by_right("volume"))
        implied_vol = self.greek("implied_vol")
        return {
            "ticker": inst.ticker,
            "expiration": inst.expiration,
            "strike": inst.strike,
            "right": inst.right,
            "trading_class": inst.trading_class or None,
            "multiplier": inst.multiplier,
            "con_id": inst.con_id or None,
            "adjusted": inst.adjusted,
            "bid": f.get("bid"),
            "ask": f.get("ask"),
            "last": f.get("last"),
            "mid": _mid(f.get("bid"), f.get("ask")),
            "bid_size": f.get("bid_size"),
            "ask_size": f.get("ask_size"),
            "volume": volume,
            "open_interest": f.get(self._by_right("open_interest")),
            "implied_vol": implied_vol,
            "delta": self.greek("delta"),
            "gamma": self.greek("gamma"),
            "theta": self.greek("theta"),
            "vega": self.greek("vega"),
            "und_price": self.greek("und_price"),
            "market_data_type": self.market_data_type(),
            "complete": complete,
            "error": error,
        }

    def result(self, complete: bool, error: Optional[dict] = None) -> dict:
        """The OPTION or QUOTE this instrument is answered with."""
        return self.option(complete, error) if self.instrument.is_option else self.quote(error)


_HANDLERS = {
    "tickPrice": TickBook._tick_price,
    "tickSize": TickBook._tick_size,
    "tickGeneric": TickBook._tick_generic,
    "tickOptionComputation": TickBook._tick_option_computation,
    "marketDataType": TickBook._market_data_type,
}
