"""The protobuf half of the fake TWS (server versions 201 and up, MIN_SERVER_VER_PROTOBUF).

From 201 every message, both ways, carries its id as a 4-byte big-endian int; an id above
`ibapi.common.PROTOBUF_MSG_ID` (200) means the body is a protobuf message for id - 200. TWS moves
one group of messages to protobuf per server version. This module holds:

- `PROTOBUF_FROM`: message id -> the first server version at which TWS sends it as protobuf, with
  the evidence for each entry;
- `ProtoEncoder(Encoder)`: every encoder the session uses, returning a `ProtoMessage` built with
  ibapi's own `*_pb2` classes from that version on, and the text layout (`super()`) below it;
- `make_encoder`: the factory the session uses.

Reading the client's messages (text or protobuf) is `fake_tws_proto_requests.py`'s.

Field presence follows the real frames: proto3 `optional` fields are set the way TWS sets them in
the recorded bodies (`../shared/tws-captures/` at 201 and 203, and the public live transcripts at
201, 202, 204, 205 and 225 named below); unknown fields are left unset rather than guessed.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from ibapi import server_versions as sv
from ibapi.message import IN
from ibapi.protobuf import (
    AccountDataEnd_pb2,
    AccountSummary_pb2,
    AccountSummaryEnd_pb2,
    AccountUpdateMulti_pb2,
    AccountUpdateMultiEnd_pb2,
    AccountUpdateTime_pb2,
    AccountValue_pb2,
    CommissionAndFeesReport_pb2,
    CompletedOrder_pb2,
    CompletedOrdersEnd_pb2,
    Contract_pb2,
    ContractData_pb2,
    ContractDataEnd_pb2,
    ContractDetails_pb2,
    CurrentTime_pb2,
    ErrorMessage_pb2,
    Execution_pb2,
    ExecutionDetails_pb2,
    ExecutionDetailsEnd_pb2,
    ManagedAccounts_pb2,
    MarketDataType_pb2,
    NextValidId_pb2,
    OpenOrder_pb2,
    OpenOrdersEnd_pb2,
    Order_pb2,
    OrderState_pb2,
    OrderStatus_pb2,
    PortfolioValue_pb2,
    Position_pb2,
    PositionEnd_pb2,
    PositionMulti_pb2,
    PositionMultiEnd_pb2,
    SecDefOptParameter_pb2,
    SecDefOptParameterEnd_pb2,
    TickGeneric_pb2,
    TickOptionComputation_pb2,
    TickPrice_pb2,
    TickReqParams_pb2,
    TickSize_pb2,
    TickSnapshotEnd_pb2,
)

from tests.fake_account import Execution, OrderRecord
from tests.fake_tws_formats import tick_attrib_mask
from tests.fake_tws_wire import Encoder, ProtoMessage

PROTOBUF = sv.MIN_SERVER_VER_PROTOBUF  # 201
ORDERS = sv.MIN_SERVER_VER_PROTOBUF_PLACE_ORDER  # 203
COMPLETED = sv.MIN_SERVER_VER_PROTOBUF_COMPLETED_ORDER  # 204
CONTRACTS = sv.MIN_SERVER_VER_PROTOBUF_CONTRACT_DATA  # 205
MARKET_DATA = sv.MIN_SERVER_VER_PROTOBUF_MARKET_DATA  # 206
ACCOUNTS = sv.MIN_SERVER_VER_PROTOBUF_ACCOUNTS_POSITIONS  # 207
REST_2 = sv.MIN_SERVER_VER_PROTOBUF_REST_MESSAGES_2  # 212
REST_3 = sv.MIN_SERVER_VER_PROTOBUF_REST_MESSAGES_3  # 213

# Server -> client: message id -> first server version at which TWS sends it as protobuf.
# Evidence ("captures" = ../shared/tws-captures/server_frames.jsonl; "ibkr-go" = the public repo
# ThomasMarcelis/ibkr-go, its internal/codec/codec_*_proto2NN.go files and its live transcripts in
# testdata/transcripts/, read for facts only):
PROTOBUF_FROM: Dict[int, int] = {
    # 201 executions. captures: execDetailsEnd protobuf at 201; ibkr-go live vector of an
    # execDetails body at 201 (codec_orders_protobuf_test.go; the fake reproduces it byte for byte
    # from the same inputs), executions_zero_strike_sv202_live.txt, and the same field set at 225.
    IN.EXECUTION_DATA: PROTOBUF,
    IN.EXECUTION_DATA_END: PROTOBUF,
    # 203 orders. captures: openOrder, orderStatus, error (202, 161) protobuf at 203; error is still
    # text at 201 (ibkr-go's sv201 bootstrap vector: 2104 as text). openOrderEnd: ibapi 10.37.2,
    # whose MAX_CLIENT_VER is 203, decodes exactly orderStatus, error, openOrder, execDetails,
    # openOrderEnd and execDetailsEnd as protobuf, so openOrderEnd moved with the orders; the
    # sv225 transcript (api_order_rejects_aapl.txt) shows it protobuf with an empty body.
    IN.OPEN_ORDER: ORDERS,
    IN.ORDER_STATUS: ORDERS,
    IN.ERR_MSG: ORDERS,
    IN.OPEN_ORDER_END: ORDERS,
    # 204 completed orders: ibkr-go completed_orders_sv204_live.txt (completedOrder bodies and an
    # empty completedOrdersEnd); codec_orders_proto204.go. managedAccounts/nextValidId still text there.
    IN.COMPLETED_ORDER: COMPLETED,
    IN.COMPLETED_ORDERS_END: COMPLETED,
    # 205 contract data: ibkr-go contract_details_sv205_live.txt (contractData + contractDataEnd).
    IN.CONTRACT_DATA: CONTRACTS,
    IN.CONTRACT_DATA_END: CONTRACTS,
    # 206 market data: ibkr-go codec_marketdata_proto206.go (tickPrice, tickSize,
    # tickOptionComputation, tickGeneric, tickString, tickSnapshotEnd, marketDataType,
    # tickReqParams); the sv225 transcript shows tickReqParams and tickSnapshotEnd protobuf.
    IN.TICK_PRICE: MARKET_DATA,
    IN.TICK_SIZE: MARKET_DATA,
    IN.TICK_OPTION_COMPUTATION: MARKET_DATA,
    IN.TICK_GENERIC: MARKET_DATA,
    IN.TICK_STRING: MARKET_DATA,
    IN.TICK_SNAPSHOT_END: MARKET_DATA,
    IN.MARKET_DATA_TYPE: MARKET_DATA,
    IN.TICK_REQ_PARAMS: MARKET_DATA,
    # 207 accounts and positions: ibkr-go codec_account_proto207.go; managedAccounts is text at
    # 203/204/205 (captures; ibkr-go sv204/sv205 transcripts) and protobuf at 225 (sv225 transcript).
    IN.ACCT_VALUE: ACCOUNTS,
    IN.PORTFOLIO_VALUE: ACCOUNTS,
    IN.ACCT_UPDATE_TIME: ACCOUNTS,
    IN.ACCT_DOWNLOAD_END: ACCOUNTS,
    IN.MANAGED_ACCTS: ACCOUNTS,
    IN.POSITION_DATA: ACCOUNTS,
    IN.POSITION_END: ACCOUNTS,
    IN.ACCOUNT_SUMMARY: ACCOUNTS,
    IN.ACCOUNT_SUMMARY_END: ACCOUNTS,
    IN.POSITION_MULTI: ACCOUNTS,
    IN.POSITION_MULTI_END: ACCOUNTS,
    IN.ACCOUNT_UPDATE_MULTI: ACCOUNTS,
    IN.ACCOUNT_UPDATE_MULTI_END: ACCOUNTS,
    # 212 security definition option parameters: ibkr-go codec_reference_proto212.go; ibapi sends
    # reqSecDefOptParams as protobuf from 212 (common.getServerVersionForMessage).
    IN.SECURITY_DEFINITION_OPTION_PARAMETER: REST_2,
    IN.SECURITY_DEFINITION_OPTION_PARAMETER_END: REST_2,
    # 213 session messages: ibkr-go codec_session_proto213.go; text at 203 (captures: raw-int id);
    # the sv225 transcript shows nextValidId protobuf.
    IN.NEXT_VALID_ID: REST_3,
    IN.CURRENT_TIME: REST_3,
    # commissionAndFeesReport: text at 202 (ibkr-go's sv202 transcript keeps "unchanged classic
    # commission reports"; ibapi 10.37.2, max 203, cannot decode it as protobuf), protobuf at 225
    # (ibkr-go api_order_fill_aapl.txt, sv225: execId, commissionAndFees, currency, realizedPNL
    # only on the closing fill). No recording between 204 and 224 shows where it moved; placed
    # with the last group (213) as an assumption. ibapi 10.50.2 decodes it either way.
    IN.COMMISSION_AND_FEES_REPORT: REST_3,
}

SUBMITTER = "fakeuser01"  # TWS fills Order.submitter with the logged-in user name
SHAREHOLDER = "Not an insider or substantial shareholder"


def protobuf_from(msg_id: int) -> float:
    return PROTOBUF_FROM.get(msg_id, float("inf"))


def _qty(value: float) -> str:
    """A Decimal quantity as TWS writes it in protobuf string fields ("1", "0", "0.5")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _tick_str(value: float) -> str:
    return f"{value:.10g}"


def _multiplier(text: str) -> Optional[float]:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def contract_proto(c, exchange: Optional[str] = None, primary: bool = False) -> Contract_pb2.Contract:
    """The Contract body as TWS fills it: strike always present (0.0 for a stock), unset strings
    absent, primaryExch only where TWS sends it (contract data)."""
    proto = Contract_pb2.Contract(
        conId=c.con_id, symbol=c.symbol, secType=c.sec_type, strike=float(c.strike), currency=c.currency
    )
    exchange = c.exchange if exchange is None else exchange
    if exchange:
        proto.exchange = exchange
    if c.expiry:
        proto.lastTradeDateOrContractMonth = c.expiry
    if c.right:
        proto.right = c.right
    multiplier = _multiplier(c.multiplier)
    if multiplier is not None:
        proto.multiplier = multiplier
    if primary and c.primary_exchange:
        proto.primaryExch = c.primary_exchange
    if c.local_symbol:
        proto.localSymbol = c.local_symbol
    if c.trading_class:
        proto.tradingClass = c.trading_class
    return proto


def order_proto(o: OrderRecord, completed: bool = False) -> Order_pb2.Order:
    """The Order body of openOrder / completedOrder with the fields the 203/204/225 recordings
    carry: TWS's defaults (ocaType 3, exemptCode -1, "None" strings, ...) present, lmtPrice and
    auxPrice 0 when unset, trailStopPrice lmtPrice + 1 on limit orders (as recorded)."""
    proto = Order_pb2.Order(
        clientId=o.client_id,
        orderId=o.order_id,
        permId=o.perm_id,
        parentId=o.parent_id,
        action=o.action,
        totalQuantity=_qty(0 if completed and o.status == "Filled" else o.quantity),
        orderType=o.order_type,
        lmtPrice=o.lmt_price or 0.0,
        auxPrice=o.aux_price or 0.0,
        tif=o.tif,
        account=o.account,
        clearingIntent="IB",
        ocaType=3,
        triggerMethod=0,
        volatilityType=0,
        referencePriceType=0,
        deltaNeutralOrderType="None",
        deltaNeutralShortSaleSlot=0,
        origin=0,
        shortSaleSlot=0,
        exemptCode=-1,
        adjustedOrderType="None",
        adjustableTrailingUnit=0,
        dontUseAutoPriceForHedge=True,
        filledQuantity=_qty(o.filled),
        shareholder=SHAREHOLDER,
        routeMarketableToBbo=0,
        usePriceMgmtAlgo=0,
        submitter=getattr(o, "submitter", "") or SUBMITTER,
        seekPriceImprovement=0,
    )
    if o.order_ref:
        proto.orderRef = o.order_ref
    trail_stop = getattr(o, "trail_stop_price", None)
    if trail_stop is not None:
        proto.trailStopPrice = trail_stop
    elif o.order_type == "LMT" and o.lmt_price is not None:
        proto.trailStopPrice = o.lmt_price + 1
    return proto


def _exec_time(text: str) -> str:
    """'YYYYMMDD  HH:MM:SS' -> 'YYYYMMDD HH:MM:SS US/Eastern' as the 201 body has it."""
    parts = text.split()
    return " ".join(parts) if len(parts) > 2 else " ".join(parts + ["US/Eastern"])


class ProtoEncoder(Encoder):
    """The fake's encoders at any served version: protobuf (ProtoMessage) from the version
    PROTOBUF_FROM gives for the message, the text layout of Encoder below it."""

    def _proto(self, msg_id: int) -> bool:
        return self.v >= protobuf_from(msg_id)

    # -- connection --
    def managed_accounts(self, accounts: Sequence[str]):
        if not self._proto(IN.MANAGED_ACCTS):
            return super().managed_accounts(accounts)
        return ProtoMessage(IN.MANAGED_ACCTS, ManagedAccounts_pb2.ManagedAccounts(accountsList=",".join(accounts)))

    def next_valid_id(self, order_id: int):
        if not self._proto(IN.NEXT_VALID_ID):
            return super().next_valid_id(order_id)
        return ProtoMessage(IN.NEXT_VALID_ID, NextValidId_pb2.NextValidId(orderId=order_id))

    def current_time(self, epoch_s: int):
        if not self._proto(IN.CURRENT_TIME):
            return super().current_time(epoch_s)
        return ProtoMessage(IN.CURRENT_TIME, CurrentTime_pb2.CurrentTime(currentTime=epoch_s))

    def error(self, req_id: int, code: int, text: str, error_time_ms: int = 0, advanced_reject_json: str = ""):
        if not self._proto(IN.ERR_MSG):
            return super().error(req_id, code, text, error_time_ms, advanced_reject_json)
        proto = ErrorMessage_pb2.ErrorMessage(id=req_id, errorTime=error_time_ms, errorCode=code, errorMsg=text)
        if advanced_reject_json:
            proto.advancedOrderRejectJson = advanced_reject_json
        return ProtoMessage(IN.ERR_MSG, proto)

    # -- market data --
    def tick_price(self, req_id: int, tick_type: int, price: float, size: float, attrib_mask: Optional[int] = None):
        """attrib_mask None: tick_attrib_mask(tick_type), TWS's rule, the same on both encodings."""
        if not self._proto(IN.TICK_PRICE):
            return super().tick_price(req_id, tick_type, price, size, attrib_mask)
        if attrib_mask is None:
            attrib_mask = tick_attrib_mask(tick_type)
        return ProtoMessage(
            IN.TICK_PRICE,
            TickPrice_pb2.TickPrice(
                reqId=req_id, tickType=tick_type, price=price, size=_qty(size), attrMask=attrib_mask
            ),
        )

    def tick_size(self, req_id: int, tick_type: int, size: float):
        if not self._proto(IN.TICK_SIZE):
            return super().tick_size(req_id, tick_type, size)
        return ProtoMessage(IN.TICK_SIZE, TickSize_pb2.TickSize(reqId=req_id, tickType=tick_type, size=_qty(size)))

    def tick_generic(self, req_id: int, tick_type: int, value: float):
        if not self._proto(IN.TICK_GENERIC):
            return super().tick_generic(req_id, tick_type, value)
        return ProtoMessage(IN.TICK_GENERIC, TickGeneric_pb2.TickGeneric(reqId=req_id, tickType=tick_type, value=value))

    def tick_option_computation(
        self,
        req_id: int,
        tick_type: int,
        implied_vol: float,
        delta: float,
        opt_price: float,
        pv_dividend: float,
        gamma: float,
        vega: float,
        theta: float,
        und_price: float,
        tick_attrib: int = 0,
    ):
        if not self._proto(IN.TICK_OPTION_COMPUTATION):
            return super().tick_option_computation(
                req_id,
                tick_type,
                implied_vol,
                delta,
                opt_price,
                pv_dividend,
                gamma,
                vega,
                theta,
                und_price,
                tick_attrib,
            )
        # The "not computed" sentinels (-1, -2) travel as values, as in the text layout: the
        # decoder maps them to None on both paths.
        return ProtoMessage(
            IN.TICK_OPTION_COMPUTATION,
            TickOptionComputation_pb2.TickOptionComputation(
                reqId=req_id,
                tickType=tick_type,
                tickAttrib=tick_attrib,
                impliedVol=implied_vol,
                delta=delta,
                optPrice=opt_price,
                pvDividend=pv_dividend,
                gamma=gamma,
                vega=vega,
                theta=theta,
                undPrice=und_price,
            ),
        )

    def tick_snapshot_end(self, req_id: int):
        if not self._proto(IN.TICK_SNAPSHOT_END):
            return super().tick_snapshot_end(req_id)
        return ProtoMessage(IN.TICK_SNAPSHOT_END, TickSnapshotEnd_pb2.TickSnapshotEnd(reqId=req_id))

    def market_data_type(self, req_id: int, market_data_type: int):
        if not self._proto(IN.MARKET_DATA_TYPE):
            return super().market_data_type(req_id, market_data_type)
        return ProtoMessage(
            IN.MARKET_DATA_TYPE, MarketDataType_pb2.MarketDataType(reqId=req_id, marketDataType=market_data_type)
        )

    def tick_req_params(self, req_id: int, min_tick: float, bbo_exchange: str, snapshot_permissions: int):
        if not self._proto(IN.TICK_REQ_PARAMS):
            return super().tick_req_params(req_id, min_tick, bbo_exchange, snapshot_permissions)
        # The sv225 recording also carries lastPricePrecision / lastSizePrecision "0.000001".
        return ProtoMessage(
            IN.TICK_REQ_PARAMS,
            TickReqParams_pb2.TickReqParams(
                reqId=req_id,
                minTick=_tick_str(min_tick),
                bboExchange=bbo_exchange,
                snapshotPermissions=snapshot_permissions,
                lastPricePrecision="0.000001",
                lastSizePrecision="0.000001",
            ),
        )

    # -- reference data --
    def contract_data(self, req_id: int, c):
        if not self._proto(IN.CONTRACT_DATA):
            return super().contract_data(req_id, c)
        # The same reference data the text layout carries, with the presence the sv205 recording
        # shows for a stock: unset strings and zero ids absent, contractMonth only on derivatives.
        stock, option = c.sec_type == "STK", c.sec_type == "OPT"
        details = ContractDetails_pb2.ContractDetails(
            marketName=c.trading_class,
            minTick=_tick_str(c.min_tick),
            validExchanges=c.valid_exchanges,
            priceMagnifier=1,
            timeZoneId="US/Eastern",
            aggGroup=1 if stock else 2,
            minSize="0.0001" if stock else "1",
            sizeIncrement="0.0001" if stock else "1",
            suggestedSizeIncrement="100" if stock else "1",
            minAlgoSize="0",
            lastPricePrecision="0.000001",
            lastSizePrecision="0.000001",
        )
        for name, value in (
            ("orderTypes", getattr(c, "order_types", "")),
            ("longName", c.long_name),
            ("industry", c.industry),
            ("category", getattr(c, "category", "")),
            ("subcategory", getattr(c, "subcategory", "")),
            ("tradingHours", getattr(c, "trading_hours", "")),
            ("liquidHours", getattr(c, "liquid_hours", "")),
            ("marketRuleIds", getattr(c, "market_rule_ids", "")),
        ):
            if value:
                setattr(details, name, value)
        for tag, value in getattr(c, "sec_ids", ()):
            details.secIdList[tag] = value
        if c.under_con_id:
            details.underConId = c.under_con_id
        if option:
            details.contractMonth, details.realExpirationDate = c.expiry[:6], c.expiry
            details.underSymbol, details.underSecType = c.symbol, getattr(c, "under_sec_type", "") or "STK"
        if stock:
            details.stockType = "COMMON"
        return ProtoMessage(
            IN.CONTRACT_DATA,
            ContractData_pb2.ContractData(
                reqId=req_id, contract=contract_proto(c, primary=True), contractDetails=details
            ),
        )

    def contract_data_end(self, req_id: int):
        if not self._proto(IN.CONTRACT_DATA_END):
            return super().contract_data_end(req_id)
        return ProtoMessage(IN.CONTRACT_DATA_END, ContractDataEnd_pb2.ContractDataEnd(reqId=req_id))

    def sec_def_opt_params(
        self,
        req_id: int,
        exchange: str,
        underlying_con_id: int,
        trading_class: str,
        multiplier: str,
        expirations: Sequence[str],
        strikes: Sequence[float],
    ):
        if not self._proto(IN.SECURITY_DEFINITION_OPTION_PARAMETER):
            return super().sec_def_opt_params(
                req_id, exchange, underlying_con_id, trading_class, multiplier, expirations, strikes
            )
        return ProtoMessage(
            IN.SECURITY_DEFINITION_OPTION_PARAMETER,
            SecDefOptParameter_pb2.SecDefOptParameter(
                reqId=req_id,
                exchange=exchange,
                underlyingConId=underlying_con_id,
                tradingClass=trading_class,
                multiplier=multiplier,
                expirations=list(expirations),
                strikes=[float(s) for s in strikes],
            ),
        )

    def sec_def_opt_params_end(self, req_id: int):
        if not self._proto(IN.SECURITY_DEFINITION_OPTION_PARAMETER_END):
            return super().sec_def_opt_params_end(req_id)
        return ProtoMessage(
            IN.SECURITY_DEFINITION_OPTION_PARAMETER_END, SecDefOptParameterEnd_pb2.SecDefOptParameterEnd(reqId=req_id)
        )

    # -- account --
    def position(self, account: str, c, quantity: float, avg_cost: float):
        if not self._proto(IN.POSITION_DATA):
            return super().position(account, c, quantity, avg_cost)
        # The contract's exchange is the listing exchange, as in the text layout (none for options).
        return ProtoMessage(
            IN.POSITION_DATA,
            Position_pb2.Position(
                account=account,
                contract=contract_proto(c, exchange=c.primary_exchange),
                position=_qty(quantity),
                avgCost=avg_cost,
            ),
        )

    def position_end(self):
        if not self._proto(IN.POSITION_END):
            return super().position_end()
        return ProtoMessage(IN.POSITION_END, PositionEnd_pb2.PositionEnd())

    def account_summary(self, req_id: int, account: str, tag: str, value: str, currency: str):
        if not self._proto(IN.ACCOUNT_SUMMARY):
            return super().account_summary(req_id, account, tag, value, currency)
        proto = AccountSummary_pb2.AccountSummary(reqId=req_id, account=account, tag=tag, value=value)
        if currency:
            proto.currency = currency
        return ProtoMessage(IN.ACCOUNT_SUMMARY, proto)

    def account_summary_end(self, req_id: int):
        if not self._proto(IN.ACCOUNT_SUMMARY_END):
            return super().account_summary_end(req_id)
        return ProtoMessage(IN.ACCOUNT_SUMMARY_END, AccountSummaryEnd_pb2.AccountSummaryEnd(reqId=req_id))

    def account_value(self, key: str, value: str, currency: str, account: str):
        if not self._proto(IN.ACCT_VALUE):
            return super().account_value(key, value, currency, account)
        proto = AccountValue_pb2.AccountValue(key=key, value=value, accountName=account)
        if currency:
            proto.currency = currency
        return ProtoMessage(IN.ACCT_VALUE, proto)

    def portfolio_value(
        self,
        c,
        quantity: float,
        market_price: float,
        market_value: float,
        avg_cost: float,
        unrealized_pnl: float,
        realized_pnl: float,
        account: str,
    ):
        if not self._proto(IN.PORTFOLIO_VALUE):
            return super().portfolio_value(
                c, quantity, market_price, market_value, avg_cost, unrealized_pnl, realized_pnl, account
            )
        return ProtoMessage(
            IN.PORTFOLIO_VALUE,
            PortfolioValue_pb2.PortfolioValue(
                contract=contract_proto(c, exchange=c.primary_exchange),
                position=_qty(quantity),
                marketPrice=market_price,
                marketValue=market_value,
                averageCost=avg_cost,
                unrealizedPNL=unrealized_pnl,
                realizedPNL=realized_pnl,
                accountName=account,
            ),
        )

    def account_time(self, hh_mm: str):
        if not self._proto(IN.ACCT_UPDATE_TIME):
            return super().account_time(hh_mm)
        return ProtoMessage(IN.ACCT_UPDATE_TIME, AccountUpdateTime_pb2.AccountUpdateTime(timeStamp=hh_mm))

    def account_download_end(self, account: str):
        if not self._proto(IN.ACCT_DOWNLOAD_END):
            return super().account_download_end(account)
        return ProtoMessage(IN.ACCT_DOWNLOAD_END, AccountDataEnd_pb2.AccountDataEnd(accountName=account))

    def account_update_multi(self, req_id: int, account: str, model_code: str, key: str, value: str, currency: str):
        if not self._proto(IN.ACCOUNT_UPDATE_MULTI):
            return super().account_update_multi(req_id, account, model_code, key, value, currency)
        proto = AccountUpdateMulti_pb2.AccountUpdateMulti(reqId=req_id, account=account, key=key, value=value)
        if model_code:
            proto.modelCode = model_code
        if currency:
            proto.currency = currency
        return ProtoMessage(IN.ACCOUNT_UPDATE_MULTI, proto)

    def account_update_multi_end(self, req_id: int):
        if not self._proto(IN.ACCOUNT_UPDATE_MULTI_END):
            return super().account_update_multi_end(req_id)
        return ProtoMessage(IN.ACCOUNT_UPDATE_MULTI_END, AccountUpdateMultiEnd_pb2.AccountUpdateMultiEnd(reqId=req_id))

    def position_multi(self, req_id: int, account: str, c, quantity: float, avg_cost: float, model_code: str = ""):
        if not self._proto(IN.POSITION_MULTI):
            return super().position_multi(req_id, account, c, quantity, avg_cost, model_code)
        proto = PositionMulti_pb2.PositionMulti(
            reqId=req_id,
            account=account,
            contract=contract_proto(c, exchange=c.primary_exchange),
            position=_qty(quantity),
            avgCost=avg_cost,
        )
        if model_code:
            proto.modelCode = model_code
        return ProtoMessage(IN.POSITION_MULTI, proto)

    def position_multi_end(self, req_id: int):
        if not self._proto(IN.POSITION_MULTI_END):
            return super().position_multi_end(req_id)
        return ProtoMessage(IN.POSITION_MULTI_END, PositionMultiEnd_pb2.PositionMultiEnd(reqId=req_id))

    # -- orders --
    def order_status(self, o: OrderRecord, why_held: str = ""):
        if not self._proto(IN.ORDER_STATUS):
            return super().order_status(o, why_held)
        # The 203 recording of a Cancelled status keeps remaining at the unfilled quantity ("1").
        proto = OrderStatus_pb2.OrderStatus(
            orderId=o.order_id,
            status=o.status,
            filled=_qty(o.filled),
            remaining=_qty(o.remaining),
            avgFillPrice=o.avg_fill_price,
            permId=o.perm_id,
            parentId=o.parent_id,
            lastFillPrice=o.last_fill_price,
            clientId=o.client_id,
            mktCapPrice=0.0,
        )
        if why_held:
            proto.whyHeld = why_held
        return ProtoMessage(IN.ORDER_STATUS, proto)

    def open_order(self, o: OrderRecord):
        if not self._proto(IN.OPEN_ORDER):
            return super().open_order(o)
        order, state = order_proto(o), OrderState_pb2.OrderState(status=o.status)
        w = o.what_if
        if w is not None:
            # A what-if preview: the order flagged, its state carrying the margins before, change
            # and after and the commission (min/max and the outside-RTH figures left unset).
            order.whatIf = True
            (state.initMarginBefore, state.maintMarginBefore, state.equityWithLoanBefore) = w.margins_before
            (state.initMarginChange, state.maintMarginChange, state.equityWithLoanChange) = w.margins_change
            (state.initMarginAfter, state.maintMarginAfter, state.equityWithLoanAfter) = w.margins_after
            state.commissionAndFees, state.commissionAndFeesCurrency = w.commission, w.currency
            state.marginCurrency = w.currency
        return ProtoMessage(
            IN.OPEN_ORDER,
            OpenOrder_pb2.OpenOrder(
                orderId=o.order_id, contract=contract_proto(o.contract), order=order, orderState=state
            ),
        )

    def open_order_end(self):
        if not self._proto(IN.OPEN_ORDER_END):
            return super().open_order_end()
        return ProtoMessage(IN.OPEN_ORDER_END, OpenOrdersEnd_pb2.OpenOrdersEnd())

    def completed_order(self, o: OrderRecord):
        if not self._proto(IN.COMPLETED_ORDER):
            return super().completed_order(o)
        state = OrderState_pb2.OrderState(
            status=o.status, completedTime=_exec_time(o.completed_time), completedStatus=o.completed_status
        )
        if o.status == "Filled":  # as recorded at 204; the fake charges one 0.65 per execution
            state.commissionAndFees, state.commissionAndFeesCurrency = Execution.commission, "USD"
        return ProtoMessage(
            IN.COMPLETED_ORDER,
            CompletedOrder_pb2.CompletedOrder(
                contract=contract_proto(o.contract), order=order_proto(o, completed=True), orderState=state
            ),
        )

    def completed_orders_end(self):
        if not self._proto(IN.COMPLETED_ORDERS_END):
            return super().completed_orders_end()
        return ProtoMessage(IN.COMPLETED_ORDERS_END, CompletedOrdersEnd_pb2.CompletedOrdersEnd())

    def exec_details(self, req_id: int, e: Execution):
        if not self._proto(IN.EXECUTION_DATA):
            return super().exec_details(req_id, e)
        o = e.order
        execution = Execution_pb2.Execution(
            orderId=o.order_id,
            execId=e.exec_id,
            time=_exec_time(e.time),
            acctNumber=o.account,
            exchange=e.exchange,
            side="BOT" if o.action == "BUY" else "SLD",
            shares=_qty(e.shares),
            price=e.price,
            permId=o.perm_id,
            clientId=o.client_id,
            cumQty=_qty(e.shares),
            avgPrice=e.price,
            lastLiquidity=2,
            optExerciseOrLapseType=-1,
        )
        if o.order_ref:
            execution.orderRef = o.order_ref
        return ProtoMessage(
            IN.EXECUTION_DATA,
            ExecutionDetails_pb2.ExecutionDetails(
                reqId=req_id, contract=contract_proto(o.contract, exchange=e.exchange), execution=execution
            ),
        )

    def exec_details_end(self, req_id: int):
        if not self._proto(IN.EXECUTION_DATA_END):
            return super().exec_details_end(req_id)
        return ProtoMessage(IN.EXECUTION_DATA_END, ExecutionDetailsEnd_pb2.ExecutionDetailsEnd(reqId=req_id))

    def commission_report(self, e: Execution):
        if not self._proto(IN.COMMISSION_AND_FEES_REPORT):
            return super().commission_report(e)
        proto = CommissionAndFeesReport_pb2.CommissionAndFeesReport(
            execId=e.exec_id, commissionAndFees=e.commission, currency="USD"
        )
        realized = getattr(e, "realized_pnl", None)  # None on an opening trade: field absent
        if realized is not None:
            proto.realizedPNL = realized
        return ProtoMessage(IN.COMMISSION_AND_FEES_REPORT, proto)


def make_encoder(server_version: int) -> Encoder:
    """The encoder a session uses at its negotiated version."""
    return ProtoEncoder(server_version)
