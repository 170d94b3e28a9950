"""IB's codes and tables, as facts the agent acts on (DESIGN.md 5.1, 5.2): which TWS error and
notice codes mean what, the one table from an IB error code to a relay error code (error_for), the
read-only check, the reject details TWS hides in advancedOrderRejectJson, the codes ibapi reports
itself, and the market data type numbers. No connection state: agent.ib.connection,
agent.ib.session and the order desk import them from here.
"""

from __future__ import annotations

import json
from typing import List

from ibapi import errors as ibapi_errors

from agent import log as agent_log
from agent.errors import (
    IB_ERROR,
    IB_NOT_CONNECTED,
    MARKET_DATA_NOT_SUBSCRIBED,
    NO_SECURITY_DEFINITION,
    AgentError,
    ReadOnlyApi,
)

# auto asks frozen: live while the market is open, the values recorded at the close after it;
# agent.ib.lines falls back to delayed-frozen per contract where TWS says it is not subscribed.
MARKET_DATA_TYPES = {"auto": 2, "live": 1, "frozen": 2, "delayed": 3, "delayed-frozen": 4}
MARKET_DATA_TYPE_NAMES = {1: "live", 2: "frozen", 3: "delayed", 4: "delayed-frozen"}

# Warnings 2100-2199 (farm status etc.), 399 order warnings, 10167 "displaying delayed data".
NOTICE_CODES = frozenset(range(2100, 2200)) | {399, 10167}
TROUBLE_NOTICES = frozenset({2103, 2105, 2110, 2157})  # farm or server link broken: worth a log line
CLIENT_ID_IN_USE = 326
IB_LINK_LOST, IB_LINK_RESTORED_DATA_LOST, IB_LINK_RESTORED = 1100, 1101, 1102
SOCKET_PORT_MOVED = 1300  # "TWS socket port has been reset ... reconnect on the new port - N"
READ_ONLY_CODE = 321
_ERROR_CODES = {
    200: NO_SECURITY_DEFINITION,
    354: MARKET_DATA_NOT_SUBSCRIBED,
    10089: MARKET_DATA_NOT_SUBSCRIBED,
    10090: MARKET_DATA_NOT_SUBSCRIBED,
    10168: MARKET_DATA_NOT_SUBSCRIBED,
    10197: MARKET_DATA_NOT_SUBSCRIBED,
    502: IB_NOT_CONNECTED,
    504: IB_NOT_CONNECTED,
}
READ_ONLY_FIX = (
    "TWS has 'Read-Only API' switched on: uncheck it in File > Global Configuration > API > "
    "Settings, click Apply, then restart the agent"
)
# Codes ibapi reports itself (not TWS): a request it could not validate or send (503, 504, 510..).
CLIENT_ERROR_CODES = frozenset(
    pair.code() for pair in vars(ibapi_errors).values() if isinstance(pair, ibapi_errors.CodeMsgPair)
)


def is_read_only_error(ib_code: int, text: str) -> bool:
    return ib_code == READ_ONLY_CODE and "read-only" in (text or "").lower()


REJECT_DETAIL_MAX = 300  # characters of an advancedOrderRejectJson kept in an error message


def with_reject_details(text: str, advanced_reject_json: str) -> str:
    """TWS's error text plus what its advancedOrderRejectJson says (the reason an order was
    rejected often lives only there): the readable strings it holds, else the JSON itself."""
    raw = (advanced_reject_json or "").strip()
    if not raw:
        return text
    try:
        found: List[str] = []
        _strings_in(json.loads(raw), found)
        detail = "; ".join(dict.fromkeys(found)) or raw
    except ValueError:
        detail = raw
    detail = agent_log.clip(detail, REJECT_DETAIL_MAX, ellipsis="...")  # masked before the cut
    return f"{text} (TWS details: {detail})" if text else f"TWS details: {detail}"


def _strings_in(value, found: List[str]) -> None:
    if isinstance(value, str):
        if value.strip():
            found.append(value.strip())
    elif isinstance(value, dict):
        for item in value.values():
            _strings_in(item, found)
    elif isinstance(value, list):
        for item in value:
            _strings_in(item, found)


def error_for(ib_code: int, text: str) -> AgentError:
    """The one table from an IB error code to a relay error code."""
    if is_read_only_error(ib_code, text):
        return ReadOnlyApi(f"{READ_ONLY_FIX} (TWS said: {text})", ib_code)
    return AgentError.of(_ERROR_CODES.get(ib_code, IB_ERROR), text or f"TWS error {ib_code}", ib_code)
