"""Reading the fake TWS's client requests: the field cursor, one reader per request the fake
serves (laid out as ibapi's client writes it for the negotiated server version), the msg id table
(REQUESTS) and parse_request. ProtocolError is a client message the fake cannot read.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

from ibapi import server_versions as sv

from tests.fake_tws_formats import UNSET_INTEGER


class ProtocolError(Exception):
    """A client message the fake cannot read (TWS answers these with error 320)."""


class FieldCursor:
    def __init__(self, fields: Sequence[str]):
        self._fields = fields
        self._pos = 0

    def str(self) -> str:
        if self._pos >= len(self._fields):
            raise ProtocolError("message too short")
        value = self._fields[self._pos]
        self._pos += 1
        return value

    def int(self) -> int:
        text = self.str()
        try:
            return int(text) if text else 0
        except ValueError:
            raise ProtocolError(f"not an integer: {text!r}") from None

    def float(self) -> Optional[float]:
        """None for an empty (unset) field."""
        text = self.str()
        try:
            return float(text) if text else None
        except ValueError:
            raise ProtocolError(f"not a number: {text!r}") from None

    def bool(self) -> bool:
        return self.int() != 0

    def skip(self, count: int = 1) -> None:
        for _ in range(count):
            self.str()


def _contract(c: FieldCursor, primary_exchange: bool = True) -> Dict:
    """conId .. localSymbol, tradingClass: the block every contract-bearing request sends."""
    contract = {
        "con_id": c.int(),
        "symbol": c.str(),
        "sec_type": c.str(),
        "expiry": c.str(),
        "strike": c.float() or 0.0,
        "right": c.str(),
        "multiplier": c.str(),
        "exchange": c.str(),
    }
    contract["primary_exchange"] = c.str() if primary_exchange else ""
    contract.update(currency=c.str(), local_symbol=c.str(), trading_class=c.str())
    return contract


def _req_mkt_data(c: FieldCursor, version: int) -> Dict:
    c.skip()
    req = {"req_id": c.int(), "contract": _contract(c)}
    if req["contract"]["sec_type"] == "BAG":
        c.skip(4 * c.int())
    if c.bool():
        c.skip(3)
    req.update(generic_ticks=c.str(), snapshot=c.bool())
    req["regulatory_snapshot"] = c.bool() if version >= sv.MIN_SERVER_VER_REQ_SMART_COMPONENTS else False
    return req


def _skip_tag_values(c: FieldCursor) -> None:
    c.skip(2 * c.int())


def _place_order(c: FieldCursor, version: int) -> Dict:
    """The order fields the fake acts on, read in EClient.placeOrder's order up to whatIf (the
    rest of the very long message does not matter to the fake)."""
    if version < sv.MIN_SERVER_VER_ORDER_CONTAINER:
        c.skip()  # message version
    req = {"order_id": c.int(), "contract": _contract(c)}
    bag = req["contract"]["sec_type"] == "BAG"
    c.skip(2)  # secIdType, secId
    req.update(
        action=c.str(),
        quantity=c.float() or 0.0,
        order_type=c.str(),
        lmt_price=c.float(),
        aux_price=c.float(),
        tif=c.str(),
        oca_group=c.str(),
        account=c.str(),
        open_close=c.str(),
        origin=c.int(),
        order_ref=c.str(),
        transmit=c.bool(),
        parent_id=c.int(),
    )
    c.skip(6)  # blockOrder .. hidden
    if bag:
        c.skip(8 * c.int())  # combo legs
        c.skip(c.int())  # order combo leg prices
        _skip_tag_values(c)  # smartComboRoutingParams
    c.skip(7)  # sharesAllocation .. faPercentage
    if version < sv.MIN_SERVER_VER_FA_PROFILE_DESUPPORT:
        c.skip()  # faProfile
    if version >= sv.MIN_SERVER_VER_MODELS_SUPPORT:
        c.skip()  # modelCode
    c.skip(4 + 17)  # shortSaleSlot .. ocaType, rule80A .. volatilityType
    delta_neutral = c.str()  # deltaNeutralOrderType
    c.skip()  # deltaNeutralAuxPrice
    if delta_neutral:
        c.skip(8)
    c.skip(6)  # continuousUpdate .. trailingPercent, scale sizes
    scale_increment = c.float()
    if scale_increment is not None and 0 < scale_increment < 1.7e308:
        c.skip(7)
    c.skip(3)  # scaleTable, activeStartTime, activeStopTime
    if c.str():  # hedgeType
        c.skip()
    c.skip(4)  # optOutSmartRouting, clearing x2, notHeld
    if c.bool():  # deltaNeutralContract
        c.skip(3)
    if c.str():  # algoStrategy
        _skip_tag_values(c)
    c.skip()  # algoId
    req["what_if"] = c.bool()
    return req


def _cancel_order(c: FieldCursor, version: int) -> Dict:
    if version < sv.MIN_SERVER_VER_CME_TAGGING_FIELDS:
        c.skip()
    return {"order_id": c.int()}


def _req_contract_details(c: FieldCursor, version: int) -> Dict:
    c.skip()
    return {"req_id": c.int(), "contract": _contract(c), "include_expired": c.bool()}


def _req_executions(c: FieldCursor, version: int) -> Dict:
    c.skip()
    req = {
        "req_id": c.int(),
        "client_id": c.int(),
        "account": c.str(),
        "since": c.str(),
        "symbol": c.str(),
        "sec_type": c.str(),
        "exchange": c.str(),
        "side": c.str(),
        "last_n_days": None,
    }
    if version >= sv.MIN_SERVER_VER_PARAMETRIZED_DAYS_OF_EXECUTIONS:
        days = c.int()  # Integer.MAX_VALUE: not given
        req["last_n_days"] = None if days == int(UNSET_INTEGER) else days
        c.skip(c.int())  # specificDates (not modelled)
    return req


def _versioned(*names_and_readers: Tuple[str, str]) -> Callable[[FieldCursor, int], Dict]:
    """A request that is a version field followed by simple fields."""

    def read(c: FieldCursor, version: int) -> Dict:
        c.skip()
        return {name: getattr(c, kind)() for name, kind in names_and_readers}

    return read


def _plain(*names_and_readers: Tuple[str, str]) -> Callable[[FieldCursor, int], Dict]:
    """A request without a version field."""

    def read(c: FieldCursor, version: int) -> Dict:
        return {name: getattr(c, kind)() for name, kind in names_and_readers}

    return read


# msg id -> (request name, reader); names are the EClient method names.
REQUESTS: Dict[int, Tuple[str, Callable[[FieldCursor, int], Dict]]] = {
    1: ("reqMktData", _req_mkt_data),
    2: ("cancelMktData", _versioned(("req_id", "int"))),
    3: ("placeOrder", _place_order),
    4: ("cancelOrder", _cancel_order),
    5: ("reqOpenOrders", _versioned()),
    6: ("reqAccountUpdates", _versioned(("subscribe", "bool"), ("account", "str"))),
    7: ("reqExecutions", _req_executions),
    8: ("reqIds", _versioned(("num_ids", "int"))),
    9: ("reqContractDetails", _req_contract_details),
    15: ("reqAutoOpenOrders", _versioned(("auto_bind", "bool"))),
    16: ("reqAllOpenOrders", _versioned()),
    17: ("reqManagedAccts", _versioned()),
    49: ("reqCurrentTime", _versioned()),
    58: ("reqGlobalCancel", _plain()),
    59: ("reqMarketDataType", _versioned(("market_data_type", "int"))),
    61: ("reqPositions", _versioned()),
    62: ("reqAccountSummary", _versioned(("req_id", "int"), ("group", "str"), ("tags", "str"))),
    63: ("cancelAccountSummary", _versioned(("req_id", "int"))),
    64: ("cancelPositions", _versioned()),
    71: ("startApi", _versioned(("client_id", "int"), ("optional_capabilities", "str"))),
    74: ("reqPositionsMulti", _versioned(("req_id", "int"), ("account", "str"), ("model_code", "str"))),
    75: ("cancelPositionsMulti", _versioned(("req_id", "int"))),
    76: (
        "reqAccountUpdatesMulti",
        _versioned(("req_id", "int"), ("account", "str"), ("model_code", "str"), ("ledger_and_nlv", "bool")),
    ),
    77: ("cancelAccountUpdatesMulti", _versioned(("req_id", "int"))),
    78: (
        "reqSecDefOptParams",
        _plain(("req_id", "int"), ("symbol", "str"), ("exchange", "str"), ("sec_type", "str"), ("con_id", "int")),
    ),
    99: ("reqCompletedOrders", _plain(("api_only", "bool"))),
}


def parse_request(fields: Sequence[str], server_version: int) -> Tuple[str, Dict]:
    """(request name, params) for one client message; unknown ids come back as ('msg<id>', {})."""
    if not fields:
        raise ProtocolError("empty message")
    try:
        msg_id = int(fields[0])
    except ValueError:
        raise ProtocolError(f"bad message id {fields[0]!r}") from None
    known = REQUESTS.get(msg_id)
    if known is None:
        return f"msg{msg_id}", {}
    name, read = known
    return name, read(FieldCursor(fields[1:]), server_version)
