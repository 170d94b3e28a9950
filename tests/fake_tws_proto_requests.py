"""The client -> server half of the fake TWS's protocol: one client message (the bytes after the
length prefix) -> (request name, params) at the negotiated version, read from the text fields
(`fake_tws_requests.py`) or, from 201, from ibapi's request `*_pb2` class, so the session keeps one
handler per request whatever the encoding. The server -> client messages are `fake_tws_proto.py`'s.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, Tuple

from google.protobuf.message import DecodeError
from ibapi.common import PROTOBUF_MSG_ID
from ibapi.message import OUT
from ibapi.protobuf import (
    AccountDataRequest_pb2,
    AccountSummaryRequest_pb2,
    AccountUpdatesMultiRequest_pb2,
    AllOpenOrdersRequest_pb2,
    AutoOpenOrdersRequest_pb2,
    CancelAccountSummary_pb2,
    CancelAccountUpdatesMulti_pb2,
    CancelMarketData_pb2,
    CancelOrderRequest_pb2,
    CancelPositions_pb2,
    CancelPositionsMulti_pb2,
    CompletedOrdersRequest_pb2,
    Contract_pb2,
    ContractDataRequest_pb2,
    CurrentTimeRequest_pb2,
    ExecutionRequest_pb2,
    GlobalCancelRequest_pb2,
    IdsRequest_pb2,
    ManagedAccountsRequest_pb2,
    MarketDataRequest_pb2,
    MarketDataTypeRequest_pb2,
    OpenOrdersRequest_pb2,
    PlaceOrderRequest_pb2,
    PositionsMultiRequest_pb2,
    PositionsRequest_pb2,
    SecDefOptParamsRequest_pb2,
    StartApiRequest_pb2,
)

from tests.fake_tws_framing import split_fields
from tests.fake_tws_proto import PROTOBUF
from tests.fake_tws_requests import ProtocolError, parse_request


def _contract_params(p: Contract_pb2.Contract) -> Dict:
    """The same dict fake_tws_requests' text reader makes of a contract."""
    multiplier = p.multiplier if p.HasField("multiplier") else None
    return {
        "con_id": p.conId,
        "symbol": p.symbol,
        "sec_type": p.secType,
        "expiry": p.lastTradeDateOrContractMonth,
        "strike": p.strike,
        "right": p.right,
        "multiplier": "" if multiplier is None else f"{multiplier:g}",
        "exchange": p.exchange,
        "primary_exchange": p.primaryExch,
        "currency": p.currency,
        "local_symbol": p.localSymbol,
        "trading_class": p.tradingClass,
    }


def _optional(p, name: str):
    return getattr(p, name) if p.HasField(name) else None


def _place_order(p: PlaceOrderRequest_pb2.PlaceOrderRequest) -> Dict:
    o = p.order
    quantity = float(o.totalQuantity) if o.totalQuantity else 0.0
    return {
        "order_id": p.orderId,
        "contract": _contract_params(p.contract),
        "action": o.action,
        "quantity": quantity,
        "order_type": o.orderType,
        "lmt_price": _optional(o, "lmtPrice"),
        "aux_price": _optional(o, "auxPrice"),
        "tif": o.tif,
        "oca_group": o.ocaGroup,
        "account": o.account,
        "open_close": o.openClose,
        "origin": o.origin,
        "order_ref": o.orderRef,
        "transmit": o.transmit,
        "parent_id": o.parentId,  # EClient leaves transmit=False out
        "what_if": o.whatIf,
    }


def _executions(p: ExecutionRequest_pb2.ExecutionRequest) -> Dict:
    f = p.executionFilter
    return {
        "req_id": p.reqId,
        "client_id": f.clientId,
        "account": f.acctCode,
        "since": f.time,
        "symbol": f.symbol,
        "sec_type": f.secType,
        "exchange": f.exchange,
        "side": f.side,
        "last_n_days": _optional(f, "lastNDays"),
    }


def _fields(*names: Tuple[str, str]) -> Callable:
    """A request whose params are plain proto fields: (param name, proto field name)."""

    def read(p) -> Dict:
        return {param: getattr(p, field) for param, field in names}

    return read


# client msg id -> (request name, pb2 class, reader); ibapi.common.getServerVersionForMessage gives
# the version from which EClient sends each of these as protobuf.
PROTO_REQUESTS: Dict[int, Tuple[str, type, Callable]] = {
    OUT.REQ_EXECUTIONS: ("reqExecutions", ExecutionRequest_pb2.ExecutionRequest, _executions),
    OUT.PLACE_ORDER: ("placeOrder", PlaceOrderRequest_pb2.PlaceOrderRequest, _place_order),
    OUT.CANCEL_ORDER: ("cancelOrder", CancelOrderRequest_pb2.CancelOrderRequest, _fields(("order_id", "orderId"))),
    OUT.REQ_GLOBAL_CANCEL: ("reqGlobalCancel", GlobalCancelRequest_pb2.GlobalCancelRequest, _fields()),
    OUT.REQ_OPEN_ORDERS: ("reqOpenOrders", OpenOrdersRequest_pb2.OpenOrdersRequest, _fields()),
    OUT.REQ_ALL_OPEN_ORDERS: ("reqAllOpenOrders", AllOpenOrdersRequest_pb2.AllOpenOrdersRequest, _fields()),
    OUT.REQ_AUTO_OPEN_ORDERS: (
        "reqAutoOpenOrders",
        AutoOpenOrdersRequest_pb2.AutoOpenOrdersRequest,
        _fields(("auto_bind", "autoBind")),
    ),
    OUT.REQ_COMPLETED_ORDERS: (
        "reqCompletedOrders",
        CompletedOrdersRequest_pb2.CompletedOrdersRequest,
        _fields(("api_only", "apiOnly")),
    ),
    OUT.REQ_CONTRACT_DATA: (
        "reqContractDetails",
        ContractDataRequest_pb2.ContractDataRequest,
        lambda p: {
            "req_id": p.reqId,
            "contract": _contract_params(p.contract),
            "include_expired": p.contract.includeExpired,
        },
    ),
    OUT.REQ_MKT_DATA: (
        "reqMktData",
        MarketDataRequest_pb2.MarketDataRequest,
        lambda p: {
            "req_id": p.reqId,
            "contract": _contract_params(p.contract),
            "generic_ticks": p.genericTickList,
            "snapshot": p.snapshot,
            "regulatory_snapshot": p.regulatorySnapshot,
        },
    ),
    OUT.CANCEL_MKT_DATA: ("cancelMktData", CancelMarketData_pb2.CancelMarketData, _fields(("req_id", "reqId"))),
    OUT.REQ_MARKET_DATA_TYPE: (
        "reqMarketDataType",
        MarketDataTypeRequest_pb2.MarketDataTypeRequest,
        _fields(("market_data_type", "marketDataType")),
    ),
    OUT.REQ_ACCT_DATA: (
        "reqAccountUpdates",
        AccountDataRequest_pb2.AccountDataRequest,
        _fields(("subscribe", "subscribe"), ("account", "acctCode")),
    ),
    OUT.REQ_MANAGED_ACCTS: ("reqManagedAccts", ManagedAccountsRequest_pb2.ManagedAccountsRequest, _fields()),
    OUT.REQ_POSITIONS: ("reqPositions", PositionsRequest_pb2.PositionsRequest, _fields()),
    OUT.CANCEL_POSITIONS: ("cancelPositions", CancelPositions_pb2.CancelPositions, _fields()),
    OUT.REQ_ACCOUNT_SUMMARY: (
        "reqAccountSummary",
        AccountSummaryRequest_pb2.AccountSummaryRequest,
        _fields(("req_id", "reqId"), ("group", "group"), ("tags", "tags")),
    ),
    OUT.CANCEL_ACCOUNT_SUMMARY: (
        "cancelAccountSummary",
        CancelAccountSummary_pb2.CancelAccountSummary,
        _fields(("req_id", "reqId")),
    ),
    OUT.REQ_POSITIONS_MULTI: (
        "reqPositionsMulti",
        PositionsMultiRequest_pb2.PositionsMultiRequest,
        _fields(("req_id", "reqId"), ("account", "account"), ("model_code", "modelCode")),
    ),
    OUT.CANCEL_POSITIONS_MULTI: (
        "cancelPositionsMulti",
        CancelPositionsMulti_pb2.CancelPositionsMulti,
        _fields(("req_id", "reqId")),
    ),
    OUT.REQ_ACCOUNT_UPDATES_MULTI: (
        "reqAccountUpdatesMulti",
        AccountUpdatesMultiRequest_pb2.AccountUpdatesMultiRequest,
        _fields(
            ("req_id", "reqId"), ("account", "account"), ("model_code", "modelCode"), ("ledger_and_nlv", "ledgerAndNLV")
        ),
    ),
    OUT.CANCEL_ACCOUNT_UPDATES_MULTI: (
        "cancelAccountUpdatesMulti",
        CancelAccountUpdatesMulti_pb2.CancelAccountUpdatesMulti,
        _fields(("req_id", "reqId")),
    ),
    OUT.REQ_SEC_DEF_OPT_PARAMS: (
        "reqSecDefOptParams",
        SecDefOptParamsRequest_pb2.SecDefOptParamsRequest,
        _fields(
            ("req_id", "reqId"),
            ("symbol", "underlyingSymbol"),
            ("exchange", "futFopExchange"),
            ("sec_type", "underlyingSecType"),
            ("con_id", "underlyingConId"),
        ),
    ),
    OUT.START_API: (
        "startApi",
        StartApiRequest_pb2.StartApiRequest,
        _fields(("client_id", "clientId"), ("optional_capabilities", "optionalCapabilities")),
    ),
    OUT.REQ_IDS: ("reqIds", IdsRequest_pb2.IdsRequest, _fields(("num_ids", "numIds"))),
    OUT.REQ_CURRENT_TIME: ("reqCurrentTime", CurrentTimeRequest_pb2.CurrentTimeRequest, _fields()),
}


def parse_proto_request(msg_id: int, body: bytes) -> Tuple[str, Dict]:
    """(request name, params) for a protobuf request body of client message `msg_id` (without
    the +200); unknown ids come back as ('msg<id+200>', {})."""
    known = PROTO_REQUESTS.get(msg_id)
    if known is None:
        return f"msg{msg_id + PROTOBUF_MSG_ID}", {}
    name, cls, read = known
    message = cls()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise ProtocolError(f"bad protobuf body for message {msg_id}: {exc}") from None
    return name, read(message)


def parse_payload(payload: bytes, server_version: int) -> Tuple[str, Dict]:
    """One client message (the bytes after the length prefix) at the negotiated version."""
    if server_version < PROTOBUF:
        return parse_request(split_fields(payload), server_version)
    if len(payload) < 4:
        raise ProtocolError("message shorter than its id")
    msg_id = struct.unpack(">I", payload[:4])[0]
    if msg_id > PROTOBUF_MSG_ID:
        return parse_proto_request(msg_id - PROTOBUF_MSG_ID, payload[4:])
    return parse_request([str(msg_id)] + split_fields(payload[4:]), server_version)
