"""What the fake TWS lists: the underlyings, how each one's option chain is listed (expirations,
strike grids, trading classes) and the reference data TWS gives with a contract (order types,
market rules, trading hours, ISINs). Static apart from today's date: `fake_market.Market` builds
the instruments from these and prices them.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

MULTIPLIER = "100"


@dataclass(frozen=True)
class Instrument:
    """One tradable contract, with the attribute names the wire encoders read."""

    con_id: int
    symbol: str
    sec_type: str  # "STK" | "OPT"
    expiry: str = ""  # YYYYMMDD for options
    strike: float = 0.0
    right: str = ""  # "C" | "P"
    multiplier: str = ""
    exchange: str = "SMART"
    primary_exchange: str = ""
    currency: str = "USD"
    local_symbol: str = ""
    trading_class: str = ""
    long_name: str = ""
    min_tick: float = 0.01
    under_con_id: int = 0
    valid_exchanges: str = "SMART"
    industry: str = ""
    category: str = ""
    subcategory: str = ""
    order_types: str = ""  # contractDetails.orderTypes (comma list)
    market_rule_ids: str = ""  # one rule id per valid exchange, in the same order
    trading_hours: str = ""  # "YYYYMMDD:HHMM-YYYYMMDD:HHMM;YYYYMMDD:CLOSED;..." (US/Eastern)
    liquid_hours: str = ""
    sec_ids: Tuple[Tuple[str, str], ...] = ()  # e.g. (("ISIN", "US0378331005"),)
    under_sec_type: str = ""  # options: the underlying's type ("STK", "IND")


@dataclass(frozen=True)
class UnderlyingSpec:
    """How one underlying's chain is listed (the knobs that make it liquid or thin)."""

    symbol: str
    con_id: int
    price: float
    vol: float
    primary_exchange: str
    long_name: str
    industry: str
    option_exchanges: Tuple[str, ...]
    weeklies: int  # Friday expirations
    monthlies: int  # third-Friday expirations
    leaps: int  # January expirations in following years
    strike_step: float  # near-the-money step
    wide_step: float  # step further out (monthlies and leaps only)
    near_pct: float  # near-the-money band where strike_step applies
    weekly_pct: float  # weeklies list strikes within this band of the price
    monthly_pct: float  # monthlies and leaps list strikes within this band
    thin: bool = False  # merger target: wide spreads, most options without a bid
    sec_type: str = "STK"  # "IND": an index (quotes last/close, never bid/ask)
    weekly_class: str = ""  # index: weeklies (and PM-settled third Fridays) list under this
    # trading class (SPXW) beside the monthly class named like the symbol
    adjusted_multiplier: str = ""  # a stock with an adjusted class "<SYM>1" (monthlies only, strikes
    # around the pre-adjustment price) of this deliverable beside its own
    isin: str = ""
    dailies: int = 0  # the next N weekdays that are not already listed expire too (SPY's
    # daily expirations), each listing strikes within daily_pct only
    daily_pct: float = 0.0
    other_listings: Tuple[Tuple[int, str, str], ...] = ()  # (conId, primary exchange, long name) of
    # further USD stocks with this symbol: ambiguous as a stock on SMART


UNDERLYINGS: Tuple[UnderlyingSpec, ...] = (
    UnderlyingSpec(
        "AAPL",
        265598,
        190.0,
        0.27,
        "NASDAQ",
        "APPLE INC",
        "Technology",
        ("SMART", "CBOE", "ISE", "AMEX"),
        4,
        6,
        1,
        2.5,
        5.0,
        0.10,
        0.15,
        0.40,
    ),
    UnderlyingSpec(
        "MSFT",
        272093,
        415.0,
        0.25,
        "NASDAQ",
        "MICROSOFT CORP",
        "Technology",
        ("SMART", "CBOE", "ISE"),
        3,
        5,
        1,
        5.0,
        10.0,
        0.08,
        0.12,
        0.35,
    ),
    UnderlyingSpec(
        "SPY",
        756733,
        520.0,
        0.15,
        "ARCA",
        "SPDR S&P 500 ETF TRUST",
        "Funds",
        ("SMART", "CBOE", "AMEX", "ISE"),
        6,
        6,
        1,
        1.0,
        5.0,
        0.05,
        0.10,
        0.30,
        dailies=10,
        daily_pct=0.03,
    ),
    UnderlyingSpec(
        "MRGT",
        900001,
        47.6,
        0.06,
        "NYSE",
        "MERGER TARGET CORP",
        "Industrial",
        ("SMART", "AMEX"),
        0,
        3,
        0,
        2.5,
        2.5,
        0.20,
        0.20,
        0.20,
        thin=True,
    ),
    # v1.1, appended so the options above keep their conIds: an index with two trading classes,
    # and a stock whose chain has an adjusted class beside the standard one.
    UnderlyingSpec(
        "SPX",
        416904,
        5200.0,
        0.15,
        "CBOE",
        "S&P 500 Stock Index",
        "Indices",
        ("SMART", "CBOE"),
        4,
        4,
        0,
        25.0,
        50.0,
        0.04,
        0.06,
        0.15,
        sec_type="IND",
        weekly_class="SPXW",
    ),
    UnderlyingSpec(
        "XYZ",
        900002,
        64.0,
        0.35,
        "NYSE",
        "XYZ HOLDINGS INC",
        "Consumer, Cyclical",
        ("SMART", "CBOE", "AMEX"),
        2,
        3,
        0,
        1.0,
        2.5,
        0.10,
        0.15,
        0.30,
        adjusted_multiplier="150",
    ),
    # v1.1 (issue 17), appended likewise: a stock that is ambiguous on SMART (a second TWIN trades
    # over the counter), and the other index option underlyings, kept small.
    UnderlyingSpec(
        "TWIN",
        900003,
        38.5,
        0.30,
        "NYSE",
        "TWIN RIVERS INDUSTRIES",
        "Industrial",
        ("SMART", "CBOE"),
        2,
        2,
        0,
        1.0,
        2.5,
        0.10,
        0.10,
        0.20,
        other_listings=((900004, "PINK", "TWIN CAPITAL CORP"),),
    ),
    UnderlyingSpec(
        "XSP",
        241264,
        520.0,
        0.15,
        "CBOE",
        "Mini S&P 500 Index",
        "Indices",
        ("SMART", "CBOE"),
        2,
        2,
        0,
        1.0,
        5.0,
        0.03,
        0.04,
        0.08,
        sec_type="IND",
    ),
    UnderlyingSpec(
        "NDX",
        416843,
        18200.0,
        0.18,
        "NASDAQ",
        "NASDAQ 100 Stock Index",
        "Indices",
        ("SMART", "CBOE", "ISE"),
        2,
        2,
        0,
        100.0,
        250.0,
        0.03,
        0.04,
        0.08,
        sec_type="IND",
        weekly_class="NDXP",
    ),
    UnderlyingSpec(
        "RUT",
        416888,
        2050.0,
        0.20,
        "RUSSELL",
        "Russell 2000 Stock Index",
        "Indices",
        ("SMART", "CBOE"),
        2,
        2,
        0,
        10.0,
        25.0,
        0.03,
        0.05,
        0.10,
        sec_type="IND",
        weekly_class="RUTW",
    ),
    UnderlyingSpec(
        "VIX",
        13455763,
        16.0,
        0.80,
        "CBOE",
        "CBOE Volatility Index",
        "Indices",
        ("SMART", "CBOE"),
        1,
        3,
        0,
        1.0,
        1.0,
        0.50,
        0.30,
        0.60,
        sec_type="IND",
        weekly_class="VIXW",
    ),
)


ISINS = {"AAPL": "US0378331005", "MSFT": "US5949181045", "SPY": "US78462F1030"}


# contractDetails.orderTypes as TWS lists them (recorded for a NASDAQ stock and a stock option).
STOCK_ORDER_TYPES = (
    "ACTIVETIM,AD,ADDONT,ADJUST,ALERT,ALGO,ALLOC,AON,AVGCOST,BASKET,BENCHPX,CASHQTY,COND,CONDORDER,DARKONLY,"
    "DARKPOLL,DAY,DEACT,DEACTDIS,DEACTEOD,DIS,DUR,GAT,GTC,GTD,GTT,HID,IBKRATS,ICE,IMB,IOC,LIT,LMT,LOC,MIDPX,"
    "MIT,MKT,MOC,MTL,NGCOMB,NODARK,NONALGO,OCA,OPG,OPGREROUT,PEGBENCH,PEGMID,POSTATS,POSTONLY,PREOPGRTH,"
    "PRICECHK,REL,REL2MID,RELPCTOFS,RPI,RTH,SCALE,SCALEODD,SCALERST,SIZECHK,SNAPMID,SNAPMKT,SNAPREL,STP,"
    "STPLMT,SWEEP,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,WHATIF"
)


OPTION_ORDER_TYPES = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AON,AVGCOST,BASKET,COND,CONDORDER,DAY,DEACT,DEACTDIS,DEACTEOD,DIS,"
    "FOK,GAT,GTC,GTD,GTT,HID,ICE,IOC,LIT,LMT,MIT,MKT,MTL,NGCOMB,NONALGO,OCA,OPENCLOSE,PAON,PEGMIDVOL,"
    "PEGMKTVOL,PEGPRMVOL,PEGSRFVOL,POSTONLY,PRICECHK,REL,RELPCTOFS,RELSTK,SCALE,SCALERST,SIZECHK,SMARTSTG,"
    "SNAPMID,SNAPMKT,SNAPREL,STP,STPLMT,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,VOLAT,WHATIF"
)


STOCK_MARKET_RULE, SMART_OPTION_MARKET_RULE, OPTION_MARKET_RULE = "26", "32", "109"


STOCK_CATEGORY = {
    "Technology": ("Computers", "Computers"),
    "Funds": ("Equity Fund", "Growth-Large Cap"),
    "Industrial": ("Miscellaneous Manufactur", "Diversified Manufact Op"),
    "Consumer, Cyclical": ("Retail", "Retail-Apparel/Shoe"),
}


def trading_hours(today: dt.date, open_hhmm: str, close_hhmm: str, days: int = 6) -> str:
    """TWS's tradingHours / liquidHours text for `days` days from today: weekends CLOSED."""
    parts = []
    for offset in range(days):
        day = (today + dt.timedelta(days=offset)).strftime("%Y%m%d")
        if (today + dt.timedelta(days=offset)).weekday() >= 5:
            parts.append(f"{day}:CLOSED")
        else:
            parts.append(f"{day}:{open_hhmm}-{day}:{close_hhmm}")
    return ";".join(parts)


def market_rule_ids(valid_exchanges: str, sec_type: str) -> str:
    """One rule id per valid exchange, in order (26 for every stock venue; options: 32 on SMART,
    109 on the exchanges)."""

    def rule(exchange: str) -> str:
        if sec_type != "OPT":
            return STOCK_MARKET_RULE
        return SMART_OPTION_MARKET_RULE if exchange == "SMART" else OPTION_MARKET_RULE

    return ",".join(rule(e) for e in valid_exchanges.split(","))


OPTION_CON_ID_BASE = 600_000_000


def _third_friday(year: int, month: int) -> dt.date:
    first_weekday, _ = calendar.monthrange(year, month)
    first_friday = 1 + (4 - first_weekday) % 7
    return dt.date(year, month, first_friday + 14)


def listed_expirations(spec: UnderlyingSpec, today: dt.date) -> List[Tuple[dt.date, str]]:
    """(date, kind) for each listed expiration after today, kind in weekly|monthly|leaps."""
    found: Dict[dt.date, str] = {}
    friday = today + dt.timedelta(days=(4 - today.weekday()) % 7 or 7)
    for i in range(spec.weeklies):
        found[friday + dt.timedelta(weeks=i)] = "weekly"
    year, month = today.year, today.month
    monthly = 0
    while monthly < spec.monthlies:
        day = _third_friday(year, month)
        if day > today:
            found[day] = "monthly"
            monthly += 1
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    for extra_year in range(1, spec.leaps + 1):
        day = _third_friday(today.year + extra_year, 1)
        if day not in found:
            found[day] = "leaps"
    return sorted(found.items())


def strike_grid(spec: UnderlyingSpec, band_pct: float) -> List[float]:
    """Strikes within band_pct of the listing price: every strike_step near the money, every
    wide_step further out."""
    spot = spec.price
    strikes = []
    k = math.floor(spot * (1 - band_pct) / spec.strike_step) * spec.strike_step
    while k <= spot * (1 + band_pct):
        if k > 0 and (abs(k / spot - 1) <= spec.near_pct or _on_step(k, spec.wide_step)):
            strikes.append(round(k, 2))
        k += spec.strike_step
    return strikes


def _on_step(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) < 1e-9


def occ_local_symbol(symbol: str, expiry: str, right: str, strike: float) -> str:
    return f"{symbol:<6}{expiry[2:]}{right}{int(round(strike * 1000)):08d}"
