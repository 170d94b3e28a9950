"""Params validation for relay actions; every failure names the field ("params.tickers[3]: must be
a ticker symbol").

A schema is data: {name: (checker, default or REQUIRED)}. A checker takes (value, path) and returns
the normalised value or raises INVALID_REQUEST; a rule takes (checked params, path) and checks how
fields go together. The action table (agent.relay.actions) and the order desk (agent.orders.guard) both build on
these, so a field means the same thing, with the same words, wherever the cloud sends it.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from agent.errors import AgentError, InvalidRequest

REQUIRED = object()
Checker = Callable[[Any, str], Any]
Schema = Dict[str, Tuple[Checker, Any]]
Rule = Callable[[dict, str], None]


def _invalid(path: str, what: str) -> AgentError:
    return InvalidRequest(f"{path}: {what}")


def pattern(regex: str, what: str) -> Checker:
    """A string matching regex once stripped and upper-cased (symbols, exchanges, accounts)."""
    compiled = re.compile(regex)

    def check(value: Any, path: str) -> str:
        text = value.strip().upper() if isinstance(value, str) else ""
        if not compiled.fullmatch(text):
            raise _invalid(path, f"must be {what}")
        return text

    return check


def choice(*options: str, aliases: Optional[Mapping[str, str]] = None) -> Checker:
    """One of a few words, compared upper-case; aliases name another spelling of an option."""
    quoted = [f'"{option}"' for option in options]
    expected = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    accepted = dict({option: option for option in options}, **(aliases or {}))

    def check(value: Any, path: str) -> str:
        text = value.strip().upper() if isinstance(value, str) else ""
        if text not in accepted:
            raise _invalid(path, f"must be {expected}")
        return accepted[text]

    return check


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# No number the agent takes is anywhere near this; a JSON integer like 10**400 (which no float can
# hold) or 1e300 is refused here, naming the field, before any arithmetic could overflow on it.
MAX_NUMBER = 1e15


def _in_range(value: Any) -> bool:
    """False for a number too big to take (an int beyond MAX_NUMBER is compared as an int, never
    converted); NaN and infinities pass here and are refused by the usual message."""
    if isinstance(value, int):
        return -MAX_NUMBER <= value <= MAX_NUMBER
    return not math.isfinite(value) or abs(value) <= MAX_NUMBER


def number(lo: float, hi: Optional[float] = None, integer: bool = False, lo_open: bool = False) -> Checker:
    """A finite JSON number in [lo, hi] ((lo, hi] when lo_open); hi None: no upper bound."""
    kind = "a whole number" if integer else "a number"
    low = f"greater than {_number_text(lo)}" if lo_open else f"at least {_number_text(lo)}"
    if hi is None:
        expected = f"{kind} {low}"
    elif lo_open:
        expected = f"{kind} {low} and at most {_number_text(hi)}"
    else:
        expected = f"{kind} from {_number_text(lo)} to {_number_text(hi)}"

    def check(value: Any, path: str) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value):
            raise _invalid(path, f"is out of range: must be {expected}, at most {MAX_NUMBER:.0e}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or (integer and not float(value).is_integer())
            or not (lo < value if lo_open else lo <= value)
            or (hi is not None and value > hi)
        ):
            raise _invalid(path, f"must be {expected}")
        return int(value) if integer else float(value)

    return check


def boolean(value: Any, path: str) -> bool:
    """true or false only (JSON booleans; 0/1 and "true" are refused, so a typo never flips a switch)."""
    if not isinstance(value, bool):
        raise _invalid(path, "must be true or false")
    return value


def date(value: Any, path: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    try:
        if len(text) != 8:
            raise ValueError
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise _invalid(path, "must be a date YYYYMMDD") from None
    return text


def list_of(item: Checker, max_len: int, min_len: int = 1, unique: bool = False) -> Checker:
    def check(value: Any, path: str) -> list:
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            raise _invalid(path, f"must be a list of {min_len} to {max_len} items")
        items = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return list(dict.fromkeys(items)) if unique else items

    return check


def obj(schema: Schema, rules: Sequence[Rule] = ()) -> Checker:
    def check(value: Any, path: str) -> dict:
        return validate(schema, value, path, rules)

    return check


def validate(schema: Schema, value: Any, path: str = "params", rules: Sequence[Rule] = ()) -> dict:
    """Checks an object against its schema, then its rules; unknown names are refused."""
    if not isinstance(value, dict):
        raise _invalid(path, "must be an object")
    for name in value:
        if name not in schema:
            raise _invalid(f"{path}.{name}", "unknown parameter")
    result = {}
    for name, (check, default) in schema.items():
        if value.get(name) is None:
            if default is REQUIRED:
                raise _invalid(f"{path}.{name}", "is required")
            result[name] = list(default) if isinstance(default, (list, tuple)) else default
        else:
            result[name] = check(value[name], f"{path}.{name}")
    for rule in rules:
        rule(result, path)
    return result


def not_above(low: str, high: str) -> Rule:
    """Cross-field rule: params[low] <= params[high] when both are given."""

    def check(params: dict, path: str) -> None:
        if params[low] is not None and params[high] is not None and params[low] > params[high]:
            raise _invalid(f"{path}.{high}", f"must not be less than {low}")

    return check


def only_for(switch: str, value: str, what: str, required: Sequence[str], optional: Sequence[str] = ()) -> Rule:
    """Cross-field rule: when params[switch] == value, `required` must be given; otherwise neither
    `required` nor `optional` may be (e.g. an option's strike on a stock order)."""

    def check(params: dict, path: str) -> None:
        if params[switch] == value:
            for name in required:
                if params[name] is None:
                    raise _invalid(f"{path}.{name}", f"is required for {what}")
            return
        for name in (*required, *optional):
            if params[name] is not None:
                raise _invalid(f"{path}.{name}", f"only for {what}")

    return check


# The fields several actions share.
TICKER = pattern(r"[A-Z0-9][A-Z0-9. /\-]{0,15}", "a ticker symbol")
EXCHANGE = pattern(r"[A-Z0-9]{1,16}", "an exchange code such as SMART")
TRADING_CLASS = pattern(r"[A-Z0-9. ]{1,16}", "a trading class")
STRIKE = number(0, 1e7, lo_open=True)
RIGHT = choice("C", "P", aliases={"CALL": "C", "PUT": "P"})
