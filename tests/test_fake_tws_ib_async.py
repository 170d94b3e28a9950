"""ib_async (which negotiates server version <= 178 and syncs positions, orders, account updates and
executions inside connect) against the fake TWS, end to end."""

from __future__ import annotations

import logging
import unittest

from tests.fake_tws import FakeTWS

try:
    from ib_async import IB, LimitOrder, Option, Stock
except Exception:  # Python 3.9: not installable (or, when borrowed, fails on 3.10+ syntax)
    IB = None

TIMEOUT_S = 5.0


@unittest.skipUnless(IB is not None, "ib_async is not installed (needs Python 3.10+)")
class IbAsyncCase(unittest.TestCase):
    fake_options: dict = {}
    readonly = False

    @classmethod
    def setUpClass(cls):
        logging.getLogger("ib_async").setLevel(logging.CRITICAL)  # it logs every error code it gets

    def setUp(self):
        self.tws = FakeTWS(port=0, tick_delay_ms=(1, 5), **self.fake_options)
        self.port = self.tws.start()
        self.addCleanup(self.tws.stop)
        self.errors = []
        self.ib = IB()
        self.ib.errorEvent += lambda req_id, code, text, contract: self.errors.append((req_id, code, text))
        self.addCleanup(self.ib.disconnect)

    def connect(self, client_id: int = 11):
        return self.ib.connect("127.0.0.1", self.port, clientId=client_id, readonly=self.readonly, timeout=TIMEOUT_S)

    def wait_until(self, predicate, what: str):
        """Run ib_async's loop until predicate() holds (fails after TIMEOUT_S)."""
        waited = 0.0
        while not predicate():
            self.assertLess(waited, TIMEOUT_S, f"timed out waiting for {what}")
            self.ib.sleep(0.02)
            waited += 0.02

    def error_codes(self):
        return [code for _, code, _ in self.errors]

    def atm_option(self, symbol: str = "AAPL", expiry_index: int = 2):
        market = self.tws.market
        expiry = market.expirations(symbol)[expiry_index]
        strike = min(
            o.strike
            for o in market.find(symbol=symbol, sec_type="OPT", expiry=expiry)
            if o.strike >= market.spot(symbol)
        )
        return Option(symbol, expiry, strike, "C", "SMART")


class ConnectSyncTest(IbAsyncCase):
    def test_connect_syncs_everything_ib_async_asks_for(self):
        self.connect()
        self.assertEqual(self.ib.client.serverVersion(), 178)
        self.assertEqual(self.ib.managedAccounts(), ["DU1234567"])
        self.assertEqual(len(self.ib.positions()), 4)
        self.assertEqual(len(self.ib.portfolio()), 4)
        self.assertIn("NetLiquidation", {v.tag for v in self.ib.accountValues()})
        requests = self.tws.stats()["requests_by_type"]
        for name in (
            "reqPositions",
            "reqOpenOrders",
            "reqCompletedOrders",
            "reqAccountUpdates",
            "reqAccountUpdatesMulti",
            "reqExecutions",
        ):
            self.assertIn(name, requests)
        self.assertEqual([c for c in self.error_codes() if c not in (2104, 2106, 2158)], [])
        summary = {(v.tag, v.currency) for v in self.ib.accountSummary("DU1234567")}
        for tag in ("NetLiquidation", "TotalCashValue", "BuyingPower", "AvailableFunds", "ExcessLiquidity"):
            self.assertIn((tag, "USD"), summary)

    def test_contract_details_chain_params_and_missing_contract(self):
        self.connect()
        stock = Stock("MSFT", "SMART", "USD")
        self.ib.qualifyContracts(stock)
        self.assertEqual(stock.conId, 272093)
        option = self.atm_option("MSFT")
        self.ib.qualifyContracts(option)
        self.assertEqual(option.multiplier, "100")
        self.assertTrue(self.tws.market.by_con_id(option.conId))
        chains = self.ib.reqSecDefOptParams("MSFT", "", "STK", 272093)
        self.assertIn("SMART", [c.exchange for c in chains])
        self.assertEqual(sorted(chains[0].expirations), self.tws.market.expirations("MSFT"))
        missing = Option("MSFT", option.lastTradeDateOrContractMonth, option.strike + 0.5, "C", "SMART")
        self.assertEqual(self.ib.qualifyContracts(missing), [None])
        self.assertIn(200, self.error_codes())


class MarketDataTest(IbAsyncCase):
    def test_streaming_option_greeks_and_a_snapshot(self):
        self.connect()
        option = self.atm_option()
        self.ib.qualifyContracts(option)
        ticker = self.ib.reqMktData(option, "100,101,106")
        self.wait_until(
            lambda: ticker.modelGreeks is not None and ticker.bid > 0 and ticker.callOpenInterest > 0,
            "bid, model greeks and open interest",
        )
        self.assertTrue(0 < ticker.modelGreeks.delta < 1)
        self.assertGreater(ticker.ask, ticker.bid)
        self.ib.cancelMktData(option)
        self.wait_until(lambda: self.tws.stats()["lines_in_use"] == 0, "the line to be freed")
        stock = Stock("AAPL", "SMART", "USD")
        self.ib.qualifyContracts(stock)
        snapshot = self.ib.reqMktData(stock, "", True)
        self.wait_until(lambda: snapshot.close > 0 and snapshot.bid > 0, "a snapshot")
        self.assertEqual(self.tws.stats()["requests_by_type"]["reqMktData"], 2)


class LineLimitTest(IbAsyncCase):
    fake_options = {"max_lines": 2}

    def test_error_101_past_the_line_limit(self):
        self.connect()
        for symbol in ("AAPL", "MSFT", "SPY"):
            stock = Stock(symbol, "SMART", "USD")
            self.ib.qualifyContracts(stock)
            self.ib.reqMktData(stock)
        self.wait_until(lambda: 101 in self.error_codes(), "error 101")
        self.assertEqual(self.tws.stats()["line_limit_errors"], 1)


class OrdersTest(IbAsyncCase):
    def test_place_list_and_cancel(self):
        self.connect()
        option = self.atm_option()
        self.ib.qualifyContracts(option)
        trade = self.ib.placeOrder(option, LimitOrder("BUY", 1, 0.25, orderRef="req-7"))
        self.wait_until(lambda: trade.orderStatus.status == "Submitted", "Submitted")
        self.assertGreater(trade.order.permId, 0)
        self.assertEqual([t.order.orderRef for t in self.ib.reqAllOpenOrders()], ["req-7"])
        self.ib.cancelOrder(trade.order)
        self.wait_until(lambda: trade.orderStatus.status == "Cancelled", "Cancelled")
        self.assertEqual(len(self.ib.reqCompletedOrders(False)), 1)
        self.assertEqual(self.ib.reqOpenOrders(), [])


class ReadOnlyTest(IbAsyncCase):
    fake_options = {"read_only": True}
    readonly = True

    def test_321_on_orders(self):
        self.connect()
        option = self.atm_option()
        self.ib.qualifyContracts(option)
        self.ib.placeOrder(option, LimitOrder("BUY", 1, 0.25))
        self.wait_until(lambda: 321 in self.error_codes(), "error 321")
        self.assertIn("Read-Only", [t for _, c, t in self.errors if c == 321][0])


class PacingRejectTest(IbAsyncCase):
    fake_options = {"pacing": "reject", "max_rate": 10}  # below ib_async's own 45/s throttle

    def test_error_100_then_disconnect(self):
        self.connect()
        for _ in range(30):
            self.ib.client.reqCurrentTime()
        try:
            self.wait_until(lambda: not self.ib.isConnected(), "the fake to hang up")
        except ConnectionError:
            pass  # ib_async raises the disconnect out of its loop
        self.assertFalse(self.ib.isConnected())
        self.assertIn(100, self.error_codes())
        self.assertEqual(self.tws.stats()["pacing_violations"], 3)


class BusyClientIdTest(IbAsyncCase):
    fake_options = {"busy_client_ids": (8,)}

    def test_326_refuses_the_connection(self):
        with self.assertRaises((ConnectionError, TimeoutError, OSError)):
            self.ib.connect("127.0.0.1", self.port, clientId=8, timeout=1.0)
        self.assertIn(326, self.error_codes())
        self.assertFalse(self.ib.isConnected())


if __name__ == "__main__":
    unittest.main()
