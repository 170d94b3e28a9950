"""How TWS writes numbers and times, for the fake TWS's encoders (fake_tws_wire, fake_tws_proto,
fake_tws_session, fake_tws_account): every per-field number format and every unset text, in one place.

Read off frames recorded from real TWS (../shared/tws-captures/). TWS is a Java program; which
writer a field goes through is per field, not per type, so each encoder names the rule for each
numeric field it writes:
  java_double  Java's Double.toString: "5.0", "0.05", "257.95", "1.0E7" (most double fields:
               secdef strikes, order prices, execution prices, P&L, generic ticks, greeks)
  tick_price   two decimals: "-1.00", "315.50" (tickPrice)
  plain        no decimal point when whole: "15", "0.0001", "100" (Decimal sizes and quantities,
               and the doubles TWS writes that way: contract strikes, orderStatus prices, cashQty)
  greek        the -1 / -2 "not computed" sentinels as "-1" / "-2", other values java_double
Unset values have their own texts per field: empty, or the Java limits below.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from decimal import Decimal
from typing import Optional
from zoneinfo import ZoneInfo

UNSET_DOUBLE = "1.7976931348623157E308"  # Double.MAX_VALUE
UNSET_INTEGER = "2147483647"  # Integer.MAX_VALUE
UNSET_LONG = "9223372036854775807"  # Long.MAX_VALUE
UNSET_LONG_MIN = "-9223372036854775808"  # Long.MIN_VALUE (orderState.suggestedSize)
TWS_TIME_ZONE = "US/Eastern"
NEW_YORK = ZoneInfo("America/New_York")


def java_double(value: Optional[float], unset: str = "") -> str:
    """Java's Double.toString: shortest round-trip digits; plain from 1e-3 to below 1e7 (always with
    a fraction: "5.0"), else scientific as "1.0E7"; `unset` for None."""
    if value is None:
        return unset
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0.0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign, magnitude = ("-" if value < 0 else ""), abs(value)
    if 1e-3 <= magnitude < 1e7:
        text = format(Decimal(repr(magnitude)), "f")
        return sign + (text if "." in text else text + ".0")
    digits = Decimal(repr(magnitude)).normalize().as_tuple()
    numerals = "".join(str(d) for d in digits.digits)
    exponent = len(numerals) - 1 + digits.exponent
    return f"{sign}{numerals[0]}.{numerals[1:] or '0'}E{exponent}"


def tick_price(value: float) -> str:
    return f"{value:.2f}"


def tick_attrib_mask(tick_type: int) -> int:
    """tickPrice's attribute mask as TWS sets it: live bid and ask (1, 2) carry canAutoExecute
    (bit 0), even a bid of -1 ("no bid"), as recorded; other ticks (last, close, mark, delayed) 0."""
    return 1 if tick_type in (1, 2) else 0


def plain(value: Optional[float], unset: str = "") -> str:
    """A number without a decimal point when whole ("15", "-100", "0"), else its shortest decimal
    digits ("0.0001", "257.5"); `unset` for None."""
    if value is None:
        return unset
    if float(value).is_integer():
        return str(int(value))
    return format(Decimal(repr(float(value))), "f")


def greek(value: Optional[float]) -> str:
    """tickOptionComputation values: the "not computed" sentinels -1 / -2 (None: -1) as integers."""
    if value is None or value in (-1.0, -2.0):
        return str(int(value if value is not None else -1))
    return java_double(value)


def tws_time(epoch_s: Optional[float] = None) -> str:
    """An execution or completed-order time as TWS writes it: "20260413 15:27:04 US/Eastern"."""
    local = dt.datetime.fromtimestamp(time.time() if epoch_s is None else epoch_s, NEW_YORK)
    return local.strftime("%Y%m%d %H:%M:%S ") + TWS_TIME_ZONE
