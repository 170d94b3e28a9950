"""The TWS socket protocol as the fake speaks it: writing every message the fake sends as text,
laid out for the negotiated server version exactly as
`ibapi/decoder.py` (and `ibapi/orderdecoder.py`) read it. A message one field off is silently
dropped by the client, so each encoder here mirrors the decoder's version gates one for one.

Every version from MIN_SERVER_VERSION (100, ibapi's MIN_CLIENT_VER: the lowest a client offers) up
to MAX_SERVER_VERSION is served, and every gate the decoder applies in that range is spelled out,
including the per-message version field TWS wrote before a layout was tied to the server version
(openOrder below 145, execDetails below 136, orderStatus below 131, tickOptionComputation below 156,
contractData below 164). From 201 (MIN_SERVER_VER_PROTOBUF) message ids are 4-byte ints; the text
layouts here are what TWS still sends as text there (the decoder gates no text field above 200),
and `fake_tws_proto.py` builds the messages each version moves to protobuf. How each number is
written is `fake_tws_formats.py`'s; framing is `fake_tws_framing.py`'s; reading client requests is
`fake_tws_requests.py`'s.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Sequence

from ibapi import server_versions as sv
from ibapi.common import PROTOBUF_MSG_ID

from tests.fake_account import Execution, OrderRecord
from tests.fake_tws_formats import (
    TWS_TIME_ZONE,
    UNSET_DOUBLE,
    UNSET_INTEGER,
    UNSET_LONG,
    UNSET_LONG_MIN,
    greek,
    java_double,
    plain,
    tick_attrib_mask,
    tick_price,
)
from tests.fake_tws_framing import fields_payload

MIN_SERVER_VERSION = sv.MIN_CLIENT_VER  # 100: the lowest version ibapi offers
MAX_SERVER_VERSION = sv.MAX_CLIENT_VER  # the newest version the pinned ibapi offers
LAST_TEXT_VERSION = sv.MIN_SERVER_VER_PROTOBUF - 1  # 200: the last text-only version
# The message versions TWS wrote before these layouts were tied to the server version: the highest
# each decoder tests (ibapi orderdecoder / decoder), so every per-message gate is open.
OPEN_ORDER_MSG_VERSION = 34  # openOrder below MIN_SERVER_VER_ORDER_CONTAINER (145)
EXEC_DETAILS_MSG_VERSION = 10  # execDetails below MIN_SERVER_VER_LAST_LIQUIDITY (136)
CONTRACT_DATA_MSG_VERSION = 8  # contractData below MIN_SERVER_VER_SIZE_RULES (164)


@dataclass
class ProtoMessage:
    """A message whose body is protobuf (server versions >= 201): `msg_id` is the plain message
    id (without the +200), `message` an instance of one of ibapi's `*_pb2` classes."""

    msg_id: int
    message: object


# ---- outgoing messages ----------------------------------------------------------------------


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
    def payload(self, message) -> bytes:
        """The bytes of one message after its 4-byte length prefix, as TWS writes them at this
        version (what `../shared/tws-captures/` records as `payload_b64`): below 201 every field
        NUL-terminated, the message id first; from 201 (MIN_SERVER_VER_PROTOBUF) the id as a 4-byte
        big-endian int, then the other fields; a ProtoMessage as id + 200, then its serialized body."""
        if isinstance(message, ProtoMessage):
            if self.v < sv.MIN_SERVER_VER_PROTOBUF:
                raise ValueError(f"no protobuf at server version {self.v}")
            return struct.pack(">I", message.msg_id + PROTOBUF_MSG_ID) + message.message.SerializeToString()
        if self.v < sv.MIN_SERVER_VER_PROTOBUF or not message:
            return fields_payload(message)
        return struct.pack(">I", int(message[0])) + fields_payload(message[1:])

    def frame(self, message) -> bytes:
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

    def error(self, req_id: int, code: int, text: str, error_time_ms: int = 0, advanced_reject_json: str = "") -> list:
        fields: list = [4] if self.v >= sv.MIN_SERVER_VER_ERROR_TIME else [4, 2]
        fields += [req_id, code, text]
        if self.v >= sv.MIN_SERVER_VER_ADVANCED_ORDER_REJECT:
            fields.append(advanced_reject_json)
        if self.v >= sv.MIN_SERVER_VER_ERROR_TIME:
            fields.append(error_time_ms)
        return fields

    # -- market data --
    def tick_price(
        self, req_id: int, tick_type: int, price: float, size: float, attrib_mask: Optional[int] = None
    ) -> list:
        """attrib_mask None: tick_attrib_mask(tick_type), what TWS sets."""
        if attrib_mask is None:
            attrib_mask = tick_attrib_mask(tick_type)
        return [1, 6, req_id, tick_type, tick_price(price), plain(size), attrib_mask]

    def tick_size(self, req_id: int, tick_type: int, size: float) -> list:
        return [2, 6, req_id, tick_type, plain(size)]

    def tick_generic(self, req_id: int, tick_type: int, value: float) -> list:
        return [45, 6, req_id, tick_type, java_double(value)]

    def tick_string(self, req_id: int, tick_type: int, value: str) -> list:
        return [46, 6, req_id, tick_type, value]

    def tick_option_computation(
        self,
        req_id: int,
        tick_type: int,
        implied_vol: Optional[float],
        delta: Optional[float],
        opt_price: Optional[float],
        pv_dividend: Optional[float],
        gamma: Optional[float],
        vega: Optional[float],
        theta: Optional[float],
        und_price: Optional[float],
        tick_attrib: int = 0,
    ) -> list:
        # Below MIN_SERVER_VER_PRICE_BASED_VOLATILITY (156): message version 6 (every value
        # present) and no tickAttrib; from 156 the tickAttrib and no version.
        head = (
            [21, req_id, tick_type, tick_attrib]
            if self.v >= sv.MIN_SERVER_VER_PRICE_BASED_VOLATILITY
            else [21, 6, req_id, tick_type]
        )
        return head + [greek(v) for v in (implied_vol, delta, opt_price, pv_dividend, gamma, vega, theta, und_price)]

    def tick_option_not_computed(self, req_id: int, tick_type: int) -> list:
        """The row TWS sends when it cannot compute (e.g. the bid row of an option with no bid):
        every value its sentinel (-1 vol/price/underlying, -2 greeks) and a pvDividend of 0.0."""
        return self.tick_option_computation(req_id, tick_type, -1.0, -2.0, -1.0, 0.0, -2.0, -2.0, -2.0, -1.0)

    def tick_snapshot_end(self, req_id: int) -> list:
        return [57, 1, req_id]

    def market_data_type(self, req_id: int, market_data_type: int) -> list:
        return [58, 1, req_id, market_data_type]

    def tick_req_params(
        self, req_id: int, min_tick: Optional[float], bbo_exchange: str, snapshot_permissions: int
    ) -> list:
        return [81, req_id, java_double(min_tick), bbo_exchange, snapshot_permissions]

    # -- reference data --
    def contract_data(self, req_id: int, c) -> list:
        fields: list = [10]
        if self.v < sv.MIN_SERVER_VER_SIZE_RULES:
            fields.append(CONTRACT_DATA_MSG_VERSION)
        fields += [req_id, c.symbol, c.sec_type, c.expiry]
        if self.v >= sv.MIN_SERVER_VER_LAST_TRADE_DATE:
            fields.append(c.expiry)
        stock, option = c.sec_type == "STK", c.sec_type == "OPT"
        fields += [
            plain(c.strike),
            c.right,
            c.exchange,
            c.currency,
            c.local_symbol,
            c.trading_class,  # marketName
            c.trading_class,
            c.con_id,
            java_double(c.min_tick),
        ]
        if sv.MIN_SERVER_VER_MD_SIZE_MULTIPLIER <= self.v < sv.MIN_SERVER_VER_SIZE_RULES:
            fields.append(1)  # mdSizeMultiplier
        fields += [
            c.multiplier,
            c.order_types,
            c.valid_exchanges,
            1,
            c.under_con_id,
            c.long_name,  # priceMagnifier, underConId, longName
            c.primary_exchange,
            c.expiry[:6],  # contractMonth
            c.industry,
            c.category,
            c.subcategory,
            TWS_TIME_ZONE,
            c.trading_hours,
            c.liquid_hours,
            "",
            "",
        ]  # evRule, evMultiplier (unset: empty)
        fields.append(len(c.sec_ids))
        for tag, value in c.sec_ids:
            fields += [tag, value]
        if self.v >= sv.MIN_SERVER_VER_AGG_GROUP:
            fields.append(1 if stock else 2)  # aggGroup
        if self.v >= sv.MIN_SERVER_VER_UNDERLYING_INFO:
            fields += [
                c.symbol if option else "",
                (c.under_sec_type or "STK") if option else "",
            ]  # underSymbol, underSecType
        if self.v >= sv.MIN_SERVER_VER_MARKET_RULES:
            fields.append(c.market_rule_ids)  # one per valid exchange
        if self.v >= sv.MIN_SERVER_VER_REAL_EXPIRATION_DATE:
            fields.append(c.expiry)  # realExpirationDate
        if self.v >= sv.MIN_SERVER_VER_STOCK_TYPE:
            fields.append("COMMON" if stock else "")  # stockType
        if sv.MIN_SERVER_VER_FRACTIONAL_SIZE_SUPPORT <= self.v < sv.MIN_SERVER_VER_SIZE_RULES:
            fields.append(plain(0.0001) if stock else 1)  # sizeMinTick
        if self.v >= sv.MIN_SERVER_VER_SIZE_RULES:
            # minSize, sizeIncrement, suggestedSizeIncrement: stocks trade in fractions, suggested
            # in round lots of 100; options (and the rest) in whole contracts
            fields += [plain(0.0001), plain(0.0001), 100] if stock else [1, 1, 1]
        if self.v >= sv.MIN_SERVER_VER_INELIGIBILITY_REASONS:
            fields.append(0)
        return fields

    def contract_data_end(self, req_id: int) -> list:
        return [52, 1, req_id]

    def sec_def_opt_params(
        self,
        req_id: int,
        exchange: str,
        underlying_con_id: int,
        trading_class: str,
        multiplier: str,
        expirations: Sequence[str],
        strikes: Sequence[float],
    ) -> list:
        return (
            [75, req_id, exchange, underlying_con_id, trading_class, multiplier, len(expirations)]
            + list(expirations)
            + [len(strikes)]
            + [java_double(k) for k in strikes]
        )

    def sec_def_opt_params_end(self, req_id: int) -> list:
        return [76, req_id]

    # -- account --
    def position(self, account: str, c, quantity: float, avg_cost: float) -> list:
        # The exchange field is the listing (primary) exchange: "NASDAQ" for a NASDAQ stock, as
        # recorded; empty for options, which have none.
        return [
            61,
            3,
            account,
            c.con_id,
            c.symbol,
            c.sec_type,
            c.expiry,
            java_double(c.strike),
            c.right,
            c.multiplier,
            c.primary_exchange,
            c.currency,
            c.local_symbol,
            c.trading_class,
            plain(quantity),
            java_double(avg_cost),
        ]

    def position_end(self) -> list:
        return [62, 1]

    def account_summary(self, req_id: int, account: str, tag: str, value: str, currency: str) -> list:
        return [63, 1, req_id, account, tag, value, currency]

    def account_summary_end(self, req_id: int) -> list:
        return [64, 1, req_id]

    def account_value(self, key: str, value: str, currency: str, account: str) -> list:
        return [6, 2, key, value, currency, account]

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
    ) -> list:
        # A stock's strike is written "0" and its right "0" here (as recorded), unlike position's.
        return [
            7,
            8,
            c.con_id,
            c.symbol,
            c.sec_type,
            c.expiry,
            plain(c.strike),
            c.right or "0",
            c.multiplier,
            c.primary_exchange,
            c.currency,
            c.local_symbol,
            c.trading_class,
            plain(quantity),
            java_double(market_price),
            java_double(market_value),
            java_double(avg_cost),
            java_double(unrealized_pnl),
            java_double(realized_pnl),
            account,
        ]

    def account_time(self, hh_mm: str) -> list:
        return [8, 1, hh_mm]

    def account_download_end(self, account: str) -> list:
        return [54, 1, account]

    def account_update_multi(
        self, req_id: int, account: str, model_code: str, key: str, value: str, currency: str
    ) -> list:
        return [73, 1, req_id, account, model_code, key, value, currency]

    def account_update_multi_end(self, req_id: int) -> list:
        return [74, 1, req_id]

    def position_multi(
        self, req_id: int, account: str, c, quantity: float, avg_cost: float, model_code: str = ""
    ) -> list:
        # Not recorded: written like position (its twin).
        return [
            71,
            1,
            req_id,
            account,
            c.con_id,
            c.symbol,
            c.sec_type,
            c.expiry,
            java_double(c.strike),
            c.right,
            c.multiplier,
            c.primary_exchange,
            c.currency,
            c.local_symbol,
            c.trading_class,
            plain(quantity),
            java_double(avg_cost),
            model_code,
        ]

    def position_multi_end(self, req_id: int) -> list:
        return [72, 1, req_id]

    # -- orders --
    def order_status(self, o: OrderRecord, why_held: str = "") -> list:
        # Below MIN_SERVER_VER_MARKET_CAP_PRICE (131): message version 6, no mktCapPrice.
        head = [3] if self.v >= sv.MIN_SERVER_VER_MARKET_CAP_PRICE else [3, 6]
        fields = head + [
            o.order_id,
            o.status,
            plain(o.filled),
            plain(o.remaining),
            plain(o.avg_fill_price),
            o.perm_id,
            o.parent_id,
            plain(o.last_fill_price),
            o.client_id,
            why_held,
        ]
        if self.v >= sv.MIN_SERVER_VER_MARKET_CAP_PRICE:
            fields.append(plain(0.0))  # mktCapPrice
        return fields

    def _order_contract(self, c) -> list:
        # A contract without a right (a stock) is written with right "?" here, as recorded.
        return [
            c.con_id,
            c.symbol,
            c.sec_type,
            c.expiry,
            plain(c.strike),
            c.right or "?",
            c.multiplier,
            c.exchange,
            c.currency,
            c.local_symbol,
            c.trading_class,
        ]

    def _order_head(self, o: OrderRecord) -> list:
        """action .. origin, orderRef: shared by openOrder and completedOrder. A price the order does
        not have (no aux price on a limit order) is written 0.0, as recorded."""
        return [
            o.action,
            plain(o.quantity),
            o.order_type,
            java_double(o.lmt_price or 0.0),
            java_double(o.aux_price or 0.0),
            o.tif,
            "",
            o.account,
            "",
            0,
            o.order_ref,
        ]

    def _fa_params(self) -> list:
        fields = ["", "", ""]  # faGroup, faMethod, faPercentage
        if self.v < sv.MIN_SERVER_VER_FA_PROFILE_DESUPPORT:
            fields.append("")  # faProfile
        if self.v >= sv.MIN_SERVER_VER_MODELS_SUPPORT:
            fields.append("")  # modelCode
        return fields

    def _vol_order_params(self, open_order: bool) -> list:
        # volatility, volatilityType, deltaNeutralOrderType: TWS writes "None" (not empty), so the
        # delta-neutral block follows: conId, [settlingFirm, clearingAccount, clearingIntent,
        # openClose "?": openOrder only], shortSale, shortSaleSlot, designatedLocation
        fields = ["", 0, "None", "", 0]  # ... deltaNeutralAuxPrice, deltaNeutralConId
        if open_order:
            fields += ["", "", "", "?"]
        return fields + [
            0,
            0,
            "",  # shortSale, shortSaleSlot, designatedLocation
            0,
            0,
        ]  # continuousUpdate, referencePriceType

    def _combo_and_scale(self) -> list:
        return [
            "",
            0,
            0,  # comboLegsDescrip, legs, order legs
            0,  # smartComboRoutingParams
            UNSET_INTEGER,
            UNSET_INTEGER,
            "",
        ]  # scaleInitLevelSize, scaleSubsLevelSize, increment

    def _peg_best_mid(self) -> list:
        return ["", "", "", "", ""] if self.v >= sv.MIN_SERVER_VER_PEGBEST_PEGMID_OFFSETS else []

    def _customer_fields(self) -> list:
        fields = []
        if self.v >= sv.MIN_SERVER_VER_CUSTOMER_ACCOUNT:
            fields.append("")
        if self.v >= sv.MIN_SERVER_VER_PROFESSIONAL_CUSTOMER:
            fields.append(0)
        return fields

    def _order_tail(self) -> list:
        """softDollarTier .. usePriceMgmtAlgo (openOrder), each from the version that added it."""
        v, fields = self.v, []
        if v >= sv.MIN_SERVER_VER_SOFT_DOLLAR_TIER:
            fields += ["", "", ""]  # softDollarTier name, value, displayName
        if v >= sv.MIN_SERVER_VER_CASH_QTY:
            fields.append(plain(0.0))  # cashQty
        if v >= sv.MIN_SERVER_VER_AUTO_PRICE_FOR_HEDGE:
            fields.append(1)  # dontUseAutoPriceForHedge
        if v >= sv.MIN_SERVER_VER_ORDER_CONTAINER:
            fields.append(0)  # isOmsContainer
        if v >= sv.MIN_SERVER_VER_D_PEG_ORDERS:
            fields.append(0)  # discretionaryUpToLimitPrice
        if v >= sv.MIN_SERVER_VER_PRICE_MGMT_ALGO:
            fields.append(0)  # usePriceMgmtAlgo
        return fields

    def open_order(self, o: OrderRecord) -> list:
        v = self.v
        # Below MIN_SERVER_VER_ORDER_CONTAINER (145) the message carries its own version, 34 (the
        # highest the decoder tests: every per-message gate open).
        head = [5] if v >= sv.MIN_SERVER_VER_ORDER_CONTAINER else [5, OPEN_ORDER_MSG_VERSION]
        fields = head + [o.order_id] + self._order_contract(o.contract) + self._order_head(o)
        fields += [
            o.client_id,
            o.perm_id,
            0,
            0,
            plain(0.0),
            "",  # outsideRth, hidden, discretionaryAmt, GAT
            f"{o.perm_id}.1/{o.account}/100",
        ]  # sharesAllocation (deprecated), as recorded
        fields += self._fa_params()
        fields += [
            "",
            0,
            "",
            "",  # goodTillDate, rule80A, percentOffset, settlingFirm
            0,
            "",
            -1,  # shortSaleSlot, designatedLocation, exemptCode
            0,  # auctionStrategy
            "",
            "",
            "",  # startingPrice, stockRefPrice, delta
            "",
            "",  # stockRangeLower, stockRangeUpper
            UNSET_INTEGER,
            0,
            0,
            0,
            "",
            3,  # displaySize, block, sweep, allOrNone, minQty, ocaType
            0,
            0,
            "",  # eTradeOnly, firmQuoteOnly, nbboPriceCap
            o.parent_id,
            0,
        ]  # parentId, triggerMethod
        fields += self._vol_order_params(open_order=True)
        fields += [
            java_double(o.trail_stop_price),
            "",  # trailStopPrice, trailingPercent
            "",
            "",
        ]  # basisPoints, basisPointsType
        fields += self._combo_and_scale()
        fields += [
            "",  # hedgeType
            0,
            "",
            "IB",
            0,  # optOutSmartRouting, clearingAccount/Intent, notHeld
            0,
            "",
            0,
        ]  # deltaNeutral, algoStrategy, solicited
        w = o.what_if
        fields += [1 if w else 0, o.status]  # whatIf, status
        # A what-if order's state carries TWS's preview (margins as Java doubles, the commission, its
        # min/max unset); a real order's leaves margins at Double.MAX_VALUE and commissions empty.
        if v >= sv.MIN_SERVER_VER_WHAT_IF_EXT_FIELDS:  # margin before / change
            fields += [java_double(x) for x in w.margins_before + w.margins_change] if w else [UNSET_DOUBLE] * 6
        fields += [java_double(x) for x in w.margins_after] if w else [UNSET_DOUBLE] * 3  # margin after
        fields += (
            [java_double(w.commission), UNSET_DOUBLE, UNSET_DOUBLE, w.currency]
            if w  # commission, min,
            else ["", "", "", ""]
        )  # max, commission currency
        if v >= sv.MIN_SERVER_VER_FULL_ORDER_PREVIEW_FIELDS:
            fields += [w.currency if w else ""] + [UNSET_DOUBLE] * 9  # marginCurrency, outside-RTH margins
            fields += [UNSET_LONG_MIN, "", 0]  # suggestedSize, rejectReason, allocations
        fields += [""]  # warningText
        fields += [0, 0]  # randomizeSize, randomizePrice
        if v >= sv.MIN_SERVER_VER_PEGGED_TO_BENCHMARK:
            fields += [
                0,  # conditions
                "None",
                UNSET_DOUBLE,  # adjustedOrderType, triggerPrice
                java_double(o.trail_stop_price, UNSET_DOUBLE),
                java_double(o.lmt_price_offset, UNSET_DOUBLE),
                UNSET_DOUBLE,
                UNSET_DOUBLE,
                UNSET_DOUBLE,  # adjustedStop, adjustedStopLimit, adjustedTrailing
                0,
            ]  # adjustableTrailingUnit
        fields += self._order_tail()
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
            fields += ["", UNSET_INTEGER]  # extOperator, manualOrderIndicator
        if v >= sv.MIN_SERVER_VER_SUBMITTER:
            fields.append("")  # submitter: empty in openOrder, as recorded
        if v >= sv.MIN_SERVER_VER_IMBALANCE_ONLY:
            fields.append(0)
        return fields

    def open_order_end(self) -> list:
        return [53, 1]

    def completed_order(self, o: OrderRecord) -> list:
        # completedOrder exists from MIN_SERVER_VER_COMPLETED_ORDERS (150); every gate of its
        # decoder below that is open there.
        if self.v < sv.MIN_SERVER_VER_COMPLETED_ORDERS:
            raise ValueError(f"no completedOrder at server version {self.v}")
        fields = [101] + self._order_contract(o.contract) + self._order_head(o)
        fields += [o.perm_id, 0, 0, plain(0.0), ""]  # permId, outsideRth, hidden, discretionaryAmt, GAT
        fields += self._fa_params()
        fields += [
            "",
            "",
            "",
            "",  # goodTillDate, rule80A (empty here), percentOffset,
            # settlingFirm
            0,
            "",
            -1,  # short sale params
            "",
            "",
            "",
            "",
            "",  # box order, peg-to-stock ranges
            UNSET_INTEGER,
            0,
            0,
            "",
            3,  # displaySize, sweep, allOrNone, minQty, ocaType
            0,
        ]  # triggerMethod
        fields += self._vol_order_params(open_order=False)
        fields += [java_double(o.trail_stop_price), ""]  # trailStopPrice, trailingPercent
        fields += self._combo_and_scale()
        fields += ["", "", "IB", 0, 0, "", 0]  # hedge, clearing x2, notHeld, deltaNeutral, algo, solicited
        fields += [
            o.status,
            0,
            0,
            0,  # orderStatus, randomize x2, conditions
            # trailStopPrice, lmtPriceOffset (recorded on a TRAIL LIMIT; unset: Double.MAX_VALUE,
            # as openOrder writes them)
            java_double(o.trail_stop_price, UNSET_DOUBLE),
            java_double(o.lmt_price_offset, UNSET_DOUBLE),
            plain(0.0),
            1,
            0,  # cashQty, dontUseAutoPrice, isOms
            "",
            plain(o.filled),
            UNSET_INTEGER,
            0,  # autoCancelDate, filled, refFutConId, autoCancelParent
            "Not an insider or substantial shareholder",  # shareholder
            0,
            0,  # imbalanceOnly, routeMarketableToBbo
            UNSET_LONG,
            o.completed_time,
            o.completed_status,
        ]  # parentPermId, completedTime, Status
        fields += self._peg_best_mid() + self._customer_fields()
        if self.v >= sv.MIN_SERVER_VER_SUBMITTER:
            fields.append(o.submitter)
        return fields

    def completed_orders_end(self) -> list:
        return [102]

    def exec_details(self, req_id: int, e: Execution) -> list:
        # The contract's exchange field is the execution's exchange, as recorded.
        # Below MIN_SERVER_VER_LAST_LIQUIDITY (136) the message carries its own version (10).
        o, c = e.order, e.order.contract
        head = [11] if self.v >= sv.MIN_SERVER_VER_LAST_LIQUIDITY else [11, EXEC_DETAILS_MSG_VERSION]
        fields = head + [
            req_id,
            o.order_id,
            c.con_id,
            c.symbol,
            c.sec_type,
            c.expiry,
            java_double(c.strike),
            c.right,
            c.multiplier,
            e.exchange,
            c.currency,
            c.local_symbol,
            c.trading_class,
            e.exec_id,
            e.time,
            o.account,
            e.exchange,
            "BOT" if o.action == "BUY" else "SLD",
            plain(e.shares),
            java_double(e.price),
            o.perm_id,
            o.client_id,
            0,  # liquidation
            plain(e.shares),
            java_double(e.price),
            o.order_ref,  # cumQty, avgPrice
            "",
            "",
        ]  # evRule, evMultiplier
        if self.v >= sv.MIN_SERVER_VER_MODELS_SUPPORT:
            fields.append("")  # modelCode
        if self.v >= sv.MIN_SERVER_VER_LAST_LIQUIDITY:
            fields.append(2)  # lastLiquidity (removed liquidity)
        if self.v >= sv.MIN_SERVER_VER_PENDING_PRICE_REVISION:
            fields.append(0)
        if self.v >= sv.MIN_SERVER_VER_SUBMITTER:
            fields.append("")
        return fields

    def exec_details_end(self, req_id: int) -> list:
        return [55, 1, req_id]

    def commission_report(self, e: Execution) -> list:
        # realizedPNL and yield unset: Double.MAX_VALUE, as recorded; yieldRedemptionDate empty
        return [
            59,
            1,
            e.exec_id,
            java_double(e.commission),
            "USD",
            java_double(e.realized_pnl, UNSET_DOUBLE),
            UNSET_DOUBLE,
            "",
        ]
