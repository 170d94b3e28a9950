"""The agent's errors: one type per relay protocol error code (DESIGN.md 4), all AgentError.

Each type owns its code (`code`), so the relay answer is `error.to_dict()` wherever it was raised and
nothing is classified twice; `of(code, ...)` and `from_dict` rebuild one from a stored answer.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

INVALID_REQUEST = "INVALID_REQUEST"
UNKNOWN_ACTION = "UNKNOWN_ACTION"
IB_NOT_CONNECTED = "IB_NOT_CONNECTED"
IB_ERROR = "IB_ERROR"
NO_SECURITY_DEFINITION = "NO_SECURITY_DEFINITION"
MARKET_DATA_NOT_SUBSCRIBED = "MARKET_DATA_NOT_SUBSCRIBED"
READ_ONLY_API = "READ_ONLY_API"
ORDER_BLOCKED = "ORDER_BLOCKED"
TIMEOUT = "TIMEOUT"
CANCELLED = "CANCELLED"
BUSY = "BUSY"
INTERNAL = "INTERNAL"


class AgentError(Exception):
    """A failure the relay can report as-is: the code is for the web app, the message for the trader."""

    code = INTERNAL

    def __init__(self, message: str, ib_code: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.ib_code = ib_code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "ib_code": self.ib_code}

    @staticmethod
    def of(code: str, message: str, ib_code: Optional[int] = None) -> "AgentError":
        """The error of that relay code (an unknown code is INTERNAL: never guess a milder one)."""
        return ERROR_TYPES.get(code, Internal)(message, ib_code)

    @staticmethod
    def from_dict(fields: dict) -> "AgentError":
        """Back from to_dict(), e.g. an order outcome kept in the request-id store."""
        return AgentError.of(fields.get("code"), fields.get("message") or "", fields.get("ib_code"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, ib_code={self.ib_code})"


class InvalidRequest(AgentError):
    """Bad JSON shape or params; the message names the field."""

    code = INVALID_REQUEST


class UnknownAction(AgentError):
    code = UNKNOWN_ACTION


class IbNotConnected(AgentError):
    """No usable TWS connection (answered at once, never a hang)."""

    code = IB_NOT_CONNECTED


class IbError(AgentError):
    """TWS said no; ib_code is TWS's own code."""

    code = IB_ERROR


class NoSecurityDefinition(AgentError):
    code = NO_SECURITY_DEFINITION


class MarketDataNotSubscribed(AgentError):
    code = MARKET_DATA_NOT_SUBSCRIBED


class ReadOnlyApi(AgentError):
    code = READ_ONLY_API


class OrderBlocked(AgentError):
    """The local order policy said no; the message names the rule."""

    code = ORDER_BLOCKED


class RequestTimeout(AgentError):
    code = TIMEOUT


class Cancelled(AgentError):
    code = CANCELLED


class Busy(AgentError):
    code = BUSY


class Internal(AgentError):
    """A bug in the agent; the details are in its log file."""

    code = INTERNAL


# The one map between the relay's error codes and the types (DESIGN.md 4's list, in its order).
ERROR_TYPES: Dict[str, Type[AgentError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        UnknownAction,
        IbNotConnected,
        IbError,
        NoSecurityDefinition,
        MarketDataNotSubscribed,
        ReadOnlyApi,
        OrderBlocked,
        RequestTimeout,
        Cancelled,
        Busy,
        Internal,
    )
}
ALL_CODES = tuple(ERROR_TYPES)
