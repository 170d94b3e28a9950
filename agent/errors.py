"""The one error type both halves raise, carrying a relay protocol error code (DESIGN.md 4)."""

from __future__ import annotations

from typing import Optional

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

ALL_CODES = (
    INVALID_REQUEST,
    UNKNOWN_ACTION,
    IB_NOT_CONNECTED,
    IB_ERROR,
    NO_SECURITY_DEFINITION,
    MARKET_DATA_NOT_SUBSCRIBED,
    READ_ONLY_API,
    ORDER_BLOCKED,
    TIMEOUT,
    CANCELLED,
    BUSY,
    INTERNAL,
)


class AgentError(Exception):
    """A failure the relay can report as-is: the code is for the web app, the message for the trader."""

    def __init__(self, code: str, message: str, ib_code: Optional[int] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ib_code = ib_code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "ib_code": self.ib_code}

    def __repr__(self) -> str:
        return f"AgentError({self.code}, {self.message!r}, ib_code={self.ib_code})"
