"""The fake TWS's byte layouts, checked against the real ibapi: every message the fake sends is
decoded by ibapi's Decoder with no field left over (one field off and the client drops it), and
every request the fake reads is produced by ibapi's EClient, at server versions across the whole
served range: 100 (ibapi's MIN_CLIENT_VER) and every ten up to 150, 156 (the last before
tickOptionComputation lost its version field), 157, 176 and 200 (the last text-only). Each callback's
arguments are checked, including the fields a version adds or drops."""

from __future__ import annotations

import inspect
import struct
import unittest
from decimal import Decimal

from ibapi import comm
from ibapi.client import EClient
from ibapi.common import UNSET_DECIMAL
from ibapi.const import UNSET_DOUBLE
from ibapi.contract import Contract
from ibapi.decoder import Decoder
from ibapi.execution import ExecutionFilter
from ibapi.order import Order
from ibapi.order_cancel import OrderCancel
from ibapi.protobuf.NextValidId_pb2 import NextValidId
from ibapi.server_versions import MAX_CLIENT_VER
from ibapi.wrapper import EWrapper

from tests.fake_account import Execution, OrderRecord, WhatIf
from tests.fake_listings import Instrument
from tests.fake_tws import FakeTWS
from tests.fake_tws_formats import UNSET_DOUBLE as UNSET_DOUBLE_TEXT
from tests.fake_tws_framing import FrameReader, frame, parse_version_range, split_fields
from tests.fake_tws_requests import ProtocolError, parse_request
from tests.fake_tws_wire import MAX_SERVER_VERSION, MIN_SERVER_VERSION, Encoder, ProtoMessage

VERSIONS = (100, 110, 120, 130, 140, 150, 156, 157, 176, 200)
STOCK = Instrument(
    265598,
    "AAPL",
    "STK",
    primary_exchange="NASDAQ",
    local_symbol="AAPL",
    trading_class="NMS",
    long_name="APPLE INC",
    industry="Technology",
)
OPTION = Instrument(
    600000123,
    "AAPL",
    "OPT",
    "20270115",
    190.0,
    "C",
    "100",
    local_symbol="AAPL  270115C00190000",
    trading_class="AAPL",
    long_name="APPLE INC",
    under_con_id=265598,
    valid_exchanges="SMART,CBOE",
    market_rule_ids="26,26",
)


class RecordingWrapper(EWrapper):
    """Every EWrapper callback appends (name, args)."""

    def __init__(self):
        super().__init__()
        self.calls = []


def _recorder(name):
    def record(self, *args):
        self.calls.append((name, args))

    return record


for _name, _ in inspect.getmembers(EWrapper, inspect.isfunction):
    if not _name.startswith("_"):
        setattr(RecordingWrapper, _name, _recorder(_name))


def decode(fields: list, version: int) -> list:
    """What ibapi's reader + Decoder make of one framed message; fails on leftover fields."""
    size, text, rest = comm.read_msg(frame(fields))
    assert size and rest == b"", "not exactly one frame"
    msg_id, _, body = text.partition(b"\0")
    wrapper = RecordingWrapper()
    interpret_text(Decoder(wrapper, version), int(msg_id), comm.read_fields(body))
    return wrapper.calls


def interpret_text(decoder: Decoder, msg_id: int, fields) -> None:
    """Hand one text message's fields to ibapi's Decoder as its reader loop does; fails on leftovers."""
    handle = decoder.msgId2handleInfo[msg_id]
    if handle.processMeth is not None:
        remaining = iter(fields)
        handle.processMeth(decoder, remaining)
        leftover = list(remaining)
        assert not leftover, f"{len(leftover)} fields left over: {leftover}"
    else:
        decoder.interpretWithSignature(fields, handle)


def _order(status="Submitted", **changes) -> OrderRecord:
    order = OrderRecord(
        7, 3, 1001000, OPTION, "BUY", 2.0, "LMT", 1.25, None, "DAY", "DU1234567", "req-1", status=status
    )
    for key, value in changes.items():
        setattr(order, key, value)
    return order


def per_version(test):
    """Run the test body once per server version in VERSIONS, each as its own subTest, with the
    version (and for encoder tests an Encoder at it)."""
    wants_encoder = "enc" in inspect.signature(test).parameters

    def run(self):
        for version in VERSIONS:
            with self.subTest(server_version=version):
                test(self, version, Encoder(version)) if wants_encoder else test(self, version)

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


class FramingTest(unittest.TestCase):
    def test_frames_split_on_any_chunk_boundary(self):
        data = frame([1, "a", 2.5]) + frame([9, 1, 42])
        reader = FrameReader()
        payloads = []
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
            payloads += reader.payloads()
        self.assertEqual([split_fields(p) for p in payloads], [["1", "a", "2.5"], ["9", "1", "42"]])

    def test_api_prefix_and_version_range(self):
        reader = FrameReader()
        reader.feed(b"AP")
        self.assertIsNone(reader.take_prefix(b"API\0"))
        reader.feed(b"I\0" + comm.make_initial_msg("v100..203 +PACEAPI"))
        self.assertTrue(reader.take_prefix(b"API\0"))
        self.assertEqual(parse_version_range(reader.payloads()[0].decode()), (100, 203, "+PACEAPI"))
        self.assertEqual(parse_version_range("v176"), (176, 176, ""))
        with self.assertRaises(ProtocolError):
            parse_version_range("x1..2")

    def test_wrong_prefix_is_refused(self):
        reader = FrameReader()
        reader.feed(b"GET / HTTP/1.1")
        self.assertFalse(reader.take_prefix(b"API\0"))

    def test_message_ids_are_raw_ints_from_201_and_protobuf_ids_add_200(self):
        self.assertEqual(Encoder(200).payload([9, 1, 448]), b"9\x001\x00448\x00")
        self.assertEqual(Encoder(201).payload([9, 1, 448]), b"\x00\x00\x00\x091\x00448\x00")
        body = NextValidId(orderId=448)
        self.assertEqual(
            Encoder(MAX_SERVER_VERSION).payload(ProtoMessage(9, body)), b"\x00\x00\x00\xd1" + body.SerializeToString()
        )
        framed = Encoder(MAX_SERVER_VERSION).frame(ProtoMessage(9, body))
        self.assertEqual(framed[:4], struct.pack(">I", len(framed) - 4))
        with self.assertRaises(ValueError):
            Encoder(200).payload(ProtoMessage(9, body))

    def test_the_fake_serves_up_to_the_newest_version_ibapi_offers(self):
        self.assertEqual(MAX_SERVER_VERSION, MAX_CLIENT_VER)
        self.assertEqual(FakeTWS().max_server_version, MAX_CLIENT_VER)
        for version in (MIN_SERVER_VERSION - 1, MAX_CLIENT_VER + 1):
            with self.assertRaises(ValueError):
                FakeTWS(max_server_version=version)

    def test_bool_and_integral_floats(self):
        self.assertEqual(split_fields(frame([True, False, 3.0, 0.25, None])[4:]), ["1", "0", "3", "0.25", ""])


class EncoderDecodedByIbapiTest(unittest.TestCase):
    """Each encoder, decoded by the real ibapi Decoder at every tested server version."""

    @per_version
    def test_connection_messages(self, v, enc):
        self.assertEqual(decode(enc.managed_accounts(["DU1", "DU2"]), v), [("managedAccounts", ("DU1,DU2",))])
        self.assertEqual(decode(enc.next_valid_id(17), v), [("nextValidId", (17,))])
        self.assertEqual(decode(enc.current_time(1700000000), v), [("currentTime", (1700000000,))])

    @per_version
    def test_error(self, v, enc):
        ((name, args),) = decode(enc.error(12, 200, "No security definition", 1700000000123), v)
        self.assertEqual(name, "error")
        req_id, error_time, code, text, advanced = args
        self.assertEqual((req_id, code, text, advanced), (12, 200, "No security definition", ""))
        self.assertEqual(error_time, 1700000000123 if v >= 194 else 0)

    @per_version
    def test_tick_price_carries_size(self, v, enc):
        calls = decode(enc.tick_price(5, 1, 2.35, 12), v)
        self.assertEqual([c[0] for c in calls], ["tickPrice", "tickSize"])
        self.assertEqual(calls[0][1][:3], (5, 1, 2.35))
        self.assertEqual(calls[1][1], (5, 0, Decimal(12)))

    @per_version
    def test_tick_size_generic_snapshot_end_market_data_type_req_params(self, v, enc):
        self.assertEqual(decode(enc.tick_size(5, 27, 1234), v), [("tickSize", (5, 27, Decimal(1234)))])
        self.assertEqual(decode(enc.tick_generic(5, 24, 0.31), v), [("tickGeneric", (5, 24, 0.31))])
        self.assertEqual(decode(enc.tick_snapshot_end(5), v), [("tickSnapshotEnd", (5,))])
        self.assertEqual(decode(enc.market_data_type(5, 3), v), [("marketDataType", (5, 3))])
        self.assertEqual(
            decode(enc.tick_req_params(5, 0.01, "a60001", 3), v), [("tickReqParams", (5, 0.01, "a60001", 3))]
        )

    @per_version
    def test_tick_option_computation(self, v, enc):
        attrib = 0 if v >= 156 else None  # no tickAttrib before PRICE_BASED_VOLATILITY
        calls = decode(enc.tick_option_computation(5, 13, 0.25, 0.55, 3.1, 0.0, 0.03, 0.19, -0.05, 190.5), v)
        self.assertEqual(
            calls, [("tickOptionComputation", (5, 13, attrib, 0.25, 0.55, 3.1, 0.0, 0.03, 0.19, -0.05, 190.5))]
        )
        sentinels = decode(enc.tick_option_computation(5, 10, -1.0, -2.0, -1.0, -1.0, -2.0, -2.0, -2.0, 190.5), v)
        self.assertEqual(sentinels[0][1], (5, 10, attrib, None, None, None, None, None, None, None, 190.5))
        ((_, args),) = decode(enc.tick_option_not_computed(5, 10), v)
        self.assertEqual(args, (5, 10, attrib, None, None, None, 0.0, None, None, None, None))

    @per_version
    def test_contract_data_stock_and_option(self, v, enc):
        ((name, (req_id, details)),) = decode(enc.contract_data(4, STOCK), v)
        self.assertEqual((name, req_id), ("contractDetails", 4))
        c = details.contract
        self.assertEqual(
            (c.conId, c.symbol, c.secType, c.exchange, c.primaryExchange, c.currency),
            (265598, "AAPL", "STK", "SMART", "NASDAQ", "USD"),
        )
        # Each field from the version that added it (ibapi leaves the attribute at its default before).
        self.assertEqual(
            (details.longName, details.minTick, details.stockType, details.aggGroup),
            ("APPLE INC", 0.01, "COMMON" if v >= 152 else "", 1 if v >= 121 else 0),
        )
        ((_, (_, details)),) = decode(enc.contract_data(4, OPTION), v)
        c = details.contract
        self.assertEqual(
            (c.conId, c.lastTradeDateOrContractMonth, c.strike, c.right, c.multiplier, c.tradingClass, c.localSymbol),
            (600000123, "20270115", 190.0, "C", "100", "AAPL", "AAPL  270115C00190000"),
        )
        self.assertEqual(
            (details.underConId, details.validExchanges, details.timeZoneId), (265598, "SMART,CBOE", "US/Eastern")
        )
        self.assertEqual((details.underSymbol, details.underSecType), ("AAPL", "STK") if v >= 122 else ("", ""))
        self.assertEqual(details.marketRuleIds, "26,26" if v >= 126 else "")
        self.assertEqual(details.realExpirationDate, "20270115" if v >= 134 else "")
        self.assertEqual(details.minSize, Decimal(1) if v >= 164 else UNSET_DECIMAL)
        if v >= 182:
            self.assertEqual(c.lastTradeDate, "20270115")
        self.assertEqual(decode(enc.contract_data_end(4), v), [("contractDetailsEnd", (4,))])

    @per_version
    def test_sec_def_opt_params(self, v, enc):
        calls = decode(
            enc.sec_def_opt_params(8, "CBOE", 265598, "AAPL", "100", ["20270115", "20270219"], [185.0, 187.5]), v
        )
        self.assertEqual(
            calls,
            [
                (
                    "securityDefinitionOptionParameter",
                    (8, "CBOE", 265598, "AAPL", "100", {"20270115", "20270219"}, {185.0, 187.5}),
                )
            ],
        )
        self.assertEqual(decode(enc.sec_def_opt_params_end(8), v), [("securityDefinitionOptionParameterEnd", (8,))])

    @per_version
    def test_positions(self, v, enc):
        ((name, (account, contract, quantity, avg_cost)),) = decode(enc.position("DU1", OPTION, -2.0, 310.5), v)
        self.assertEqual(
            (name, account, contract.conId, contract.right, contract.tradingClass, quantity, avg_cost),
            ("position", "DU1", 600000123, "C", "AAPL", Decimal(-2), 310.5),
        )
        self.assertEqual(decode(enc.position_end(), v), [("positionEnd", ())])
        ((name, args),) = decode(enc.position_multi(3, "DU1", STOCK, 100.0, 180.0), v)
        self.assertEqual(
            (name, args[0], args[1], args[2], args[3].conId, args[4], args[5]),
            ("positionMulti", 3, "DU1", "", 265598, Decimal(100), 180.0),
        )
        self.assertEqual(decode(enc.position_multi_end(3), v), [("positionMultiEnd", (3,))])

    @per_version
    def test_account_messages(self, v, enc):
        self.assertEqual(
            decode(enc.account_summary(9, "DU1", "NetLiquidation", "100.00", "USD"), v),
            [("accountSummary", (9, "DU1", "NetLiquidation", "100.00", "USD"))],
        )
        self.assertEqual(decode(enc.account_summary_end(9), v), [("accountSummaryEnd", (9,))])
        self.assertEqual(
            decode(enc.account_value("NetLiquidation", "100.00", "USD", "DU1"), v),
            [("updateAccountValue", ("NetLiquidation", "100.00", "USD", "DU1"))],
        )
        self.assertEqual(decode(enc.account_time("13:05"), v), [("updateAccountTime", ("13:05",))])
        self.assertEqual(decode(enc.account_download_end("DU1"), v), [("accountDownloadEnd", ("DU1",))])
        self.assertEqual(
            decode(enc.account_update_multi(4, "DU1", "", "BuyingPower", "5.00", "USD"), v),
            [("accountUpdateMulti", (4, "DU1", "", "BuyingPower", "5.00", "USD"))],
        )
        self.assertEqual(decode(enc.account_update_multi_end(4), v), [("accountUpdateMultiEnd", (4,))])
        ((name, args),) = decode(enc.portfolio_value(OPTION, -2.0, 3.1, -620.0, 310.5, -0.5, 0.0, "DU1"), v)
        self.assertEqual(name, "updatePortfolio")
        self.assertEqual(
            (args[0].conId, args[0].multiplier, args[0].tradingClass) + args[1:],
            (600000123, "100", "AAPL", Decimal(-2), 3.1, -620.0, 310.5, -0.5, 0.0, "DU1"),
        )

    @per_version
    def test_order_status(self, v, enc):
        ((name, args),) = decode(enc.order_status(_order()), v)
        self.assertEqual(name, "orderStatus")
        self.assertEqual(
            args, (7, "Submitted", Decimal(0), Decimal(2), 0.0, 1001000, 0, 0.0, 3, "", 0.0 if v >= 131 else None)
        )  # mktCapPrice from MARKET_CAP_PRICE
        # Cancelled keeps remaining at the unfilled quantity, as recorded at 203
        ((_, args),) = decode(enc.order_status(_order("Cancelled")), v)
        self.assertEqual(args[1:4], ("Cancelled", Decimal(0), Decimal(2)))

    @per_version
    def test_open_order(self, v, enc):
        calls = decode(enc.open_order(_order()), v)
        ((name, (order_id, contract, order, state)),) = calls
        self.assertEqual(
            (name, order_id, contract.conId, contract.localSymbol, contract.multiplier),
            ("openOrder", 7, 600000123, "AAPL  270115C00190000", "100"),
        )
        self.assertEqual(
            (
                order.action,
                order.totalQuantity,
                order.orderType,
                order.lmtPrice,
                order.tif,
                order.account,
                order.orderRef,
                order.clientId,
                order.permId,
            ),
            ("BUY", Decimal(2), "LMT", 1.25, "DAY", "DU1234567", "req-1", 3, 1001000),
        )
        self.assertEqual(state.status, "Submitted")
        # the fields each version added, at their TWS values; unset ones at ibapi's defaults before
        self.assertEqual(
            (order.trailStopPrice, order.lmtPriceOffset, order.adjustedOrderType),
            (UNSET_DOUBLE, UNSET_DOUBLE, "None" if v >= 102 else ""),
        )
        self.assertEqual(
            (order.cashQty, order.dontUseAutoPriceForHedge, order.usePriceMgmtAlgo),
            (0.0 if v >= 111 else UNSET_DOUBLE, v >= 141, False if v >= 151 else None),
        )
        self.assertEqual(
            (state.initMarginBefore, state.initMarginAfter), (UNSET_DOUBLE_TEXT if v >= 142 else "", UNSET_DOUBLE_TEXT)
        )
        self.assertEqual(decode(enc.open_order_end(), v), [("openOrderEnd", ())])

    @per_version
    def test_what_if_open_order_carries_the_preview(self, v, enc):
        preview = WhatIf((1500.0, 1250.0, 250000.5), (37.5, 31.25, -0.65), (1537.5, 1281.25, 249999.85), 0.65)
        ((_, (_, _, order, state)),) = decode(enc.open_order(_order("PreSubmitted", perm_id=0, what_if=preview)), v)
        self.assertEqual((order.whatIf, state.status), (True, "PreSubmitted"))
        before_and_change = [
            state.initMarginBefore,
            state.maintMarginBefore,
            state.equityWithLoanBefore,
            state.initMarginChange,
            state.maintMarginChange,
            state.equityWithLoanChange,
        ]
        # before/change exist from MIN_SERVER_VER_WHAT_IF_EXT_FIELDS (142)
        self.assertEqual(
            before_and_change, ["1500.0", "1250.0", "250000.5", "37.5", "31.25", "-0.65"] if v >= 142 else [""] * 6
        )
        self.assertEqual(
            [state.initMarginAfter, state.maintMarginAfter, state.equityWithLoanAfter],
            ["1537.5", "1281.25", "249999.85"],
        )
        self.assertEqual(
            (
                state.commissionAndFees,
                state.minCommissionAndFees,
                state.maxCommissionAndFees,
                state.commissionAndFeesCurrency,
            ),
            (0.65, UNSET_DOUBLE, UNSET_DOUBLE, "USD"),
        )

    @per_version
    def test_completed_order(self, v, enc):
        order = _order("Cancelled", completed_time="20261124 10:00:00", completed_status="Cancelled by Trader")
        if v < 150:  # MIN_SERVER_VER_COMPLETED_ORDERS
            with self.assertRaises(ValueError):
                enc.completed_order(order)
            return
        ((name, (contract, decoded, state)),) = decode(enc.completed_order(order), v)
        self.assertEqual(
            (name, contract.conId, decoded.action, decoded.lmtPrice, decoded.orderRef, decoded.permId),
            ("completedOrder", 600000123, "BUY", 1.25, "req-1", 1001000),
        )
        self.assertEqual(
            (state.status, state.completedTime, state.completedStatus),
            ("Cancelled", "20261124 10:00:00", "Cancelled by Trader"),
        )
        self.assertEqual(decode(enc.completed_orders_end(), v), [("completedOrdersEnd", ())])

    @per_version
    def test_executions_and_commission(self, v, enc):
        execution = Execution("0001.01", "20261124  10:00:01", _order("Filled", filled=2.0), 2.0, 1.2)
        ((name, (req_id, contract, e)),) = decode(enc.exec_details(11, execution), v)
        self.assertEqual(
            (
                name,
                req_id,
                contract.conId,
                e.execId,
                e.side,
                e.shares,
                e.price,
                e.permId,
                e.clientId,
                e.orderId,
                e.orderRef,
                e.acctNumber,
            ),
            ("execDetails", 11, 600000123, "0001.01", "BOT", Decimal(2), 1.2, 1001000, 3, 7, "req-1", "DU1234567"),
        )
        self.assertEqual(decode(enc.exec_details_end(11), v), [("execDetailsEnd", (11,))])
        ((name, (report,)),) = decode(enc.commission_report(execution), v)
        self.assertEqual(
            (name, report.execId, report.commissionAndFees, report.currency),
            ("commissionAndFeesReport", "0001.01", 0.65, "USD"),
        )

    def test_versions_outside_the_served_range_are_refused(self):
        for version in (MIN_SERVER_VERSION - 1, MAX_SERVER_VERSION + 1):
            with self.assertRaises(ValueError):
                Encoder(version)


class _CapturingConnection:
    def __init__(self):
        self.sent = []

    def isConnected(self):
        return True

    def sendMsg(self, data):
        self.sent.append(data)


def eclient_bytes(version: int, call: str, *args) -> bytes:
    """The one framed message ibapi's EClient (client id 12) sends for call(*args) at `version`."""
    client = EClient(RecordingWrapper())
    client.conn = _CapturingConnection()
    client.serverVersion_, client.clientId = version, 12
    client.setConnState(EClient.CONNECTED)
    getattr(client, call)(*args)
    (data,) = client.conn.sent
    return data


def eclient_payload(version: int, call: str, *args) -> bytes:
    """The same message without its length prefix."""
    reader = FrameReader()
    reader.feed(eclient_bytes(version, call, *args))
    (payload,) = reader.payloads()
    return payload


def ibapi_request(version: int, call: str, *args):
    """(name, params) the fake reads from what ibapi's EClient sends for call(*args)."""
    return parse_request(split_fields(eclient_payload(version, call, *args)), version)


def _ibapi_order(version: int) -> Order:
    """An ibapi Order that EClient sends at `version`: below MIN_SERVER_VER_CASH_QTY (111) ibapi
    10.50 refuses any order whose cashQty is set, and its default (UNSET_DOUBLE) counts as set."""
    order = Order()
    if version < 111:
        order.cashQty = 0
    return order


def _contract(**fields) -> Contract:
    contract = Contract()
    for key, value in fields.items():
        setattr(contract, key, value)
    return contract


class RequestsFromIbapiTest(unittest.TestCase):
    option = dict(
        symbol="AAPL",
        secType="OPT",
        lastTradeDateOrContractMonth="20270115",
        strike=190.0,
        right="C",
        multiplier="100",
        exchange="SMART",
        currency="USD",
        tradingClass="AAPL",
    )

    @per_version
    def test_req_mkt_data(self, v):
        name, req = ibapi_request(v, "reqMktData", 5, _contract(**self.option), "100,101,106", False, False, [])
        self.assertEqual(
            (name, req["req_id"], req["generic_ticks"], req["snapshot"]), ("reqMktData", 5, "100,101,106", False)
        )
        self.assertEqual(
            {
                k: req["contract"][k]
                for k in ("symbol", "sec_type", "expiry", "strike", "right", "multiplier", "exchange", "trading_class")
            },
            {
                "symbol": "AAPL",
                "sec_type": "OPT",
                "expiry": "20270115",
                "strike": 190.0,
                "right": "C",
                "multiplier": "100",
                "exchange": "SMART",
                "trading_class": "AAPL",
            },
        )
        self.assertEqual(ibapi_request(v, "cancelMktData", 5), ("cancelMktData", {"req_id": 5}))

    @per_version
    def test_req_contract_details_and_sec_def(self, v):
        name, req = ibapi_request(
            v, "reqContractDetails", 6, _contract(conId=265598, symbol="AAPL", secType="STK", exchange="SMART")
        )
        self.assertEqual(
            (name, req["req_id"], req["contract"]["con_id"], req["contract"]["sec_type"]),
            ("reqContractDetails", 6, 265598, "STK"),
        )
        if v >= 104:  # MIN_SERVER_VER_SEC_DEF_OPT_PARAMS_REQ
            self.assertEqual(
                ibapi_request(v, "reqSecDefOptParams", 7, "AAPL", "", "STK", 265598),
                (
                    "reqSecDefOptParams",
                    {"req_id": 7, "symbol": "AAPL", "exchange": "", "sec_type": "STK", "con_id": 265598},
                ),
            )

    @per_version
    def test_place_and_cancel_order(self, v):
        order = _ibapi_order(v)
        order.action, order.totalQuantity, order.orderType, order.lmtPrice = "SELL", 3, "LMT", 2.05
        order.tif, order.account, order.orderRef = "GTC", "DU1234567", "req-9"
        name, req = ibapi_request(v, "placeOrder", 41, _contract(**self.option), order)
        self.assertEqual(name, "placeOrder")
        self.assertEqual(
            {
                k: req[k]
                for k in (
                    "order_id",
                    "action",
                    "quantity",
                    "order_type",
                    "lmt_price",
                    "aux_price",
                    "tif",
                    "account",
                    "order_ref",
                    "what_if",
                )
            },
            {
                "order_id": 41,
                "action": "SELL",
                "quantity": 3.0,
                "order_type": "LMT",
                "lmt_price": 2.05,
                "aux_price": None,
                "tif": "GTC",
                "account": "DU1234567",
                "order_ref": "req-9",
                "what_if": False,
            },
        )
        self.assertEqual(req["contract"]["strike"], 190.0)
        self.assertEqual(ibapi_request(v, "cancelOrder", 41, OrderCancel()), ("cancelOrder", {"order_id": 41}))

    @per_version
    def test_what_if_is_read_past_every_optional_block(self, v):
        """whatIf sits behind blocks whose length depends on the order: read through each."""
        from ibapi.tag_value import TagValue

        order = _ibapi_order(v)
        order.action, order.totalQuantity, order.orderType, order.lmtPrice = "BUY", 1, "LMT", 2.05
        order.whatIf, order.hedgeType, order.hedgeParam = True, "D", "0.5"
        order.deltaNeutralOrderType, order.deltaNeutralAuxPrice = "LMT", 1.0
        order.scalePriceIncrement, order.scaleInitLevelSize, order.scaleSubsLevelSize = 0.05, 1, 1
        order.algoStrategy, order.algoParams = "Adaptive", [TagValue("adaptivePriority", "Normal")]
        contract = _contract(**self.option)
        for what_if in (True, False):
            order.whatIf = what_if
            name, req = ibapi_request(v, "placeOrder", 42, contract, order)
            self.assertEqual((name, req["order_id"], req["what_if"]), ("placeOrder", 42, what_if))

    @per_version
    def test_account_and_order_queries(self, v):
        self.assertEqual(ibapi_request(v, "reqPositions"), ("reqPositions", {}))
        self.assertEqual(
            ibapi_request(v, "reqAccountSummary", 3, "All", "NetLiquidation,BuyingPower"),
            ("reqAccountSummary", {"req_id": 3, "group": "All", "tags": "NetLiquidation,BuyingPower"}),
        )
        self.assertEqual(
            ibapi_request(v, "reqAccountUpdates", True, "DU1"),
            ("reqAccountUpdates", {"subscribe": True, "account": "DU1"}),
        )
        self.assertEqual(ibapi_request(v, "reqOpenOrders"), ("reqOpenOrders", {}))
        self.assertEqual(ibapi_request(v, "reqAllOpenOrders"), ("reqAllOpenOrders", {}))
        self.assertEqual(ibapi_request(v, "reqAutoOpenOrders", True), ("reqAutoOpenOrders", {"auto_bind": True}))
        if v >= 150:  # MIN_SERVER_VER_COMPLETED_ORDERS
            self.assertEqual(ibapi_request(v, "reqCompletedOrders", False), ("reqCompletedOrders", {"api_only": False}))
        name, req = ibapi_request(v, "reqExecutions", 12, ExecutionFilter())
        self.assertEqual((name, req["req_id"], req["client_id"], req["last_n_days"]), ("reqExecutions", 12, 0, None))
        if v >= 200:  # MIN_SERVER_VER_PARAMETRIZED_DAYS_OF_EXECUTIONS
            week = ExecutionFilter()
            week.lastNDays, week.specificDates = 7, ["20261201", "20261202"]
            self.assertEqual(ibapi_request(v, "reqExecutions", 13, week)[1]["last_n_days"], 7)
        self.assertEqual(ibapi_request(v, "reqIds", 1), ("reqIds", {"num_ids": 1}))
        self.assertEqual(ibapi_request(v, "reqCurrentTime"), ("reqCurrentTime", {}))
        self.assertEqual(ibapi_request(v, "reqMarketDataType", 3), ("reqMarketDataType", {"market_data_type": 3}))

    @per_version
    def test_start_api(self, v):
        client = EClient(RecordingWrapper())
        client.conn, client.serverVersion_, client.clientId = _CapturingConnection(), v, 12
        client.setConnState(EClient.CONNECTED)
        client.startApi()
        reader = FrameReader()
        reader.feed(client.conn.sent[0])
        self.assertEqual(
            parse_request(split_fields(reader.payloads()[0]), v),
            ("startApi", {"client_id": 12, "optional_capabilities": ""}),
        )

    def test_unknown_and_short_messages(self):
        self.assertEqual(parse_request(["123", "1"], 200), ("msg123", {}))
        with self.assertRaises(ProtocolError):
            parse_request(["2", "2"], 200)  # cancelMktData without its reqId


if __name__ == "__main__":
    unittest.main()
