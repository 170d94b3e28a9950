"""The official ibapi client (EClient.run on a thread) against the fake TWS, end to end."""

from __future__ import annotations

import inspect
import json
import socket
import threading
import time
import unittest
from decimal import Decimal
from typing import Callable, List, Optional, Tuple

from ibapi.client import EClient
from ibapi.contract import Contract
from ibapi.execution import ExecutionFilter
from ibapi.message import IN
from ibapi.order import Order
from ibapi.order_cancel import OrderCancel
from ibapi.server_versions import MAX_CLIENT_VER
from ibapi.wrapper import EWrapper

from tests.fake_tws import FakeTWS
from tests.fake_tws_proto import PROTOBUF_FROM

TIMEOUT_S = 5.0


class IbapiClient(EWrapper, EClient):
    """Records every wrapper callback as (name, args); tests wait on them."""

    def __init__(self):
        EClient.__init__(self, self)
        self.events: List[Tuple[str, tuple]] = []
        self.cond = threading.Condition()
        self.thread: Optional[threading.Thread] = None

    def record(self, name: str, args: tuple) -> None:
        with self.cond:
            self.events.append((name, args))
            self.cond.notify_all()

    def start(self, port: int, client_id: int) -> "IbapiClient":
        self.connect("127.0.0.1", port, client_id)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.disconnect()
        if self.thread:
            self.thread.join(timeout=TIMEOUT_S)

    def named(self, name: str, where: Callable[[tuple], bool] = lambda a: True) -> List[tuple]:
        with self.cond:
            return [args for n, args in self.events if n == name and where(args)]

    def wait(self, name: str, where: Callable[[tuple], bool] = lambda a: True, count: int = 1) -> List[tuple]:
        deadline = time.monotonic() + TIMEOUT_S
        with self.cond:
            while True:
                found = [args for n, args in self.events if n == name and where(args)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {count} x {name} within {TIMEOUT_S}s; got {[e[0] for e in self.events][-20:]}"
                    )
                self.cond.wait(left)

    def wait_error(self, code: int, req_id: Optional[int] = None) -> tuple:
        return self.wait("error", lambda a: a[2] == code and (req_id is None or a[0] == req_id))[0]


def _record(name):
    def callback(self, *args):
        self.record(name, args)

    return callback


for _name, _ in inspect.getmembers(EWrapper, inspect.isfunction):
    if not _name.startswith("_") and _name != "logAnswer":
        setattr(IbapiClient, _name, _record(_name))


def contract(**fields) -> Contract:
    c = Contract()
    c.exchange, c.currency = "SMART", "USD"
    for key, value in fields.items():
        setattr(c, key, value)
    return c


def limit_order(action: str, quantity: float, price: float, **fields) -> Order:
    order = Order()
    order.action, order.totalQuantity, order.orderType, order.lmtPrice = action, quantity, "LMT", price
    for key, value in fields.items():
        setattr(order, key, value)
    return order


# What TWS sends for a cancel of a live order (../shared/tws-captures/, 203): the order and its status
# PendingCancel, the status Cancelled, then error 202 "Order Canceled - reason:".
CANCEL_BURST = [
    ("openOrder", "PendingCancel"),
    ("orderStatus", "PendingCancel"),
    ("orderStatus", "Cancelled"),
    ("error", 202),
]


def cancel_burst(client: "IbapiClient", order_id: int) -> List[tuple]:
    """The messages about `order_id` from its first PendingCancel on, as (callback, status or code)."""
    with client.cond:
        about = [(n, a) for n, a in client.events if n in ("openOrder", "orderStatus", "error") and a[0] == order_id]
    seen = [(n, a[3].status if n == "openOrder" else a[1] if n == "orderStatus" else a[2]) for n, a in about]
    first = next(i for i, (_, what) in enumerate(seen) if what == "PendingCancel")
    return seen[first:]


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeTwsCase(unittest.TestCase):
    fake_options: dict = {}

    def setUp(self):
        self.tws = FakeTWS(port=0, tick_delay_ms=(1, 5), **self.fake_options)
        self.port = self.tws.start()
        self.addCleanup(self.tws.stop)
        self.clients: List[IbapiClient] = []

    def tearDown(self):
        for client in self.clients:
            client.stop()

    def connect(self, client_id: int = 1, ready: bool = True) -> IbapiClient:
        client = IbapiClient().start(self.port, client_id)
        self.clients.append(client)
        if ready:
            client.wait("nextValidId")
        return client

    def atm_call(self, symbol: str = "AAPL", expiry_index: int = 3):
        market = self.tws.market
        expiry = market.expirations(symbol)[expiry_index]
        return min(
            market.find(symbol=symbol, sec_type="OPT", expiry=expiry, right="C"),
            key=lambda o: abs(o.strike - market.spot(symbol)),
        )

    def option_contract(self, option) -> Contract:
        return contract(
            symbol=option.symbol,
            secType="OPT",
            lastTradeDateOrContractMonth=option.expiry,
            strike=option.strike,
            right=option.right,
            multiplier="100",
        )


class ConnectAndReferenceDataTest(FakeTwsCase):
    def test_connect_gets_accounts_order_id_and_farm_notices(self):
        client = self.connect()
        self.assertEqual(client.serverVersion(), MAX_CLIENT_VER)  # the default: the newest ibapi offers
        self.assertEqual(client.wait("managedAccounts")[0], ("DU1234567",))
        self.assertEqual(client.wait("nextValidId")[0], (1,))
        for code in (2104, 2106, 2158):
            self.assertEqual(client.wait_error(code)[0], -1)
        client.reqCurrentTime()
        self.assertAlmostEqual(client.wait("currentTime")[0][0], time.time(), delta=5)

    def test_contract_details_for_a_stock_and_an_option(self):
        client = self.connect()
        client.reqContractDetails(1, contract(symbol="AAPL", secType="STK"))
        ((req_id, details),) = client.wait("contractDetails", lambda a: a[0] == 1)
        self.assertEqual((details.contract.conId, details.contract.primaryExchange), (265598, "NASDAQ"))
        client.wait("contractDetailsEnd", lambda a: a[0] == 1)
        option = self.atm_call()
        client.reqContractDetails(2, self.option_contract(option))
        ((_, details),) = client.wait("contractDetails", lambda a: a[0] == 2)
        client.wait("contractDetailsEnd", lambda a: a[0] == 2)
        self.assertEqual(
            (details.contract.conId, details.contract.tradingClass, details.underConId), (option.con_id, "AAPL", 265598)
        )

    def test_a_grid_combination_that_is_not_listed_gets_error_200(self):
        market = self.tws.market
        expiry = market.expirations("AAPL")[0]
        listed = {o.strike for o in market.find(symbol="AAPL", sec_type="OPT", expiry=expiry)}
        missing = next(k for k in market.strikes("AAPL") if k not in listed)
        client = self.connect()
        missing_contract = contract(
            symbol="AAPL", secType="OPT", lastTradeDateOrContractMonth=expiry, strike=missing, right="P"
        )
        client.reqContractDetails(3, missing_contract)
        self.assertIn("No security definition", client.wait_error(200, 3)[3])
        client.reqMktData(4, missing_contract, "", False, False, [])
        client.wait_error(200, 4)
        client.reqContractDetails(5, contract(symbol="NOPE", secType="STK"))
        client.wait_error(200, 5)
        self.assertEqual(client.named("contractDetails"), [])

    def test_sec_def_opt_params_per_exchange_then_end(self):
        client = self.connect()
        client.reqSecDefOptParams(6, "AAPL", "", "STK", 265598)
        client.wait("securityDefinitionOptionParameterEnd", lambda a: a[0] == 6)
        rows = client.named("securityDefinitionOptionParameter")
        self.assertIn("SMART", [r[1] for r in rows])
        self.assertGreater(len(rows), 1)
        market = self.tws.market
        for _, _, con_id, trading_class, multiplier, expirations, strikes in rows:
            self.assertEqual((con_id, trading_class, multiplier), (265598, "AAPL", "100"))
            self.assertEqual(sorted(expirations), market.expirations("AAPL"))
            self.assertEqual(sorted(strikes), market.strikes("AAPL"))
        self.assertGreaterEqual(len(market.expirations("AAPL")), 8)


class MarketDataTest(FakeTwsCase):
    def test_streaming_option_quote_with_greeks_until_cancelled(self):
        client = self.connect()
        option = self.atm_call()
        client.reqMktData(7, self.option_contract(option), "100,101,106", False, False, [])
        for tick_type in (1, 2):
            price = client.wait("tickPrice", lambda a: a[0] == 7 and a[1] == tick_type)[0][2]
            self.assertGreater(price, 0)
        model = client.wait("tickOptionComputation", lambda a: a[0] == 7 and a[1] == 13)[0]
        self.assertTrue(0 < model[4] < 1, model)  # call delta
        self.assertTrue(all(v is not None for v in (model[3], model[5], model[7], model[8], model[9])))
        for computation in (10, 11):
            client.wait("tickOptionComputation", lambda a, t=computation: a[0] == 7 and a[1] == t)
        client.wait("tickSize", lambda a: a[0] == 7 and a[1] == 27)  # call open interest
        client.wait("tickSize", lambda a: a[0] == 7 and a[1] == 29)  # call volume
        client.wait("tickGeneric", lambda a: a[0] == 7 and a[1] == 24)  # implied vol
        client.wait("tickOptionComputation", lambda a: a[0] == 7 and a[1] == 13, count=3)  # keeps streaming
        self.assertEqual(self.tws.stats()["lines_in_use"], 1)
        client.cancelMktData(7)
        wait_until(lambda: self.tws.stats()["lines_in_use"] == 0, "the line to be freed")
        ticks_at_cancel = len(client.named("tickPrice", lambda a: a[0] == 7))
        time.sleep(1.2)  # longer than an update interval
        self.assertEqual(len(client.named("tickPrice", lambda a: a[0] == 7)), ticks_at_cancel)

    def test_snapshot_has_default_ticks_then_ends_and_frees_its_line(self):
        client = self.connect()
        client.reqMktData(8, self.option_contract(self.atm_call()), "", True, False, [])
        client.wait("tickSnapshotEnd", lambda a: a[0] == 8)
        self.assertTrue(client.named("tickPrice", lambda a: a[0] == 8 and a[1] == 1))
        self.assertTrue(client.named("tickOptionComputation", lambda a: a[0] == 8 and a[1] == 13))
        self.assertEqual(client.named("tickSize", lambda a: a[0] == 8 and a[1] in (27, 28)), [])
        wait_until(lambda: self.tws.stats()["lines_in_use"] == 0, "the snapshot line to be freed")
        client.reqMktData(9, contract(symbol="MSFT", secType="STK"), "101", True, False, [])
        self.assertIn("generic ticks", client.wait_error(321, 9)[3])

    def test_far_otm_options_have_no_bid(self):
        market = self.tws.market
        expiry = market.expirations("MRGT")[0]
        far_call = max(market.find(symbol="MRGT", sec_type="OPT", expiry=expiry, right="C"), key=lambda o: o.strike)
        client = self.connect()
        client.reqMktData(10, self.option_contract(far_call), "", True, False, [])
        client.wait("tickSnapshotEnd", lambda a: a[0] == 10)
        self.assertEqual(client.named("tickPrice", lambda a: a[0] == 10 and a[1] == 1)[0][2], -1.0)
        self.assertGreater(client.named("tickPrice", lambda a: a[0] == 10 and a[1] == 2)[0][2], 0)

    def test_stock_quote_has_bid_ask_last_close_volume(self):
        client = self.connect()
        client.reqMarketDataType(1)
        client.reqMktData(11, contract(symbol="SPY", secType="STK"), "", False, False, [])
        self.assertEqual(client.wait("marketDataType", lambda a: a[0] == 11)[0], (11, 1))
        for tick_type in (1, 2, 4, 9):
            client.wait("tickPrice", lambda a, t=tick_type: a[0] == 11 and a[1] == t)
        client.wait("tickSize", lambda a: a[0] == 11 and a[1] == 8)


class LineLimitTest(FakeTwsCase):
    fake_options = {"max_lines": 3}

    def test_past_the_line_limit_error_101_and_no_line_taken(self):
        client = self.connect()
        options = self.tws.market.find(
            symbol="SPY", sec_type="OPT", expiry=self.tws.market.expirations("SPY")[2], right="P"
        )[:4]
        for req_id, option in enumerate(options, start=20):
            client.reqMktData(req_id, self.option_contract(option), "", False, False, [])
        self.assertIn("Max number of tickers", client.wait_error(101, 23)[3])
        stats = self.tws.stats()
        self.assertEqual((stats["line_limit_errors"], stats["max_lines_in_use"], stats["lines_in_use"]), (1, 3, 3))
        client.cancelMktData(20)
        client.reqMktData(24, self.option_contract(options[3]), "", False, False, [])
        client.wait("tickPrice", lambda a: a[0] == 24)


class SlowSnapshotTest(FakeTwsCase):
    fake_options = {"snapshot_ms": (400, 400), "max_lines": 1}

    def test_a_snapshot_ends_late_and_holds_its_line_until_then(self):
        client = self.connect()
        asked = time.monotonic()
        client.reqMktData(30, self.option_contract(self.atm_call()), "", True, False, [])
        client.wait("tickPrice", lambda a: a[0] == 30 and a[1] == 2)
        client.reqMktData(31, self.option_contract(self.atm_call("MSFT")), "", True, False, [])
        client.wait_error(101, 31)  # the first snapshot still holds the only line
        client.wait("tickSnapshotEnd", lambda a: a[0] == 30)
        self.assertGreaterEqual(time.monotonic() - asked, 0.4)
        wait_until(lambda: self.tws.stats()["lines_in_use"] == 0, "the snapshot line to be freed")


class NoLiveDataTest(FakeTwsCase):
    fake_options = {"no_live_data": True}

    def test_live_request_gets_354_and_delayed_request_gets_delayed_ticks(self):
        client = self.connect()
        option = self.option_contract(self.atm_call())
        client.reqMktData(30, option, "", False, False, [])
        client.wait_error(354, 30)
        client.reqMarketDataType(3)
        client.reqMktData(31, option, "", False, False, [])
        client.wait_error(10167, 31)
        self.assertEqual(client.wait("marketDataType", lambda a: a[0] == 31)[0], (31, 3))
        client.wait("tickPrice", lambda a: a[0] == 31 and a[1] == 66)
        client.wait("tickOptionComputation", lambda a: a[0] == 31 and a[1] == 83)
        self.assertEqual(client.named("tickPrice", lambda a: a[0] == 31 and a[1] == 1), [])


class ClientIdTest(FakeTwsCase):
    fake_options = {"busy_client_ids": (7,)}

    def test_busy_and_duplicate_client_ids_get_326_and_are_closed(self):
        busy = self.connect(7, ready=False)
        self.assertIn("client id is already in use", busy.wait_error(326)[3])
        busy.wait("connectionClosed")
        self.connect(4)
        twin = self.connect(4, ready=False)
        twin.wait_error(326)
        twin.wait("connectionClosed")
        self.assertEqual(twin.named("nextValidId"), [])


class PacingRejectTest(FakeTwsCase):
    fake_options = {"pacing": "reject", "max_rate": 20}

    def test_error_100_then_disconnect_on_the_third_violation(self):
        client = self.connect()
        try:
            for _ in range(40):
                client.reqCurrentTime()
        except OSError:
            pass  # the fake hung up mid-burst
        self.assertIn("Max rate of messages per second", client.wait_error(100)[3])
        client.wait("connectionClosed")
        self.assertEqual(self.tws.stats()["pacing_violations"], 3)
        self.assertLess(len(client.named("currentTime")), 40)


class PacingQueueTest(FakeTwsCase):
    fake_options = {"pacing": "queue", "max_rate": 20}

    def test_bursts_are_served_late_and_counted(self):
        client = self.connect()
        for _ in range(30):
            client.reqCurrentTime()
        client.wait("currentTime", count=30)
        self.assertGreaterEqual(self.tws.stats()["pacing_violations"], 1)
        self.assertEqual(client.named("error", lambda a: a[2] == 100), [])
        self.assertTrue(client.isConnected())


class RestartTest(FakeTwsCase):
    def test_drop_all_and_broadcast(self):
        client = self.connect()
        self.tws.broadcast_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
        client.wait_error(1100)
        self.tws.drop_all()
        client.wait("connectionClosed")

    def test_restart_refuses_connections_while_down_then_listens_on_the_same_port(self):
        client = self.connect()
        restarting = threading.Thread(target=self.tws.restart, args=(0.6,))
        restarting.start()
        client.wait("connectionClosed")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True

        wait_until(refused, "connections to be refused")
        restarting.join(timeout=TIMEOUT_S)
        self.assertEqual(self.tws.port, self.port)
        self.connect(1)
        self.assertEqual(self.tws.stats()["connections"], 2)


class OlderVersionsTest(FakeTwsCase):
    """The official client against the fake capped at an older version (--max-server-version):
    the handshake settles there and contract details, quotes, positions and an order placed and
    cancelled all decode, each message laid out for that version (no field left over or missing:
    ibapi would drop the message)."""

    version = 0

    def setUp(self):
        self.fake_options = {"max_server_version": self.version}
        super().setUp()

    def test_details_quotes_positions_and_an_order(self):
        v = self.version
        client = self.connect()
        self.assertEqual(client.serverVersion(), v)
        self.assertEqual(client.wait("managedAccounts")[0], ("DU1234567",))
        client.wait_error(2104)
        call = self.atm_call()
        option = self.option_contract(call)
        stock = contract(symbol="AAPL", secType="STK", primaryExchange="NASDAQ")
        client.reqContractDetails(80, option)
        client.reqContractDetails(79, stock)
        client.wait("contractDetailsEnd", lambda a: a[0] == 80)
        client.wait("contractDetailsEnd", lambda a: a[0] == 79)
        ((_, details),) = client.named("contractDetails", lambda a: a[0] == 80)
        self.assertEqual(
            (details.contract.conId, details.contract.strike, details.underConId),
            (call.con_id, call.strike, call.under_con_id),
        )
        ((_, details),) = client.named("contractDetails", lambda a: a[0] == 79)
        self.assertEqual(
            (details.contract.secType, details.contract.primaryExchange, details.longName),
            ("STK", "NASDAQ", self.tws.market.underlying("AAPL").long_name),
        )
        client.reqMktData(81, option, "100,101,106", False, False, [])
        greeks = client.wait("tickOptionComputation", lambda a: a[0] == 81 and a[1] == 13)[0]
        self.assertEqual(greeks[2], 0 if v >= 156 else None)  # tickAttrib from 156
        self.assertTrue(0 < greeks[4] < 1)  # delta of a call
        client.wait("tickSize", lambda a: a[0] == 81 and a[1] == 27)
        client.wait("tickPrice", lambda a: a[0] == 81 and a[1] == 2)
        client.cancelMktData(81)
        client.reqMktData(82, stock, "", True, False, [])
        client.wait("tickSnapshotEnd", lambda a: a[0] == 82)
        client.reqPositions()
        client.wait("positionEnd")
        self.assertEqual({p[0] for p in client.named("position")}, {"DU1234567"})
        # an order placed, seen and cancelled (below 111 ibapi refuses an Order whose cashQty is
        # left at its default; see tests/test_fake_tws_wire.py)
        client.placeOrder(
            83, option, limit_order("SELL", 1, 99.0, orderRef="old-1", **({"cashQty": 0} if v < 111 else {}))
        )
        ((_, _, order, state),) = client.wait("openOrder", lambda a: a[0] == 83)
        self.assertEqual(
            (order.orderRef, order.lmtPrice, order.totalQuantity, state.status),
            ("old-1", 99.0, Decimal(1), "Submitted"),
        )
        status = client.wait("orderStatus", lambda a: a[0] == 83)[0]
        self.assertEqual(status[10], 0.0 if v >= 131 else None)  # mktCapPrice from 131
        client.reqOpenOrders()
        client.wait("openOrderEnd")
        client.cancelOrder(83, OrderCancel())
        client.wait_error(202, 83)
        self.assertEqual(cancel_burst(client, 83), CANCEL_BURST)
        client.placeOrder(84, option, limit_order("BUY", 1, 500.0, **({"cashQty": 0} if v < 111 else {})))
        execution = client.wait("execDetails", lambda a: a[0] == -1)[0][2]
        self.assertEqual(
            (execution.orderId, execution.shares, execution.lastLiquidity), (84, Decimal(1), 2 if v >= 136 else 0)
        )
        client.wait("commissionAndFeesReport")
        self.assertEqual(self.tws.stats()["orders_placed"], 2)


for _version in (100, 130, 156, 176):
    globals()[f"OlderVersion{_version}Test"] = type(
        f"OlderVersion{_version}Test", (OlderVersionsTest,), {"version": _version}
    )
del OlderVersionsTest


# classic callback -> the protobuf callback ibapi makes first when the message came as protobuf
PROTOBUF_CALLBACKS = {
    "managedAccounts": (IN.MANAGED_ACCTS, "managedAccountsProtoBuf"),
    "nextValidId": (IN.NEXT_VALID_ID, "nextValidIdProtoBuf"),
    "currentTime": (IN.CURRENT_TIME, "currentTimeProtoBuf"),
    "error": (IN.ERR_MSG, "errorProtoBuf"),
    "contractDetails": (IN.CONTRACT_DATA, "contractDataProtoBuf"),
    "securityDefinitionOptionParameter": (IN.SECURITY_DEFINITION_OPTION_PARAMETER, "secDefOptParameterProtoBuf"),
    "tickPrice": (IN.TICK_PRICE, "tickPriceProtoBuf"),
    "tickOptionComputation": (IN.TICK_OPTION_COMPUTATION, "tickOptionComputationProtoBuf"),
    "tickSnapshotEnd": (IN.TICK_SNAPSHOT_END, "tickSnapshotEndProtoBuf"),
    "marketDataType": (IN.MARKET_DATA_TYPE, "updateMarketDataTypeProtoBuf"),
    "position": (IN.POSITION_DATA, "positionProtoBuf"),
    "accountSummary": (IN.ACCOUNT_SUMMARY, "accountSummaryProtoBuf"),
    "updateAccountValue": (IN.ACCT_VALUE, "updateAccountValueProtoBuf"),
    "openOrder": (IN.OPEN_ORDER, "openOrderProtoBuf"),
    "openOrderEnd": (IN.OPEN_ORDER_END, "openOrdersEndProtoBuf"),
    "orderStatus": (IN.ORDER_STATUS, "orderStatusProtoBuf"),
    "completedOrder": (IN.COMPLETED_ORDER, "completedOrderProtoBuf"),
    "execDetails": (IN.EXECUTION_DATA, "executionDetailsProtoBuf"),
    "execDetailsEnd": (IN.EXECUTION_DATA_END, "executionDetailsEndProtoBuf"),
    "commissionAndFeesReport": (IN.COMMISSION_AND_FEES_REPORT, "commissionAndFeesReportProtoBuf"),
}


class ProtobufVersionsTest(FakeTwsCase):
    """The official client against the fake at each version where a message group moves to
    protobuf (and at the newest): every request the agent makes, end to end."""

    version = 0

    def setUp(self):
        self.fake_options = {"max_server_version": self.version}
        super().setUp()

    def test_everything_the_agent_asks(self):
        v = self.version
        client = self.connect()
        self.assertEqual(client.serverVersion(), v)
        self.assertEqual(client.wait("managedAccounts")[0], ("DU1234567",))
        client.wait_error(2104)
        # contract details, STK and OPT; secdef option parameters
        stock = contract(symbol="AAPL", secType="STK", primaryExchange="NASDAQ")
        call = self.atm_call()
        option = self.option_contract(call)
        client.reqContractDetails(10, stock)
        client.reqContractDetails(11, option)
        client.wait("contractDetailsEnd", lambda a: a[0] == 11)
        client.wait("contractDetailsEnd", lambda a: a[0] == 10)
        ((_, details),) = client.named("contractDetails", lambda a: a[0] == 10)
        self.assertEqual((details.contract.secType, details.contract.primaryExchange), ("STK", "NASDAQ"))
        ((_, details),) = client.named("contractDetails", lambda a: a[0] == 11)
        self.assertEqual(
            (details.contract.conId, details.contract.strike, details.contract.multiplier),
            (call.con_id, call.strike, "100"),
        )
        client.reqSecDefOptParams(12, "AAPL", "", "STK", 0)
        client.wait("securityDefinitionOptionParameterEnd", lambda a: a[0] == 12)
        rows = client.named("securityDefinitionOptionParameter", lambda a: a[0] == 12)
        self.assertTrue(rows and all(call.expiry in r[5] and call.strike in r[6] for r in rows))
        # market data: snapshot and streaming, with the market data type each gets
        client.reqMarketDataType(1)
        client.reqMktData(20, stock, "", True, False, [])
        client.wait("tickSnapshotEnd", lambda a: a[0] == 20)
        self.assertEqual(client.wait("marketDataType", lambda a: a[0] == 20)[0], (20, 1))
        self.assertTrue(client.named("tickPrice", lambda a: a[0] == 20 and a[1] == 1))
        client.reqMktData(21, option, "100,101,106", False, False, [])
        client.wait("tickOptionComputation", lambda a: a[0] == 21 and a[1] == 13)
        client.wait("tickGeneric", lambda a: a[0] == 21 and a[1] == 24)
        client.wait("tickSize", lambda a: a[0] == 21 and a[1] == 27)
        client.cancelMktData(21)
        wait_until(lambda: self.tws.stats()["lines_in_use"] == 0, "lines freed")
        # positions, account summary, account updates
        client.reqPositions()
        client.wait("positionEnd")
        self.assertTrue(client.named("position"))
        client.reqAccountSummary(30, "All", "NetLiquidation,BuyingPower")
        client.wait("accountSummaryEnd", lambda a: a[0] == 30)
        self.assertEqual(len(client.named("accountSummary", lambda a: a[0] == 30)), 2)
        client.reqAccountUpdates(True, "")
        client.wait("accountDownloadEnd")
        client.wait("updateAccountTime")
        self.assertTrue(client.named("updatePortfolio"))
        # a stock order with a primary exchange: placed, seen, cancelled
        order_id = client.named("nextValidId")[0][0]
        client.placeOrder(order_id, stock, limit_order("BUY", 1, 1.0, orderRef="stk-1"))
        ((_, placed, order, state),) = client.wait("openOrder", lambda a: a[0] == order_id)
        self.assertEqual(
            (placed.symbol, order.orderRef, order.totalQuantity, state.status),
            ("AAPL", "stk-1", Decimal(1), "Submitted"),
        )
        client.reqOpenOrders()
        client.wait("openOrderEnd")
        client.cancelOrder(order_id, OrderCancel())
        client.wait("orderStatus", lambda a: a[0] == order_id and a[1] == "Cancelled")
        client.wait_error(202, order_id)
        self.assertEqual(cancel_burst(client, order_id), CANCEL_BURST)
        # an option limit order: placed and cancelled; then one that fills: executions,
        # commission, completed orders
        client.placeOrder(order_id + 3, option, limit_order("BUY", 1, 0.05, orderRef="opt-0"))
        ((_, placed, order, state),) = client.wait("openOrder", lambda a: a[0] == order_id + 3)
        self.assertEqual(
            (placed.conId, placed.right, order.lmtPrice, state.status), (call.con_id, "C", 0.05, "Submitted")
        )
        client.cancelOrder(order_id + 3, OrderCancel())
        client.wait("orderStatus", lambda a: a[0] == order_id + 3 and a[1] == "Cancelled")
        client.wait_error(202, order_id + 3)
        client.placeOrder(order_id + 1, option, limit_order("BUY", 1, 500.0, orderRef="opt-1"))
        client.wait("orderStatus", lambda a: a[0] == order_id + 1 and a[1] == "Filled")
        client.wait("commissionAndFeesReport")
        client.reqExecutions(40, ExecutionFilter())
        client.wait("execDetailsEnd", lambda a: a[0] == 40)
        ((_, executed, execution),) = client.named("execDetails", lambda a: a[0] == 40)
        self.assertEqual(
            (executed.conId, execution.orderId, execution.shares, execution.orderRef),
            (call.con_id, order_id + 1, Decimal(1), "opt-1"),
        )
        client.reqCompletedOrders(False)
        client.wait("completedOrdersEnd")
        self.assertEqual(
            sorted(a[2].status for a in client.named("completedOrder")), ["Cancelled", "Cancelled", "Filled"]
        )
        # a rejection carries advancedOrderRejectJson
        client.placeOrder(order_id + 2, option, limit_order("BUY", 5000, 1.0))
        rejected = client.wait_error(201, order_id + 2)
        self.assertIn("Order rejected", rejected[3])
        self.assertEqual(json.loads(rejected[4])["rejectReason"], rejected[3].split("reason:", 1)[1])
        client.reqCurrentTime()
        client.wait("currentTime")
        # each message came as protobuf exactly from the version the table says
        for callback, (msg_id, proto_callback) in PROTOBUF_CALLBACKS.items():
            with self.subTest(callback=callback):
                self.assertTrue(client.named(callback))
                self.assertEqual(bool(client.named(proto_callback)), v >= PROTOBUF_FROM[msg_id])


for _version in (201, 203, 204, 205, 206, 207, 212, 213, MAX_CLIENT_VER):
    globals()[f"ProtobufVersion{_version}Test"] = type(
        f"ProtobufVersion{_version}Test", (ProtobufVersionsTest,), {"version": _version}
    )
del ProtobufVersionsTest


if __name__ == "__main__":
    unittest.main()
