"""Positions with market value and P&L (issue 19, DESIGN.md 4 `positions` v1.1): agent.orders.portfolio
on replayed TWS callbacks, and OrderDesk.positions on a real IBConnection against the fake TWS."""

from __future__ import annotations

import threading
import unittest
from unittest import mock

from agent.errors import IB_NOT_CONNECTED, TIMEOUT, AgentError
from agent.orders import portfolio
from agent.orders.wait import Sweeps
from tests.order_replay import PAPER, DeskTestCase, ReplayConnection, load
from tests.test_orders_tws import OrdersOnFakeTws, ticks_away, wait_until

PNL = portfolio.PNL_FIELDS
OTHER = "DU7654321"


class PortfolioReplayTest(DeskTestCase):
    def setUp(self):
        super().setUp()
        self.positions = load("account")["positions"]
        portfolio._warned.clear()
        self.addCleanup(portfolio._warned.clear)

    def test_rows_of_the_account_unset_values_null_and_the_subscription_ended(self):
        conn = ReplayConnection(PAPER, {"reqAccountUpdates": self.positions["reqAccountUpdates"]})
        values = portfolio.portfolio_values(conn, Sweeps(conn, lambda: 5.0), ["DU1234567"], timeout=1.0)
        self.assertEqual(
            values,
            {
                ("DU1234567", 265598): dict(
                    market_price=182.5, market_value=36500.0, unrealized_pnl=2249.32, realized_pnl=120.4
                ),
                ("DU1234567", 712446551): dict(
                    market_price=4.4, market_value=-880.0, unrealized_pnl=-55.26, realized_pnl=None
                ),
            },
        )
        self.assertEqual(
            conn.sent, [("reqAccountUpdates", (True, "DU1234567")), ("reqAccountUpdates", (False, "DU1234567"))]
        )
        self.assertEqual({n: fns for n, fns in conn._listeners.items() if fns}, {})  # listeners removed

    def test_positions_of_an_account_without_a_download_are_null_and_the_answer_still_succeeds(self):
        """The download names DU1234567 only: TWS never ends OTHER's, so its read times out."""
        position = self.positions["reqPositions"][0]
        other = [position[0], [OTHER] + position[1][1:]]
        answers = {
            "reqPositions": [position, other, ["positionEnd", []]],
            "reqAccountUpdates": self.positions["reqAccountUpdates"],
        }
        desk, conn = self.desk(answers=answers)
        with self.assertLogs("ib_data_agent.orders", "DEBUG") as logs:
            rows = {row["account"]: row for row in desk.account.positions()["positions"]}
            again = {row["account"]: row for row in desk.account.positions()["positions"]}
        self.assertEqual(rows, again)
        self.assertEqual(rows["DU1234567"]["market_value"], 36500.0)
        self.assertEqual({k: rows[OTHER][k] for k in PNL}, dict.fromkeys(PNL))
        self.assertEqual(rows[OTHER]["avg_cost"], rows["DU1234567"]["avg_cost"])  # the rest of the row as before
        levels = [r.levelname for r in logs.records if OTHER in r.getMessage()]
        self.assertEqual(levels, ["WARNING", "DEBUG"])  # one warning, not one per call
        self.assertIn(("reqAccountUpdates", (False, OTHER)), conn.sent)  # unsubscribed after the timeout too

    def test_a_read_fails_fast_when_the_connection_goes(self):
        conn = ReplayConnection(PAPER, {"reqAccountUpdates": [["$disconnect", []]]})
        with self.assertRaises(AgentError) as caught:
            portfolio.read_account(conn, Sweeps(conn, lambda: 5.0), "DU1234567", timeout=30.0)
        self.assertEqual(caught.exception.code, IB_NOT_CONNECTED)
        with self.assertLogs("ib_data_agent.orders", "WARNING"):
            self.assertEqual(
                portfolio.portfolio_values(conn, Sweeps(conn, lambda: 5.0), ["DU1234567"], timeout=30.0), {}
            )  # not connected

    def test_a_read_times_out(self):
        conn = ReplayConnection(PAPER, {"reqAccountUpdates": []})
        with self.assertRaises(AgentError) as caught:
            portfolio.read_account(conn, Sweeps(conn, lambda: 5.0), "DU1234567", timeout=0.2)
        self.assertEqual(caught.exception.code, TIMEOUT)

    def test_reads_take_turns_one_account_subscription_at_a_time(self):
        """TWS keeps one reqAccountUpdates subscription per client: a second read waits for the first."""
        gate, inside, most = threading.Event(), [0], [0]

        class Slow(ReplayConnection):
            def send(self, method, *args):
                if args[0]:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    gate.wait(0.3)
                    super().send(method, *args)
                else:
                    inside[0] -= 1
                    super().send(method, *args)

        conn = Slow(PAPER, {"reqAccountUpdates": self.positions["reqAccountUpdates"]})
        sweeps = Sweeps(conn, lambda: 5.0)  # the desk's one set of sweeps
        readers = [
            threading.Thread(target=portfolio.read_account, args=(conn, sweeps, "DU1234567", 5.0)) for _ in range(3)
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(10)
        self.assertEqual(most[0], 1)


class PositionsPnlOnFakeTwsTest(OrdersOnFakeTws):
    accounts = ("DU1234567", OTHER)

    def positions(self, account: str) -> dict:
        return {row["con_id"]: row for row in self.desk.account.positions()["positions"] if row["account"] == account}

    def test_filled_orders_show_with_their_market_value_and_pnl(self):
        """Buy 2, sell 1: the position's P&L fields are numbers, and selling realized some."""
        params = self.order(marketable=True, account="DU1234567", quantity=2)
        self.assertEqual(self.desk.place_order("pnl-buy", params)["status"], "Filled")
        option = next(
            o
            for o in self.tws.market.options("AAPL")
            if (o.expiry, o.strike, o.right) == tuple(params["contract"][k] for k in ("expiration", "strike", "right"))
        )
        wait_until(lambda: option.con_id in self.positions("DU1234567"), what="the filled option among the positions")
        row = self.positions("DU1234567")[option.con_id]
        for field in PNL:
            self.assertIsInstance(row[field], float, field)
        self.assertEqual((row["quantity"], row["realized_pnl"]), (2, 0.0))
        self.assertAlmostEqual(row["market_value"], row["market_price"] * 100 * 2, places=1)
        self.assertAlmostEqual(row["unrealized_pnl"], row["market_value"] - row["avg_cost"] * 100 * 2, places=1)
        stocks = [r for r in self.positions(OTHER).values() if r["sec_type"] == "STK"]
        self.assertTrue(stocks and all(isinstance(r["market_value"], float) for r in stocks), stocks)

        bid = self.tws.market.quote(option).bid
        sell = dict(params, action="SELL", quantity=1, limit_price=ticks_away(bid, option.min_tick, -2))
        self.assertEqual(self.desk.place_order("pnl-sell", sell)["status"], "Filled")
        wait_until(lambda: self.positions("DU1234567")[option.con_id]["quantity"] == 1, what="the sale")
        row = self.positions("DU1234567")[option.con_id]
        self.assertIsInstance(row["realized_pnl"], float)
        self.assertNotEqual(row["realized_pnl"], 0.0)  # bought at the ask, sold at the bid

    def test_an_account_without_portfolio_rows_answers_nulls_the_others_numbers(self):
        real = self.tws.portfolio.portfolio_rows
        no_rows = mock.patch.object(
            self.tws.portfolio, "portfolio_rows", side_effect=lambda a: [] if a == OTHER else real(a)
        )
        with no_rows:  # TWS ends OTHER's download without a row: a read that worked, nothing to log
            mine, other = self.positions("DU1234567"), self.positions(OTHER)
        self.assertTrue(mine and other)
        for row in other.values():
            self.assertEqual({k: row[k] for k in PNL}, dict.fromkeys(PNL), row)
            self.assertIsNotNone(row["avg_cost"])
        for row in mine.values():
            self.assertIsInstance(row["market_price"], float, row)


if __name__ == "__main__":
    unittest.main()
