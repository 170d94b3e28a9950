"""The TWS socket protocol as the fake speaks it: framing, reading client requests, and writing
every message the fake sends, laid out for the negotiated server version exactly as
`ibapi/decoder.py` (and `ibapi/orderdecoder.py`) read it. A message one field off is silently
dropped by the client, so each encoder here mirrors the decoder's version gates one for one.

Server versions below MIN_SERVER_VERSION (ib_async's minimum) are not served, so gates at or below
it are always open and are not spelled out.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ibapi import server_versions as sv

MIN_SERVER_VERSION = 157
MAX_SERVER_VERSION = sv.MIN_SERVER_VER_PROTOBUF - 1     # 200: the last text-only version
API_PREFIX = b"API\0"
_VERSION_RANGE = re.compile(r"v(\d+)(?:\.\.(\d+))?")


class ProtocolError(Exception):
    """A client message the fake cannot read (TWS answers these with error 320)."""


# ---- framing ------------------------------------------------------------------------------

def field_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))                 # sizes and quantities read as ints or Decimals
    return str(value)


def _fields_payload(fields: Iterable) -> bytes:
    return "".join(field_text(f) + "\0" for f in fields).encode("utf-8")


def frame(fields: Iterable) -> bytes:
    """One text message as sent before the handshake or below 201: 4-byte big-endian length,
    then NUL-terminated fields."""
    payload = _fields_payload(fields)
    return struct.pack(">I", len(payload)) + payload


class FrameReader:
    """Splits a byte stream into length-prefixed payloads."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_prefix(self, prefix: bytes) -> Optional[bool]:
        """Consume `prefix` when the buffer starts with it: True; wrong bytes: False; too few: None."""
        if len(self._buffer) < len(prefix):
            return None if prefix.startswith(self._buffer) else False
        if not self._buffer.startswith(prefix):
            return False
        self._buffer = self._buffer[len(prefix):]
        return True

    def payloads(self) -> List[bytes]:
        found = []
        while len(self._buffer) >= 4:
            size = struct.unpack(">I", self._buffer[:4])[0]
            if len(self._buffer) < 4 + size:
                break
            found.append(self._buffer[4:4 + size])
            self._buffer = self._buffer[4 + size:]
        return found


def split_fields(payload: bytes) -> List[str]:
    """A message's NUL-terminated fields (the handshake's version text has no terminator)."""
    return payload.decode("utf-8", errors="replace").split("\0")[:-1]


def parse_version_range(text: str) -> Tuple[int, int, str]:
    """'v100..200 +PACEAPI' -> (100, 200, '+PACEAPI')."""
    head, _, options = text.partition(" ")
    match = _VERSION_RANGE.fullmatch(head)
    if not match:
        raise ProtocolError(f"bad version range {text!r}")
    low = int(match.group(1))
    return low, int(match.group(2) or low), options


# ---- requests -----------------------------------------------------------------------------

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
    contract = {"con_id": c.int(), "symbol": c.str(), "sec_type": c.str(), "expiry": c.str(),
                "strike": c.float() or 0.0, "right": c.str(), "multiplier": c.str(), "exchange": c.str()}
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
    req.update(generic_ticks=c.str(), snapshot=c.bool(), regulatory_snapshot=c.bool())
    return req


def _place_order(c: FieldCursor, version: int) -> Dict:
    # Only the fixed head of the (very long) placeOrder message matters to the fake.
    req = {"order_id": c.int(), "contract": _contract(c)}
    c.skip(2)                                             # secIdType, secId
    req.update(action=c.str(), quantity=c.float() or 0.0, order_type=c.str(), lmt_price=c.float(),
               aux_price=c.float(), tif=c.str(), oca_group=c.str(), account=c.str(), open_close=c.str(),
               origin=c.int(), order_ref=c.str(), transmit=c.bool(), parent_id=c.int())
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
    return {"req_id": c.int(), "client_id": c.int(), "account": c.str(), "since": c.str(),
            "symbol": c.str(), "sec_type": c.str(), "exchange": c.str(), "side": c.str()}


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
    76: ("reqAccountUpdatesMulti", _versioned(("req_id", "int"), ("account", "str"), ("model_code", "str"),
                                              ("ledger_and_nlv", "bool"))),
    77: ("cancelAccountUpdatesMulti", _versioned(("req_id", "int"))),
    78: ("reqSecDefOptParams", _plain(("req_id", "int"), ("symbol", "str"), ("exchange", "str"),
                                      ("sec_type", "str"), ("con_id", "int"))),
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


# ---- outgoing messages ----------------------------------------------------------------------

@dataclass
class OrderRecord:
    """An order as the fake's book keeps it and the openOrder/orderStatus/completedOrder
    encoders write it (`contract` is a fake_market.Instrument)."""
    order_id: int
    client_id: int
    perm_id: int
    contract: object
    action: str
    quantity: float
    order_type: str
    lmt_price: Optional[float]
    aux_price: Optional[float]
    tif: str
    account: str
    order_ref: str
    status: str = "Submitted"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    parent_id: int = 0
    completed_time: str = ""
    completed_status: str = ""

    @property
    def remaining(self) -> float:
        return 0.0 if self.status in ("Cancelled", "ApiCancelled") else self.quantity - self.filled


@dataclass
class Execution:
    exec_id: str
    time: str                    # "YYYYMMDD  HH:MM:SS"
    order: OrderRecord
    shares: float
    price: float
    exchange: str = "CBOE"
    commission: float = 0.65


def _price(value: Optional[float]) -> object:
    return "" if value is None else value


class Encoder:
    """Outgoing messages for one negotiated server version; each returns the field list
    (message id first) for `frame`."""

    def __init__(self, server_version: int):
        if not MIN_SERVER_VERSION <= server_version <= MAX_SERVER_VERSION:
            raise ValueError(f"server version {server_version} not served")
        self.v = server_version

    # -- framing --
    def payload(self, message: list) -> bytes:
        """The bytes of one message after its 4-byte length prefix, as TWS writes them at this
        version (what `../shared/tws-captures/` records as `payload_b64`): below 201 every field
        NUL-terminated, the message id first; from 201 (MIN_SERVER_VER_PROTOBUF) the id as a 4-byte
        big-endian int, then the other fields."""
        if self.v < sv.MIN_SERVER_VER_PROTOBUF or not message:
            return _fields_payload(message)
        return struct.pack(">I", int(message[0])) + _fields_payload(message[1:])

    def frame(self, message: list) -> bytes:
        data = self.payload(message)
        return struct.pack(">I", len(data)) + data

    # -- connection --
    def handshake(self, connection_time: str) -> list:
        return [self.v, connection_time]

    def managed_accounts(self, accounts: Sequence[str]) -> list:
        return [15, 1, ",".join(accounts)]

    def next_valid_id(self, order_id: int) -> list:
        return [9, 1, order_id]

    def current_time(self, epoch_s: int) -> list:
        return [49, 1, epoch_s]

    def error(self, req_id: int, code: int, text: str, error_time_ms: int = 0,
              advanced_reject_json: str = "") -> list:
        fields: list = [4] if self.v >= sv.MIN_SERVER_VER_ERROR_TIME else [4, 2]
        fields += [req_id, code, text]
        if self.v >= sv.MIN_SERVER_VER_ADVANCED_ORDER_REJECT:
            fields.append(advanced_reject_json)
        if self.v >= sv.MIN_SERVER_VER_ERROR_TIME:
            fields.append(error_time_ms)
        return fields

    # -- market data --
    def tick_price(self, req_id: int, tick_type: int, price: float, size: float, attrib_mask: int = 0) -> list:
        return [1, 6, req_id, tick_type, price, size, attrib_mask]

    def tick_size(self, req_id: int, tick_type: int, size: float) -> list:
        return [2, 6, req_id, tick_type, size]

    def tick_generic(self, req_id: int, tick_type: int, value: float) -> list:
        return [45, 6, req_id, tick_type, value]

    def tick_option_computation(self, req_id: int, tick_type: int, implied_vol: float, delta: float,
                                opt_price: float, pv_dividend: float, gamma: float, vega: float,
                                theta: float, und_price: float, tick_attrib: int = 0) -> list:
        # Version >= 156 has no version field but a tickAttrib; all served versions are >= 157.
        return [21, req_id, tick_type, tick_attrib, implied_vol, delta, opt_price, pv_dividend,
                gamma, vega, theta, und_price]

    def tick_snapshot_end(self, req_id: int) -> list:
        return [57, 1, req_id]

    def market_data_type(self, req_id: int, market_data_type: int) -> list:
        return [58, 1, req_id, market_data_type]

    def tick_req_params(self, req_id: int, min_tick: float, bbo_exchange: str, snapshot_permissions: int) -> list:
        return [81, req_id, min_tick, bbo_exchange, snapshot_permissions]

    # -- reference data --
    def contract_data(self, req_id: int, c) -> list:
        fields: list = [10]
        if self.v < sv.MIN_SERVER_VER_SIZE_RULES:
            fields.append(8)
        fields += [req_id, c.symbol, c.sec_type, c.expiry]
        if self.v >= sv.MIN_SERVER_VER_LAST_TRADE_DATE:
            fields.append(c.expiry)
        fields += [c.strike, c.right, c.exchange, c.currency, c.local_symbol,
                   c.trading_class,                        # marketName
                   c.trading_class, c.con_id, c.min_tick]
        if self.v < sv.MIN_SERVER_VER_SIZE_RULES:
            fields.append(1)                               # mdSizeMultiplier
        fields += [c.multiplier, "ACTIVETIM,AD,ALERT,ALLOC,DAY,GTC,LMT,MKT,STP,STPLMT",
                   c.valid_exchanges, 1, c.under_con_id, c.long_name, c.primary_exchange,
                   c.expiry[:6], c.industry, "", "",      # contractMonth, industry, category, subcategory
                   "US/Eastern", "", "",                   # timeZoneId, tradingHours, liquidHours
                   "", "",                                 # evRule, evMultiplier
                   0,                                      # secIdList count
                   1 if c.sec_type == "STK" else 2,        # aggGroup
                   c.symbol if c.sec_type == "OPT" else "",
                   "STK" if c.sec_type == "OPT" else "",   # underSymbol, underSecType
                   "26" if c.sec_type == "STK" else "32",  # marketRuleIds
                   c.expiry,                               # realExpirationDate
                   "COMMON" if c.sec_type == "STK" else ""]
        if sv.MIN_SERVER_VER_FRACTIONAL_SIZE_SUPPORT <= self.v < sv.MIN_SERVER_VER_SIZE_RULES:
            fields.append(1)                               # sizeMinTick
        if self.v >= sv.MIN_SERVER_VER_SIZE_RULES:
            fields += [1, 1, 1]                            # minSize, sizeIncrement, suggestedSizeIncrement
        if self.v >= sv.MIN_SERVER_VER_INELIGIBILITY_REASONS:
            fields.append(0)
        return fields

    def contract_data_end(self, req_id: int) -> list:
        return [52, 1, req_id]

    def sec_def_opt_params(self, req_id: int, exchange: str, underlying_con_id: int, trading_class: str,
                           multiplier: str, expirations: Sequence[str], strikes: Sequence[float]) -> list:
        return ([75, req_id, exchange, underlying_con_id, trading_class, multiplier, len(expirations)]
                + list(expirations) + [len(strikes)] + list(strikes))

    def sec_def_opt_params_end(self, req_id: int) -> list:
        return [76, req_id]

    # -- account --
    def position(self, account: str, c, quantity: float, avg_cost: float) -> list:
        return [61, 3, account, c.con_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier,
                c.exchange, c.currency, c.local_symbol, c.trading_class, quantity, avg_cost]

    def position_end(self) -> list:
        return [62, 1]

    def account_summary(self, req_id: int, account: str, tag: str, value: str, currency: str) -> list:
        return [63, 1, req_id, account, tag, value, currency]

    def account_summary_end(self, req_id: int) -> list:
        return [64, 1, req_id]

    def account_value(self, key: str, value: str, currency: str, account: str) -> list:
        return [6, 2, key, value, currency, account]

    def portfolio_value(self, c, quantity: float, market_price: float, market_value: float,
                        avg_cost: float, unrealized_pnl: float, realized_pnl: float, account: str) -> list:
        return [7, 8, c.con_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier,
                c.primary_exchange, c.currency, c.local_symbol, c.trading_class, quantity, market_price,
                market_value, avg_cost, unrealized_pnl, realized_pnl, account]

    def account_time(self, hh_mm: str) -> list:
        return [8, 1, hh_mm]

    def account_download_end(self, account: str) -> list:
        return [54, 1, account]

    def account_update_multi(self, req_id: int, account: str, model_code: str, key: str, value: str,
                             currency: str) -> list:
        return [73, 1, req_id, account, model_code, key, value, currency]

    def account_update_multi_end(self, req_id: int) -> list:
        return [74, 1, req_id]

    def position_multi(self, req_id: int, account: str, c, quantity: float, avg_cost: float,
                       model_code: str = "") -> list:
        return [71, 1, req_id, account, c.con_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right,
                c.multiplier, c.exchange, c.currency, c.local_symbol, c.trading_class, quantity, avg_cost,
                model_code]

    def position_multi_end(self, req_id: int) -> list:
        return [72, 1, req_id]

    # -- orders --
    def order_status(self, o: OrderRecord, why_held: str = "") -> list:
        return [3, o.order_id, o.status, o.filled, o.remaining, o.avg_fill_price, o.perm_id, o.parent_id,
                o.last_fill_price, o.client_id, why_held, 0.0]

    def _order_contract(self, c) -> list:
        return [c.con_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier, c.exchange,
                c.currency, c.local_symbol, c.trading_class]

    def _order_head(self, o: OrderRecord) -> list:
        """action .. origin, orderRef: shared by openOrder and completedOrder."""
        return [o.action, o.quantity, o.order_type, _price(o.lmt_price), _price(o.aux_price), o.tif,
                "", o.account, "", 0, o.order_ref]

    def _fa_params(self) -> list:
        fields = ["", "", ""]                              # faGroup, faMethod, faPercentage
        if self.v < sv.MIN_SERVER_VER_FA_PROFILE_DESUPPORT:
            fields.append("")                              # faProfile
        return fields + [""]                               # modelCode

    def _vol_order_params(self) -> list:
        # volatility, volatilityType, deltaNeutralOrderType (empty: no delta-neutral block),
        # deltaNeutralAuxPrice, continuousUpdate, referencePriceType
        return ["", 0, "", "", 0, 0]

    def _combo_and_scale(self) -> list:
        return ["", 0, 0,                                  # comboLegsDescrip, legs, order legs
                0,                                         # smartComboRoutingParams
                "", "", ""]                                # scaleInitLevelSize, scaleSubsLevelSize, increment

    def _peg_best_mid(self) -> list:
        return ["", "", "", "", ""] if self.v >= sv.MIN_SERVER_VER_PEGBEST_PEGMID_OFFSETS else []

    def _customer_fields(self) -> list:
        fields = []
        if self.v >= sv.MIN_SERVER_VER_CUSTOMER_ACCOUNT:
            fields.append("")
        if self.v >= sv.MIN_SERVER_VER_PROFESSIONAL_CUSTOMER:
            fields.append(0)
        return fields

    def open_order(self, o: OrderRecord) -> list:
        v = self.v
        fields = [5, o.order_id] + self._order_contract(o.contract) + self._order_head(o)
        fields += [o.client_id, o.perm_id, 0, 0, 0, "",   # outsideRth, hidden, discretionaryAmt, goodAfterTime
                   ""]                                     # sharesAllocation
        fields += self._fa_params()
        fields += ["", "", "", "",                         # goodTillDate, rule80A, percentOffset, settlingFirm
                   0, "", -1,                              # shortSaleSlot, designatedLocation, exemptCode
                   0,                                      # auctionStrategy
                   "", "", "",                             # startingPrice, stockRefPrice, delta
                   "", "",                                 # stockRangeLower, stockRangeUpper
                   "", 0, 0, 0, "", 0,                     # displaySize, block, sweep, allOrNone, minQty, ocaType
                   0, 0, "",                               # eTradeOnly, firmQuoteOnly, nbboPriceCap
                   o.parent_id, 0]                         # parentId, triggerMethod
        fields += self._vol_order_params()
        fields += ["", "",                                 # trailStopPrice, trailingPercent
                   "", ""]                                 # basisPoints, basisPointsType
        fields += self._combo_and_scale()
        fields += ["",                                     # hedgeType
                   0, "", "", 0,                           # optOutSmartRouting, clearing x2, notHeld
                   0, "", 0]                               # deltaNeutral, algoStrategy, solicited
        fields += [0, o.status]                            # whatIf, status
        if v >= sv.MIN_SERVER_VER_WHAT_IF_EXT_FIELDS:
            fields += [""] * 6                             # margin before / change
        fields += ["", "", "", "", "", "", ""]             # margin after x3, commission x3, currency
        if v >= sv.MIN_SERVER_VER_FULL_ORDER_PREVIEW_FIELDS:
            fields += [""] + [""] * 9 + ["", "", 0]        # marginCurrency, outside-RTH x9, size, reason, allocs
        fields += [""]                                     # warningText
        fields += [0, 0,                                   # randomizeSize, randomizePrice
                   0,                                      # conditions
                   "", 0, "", "", 0, 0, 0, 0,              # adjusted order params
                   "", "", "",                             # softDollarTier
                   0, 0, 0, 0, 0]                          # cashQty, dontUseAutoPrice, isOms, discrUpToLmt, usePriceMgmt
        if v >= sv.MIN_SERVER_VER_DURATION:
            fields.append("")
        if v >= sv.MIN_SERVER_VER_POST_TO_ATS:
            fields.append("")
        if v >= sv.MIN_SERVER_VER_AUTO_CANCEL_PARENT:
            fields.append(0)
        fields += self._peg_best_mid() + self._customer_fields()
        if v >= sv.MIN_SERVER_VER_BOND_ACCRUED_INTEREST:
            fields.append("")
        if v >= sv.MIN_SERVER_VER_INCLUDE_OVERNIGHT:
            fields.append(0)
        if v >= sv.MIN_SERVER_VER_CME_TAGGING_FIELDS_IN_OPEN_ORDER:
            fields += ["", ""]                             # extOperator, manualOrderIndicator
        if v >= sv.MIN_SERVER_VER_SUBMITTER:
            fields.append("")
        if v >= sv.MIN_SERVER_VER_IMBALANCE_ONLY:
            fields.append(0)
        return fields

    def open_order_end(self) -> list:
        return [53, 1]

    def completed_order(self, o: OrderRecord) -> list:
        fields = [101] + self._order_contract(o.contract) + self._order_head(o)
        fields += [o.perm_id, 0, 0, 0, ""]                 # permId, outsideRth, hidden, discretionaryAmt, GAT
        fields += self._fa_params()
        fields += ["", "", "", "",                         # goodTillDate, rule80A, percentOffset, settlingFirm
                   0, "", -1,                              # short sale params
                   "", "", "", "", "",                     # box order, peg-to-stock ranges
                   "", 0, 0, "", 0,                        # displaySize, sweep, allOrNone, minQty, ocaType
                   0]                                      # triggerMethod
        fields += self._vol_order_params()
        fields += ["", ""]                                 # trailStopPrice, trailingPercent
        fields += self._combo_and_scale()
        fields += ["", "", "", 0, 0, "", 0]                # hedge, clearing x2, notHeld, deltaNeutral, algo, solicited
        fields += [o.status, 0, 0, 0,                      # orderStatus, randomize x2, conditions
                   "", "",                                 # trailStopPrice, lmtPriceOffset
                   0, 0, 0,                                # cashQty, dontUseAutoPrice, isOms
                   "", o.filled, 0, 0, "", 0, 0,           # autoCancelDate, filled, refFutConId, autoCancelParent,
                                                           # shareholder, imbalanceOnly, routeMarketableToBbo
                   0, o.completed_time, o.completed_status]  # parentPermId, completedTime, completedStatus
        fields += self._peg_best_mid() + self._customer_fields()
        if self.v >= sv.MIN_SERVER_VER_SUBMITTER:
            fields.append("")
        return fields

    def completed_orders_end(self) -> list:
        return [102]

    def exec_details(self, req_id: int, e: Execution) -> list:
        o, c = e.order, e.order.contract
        fields = [11, req_id, o.order_id, c.con_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right,
                  c.multiplier, c.exchange, c.currency, c.local_symbol, c.trading_class,
                  e.exec_id, e.time, o.account, e.exchange, "BOT" if o.action == "BUY" else "SLD",
                  e.shares, e.price, o.perm_id, o.client_id, 0, e.shares, e.price, o.order_ref,
                  "", "",                                  # evRule, evMultiplier
                  "",                                      # modelCode
                  2]                                       # lastLiquidity (removed liquidity)
        if self.v >= sv.MIN_SERVER_VER_PENDING_PRICE_REVISION:
            fields.append(0)
        if self.v >= sv.MIN_SERVER_VER_SUBMITTER:
            fields.append("")
        return fields

    def exec_details_end(self, req_id: int) -> list:
        return [55, 1, req_id]

    def commission_report(self, e: Execution) -> list:
        return [59, 1, e.exec_id, e.commission, "USD", "", "", ""]
